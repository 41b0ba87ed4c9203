"""Agreement between annotators: Krippendorff's alpha on the per-backend verdicts, and the disagreements.

The unit of agreement is one (query, backend): the verdicts different annotators gave that answer. Only
items (queries) judged by two or more annotators count; an annotator who judged a query twice counts
with their latest verdict. Alpha is computed by the ``krippendorff`` package at the nominal level
(a verdict is a category: correct, wrong, or a partial score), overall, per backend and per category.
It is null when it is undefined: fewer than two verdicts on any unit, or every verdict the same value
(no variation to explain: look at ``observed_agreement``, then 1.0).

Each annotator's agreement with the majority compares their verdict on a unit with the majority verdict
of the *other* annotators of that unit (units where the others tie are left out), so that with two
annotators it is their plain agreement rather than a share inflated by their own vote.

A disagreement is an item where some backend got different verdicts; it lists every verdict with its
annotator and reason, and the lead annotator's final verdict (adjudication) where one was recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

LEVEL = "nominal"
Unit = tuple[str, str]  # (query_id, backend)


def _latest(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[Unit, dict[str, float]], dict[str, dict[str, Any]]]:
    """unit -> {annotator: verdict} (latest judgment wins), and per query its question, category,
    session, answers and each annotator's reason."""
    units: dict[Unit, dict[str, float]] = {}
    queries: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["query_id"], r["judgment_id"])):
        query = queries.setdefault(row["query_id"], {
            "query_id": row["query_id"], "question": row.get("question"), "category": row.get("category") or "unknown",
            "session_id": row.get("session_id"), "answers": {}, "reasons": {}, "annotators": set(),
        })
        query["annotators"].add(row["annotator"])
        query["answers"][row["backend"]] = row.get("answer")
        if row.get("reason"):
            query["reasons"][row["annotator"]] = row["reason"]
        units.setdefault((row["query_id"], row["backend"]), {})[row["annotator"]] = float(row["correct"])
    return units, queries


def krippendorff_alpha(units: Mapping[Unit, Mapping[str, float]]) -> float | None:
    """Nominal Krippendorff's alpha of ``units`` (unit -> {annotator: value}) by the ``krippendorff``
    package; None when undefined (no unit with two values, or a single value in the data)."""
    import krippendorff

    pairable = {u: v for u, v in units.items() if len(v) >= 2}
    values = {x for v in pairable.values() for x in v.values()}
    if not pairable or len(values) < 2:
        return None
    coders = sorted({a for v in pairable.values() for a in v})
    matrix = np.full((len(coders), len(pairable)), np.nan)
    for column, verdicts in enumerate(pairable.values()):
        for annotator, value in verdicts.items():
            matrix[coders.index(annotator), column] = value
    alpha = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=LEVEL))
    return alpha if np.isfinite(alpha) else None


def observed_agreement(units: Mapping[Unit, Mapping[str, float]]) -> float | None:
    """The share of agreeing pairs of verdicts on the same unit (None without any pair)."""
    agree = pairs = 0
    for verdicts in units.values():
        values = list(verdicts.values())
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                pairs += 1
                agree += values[i] == values[j]
    return agree / pairs if pairs else None


def _summary(units: Mapping[Unit, Mapping[str, float]]) -> dict[str, Any]:
    return {
        "krippendorff_alpha": krippendorff_alpha(units),
        "observed_agreement": observed_agreement(units),
        "items": len({query for query, _ in units}),
        "units": len(units),
    }


def _with_majority(units: Mapping[Unit, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for verdicts in units.values():
        for annotator, value in verdicts.items():
            entry = out.setdefault(annotator, {"units": 0, "compared": 0, "agree": 0})
            entry["units"] += 1
            others = Counter(v for a, v in verdicts.items() if a != annotator)
            ranked = others.most_common(2)
            if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
                continue  # nobody else, or the others tie
            entry["compared"] += 1
            entry["agree"] += ranked[0][0] == value
    for entry in out.values():
        entry["agreement_with_majority"] = entry["agree"] / entry["compared"] if entry["compared"] else None
    return dict(sorted(out.items()))


def compute(rows: Iterable[Mapping[str, Any]], adjudications: Mapping[Unit, Mapping[str, Any]] | None = None,
            *, session: str | None = None) -> dict[str, Any]:
    """The agreement report of verdict rows (``Store.annotator_verdicts()``): overall, per backend, per
    category and per annotator, and the disagreements (see the module docstring)."""
    adjudications = adjudications or {}
    units, queries = _latest(rows)
    shared = {q for q, info in queries.items() if len(info["annotators"]) >= 2}
    units = {u: v for u, v in units.items() if u[0] in shared}
    report: dict[str, Any] = {"session": session, "level": LEVEL, **_summary(units)}
    report["annotators_total"] = len({a for v in units.values() for a in v})
    report["per_backend"] = {
        backend: _summary({u: v for u, v in units.items() if u[1] == backend})
        for backend in sorted({b for _, b in units})
    }
    report["per_category"] = {
        category: _summary({u: v for u, v in units.items() if queries[u[0]]["category"] == category})
        for category in sorted({queries[q]["category"] for q, _ in units})
    }
    report["annotators"] = _with_majority(units)
    report["disagreements"] = disagreements(units, queries, adjudications)
    return report


def disagreements(units: Mapping[Unit, Mapping[str, float]], queries: Mapping[str, Mapping[str, Any]],
                  adjudications: Mapping[Unit, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Items where a backend got different verdicts, in query order, each with every backend's verdicts
    by annotator, the reasons given, and the final verdict where a lead annotator recorded one."""
    split_queries = sorted({q for (q, _), v in units.items() if len(set(v.values())) > 1})
    out = []
    for query_id in split_queries:
        info = queries[query_id]
        backends = {}
        for (q, backend), verdicts in sorted(units.items()):
            if q != query_id:
                continue
            final = adjudications.get((q, backend))
            backends[backend] = {
                "verdicts": dict(sorted(verdicts.items())),
                "split": len(set(verdicts.values())) > 1,
                "answer": info["answers"].get(backend),
                "final": None if final is None else {k: final[k] for k in ("correct", "adjudicator", "reason", "created_at")},
            }
        out.append({
            "query_id": query_id, "question": info["question"], "category": info["category"],
            "session_id": info["session_id"], "backends": backends, "reasons": dict(sorted(info["reasons"].items())),
            "adjudicated": all(b["final"] is not None for b in backends.values() if b["split"]),
        })
    return out


def report(store: Any, *, session_id: str | None = None) -> dict[str, Any]:
    """:func:`compute` over a store's verdicts (of one session with ``session_id``)."""
    return compute(store.annotator_verdicts(session_id=session_id), store.adjudications(), session=session_id)
