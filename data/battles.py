"""Battles between backends, derived from judgments: the votes Bradley-Terry ratings are fitted to and the
rows of the arena export (FastChat's battle format: ``model_a``, ``model_b``, ``winner``, ``anony``, ...).

Each judgment gives one battle per pair of backends it says something about:

- best answer = a backend X: X beats every other backend that answered the query;
- best = "tie": every pair of backends that answered ties; best = "all_wrong": every pair ties as
  ``"tie (bothbad)"``;
- a pair the best answer does not decide (no best, or neither is X) comes from the two verdicts when
  both were judged: the higher verdict wins (one correct and one wrong: the correct one); equal verdicts
  tie, as ``"tie"`` when both are correct (>= 0.5) and ``"tie (bothbad)"`` when both are wrong.

``model_a`` is the first of the two names in sorted order. A battle is anonymous (``anony``) when its
judgment was blind and not flagged, as FastChat counts only anonymous battles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import combinations
from typing import Any

WINNERS: tuple[str, ...] = ("model_a", "model_b", "tie", "tie (bothbad)")
#: Each winner as the score of model_a (a tie is half a win for each side).
SCORES: dict[str, float] = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


@dataclass(frozen=True)
class Battle:
    """One battle; :meth:`to_arena` is its row in the arena export."""

    model_a: str
    model_b: str
    winner: str
    anony: bool
    judge: str
    tstamp: float
    question_id: str
    category: str | None = None
    language: str | None = None
    judgment_id: int | None = None
    session_id: str | None = None
    blind: bool = False
    flag_reason: str | None = None

    @property
    def score(self) -> float:
        """model_a's score: 1 win, 0 loss, 0.5 tie."""
        return SCORES[self.winner]

    def to_arena(self) -> dict[str, Any]:
        return asdict(self)


def _from_verdicts(a: str, b: str, verdicts: Mapping[str, float]) -> str | None:
    if a not in verdicts or b not in verdicts:
        return None
    va, vb = float(verdicts[a]), float(verdicts[b])
    if va > vb:
        return "model_a"
    if vb > va:
        return "model_b"
    return "tie" if va >= 0.5 else "tie (bothbad)"


def judgment_battles(best: str | None, verdicts: Mapping[str, float], answered: Sequence[str]
                     ) -> list[tuple[str, str, str]]:
    """(model_a, model_b, winner) for one judgment (see the module docstring), model_a < model_b."""
    names = sorted(set(answered) | set(verdicts))
    out: list[tuple[str, str, str]] = []
    for a, b in combinations(names, 2):
        winner: str | None = None
        if best in ("tie", "all_wrong"):
            if a in answered and b in answered:
                winner = "tie" if best == "tie" else "tie (bothbad)"
        elif best is not None and best in (a, b):
            other = b if best == a else a
            if other in answered:
                winner = "model_a" if best == a else "model_b"
        else:
            winner = _from_verdicts(a, b, verdicts)
        if winner is not None:
            out.append((a, b, winner))
    return out


def _timestamp(created_at: str) -> float:
    return round(datetime.fromisoformat(created_at).timestamp(), 6)


def derive(judgments: Iterable[Mapping[str, Any]]) -> list[Battle]:
    """Battles of judgment records (``id``, ``query_id``, ``best``, ``verdicts`` {backend: correct},
    ``answered`` [backend], ``annotator``, ``blind``, ``flag_reason``, ``created_at``, ``category``,
    ``session_id``, optionally ``language``), in the records' order."""
    battles: list[Battle] = []
    for j in judgments:
        blind = bool(j.get("blind"))
        flag = j.get("flag_reason")
        for a, b, winner in judgment_battles(j.get("best"), j.get("verdicts") or {}, j.get("answered") or []):
            battles.append(Battle(
                model_a=a, model_b=b, winner=winner, anony=blind and not flag, judge=j["annotator"],
                tstamp=_timestamp(j["created_at"]), question_id=j["query_id"], category=j.get("category"),
                language=j.get("language"), judgment_id=j.get("id"), session_id=j.get("session_id"),
                blind=blind, flag_reason=flag,
            ))
    return battles


def outcomes(battles: Iterable[Battle]) -> list[tuple[str, str, float]]:
    """(model_a, model_b, model_a's score) for :func:`data.ratings.fit_bradley_terry`."""
    return [(b.model_a, b.model_b, b.score) for b in battles]
