"""What routed mode saved: the router's pick answered alone instead of every backend.

The time is measured, not configured: each backend's median latency over its recent answers in the
store (:meth:`data.store.Store.median_latencies`), and the pick's own time for this question. The
backends answer at once on their own worker threads, so asking all of them takes about as long as the
slowest one; the cost is the sum of the preset's per-answer ``cost`` of each backend.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoutedSaving:
    pick: str
    #: The pick's time for this question (None until it answered).
    pick_s: float | None
    #: Asking every backend: the slowest backend's median latency (None when none was ever timed).
    all_s: float | None
    pick_cost: float
    all_cost: float
    backends: int
    #: Backends never timed on this machine: left out of ``all_s``, so the saving is a lower bound.
    untimed: list[str] = field(default_factory=list)

    @property
    def saved_s(self) -> float | None:
        if self.pick_s is None or self.all_s is None:
            return None
        return max(0.0, self.all_s - self.pick_s)

    @property
    def saved_cost_share(self) -> float | None:
        """1 - pick's cost / every backend's cost; None when the preset sets no costs."""
        if self.all_cost <= 0:
            return None
        return 1.0 - self.pick_cost / self.all_cost


def estimate(pick: str, costs: Mapping[str, float], medians: Mapping[str, float], pick_s: float | None) -> RoutedSaving:
    """The saving of asking ``pick`` alone; ``costs`` names every backend of the preset."""
    timed = {name: medians[name] for name in costs if name in medians}
    if pick not in timed and pick_s is not None:
        timed[pick] = pick_s
    others_timed = any(name != pick for name in timed)  # else "asking all" would be the pick's own time
    return RoutedSaving(
        pick=pick,
        pick_s=pick_s,
        all_s=max(timed.values()) if others_timed else None,
        pick_cost=float(costs.get(pick, 0.0)),
        all_cost=float(sum(costs.values())),
        backends=len(costs),
        untimed=[name for name in costs if name not in timed],
    )


def render(saving: RoutedSaving | None, *, asked_all: bool = False) -> str:
    """The line under the router card ("" when there is nothing to say)."""
    if saving is None:
        return ""
    pick = html.escape(saving.pick)
    if asked_all:
        return (f"<div class='rl-saving' id='routed-saving'>Every backend has now answered this question; "
                f"<b>{pick}</b> alone had answered in {_seconds(saving.pick_s)}.</div>")
    parts = []
    if saving.saved_s is not None:
        parts.append(f"about <b>{saving.saved_s:.1f} s</b> (asking all {saving.backends} takes about "
                     f"{saving.all_s:.1f} s here, {pick} took {saving.pick_s:.1f} s)")
    share = saving.saved_cost_share
    if share is not None:
        parts.append(f"<b>{100 * share:.0f}%</b> of the cost ({saving.pick_cost:g} instead of {saving.all_cost:g})")
    untimed = html.escape(", ".join(saving.untimed))
    if saving.saved_s is not None:
        tail = f" Not timed yet: {untimed}, so the time saved may be larger." if saving.untimed else ""
    else:
        tail = f" Time saved: not measured yet ({untimed} never answered here)." if saving.untimed else ""
    saved = f"Saved {' and '.join(parts)}." if parts else "The preset sets no costs."
    return (f"<div class='rl-saving' id='routed-saving'>Routed: only <b>{pick}</b> was asked. "
            f"{saved}{tail}</div>")


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"
