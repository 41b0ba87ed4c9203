"""Statistics over the store's performance pairs and judgments: accuracy per backend and category, the
pairwise outcomes of "best answer" votes, and the battles of every judgment (:mod:`data.battles`) that
Bradley-Terry ratings (:mod:`data.ratings`) and the arena export are built on."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from itertools import combinations
from typing import Any

from sqlite_utils import Database

from data import battles as _battles
from data.store_checks import BEST_SPECIAL, normalize_since
from data.store_core import StoreCore, count_rows
from data.store_pairs import pair_parts


def stats_to_frame(stats: Mapping[str, Any]) -> Any:
    """``Store.stats()`` as a DataFrame (backend, category, n, accuracy), for a caller that has the stats."""
    import pandas as pd  # imported here: only the leaderboard and export need pandas

    rows = [
        {"backend": backend, "category": category, "n": cell["n"], "accuracy": cell["accuracy"]}
        for category, per_backend in stats.get("categories", {}).items()
        for backend, cell in per_backend.items()
    ]
    frame = pd.DataFrame(rows, columns=["backend", "category", "n", "accuracy"])
    return frame.sort_values(["backend", "category"], ignore_index=True)


class StatsTables(StoreCore):
    """Read-only summaries: ``stats``, ``stats_frame``, ``pairwise_outcomes``."""

    def stats(self, *, source: str | None = "judgment") -> dict[str, Any]:
        """Counts, and accuracy per backend and per (category, backend), over performance pairs.

        ``source="judgment"`` (the default) counts human judgments only; "benchmark" imported
        benchmark pairs; None both. Each judged (query, backend) counts once, with the mean of its
        verdicts. Categories without a value are reported as "unknown".
        """
        parts = pair_parts(source, None, None, scores_only=True)

        def read(db: Database) -> dict[str, Any]:
            union = " UNION ALL ".join(
                f"SELECT backend, category, correct FROM ({sql})" for _, sql, _ in parts
            )
            params = [p for _, _, ps in parts for p in ps]
            grouped = db.execute(
                f"SELECT backend, COALESCE(category, 'unknown'), COUNT(*), SUM(correct) FROM ({union}) "
                "GROUP BY 1, 2 ORDER BY 1, 2",
                params,
            ).fetchall()
            best = dict(db.execute(
                "SELECT best, COUNT(*) FROM judgments WHERE best IS NOT NULL AND replaced_by IS NULL GROUP BY best"
            ).fetchall()) if source in (None, "judgment") else {}
            return {"grouped": grouped, "counts": count_rows(db), "best": best}

        raw = self._read(read)
        backends: dict[str, dict[str, Any]] = {}
        categories: dict[str, dict[str, dict[str, Any]]] = {}
        for backend, category, n, total in raw["grouped"]:
            entry = backends.setdefault(backend, {"n": 0, "correct": 0.0})
            entry["n"] += n
            entry["correct"] += total
            categories.setdefault(category, {})[backend] = {"n": n, "correct": total, "accuracy": total / n}
        for backend, entry in backends.items():
            entry["accuracy"] = entry["correct"] / entry["n"]
            entry["best"] = raw["best"].get(backend, 0)
        return {
            "source": source or "all",
            "counts": raw["counts"],
            "backends": dict(sorted(backends.items())),
            "categories": dict(sorted(categories.items())),
            # judgments whose best was not a backend
            "best_other": {k: raw["best"].get(k, 0) for k in BEST_SPECIAL},
        }

    def median_latencies(self, *, recent: int = 50) -> dict[str, float]:
        """backend -> median seconds of its last ``recent`` successful answers (backends never timed are absent).

        What routed mode shows as the time it saved: measured here, on this machine, not configured."""

        def read(db: Database) -> list[tuple[str, float]]:
            return db.execute(
                "SELECT backend, latency_s FROM (SELECT backend, latency_s, ROW_NUMBER() OVER "
                "(PARTITION BY backend ORDER BY id DESC) AS rank FROM answers "
                "WHERE error IS NULL AND latency_s IS NOT NULL) WHERE rank <= ?",
                [int(recent)],
            ).fetchall()

        by_backend: dict[str, list[float]] = {}
        for backend, latency in self._read(read):
            by_backend.setdefault(backend, []).append(float(latency))
        return {backend: statistics.median(values) for backend, values in by_backend.items()}

    def stats_frame(self, *, source: str | None = "judgment") -> Any:
        """A pandas DataFrame with columns backend, category, n, accuracy (one row per pair)."""
        return stats_to_frame(self.stats(source=source))

    def pairwise_outcomes(self, *, since: Any = None) -> list[tuple[str, str, float]]:
        """Battles for Bradley-Terry from judgments that chose a best answer.

        best = X: (X, Y, 1.0) for every other backend Y that answered the query. "tie" and
        "all_wrong" (FastChat's "both bad"): (A, B, 0.5) for every pair of backends that answered,
        A < B. Oldest judgment first.
        """
        since_iso = normalize_since(since)

        def read(db: Database) -> list[tuple[str, str, float]]:
            judged = db.execute(
                "SELECT query_id, best FROM judgments WHERE best IS NOT NULL AND replaced_by IS NULL "
                "AND (? IS NULL OR created_at >= ?) ORDER BY id",
                [since_iso, since_iso],
            ).fetchall()
            answered: dict[str, list[str]] = {}
            for query_id, backend in db.execute(
                "SELECT query_id, backend FROM answers WHERE query_id IN "
                "(SELECT query_id FROM judgments WHERE best IS NOT NULL) ORDER BY query_id, backend"
            ):
                answered.setdefault(query_id, []).append(backend)
            outcomes: list[tuple[str, str, float]] = []
            for query_id, best in judged:
                backends = answered.get(query_id, [])
                if best in BEST_SPECIAL:
                    outcomes.extend((a, b, 0.5) for a, b in combinations(backends, 2))
                else:
                    outcomes.extend((best, other, 1.0) for other in backends if other != best)
            return outcomes

        return self._read(read)

    def battles(self, *, anonymous_only: bool = False, since: Any = None) -> list[_battles.Battle]:
        """One battle per pair of backends per judgment (rules: :mod:`data.battles`), oldest first.

        ``anonymous_only`` keeps the battles of blind judgments that no model's self-identification
        flagged (FastChat's anonymous battles): the fair votes the leaderboard rates by default.
        """
        since_iso = normalize_since(since)

        def read(db: Database) -> list[dict[str, Any]]:
            records = {}
            for row in db.query(
                "SELECT j.id, j.query_id, j.best, j.annotator, j.blind, j.flag_reason, j.created_at, j.session_id, "
                "COALESCE(q.category, d.category) AS category FROM judgments j JOIN queries q ON q.id = j.query_id "
                "LEFT JOIN decisions d ON d.query_id = j.query_id "
                "WHERE (:since IS NULL OR j.created_at >= :since) AND j.replaced_by IS NULL "
                "AND (:anon = 0 OR (j.blind = 1 AND j.flag_reason IS NULL)) ORDER BY j.id",
                {"since": since_iso, "anon": int(bool(anonymous_only))},
            ):
                records[row["id"]] = {**row, "verdicts": {}, "answered": []}
            if not records:
                return []
            for judgment_id, backend, correct in db.execute(
                "SELECT v.judgment_id, v.backend, v.correct FROM verdicts v JOIN judgments j ON j.id = v.judgment_id "
                "WHERE (:since IS NULL OR j.created_at >= :since)", {"since": since_iso},
            ):
                if judgment_id in records:
                    records[judgment_id]["verdicts"][backend] = correct
            answered: dict[str, list[str]] = {}
            for query_id, backend in db.execute(
                "SELECT query_id, backend FROM answers WHERE query_id IN (SELECT query_id FROM judgments "
                "WHERE (:since IS NULL OR created_at >= :since)) ORDER BY query_id, backend", {"since": since_iso},
            ):
                answered.setdefault(query_id, []).append(backend)
            for record in records.values():
                record["answered"] = answered.get(record["query_id"], [])
            return list(records.values())

        return _battles.derive(self._read(read))
