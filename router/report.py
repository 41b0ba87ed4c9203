"""The retrain report the Leaderboard tab shows: the new version's held-out metrics beside the active one's.

Markdown text only (no UI library), so it is tested with the service and drawn by whichever page shows it.
"""

from __future__ import annotations

import html
from typing import Any

from router.lifecycle import TrainOutcome

#: Metrics shown side by side after a retrain.
REPORT_METRICS = (
    ("routed_accuracy", "routed accuracy"),
    ("best_single_accuracy", "best single backend"),
    ("oracle_accuracy", "oracle"),
    ("ece", "calibration error (ECE)"),
    ("selection_accuracy", "selection accuracy"),
)


def render_report(outcome: TrainOutcome) -> str:
    """Markdown: the new version's held-out metrics beside the active one's, and the verdict."""
    metrics = outcome.card.get("metrics", {}) or {}
    previous = outcome.active_metrics or {}
    rows = ["| metric | new " + html.escape(outcome.version) + " | active before |", "|---|---|---|"]
    for key, label in REPORT_METRICS:
        rows.append(f"| {label} | {_fmt(metrics.get(key))} | {_fmt(previous.get(key))} |")
    verdict = "✓ **promoted**: it is now active." if outcome.promoted else "**Not promoted**: kept the active router."
    rows.extend(_comparison_rows(outcome.comparison or {}))
    warnings = "".join(f"\n- {html.escape(str(w))}" for w in (outcome.warnings or [])[:5])
    notes = f"\n\nNotes:{warnings}" if warnings else ""
    return (f"{verdict} {html.escape(outcome.reason)}\n\n{training_rows_line(outcome.card.get('data') or {})}\n\n"
            + "\n".join(rows) + notes)


def training_rows_line(data: dict[str, Any]) -> str:
    """What a version was trained on, from its card's ``data`` (``sources`` counts the rows by origin), e.g.
    "Trained on 1,234 rows (600 queries): 56 from people's judgments, 1,178 benchmark pairs." """
    sources = {str(k): int(n) for k, n in (data.get("sources") or {}).items()}
    total = data.get("pair_rows")
    total = int(total) if isinstance(total, (int, float)) else sum(sources.values())
    queries = data.get("queries")
    head = f"Trained on {total:,} rows" + (f" ({int(queries):,} queries)" if isinstance(queries, (int, float)) else "")
    if not sources:
        return head + "."
    parts = [f"{sources.pop('judgment', 0):,} from people's judgments", f"{sources.pop('benchmark', 0):,} benchmark pairs"]
    parts += [f"{n:,} {html.escape(k)} pairs" for k, n in sorted(sources.items())]
    return f"{head}: " + ", ".join(parts) + "."


COMPARISONS = (("vs_active", "new − active"), ("vs_best_single", "new − best single"), ("vs_category_rule", "new − category rule"))


def _comparison_rows(comparison: dict[str, Any]) -> list[str]:
    """Routed-accuracy differences on the same held-out queries, each with its 95% paired-bootstrap interval."""
    rows = []
    for key, label in COMPARISONS:
        item = comparison.get(key)
        if item:
            low, high = item["ci95"]
            rows.append(f"| {label} (routed accuracy) | {item['difference']:+.3f} [{low:+.3f}, {high:+.3f}] | n = {item['n_queries']} |")
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


__all__ = ["REPORT_METRICS", "render_report", "training_rows_line"]
