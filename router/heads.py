"""The router's heads: one MLP over the query features with a P(correct) output per backend and a task-category
output, fitted with torch (early-stopped on the calibration fold), plus out-of-fold logits for cross-fitting.

The fitted weights are returned as numpy arrays (:class:`router.embedding_router.HeadWeights`): the app
runs them in numpy, so torch is needed only here, and only when fitting.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from router.calibration import fit_calibrator, log_loss
from router.categories import CATEGORIES
from router.table import group_bucket


class HeadSettings(Protocol):
    """The fitting knobs :func:`fit_heads` reads (``router.training.TrainConfig`` has them all).

    A protocol rather than the config class itself, so the fit loop can import the heads and not the other way round.
    """

    hidden: int
    dropout: float
    lr: float
    weight_decay: float
    category_weight: float
    batch_size: int | None
    max_epochs: int | None
    max_steps: int
    patience: int
    early_stop: str
    split_salt: str
    seed: int
    cross_fit_folds: int
    threads: int | None


@dataclass
class FitResult:
    heads: Any  # router.embedding_router.HeadWeights
    epochs: int
    steps: int
    best_calib_loss: float
    seconds: float


def fit_heads(
    features: np.ndarray,
    correct: np.ndarray,
    categories: np.ndarray,
    train_idx: np.ndarray,
    calib_idx: np.ndarray,
    config: HeadSettings,
) -> FitResult:
    """Train the backend + category heads with torch; early-stop on the calibration fold's loss.

    ``correct`` is (n, b) with NaN for missing cells (masked out of the loss); ``categories`` is (n,)
    with -1 where unknown. Batches are gathered from ``features`` by index, so no copy of the
    training matrix is made. Torch's global RNG is forked, so training leaves it as it was.
    """
    import torch

    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _fit_heads_torch(features, correct, categories, train_idx, calib_idx, config, start)
    finally:
        if config.threads:
            torch.set_num_threads(old_threads)


def _fit_heads_torch(
    features: np.ndarray,
    correct: np.ndarray,
    categories: np.ndarray,
    train_idx: np.ndarray,
    calib_idx: np.ndarray,
    config: HeadSettings,
    start: float,
) -> FitResult:
    import torch
    from torch import nn

    from router.embedding_router import HeadWeights

    x_all = torch.from_numpy(np.ascontiguousarray(features))
    n_backends = correct.shape[1]
    has_cat = int((categories[train_idx] >= 0).sum()) >= 10
    n_cat = len(CATEGORIES) if has_cat else 0
    y_all = torch.from_numpy(np.nan_to_num(correct, nan=0.0).astype(np.float32))
    m_all = torch.from_numpy(np.isfinite(correct).astype(np.float32))
    c_all = torch.from_numpy(categories.astype(np.int64))

    # Standardisation statistics from (a sample of) the training rows.
    sample = train_idx if train_idx.size <= 100_000 else np.random.default_rng(config.seed).choice(train_idx, 100_000, replace=False)
    xs = features[np.sort(sample)].astype(np.float64)
    mean = xs.mean(axis=0).astype(np.float32)
    std = xs.std(axis=0)
    scale = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
    del xs
    mean_t, scale_t = torch.from_numpy(mean), torch.from_numpy(scale)

    d = features.shape[1]
    width = config.hidden if config.hidden > 0 else d
    trunk: nn.Module = (
        nn.Sequential(nn.Linear(d, config.hidden), nn.ReLU(), nn.Dropout(config.dropout)) if config.hidden > 0 else nn.Dropout(config.dropout)
    )
    out = nn.Linear(width, n_backends + n_cat)
    params = list(trunk.parameters()) + list(out.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    ce = nn.CrossEntropyLoss(ignore_index=-1, reduction="sum")

    n_train = int(train_idx.size)
    batch = config.batch_size or int(np.clip(n_train // 16, 32, 2048))
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    max_epochs = config.max_epochs or int(np.clip(math.ceil(config.max_steps / steps_per_epoch), 3, 400))

    def loss_on(idx: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x_all.index_select(0, idx).float() - mean_t) * scale_t
        logits = out(trunk(x))
        mask = m_all.index_select(0, idx)
        backend_loss = (bce(logits[:, :n_backends], y_all.index_select(0, idx)) * mask).sum() / mask.sum().clamp(min=1.0)
        if n_cat:
            cats = c_all.index_select(0, idx)
            known = (cats >= 0).sum().clamp(min=1)
            cat_loss = ce(logits[:, n_backends:], cats) / known
        else:
            cat_loss = torch.zeros(())
        return backend_loss, cat_loss

    calib_sample = calib_idx if calib_idx.size <= 50_000 else np.sort(np.random.default_rng(config.seed + 1).choice(calib_idx, 50_000, replace=False))
    calib_y = correct[calib_sample]

    def calib_loss() -> float:
        """Log-loss on the calibration fold *after* a per-backend Platt fit.

        Selecting the epoch by the raw loss stops as soon as the heads get over-confident, long before
        they have separated the tasks; over-confidence is what the calibrator removes anyway, so the
        epoch is chosen by what the router will actually output.
        """
        trunk.eval()
        out.eval()
        chunks = []
        with torch.no_grad():
            for s in range(0, calib_sample.size, 8192):
                idx = torch.from_numpy(calib_sample[s : s + 8192])
                x = (x_all.index_select(0, idx).float() - mean_t) * scale_t
                chunks.append(out(trunk(x))[:, :n_backends].numpy().astype(np.float64))
        trunk.train()
        out.train()
        logits = np.concatenate(chunks)
        if config.early_stop == "raw":
            return log_loss(1.0 / (1.0 + np.exp(-logits)), calib_y)
        return log_loss(fit_calibrator("platt", logits, calib_y).transform(logits), calib_y)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    rng = np.random.default_rng(config.seed)
    best_loss, best_state, best_epoch, stale, steps, epoch = float("inf"), snapshot(), 0, 0, 0, 0
    for epoch in range(1, max_epochs + 1):
        order = train_idx[rng.permutation(n_train)]
        for s in range(0, n_train, batch):
            idx = torch.from_numpy(order[s : s + batch])
            backend_loss, cat_loss = loss_on(idx, True)
            loss = backend_loss + config.category_weight * cat_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        if not calib_idx.size:  # fixed-length run (cross-fitting): keep the last state
            best_loss, best_epoch = float(backend_loss.detach()), epoch
            continue
        current = calib_loss()
        if current < best_loss - 1e-5:
            best_loss, best_state, best_epoch, stale = current, snapshot(), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if calib_idx.size:
        with torch.no_grad():
            for p, saved in zip(params, best_state, strict=True):
                p.copy_(saved)
    linear_w = out.weight.detach().numpy().T.copy()
    linear_b = out.bias.detach().numpy().copy()
    hidden_w = hidden_b = None
    if config.hidden > 0:
        first = trunk[0]  # type: ignore[index]
        hidden_w = first.weight.detach().numpy().T.copy()
        hidden_b = first.bias.detach().numpy().copy()
    heads = HeadWeights(
        mean=mean,
        scale=scale,
        hidden_w=hidden_w,
        hidden_b=hidden_b,
        backend_w=linear_w[:, :n_backends],
        backend_b=linear_b[:n_backends],
        category_w=linear_w[:, n_backends:] if n_cat else None,
        category_b=linear_b[n_backends:] if n_cat else None,
    )
    return FitResult(heads, best_epoch, steps, best_loss, time.perf_counter() - start)


def out_of_fold_logits(
    features: np.ndarray,
    correct: np.ndarray,
    categories: np.ndarray,
    pool: np.ndarray,
    groups: Sequence[str],
    epochs: int,
    config: HeadSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Backend logits for every ``pool`` row from heads that did not see its image (K folds)."""
    k = int(config.cross_fit_folds)
    fold = np.array([int(group_bucket(groups[i], config.split_salt + ":cross-fit") * k) for i in pool])
    fixed = dataclasses.replace(config, max_epochs=max(int(epochs), 1))
    rows, logits = [], []
    for f in range(k):
        held = pool[fold == f]
        rest = pool[fold != f]
        if held.size == 0 or rest.size == 0:
            continue
        heads = fit_heads(features, correct, categories, rest, np.array([], dtype=np.int64), fixed).heads
        rows.append(held)
        logits.append(heads.forward(features[held])[0])
    return np.concatenate(rows), np.concatenate(logits)


__all__ = ["FitResult", "HeadSettings", "fit_heads", "out_of_fold_logits"]
