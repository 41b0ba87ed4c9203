"""The fit loop: a query table -> features -> heads -> calibration -> a router with its card (nothing saved).

The table and its image split live in :mod:`router.table`, the heads in :mod:`router.heads`; saving a
version, comparing it with the active one and promoting it are :mod:`router.lifecycle`'s job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.base import BackendChoice, RouterError
from router.calibration import Calibrator, expected_calibration_error, fit_calibrator
from router.categories import CATEGORIES
from router.correction import fit_correction
from router.features import (
    FeatureConfig,
    FeatureExtractor,
    ImageEmbedder,
    ImageFeatures,
    MiniLMTextEncoder,
    TextEncoder,
)
from router.heads import FitResult, fit_heads, out_of_fold_logits
from router.table import FOLD_CALIB, FOLD_HELDOUT, FOLD_TRAIN, SPLIT_SALT, PairTable, split_folds


@dataclass
class TrainConfig:
    """Knobs of one training run; saved in the card."""

    kind: str = "embedding"
    hidden: int = 128
    dropout: float = 0.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    category_weight: float = 0.3
    batch_size: int | None = None  # None: from the data size
    max_epochs: int | None = None  # None: from the data size and max_steps
    max_steps: int = 3000
    patience: int = 8
    #: Epoch selection: "calibrated" (log-loss after a Platt fit on the calibration fold) or "raw".
    early_stop: str = "calibrated"
    heldout_fraction: float = 0.2
    calib_fraction: float = 0.15
    calibration: str = "auto"
    split_salt: str = SPLIT_SALT
    seed: int = 0
    min_queries: int = 40
    min_groups: int = 10
    lambda_cost: float = 0.0
    timing_sample: int = 30
    #: Cross-fit the calibrator (K folds) when train + calibration hold at most this many queries.
    cross_fit_folds: int = 5
    cross_fit_max_queries: int = 50_000
    #: Build the router as a correction on the per-category prior that fades for unfamiliar input
    #: (router.correction); off gives the plain heads (kept as a peer and for comparison).
    prior_correction: bool = True
    #: Weight the prior and its calibration so every origin of the data (each pairs file or bootstrap set,
    #: people's judgments) counts the same (PairTable.origin_weights).
    balance_origins: bool = True
    #: Fit how large a predicted edge must be to leave the best single backend (router.margin), on
    #: out-of-fold rows; off: always the highest utility.
    switch_margin: bool = True
    threads: int | None = None  # torch intra-op threads during training; None leaves torch's default

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



# ============================================================================ features
def build_extractor(
    *,
    kind: str,
    text_encoder: TextEncoder | None,
    image_embedder: ImageEmbedder | None,
    image_embedder_name: str | None,
    image_dim: int,
    text_only: bool,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
) -> FeatureExtractor:
    if text_encoder is None:
        if kind == "llm":
            from router.llm_router import LLMTextEncoder

            text_encoder = LLMTextEncoder(llm_model_dir, llm_loader)
        else:
            text_encoder = MiniLMTextEncoder()
    config = FeatureConfig(
        text_encoder=text_encoder.config(),
        text_dim=text_encoder.dim,
        image_embedder=None if text_only else (image_embedder_name or "custom"),
        image_dim=0 if text_only else image_dim,
        text_only=text_only,
    )
    image_features = None if text_only or image_embedder is None else ImageFeatures(image_embedder, name=config.image_embedder or "custom")
    return FeatureExtractor(config, text_encoder, image_features)


def compute_features(table: PairTable, extractor: FeatureExtractor, image_vectors: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n_queries, dim) features; each distinct question is encoded once, each image embedded once."""
    unique_q: dict[str, int] = {}
    q_index = np.empty(table.n_queries, dtype=np.int64)
    for i, q in enumerate(table.questions):
        q_index[i] = unique_q.setdefault(q, len(unique_q))
    texts = list(unique_q)
    text_vecs = np.zeros((len(texts), extractor.config.text_dim), dtype=np.float32)
    for s in range(0, len(texts), 1024):
        text_vecs[s : s + 1024] = extractor.text_encoder.encode(texts[s : s + 1024])
    if extractor.config.text_only:
        return text_vecs[q_index]
    feats = np.zeros((table.n_queries, extractor.config.dim), dtype=np.float32)
    feats[:, : extractor.config.text_dim] = text_vecs[q_index]
    vectors = image_vectors or {}
    for i in range(table.n_queries):
        vec = vectors.get(table.groups[i])
        if vec is not None:
            feats[i, extractor.config.text_dim : extractor.config.text_dim + extractor.config.image_dim] = vec
            feats[i, -1] = 1.0
    return feats


def embed_table_images(table: PairTable, embedder: ImageEmbedder | None, name: str = "custom") -> tuple[dict[str, np.ndarray], list[str]]:
    """Image vectors keyed by split group (= content hash), each image embedded once; plus warnings."""
    if embedder is None:
        return {}, []
    features = ImageFeatures(embedder, name=name, cache_size=0)
    vectors: dict[str, np.ndarray] = {}
    failed: list[str] = []
    seen: set[str] = set()
    for i, path in enumerate(table.images):
        group = table.groups[i]
        if not path or group in seen:
            continue
        seen.add(group)
        try:
            vectors[group] = features.embed(path, key=group)
        except Exception as exc:  # one unreadable image must not stop training
            if len(failed) < 5:
                failed.append(f"{path}: {exc.__class__.__name__}: {exc}")
    warnings = [f"{len(seen) - len(vectors)} image(s) could not be embedded and count as missing, e.g. {failed}"] if failed else []
    return vectors, warnings


# ============================================================================ training a router
@dataclass
class TrainResult:
    router: Any  # EmbeddingRouter | LLMRouter
    card: dict[str, Any]
    table: PairTable
    folds: np.ndarray
    features: np.ndarray
    warnings: list[str]

    @property
    def heldout_index(self) -> np.ndarray:
        return np.flatnonzero(self.folds == FOLD_HELDOUT)


def priors_from(table: PairTable, index: np.ndarray) -> Any:
    from router.baselines import Priors

    y = table.correct[index]
    accuracy = {b: float(np.nanmean(y[:, j])) for j, b in enumerate(table.backends) if np.isfinite(y[:, j]).any()}
    by_cat: dict[str, dict[str, float]] = {}
    cats = np.array([table.categories[i] or "" for i in index], dtype=object)
    for cat in CATEGORIES:
        rows = cats == cat
        if rows.sum() >= 3:
            by_cat[cat] = {b: float(np.nanmean(y[rows, j])) for j, b in enumerate(table.backends) if np.isfinite(y[rows, j]).any()}
    return Priors(accuracy, by_cat)


def check_enough(table: PairTable, config: TrainConfig) -> None:
    """Refuse to train on too little data, saying how much is needed."""
    if len(table.backends) < 2:
        raise RouterError(
            f"need pairs for at least 2 backends to learn a routing; got {len(table.backends)} "
            f"({', '.join(table.backends) or 'none'})"
        )
    usable = int((np.isfinite(table.correct).sum(axis=1) >= 2).sum())
    groups = len(set(table.groups))
    if usable < config.min_queries:
        raise RouterError(
            f"too few judged queries to train: {usable} queries have results for 2 or more backends; "
            f"at least {config.min_queries} are needed (about {config.min_queries * len(table.backends)} pair rows "
            f"with {len(table.backends)} backends)"
        )
    if groups < config.min_groups:
        raise RouterError(
            f"too few distinct images to split by image: {groups}; at least {config.min_groups} are needed"
        )


def new_version_id(kind: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{kind}-{stamp}-{os.urandom(3).hex()}"


def train_router(
    table: PairTable,
    backends: Sequence[BackendChoice],
    *,
    config: TrainConfig | None = None,
    text_encoder: TextEncoder | None = None,
    image_embedder: ImageEmbedder | None = None,
    image_embedder_name: str | None = None,
    features: np.ndarray | None = None,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
    version: str | None = None,
    warnings: Sequence[str] = (),
) -> TrainResult:
    """Train one router version on ``table`` (held-out metrics in its card); nothing is saved here.

    ``features``: precomputed (n_queries, d) vectors (the synthetic benchmark passes random ones);
    the card then says so. ``backends`` gives kinds and costs; only those with data are used.
    """
    from router.embedding_router import EmbeddingRouter
    from router.evaluation import evaluate
    from router.llm_router import LLMRouter

    config = config or TrainConfig()
    warnings = list(warnings)
    if config.kind not in ("embedding", "llm"):
        raise RouterError(f"unknown router kind {config.kind!r}; valid: embedding, llm")
    by_name = {b.name: b for b in backends}
    chosen = [by_name[n] for n in table.backends if n in by_name]
    if len(chosen) < len(table.backends):
        keep = [j for j, n in enumerate(table.backends) if n in by_name]
        table = PairTable(
            [table.backends[j] for j in keep], table.query_ids, table.questions, table.images, table.image_keys,
            table.categories, table.groups, table.correct[:, keep], table.latency[:, keep], table.stats, table.origins,
        )
    check_enough(table, config)
    t0 = time.perf_counter()
    folds, split_method = split_folds(
        table.groups, heldout_fraction=config.heldout_fraction, calib_fraction=config.calib_fraction, salt=config.split_salt
    )
    train_idx = np.flatnonzero(folds == FOLD_TRAIN)
    calib_idx = np.flatnonzero(folds == FOLD_CALIB)
    held_idx = np.flatnonzero(folds == FOLD_HELDOUT)
    if train_idx.size == 0 or held_idx.size == 0:
        raise RouterError("the image split left no training or no held-out queries; add more images")

    # --- features
    n_with_image = sum(1 for p in table.images if p)
    image_vectors: dict[str, np.ndarray] = {}
    if features is None and image_embedder is not None and n_with_image:
        image_vectors, image_warnings = embed_table_images(table, image_embedder, image_embedder_name or "custom")
        warnings.extend(image_warnings)
    text_only = not image_vectors
    if image_embedder is not None and text_only and features is None:
        warnings.append("no image could be embedded (no image paths at hand), so this router uses the question text only")
    image_dim = int(next(iter(image_vectors.values())).size) if image_vectors else 0
    extractor = build_extractor(
        kind=config.kind,
        text_encoder=text_encoder,
        image_embedder=image_embedder,
        image_embedder_name=image_embedder_name,
        image_dim=image_dim,
        text_only=text_only,
        llm_loader=llm_loader,
        llm_model_dir=llm_model_dir,
    )
    feature_source = "computed"
    if features is None:
        features = compute_features(table, extractor, image_vectors)
    else:
        feature_source = "precomputed by the caller (not from the encoder)"
        if features.shape != (table.n_queries, extractor.config.dim):
            raise RouterError(f"precomputed features have shape {features.shape}; expected ({table.n_queries}, {extractor.config.dim})")
    t_features = time.perf_counter() - t0

    # --- heads and calibration
    cat_codes = np.array([CATEGORIES.index(c) if c in CATEGORIES else -1 for c in table.categories], dtype=np.int64)
    correct = table.correct.astype(np.float32)
    fit = fit_heads(features, correct, cat_codes, train_idx, calib_idx, config)
    pool = np.concatenate([train_idx, calib_idx])
    cross_fit = bool(config.cross_fit_folds) and calib_idx.size > 0 and pool.size <= config.cross_fit_max_queries
    if cross_fit:
        # Small data: a calibration fold of a few hundred queries gives a noisy calibrator, so fit it
        # on out-of-fold logits over train + calibration (K image-grouped folds, the epoch count the
        # early-stopped fit chose), and refit the heads on all of train + calibration the same way.
        calib_rows, calib_logits = out_of_fold_logits(features, correct, cat_codes, pool, table.groups, fit.epochs, config)
        fixed = TrainConfig(**{**config.to_json(), "max_epochs": max(fit.epochs, 1)})
        fit = FitResult(
            fit_heads(features, correct, cat_codes, pool, np.array([], dtype=np.int64), fixed).heads,
            fit.epochs, fit.steps, fit.best_calib_loss, fit.seconds,
        )
    else:
        calib_rows = calib_idx if calib_idx.size else train_idx
        calib_logits = fit.heads.forward(features[calib_rows])[0]
    calibrator = fit_calibrator(config.calibration, calib_logits, correct[calib_rows], seed=config.seed)
    ece_before = expected_calibration_error(Calibrator.identity(len(chosen)).transform(calib_logits), correct[calib_rows])

    priors = priors_from(table, np.concatenate([train_idx, calib_idx]))
    best_single = max(priors.accuracy, key=priors.accuracy.get) if priors.accuracy else chosen[0].name
    version = version or new_version_id(config.kind)
    cls = LLMRouter if config.kind == "llm" else EmbeddingRouter
    router = cls(
        chosen,
        extractor=extractor,
        heads=fit.heads,
        calibrator=calibrator,
        version=version,
        lambda_cost=config.lambda_cost,
        fallback_backend=best_single,
    )
    if config.prior_correction:
        router.correction = fit_correction(
            learned_oof=calibrator.transform(calib_logits), rows=calib_rows, features=features, correct=correct,
            questions=table.questions, groups=table.groups, backends=chosen,
            text_dim=extractor.config.text_dim, image_dim=0 if extractor.config.text_only else extractor.config.image_dim,
            seed=config.seed, row_weights=table.origin_weights(calib_rows) if config.balance_origins else None,
        )
    margin_fit: dict[str, Any] = {"rule": "off"}
    if config.switch_margin and best_single in [b.name for b in chosen]:
        from router.margin import fit_switch_margin

        oof = calibrator.transform(calib_logits)
        router.switch_margin, margin_fit = fit_switch_margin(
            oof, correct[calib_rows], router.costs, [b.name for b in chosen].index(best_single),
            lambda_cost=config.lambda_cost,
            row_weights=table.origin_weights(calib_rows) if config.balance_origins else None,
        )
    router.card = {
        "format": 1,
        "version": version,
        "kind": config.kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backends": [b.to_json() for b in chosen],
        "feature_config": extractor.config.to_json(),
        "text_only": extractor.config.text_only,
        "features": feature_source,
        "categories": list(CATEGORIES),
        "category_head": fit.heads.category_w is not None,
        "fallback_backend": best_single,
        "switch_margin": router.switch_margin,
        "switch_margin_fit": margin_fit,
        "lambda_cost": config.lambda_cost,
        "priors": priors.to_json(),
        "data": {
            "pair_rows": int(table.stats.get("pair_rows", int(np.isfinite(table.correct).sum()))),
            "labelled_cells": int(np.isfinite(table.correct).sum()),
            "queries": table.n_queries,
            "distinct_questions": len(set(table.questions)),
            "images": int(n_with_image),
            "groups": len(set(table.groups)),
            "queries_with_category": int((cat_codes >= 0).sum()),
            "train_queries": int(train_idx.size),
            "calibration_queries": int(calib_idx.size),
            "heldout_queries": int(held_idx.size),
            "sources": table.stats.get("sources", {}),
            "ignored_backends": table.stats.get("ignored_backends", {}),
        },
        "split": {
            "by": "image (image_sha256, else the image file's sha256, else query_id)",
            "method": split_method,
            "salt": config.split_salt,
            "heldout_fraction": config.heldout_fraction,
            "calib_fraction": config.calib_fraction,
        },
        "training": {
            **config.to_json(),
            "epochs_run": fit.epochs,
            "steps": fit.steps,
            "best_calibration_loss": round(fit.best_calib_loss, 6),
            "feature_seconds": round(t_features, 3),
            "fit_seconds": round(fit.seconds, 3),
        },
        "calibration": {
            "method": calibrator.method,
            "fitted_on": f"out-of-fold logits, {config.cross_fit_folds} image-grouped folds over train + calibration" if cross_fit else "the calibration fold",
            "calibration_fold_ece_before": round(float(ece_before), 6),
            "calibration_fold_ece_after": round(float(expected_calibration_error(calibrator.transform(calib_logits), correct[calib_rows])), 6),
        },
        "warnings": warnings,
    }
    if router.correction is not None:
        router.card["correction"] = router.correction.to_json()
    report = evaluate(
        router,
        table,
        held_idx,
        features=features[held_idx],
        timing_sample=config.timing_sample if feature_source == "computed" else 0,
    )
    # How many of the queries people judged (the Leaderboard's learning curve is drawn against it).
    report["judged_queries"] = int(sum(1 for origin in table.origins if origin == "judgment"))
    router.card["metrics"] = report
    router.card["training"]["total_seconds"] = round(time.perf_counter() - t0, 3)
    return TrainResult(router, router.card, table, folds, features, warnings)


__all__ = [
    "TrainConfig",
    "TrainResult",
    "build_extractor",
    "check_enough",
    "compute_features",
    "embed_table_images",
    "new_version_id",
    "priors_from",
    "train_router",
]
