"""Calibration of per-backend P(correct): temperature, Platt and isotonic maps, and the ECE metric.

The heads are fitted on the training fold; a calibrator is fitted on a separate calibration fold
(split by image like every other split) and applied on top of the heads' logits, one map per backend.
``fit_calibrator("auto", ...)`` picks the method with the lowest log-loss by 2-fold cross-validation
on the calibration fold, so isotonic only wins when there is enough data for it.

Labels may be soft (a judged correctness of 0.5), so every fit uses the Bernoulli log-loss with
fractional targets. ``mask`` marks which (query, backend) cells have a label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS: tuple[str, ...] = ("identity", "temperature", "platt", "isotonic")
_EPS = 1e-6


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def expected_calibration_error(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_bins: int = 15,
) -> float:
    """ECE with equal-width bins: sum over bins of |mean p - mean label| weighted by the bin's share.

    Flattens its inputs, so it works for one column or for every (query, backend) cell at once.
    Returns NaN when there is nothing to measure.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    keep = np.isfinite(p) & np.isfinite(y)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).reshape(-1)
    p, y = p[keep], y[keep]
    if p.size == 0:
        return float("nan")
    bins = np.minimum((np.clip(p, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    used = count > 0
    gap = np.abs(sum_p[used] - sum_y[used])  # = count * |mean p - mean y|
    return float(gap.sum() / p.size)


def ece_bootstrap_ci(
    probabilities: np.ndarray, labels: np.ndarray, *, resamples: int = 1000, seed: int = 0, n_bins: int = 15
) -> tuple[float, float]:
    """A 95% interval for the ECE of (n, backends) probabilities: queries (rows) resampled with replacement."""
    p = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    y = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    n = p.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(p[rows], y[rows], n_bins=n_bins) for rows in rng.integers(0, n, size=(resamples, n))]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def ece_if_calibrated(
    probabilities: np.ndarray, mask: np.ndarray | None = None, *, draws: int = 500, seed: int = 0, n_bins: int = 15
) -> tuple[float, float]:
    """The ECE a perfectly calibrated predictor would show with these probabilities on this many cells.

    ECE on a few hundred cells is biased upward: even when every probability is right, each bin's
    observed accuracy is a small sample (Kumar et al. 2019, Roelofs et al. 2022). Drawing every label
    from its own predicted probability gives that sampling floor: (mean, 95th percentile) over
    ``draws``. A measured ECE inside this range is what sampling noise alone produces.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    keep = np.isfinite(p) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(p))
    p = np.clip(p[keep], 0.0, 1.0)
    if p.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(p, (rng.random(p.size) < p).astype(np.float64), n_bins=n_bins) for _ in range(draws)]
    return float(np.mean(values)), float(np.percentile(values, 95))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin: mean predicted P(correct), observed accuracy and count (for a reliability diagram)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    keep = np.isfinite(p) & np.isfinite(y)
    p, y = p[keep], y[keep]
    bins = np.minimum((np.clip(p, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            out.append({"confidence": round(float(p[sel].mean()), 4), "accuracy": round(float(y[sel].mean()), 4),
                        "count": int(sel.sum())})
    return out


def log_loss(probabilities: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(y) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(y))
    if not keep.any():
        return float("nan")
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(loss[keep].mean())


def _fit_affine(z: np.ndarray, y: np.ndarray, *, with_bias: bool, l2: float = 1e-4) -> tuple[float, float]:
    """Damped Newton for p = sigmoid(a*z + b) under soft-label log-loss (a tiny ridge keeps it finite).

    Plain Newton overshoots badly when the logits are far from calibrated (a step can flip the sign
    of ``a``), so every step is halved until the loss goes down.
    """
    n = max(z.size, 1)

    def loss(a: float, b: float) -> float:
        t = a * z + b
        # log(1 + e^t) - y t, computed stably
        return float((np.logaddexp(0.0, t) - y * t).sum()) / n + 0.5 * l2 * ((a - 1.0) ** 2 + b * b)

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(100):
        p = sigmoid(a * z + b)
        r = p - y
        w = np.maximum(p * (1 - p), 1e-12)
        g_a = float(np.dot(r, z)) / n + l2 * (a - 1.0)
        h_aa = float(np.dot(w, z * z)) / n + l2
        if with_bias:
            g_b = float(r.sum()) / n + l2 * b
            h_ab = float(np.dot(w, z)) / n
            h_bb = float(w.sum()) / n + l2
            det = h_aa * h_bb - h_ab * h_ab
            if det <= 1e-18:
                break
            da = (h_bb * g_a - h_ab * g_b) / det
            db = (h_aa * g_b - h_ab * g_a) / det
        else:
            da, db = g_a / h_aa, 0.0
        step = 1.0
        while step > 1e-6:
            a_new, b_new = a - step * da, b - step * db
            new = loss(a_new, b_new)
            if new <= current:
                break
            step *= 0.5
        else:
            break
        converged = current - new < 1e-12
        a, b, current = a_new, b_new, new
        if converged:
            break
    return a, b


def _pav(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: a non-decreasing step map from score to probability.

    Returns knots (x, y) for ``np.interp``: block means of the score and of the label.
    """
    order = np.argsort(z, kind="mergesort")
    zs, ys = z[order], y[order]
    # Merge equal scores first so each knot has a distinct x.
    uniq, start = np.unique(zs, return_index=True)
    counts = np.diff(np.append(start, zs.size)).astype(np.float64)
    sums = np.add.reduceat(ys, start)
    xs_sum = uniq * counts
    blocks_y: list[float] = []
    blocks_w: list[float] = []
    blocks_x: list[float] = []
    for s, w, xsum in zip(sums, counts, xs_sum, strict=True):
        blocks_y.append(s)
        blocks_w.append(w)
        blocks_x.append(xsum)
        while len(blocks_y) > 1 and blocks_y[-2] / blocks_w[-2] >= blocks_y[-1] / blocks_w[-1]:
            s2, w2, x2 = blocks_y.pop(), blocks_w.pop(), blocks_x.pop()
            blocks_y[-1] += s2
            blocks_w[-1] += w2
            blocks_x[-1] += x2
    w = np.array(blocks_w)
    return np.array(blocks_x) / w, np.clip(np.array(blocks_y) / w, 0.0, 1.0)


@dataclass
class Calibrator:
    """One monotone map per backend from a head's logit to a calibrated probability."""

    method: str = "identity"
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    knots_x: list[np.ndarray] = field(default_factory=list)
    knots_y: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def identity(cls, n_backends: int) -> Calibrator:
        return cls("identity", np.ones(n_backends), np.zeros(n_backends))

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a (n, backends) or (backends,) logit array."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            out = np.empty_like(z)
            zz = z.reshape(-1, z.shape[-1])
            oo = out.reshape(-1, z.shape[-1])
            for j in range(zz.shape[1]):
                oo[:, j] = np.interp(zz[:, j], self.knots_x[j], self.knots_y[j])
            return np.clip(out, _EPS, 1 - _EPS)
        return sigmoid(z * self.scale + self.bias)

    def to_tensors(self) -> dict[str, np.ndarray]:
        tensors = {"calibration.scale": self.scale.astype(np.float64), "calibration.bias": self.bias.astype(np.float64)}
        for j, (x, y) in enumerate(zip(self.knots_x, self.knots_y, strict=True)):
            tensors[f"calibration.knots_x.{j}"] = x.astype(np.float64)
            tensors[f"calibration.knots_y.{j}"] = y.astype(np.float64)
        return tensors

    @classmethod
    def from_tensors(cls, method: str, tensors: dict[str, np.ndarray], n_backends: int) -> Calibrator:
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
        scale = np.asarray(tensors.get("calibration.scale", np.ones(n_backends)), dtype=np.float64)
        bias = np.asarray(tensors.get("calibration.bias", np.zeros(n_backends)), dtype=np.float64)
        knots_x, knots_y = [], []
        if method == "isotonic":
            for j in range(n_backends):
                knots_x.append(np.asarray(tensors[f"calibration.knots_x.{j}"], dtype=np.float64))
                knots_y.append(np.asarray(tensors[f"calibration.knots_y.{j}"], dtype=np.float64))
        if scale.shape != (n_backends,) or bias.shape != (n_backends,):
            raise ValueError(f"calibration tensors have shape {scale.shape}, expected ({n_backends},)")
        return cls(method, scale, bias, knots_x, knots_y)


def _fit_one(method: str, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> Calibrator:
    n_backends = logits.shape[1]
    cal = Calibrator.identity(n_backends)
    cal.method = method
    if method == "identity":
        return cal
    for j in range(n_backends):
        keep = mask[:, j] & np.isfinite(labels[:, j])
        z, y = logits[keep, j].astype(np.float64), labels[keep, j].astype(np.float64)
        if method == "isotonic":
            if z.size == 0:
                cal.knots_x.append(np.array([0.0]))
                cal.knots_y.append(np.array([0.5]))
            else:
                x, yk = _pav(z, y)
                cal.knots_x.append(x)
                cal.knots_y.append(yk)
            continue
        if z.size < 2:
            continue
        a, b = _fit_affine(z, y, with_bias=(method == "platt"))
        cal.scale[j], cal.bias[j] = a, b
    return cal


def fit_calibrator(
    method: str,
    logits: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    seed: int = 0,
) -> Calibrator:
    """Fit a per-backend calibrator on held-out logits. ``method`` is one of METHODS or ``"auto"``."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.isfinite(labels) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(labels))
    if method != "auto":
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; valid: auto, {', '.join(METHODS)}")
        return _fit_one(method, logits, labels, mask)
    n = logits.shape[0]
    if n < 20:
        return _fit_one("platt", logits, labels, mask)
    folds = np.random.default_rng(seed).permutation(n) % 2
    best_method, best_loss = "platt", float("inf")
    for candidate in ("temperature", "platt", "isotonic"):
        losses = []
        for k in (0, 1):
            fit_rows, test_rows = folds != k, folds == k
            cal = _fit_one(candidate, logits[fit_rows], labels[fit_rows], mask[fit_rows])
            losses.append(log_loss(cal.transform(logits[test_rows]), labels[test_rows], mask[test_rows]))
        loss = float(np.nanmean(losses))
        if loss < best_loss - 1e-6:
            best_method, best_loss = candidate, loss
    return _fit_one(best_method, logits, labels, mask)


__all__ = ["Calibrator", "METHODS", "ece_bootstrap_ci", "ece_if_calibrated", "expected_calibration_error", "fit_calibrator", "log_loss", "sigmoid"]
