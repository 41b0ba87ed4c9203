"""A router's life: train a version, save and register it, promote it only when it beats the active one, roll
back, and load the router the app should serve (building a first one when there is none).

This is orchestration over single-job modules: :mod:`router.table` (pairs -> table), :mod:`router.training`
(the fit loop), :mod:`router.versions` (router files and the version registry), :mod:`router.evaluation`.
``load_active_router`` and ``ensure_router`` never fail: if the active version cannot be loaded they try
earlier versions (newest first) and finally the category rule, and return a notice the app shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.base import BackendChoice, Router, RouterError
from router.baselines import CategoryRuleRouter
from router.evaluation import evaluate
from router.features import ImageEmbedder, TextEncoder
from router.table import PairTable, build_table
from router.training import TrainConfig, TrainResult, train_router
from router.versions import VersionEntry, VersionRegistry, load_router, save_router, utc_now

log = logging.getLogger("routelens")

# ============================================================================ retrain progress
#: A progress callback, ``progress(fraction, desc=...)`` (Gradio's ``gr.Progress`` fits).
Progress = Callable[..., Any]


#: A retrain's steps in order, each with the fraction of the bar reached when it starts.
#: Sized on the offline preset's first retrain (about 650 images, 180 questions, 100 s on 2 CPU cores): features
#: three quarters of the time, training a tenth, evaluation a few seconds, the promotion decision a tenth.
RETRAIN_STEPS: tuple[tuple[str, float], ...] = (
    ("reading", 0.02), ("features", 0.05), ("training", 0.7), ("evaluation", 0.8), ("promotion", 0.85), ("done", 0.97),
)
#: An encoded question counts as this much of an embedded image on the features bar (MiniLM is that much faster).
QUESTION_WEIGHT = 0.25


class RetrainProgress:
    """Reports a retrain's real steps: reading the data, features (per image embedded and per question
    encoded), training, held-out evaluation, the promotion decision. Never goes backwards, and a failing
    callback only costs the bar (it is logged), never the training."""

    TOTAL = 5

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.fraction = 0.0
        self.step = ""
        self._images = [0, 0]  # done, total
        self._questions = [0, 0]
        self._scored = [0, 0]  # held-out images the active router has embedded for the promotion decision
        self._failed = False
        self._sent = -1.0

    @staticmethod
    def start_of(step: str) -> float:
        return dict(RETRAIN_STEPS)[step]

    def report(self, step: str, desc: str, fraction: float | None = None) -> None:
        same_step = step == self.step
        self.step = step
        self.fraction = max(self.fraction, self.start_of(step) if fraction is None else fraction)
        if self.progress is None or self._failed:
            return
        if same_step and self.fraction - self._sent < 0.005:
            return  # within a step, one update per half percent is enough for the bar
        self._sent = self.fraction
        try:
            self.progress(round(self.fraction, 4), desc=desc)
        except Exception as exc:  # a broken bar must not stop the training
            self._failed = True
            log.warning("retrain progress could not be reported: %s", exc)

    # ---------------------------------------------------------------- the features step, per unit of work
    def expect_features(self, images: int, questions: int) -> None:
        self._images, self._questions = [0, images], [0, questions]
        if images + questions:
            what = (f"{images:,} images to embed and {questions:,} questions to encode" if images
                    else f"{questions:,} questions to encode")
            self.report("features", f"Step 2 of {self.TOTAL} · features: {what}")
        else:  # nothing this bar can count (the encoder is built inside the fit): features and training as one step
            self.report("training", f"Steps 2-3 of {self.TOTAL} · computing features and training the router")

    def expect_promotion(self, active: str | None, images: int) -> None:
        self._scored = [0, images]
        self.report("promotion", f"Step 5 of {self.TOTAL} · promotion decision: " + (
            f"comparing with the active router {active} on the same held-out rows" if active else "no active router yet"))

    def image_embedded(self) -> None:
        if self.step == "promotion":
            self._scored[0] = min(self._scored[1], self._scored[0] + 1)
            span, share = self.start_of("done") - self.start_of("promotion"), self._scored[0] / max(1, self._scored[1])
            self.report("promotion", f"Step 5 of {self.TOTAL} · promotion decision: the active router scores held-out image "
                                     f"{self._scored[0]:,} of {self._scored[1]:,}", self.start_of("promotion") + span * share)
            return
        if self._after_features():
            return
        self._images[0] = min(self._images[1], self._images[0] + 1)
        self._advance(f"Step 2 of {self.TOTAL} · features: image {self._images[0]:,} of {self._images[1]:,} embedded")

    def questions_encoded(self, n: int) -> None:
        if self._after_features():
            return
        self._images[0] = self._images[1]  # images are embedded first: done (or failed) once questions are encoded
        self._questions[0] = min(self._questions[1], self._questions[0] + n)
        self._advance(f"Step 2 of {self.TOTAL} · features: {self._questions[0]:,} of {self._questions[1]:,} questions encoded")

    def _after_features(self) -> bool:
        """After the features, the encoders are used again only by the held-out evaluation's timed decisions."""
        if self.step == "training":
            self.report("evaluation", f"Step 4 of {self.TOTAL} · evaluating on the held-out queries (accuracy, calibration, timing)")
        return self.step != "features"

    def _advance(self, desc: str) -> None:
        done = self._images[0] + QUESTION_WEIGHT * self._questions[0]
        total = self._images[1] + QUESTION_WEIGHT * self._questions[1]
        span = self.start_of("training") - self.start_of("features")
        self.report("features", desc, self.start_of("features") + span * (done / total if total else 1.0))
        if done >= total:
            self.report("training", f"Step 3 of {self.TOTAL} · training the router's heads and calibrating them")


class _CountingTextEncoder:
    """A text encoder that tells :class:`RetrainProgress` how many questions it encoded (all else delegated)."""

    def __init__(self, inner: TextEncoder, steps: RetrainProgress) -> None:
        self._inner = inner
        self._steps = steps

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._inner.encode(texts)
        self._steps.questions_encoded(len(texts))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _counting_embedder(inner: ImageEmbedder, steps: RetrainProgress) -> ImageEmbedder:
    def embed(image: Any) -> np.ndarray:
        try:
            return inner(image)
        finally:  # an image that fails still counts as done (training goes on without it)
            steps.image_embedded()

    return embed


# ============================================================================ training a version
_VLM_HINTS = ("clip", "siglip", "efficientnet", "vit", "resnet", "convnext", "dino")


def infer_backends(table: PairTable) -> tuple[list[BackendChoice], str]:
    """Backend choices guessed from the data when no list is given, and a warning saying so.

    Kind: ``vlm`` when the name looks like a vision encoder, else ``vlm+llm``; cost: the mean latency.
    """
    out = []
    for j, name in enumerate(table.backends):
        kind = "vlm" if any(h in name.lower() for h in _VLM_HINTS) else "vlm+llm"
        lat = table.latency[:, j]
        cost = float(np.nanmean(lat)) if np.isfinite(lat).any() else 0.0
        out.append(BackendChoice(name, kind, round(cost, 6)))
    guessed = ", ".join(f"{b.name}={b.kind} (cost {b.cost:g}s)" for b in out)
    return out, f"no backend list given: kinds guessed from names and costs from mean latency: {guessed}"


@dataclass
class TrainOutcome:
    version: str
    path: Path
    promoted: bool
    reason: str
    card: dict[str, Any]
    warnings: list[str]
    #: The active version's metrics on the same held-out rows (None when there was no active version).
    active_metrics: dict[str, Any] | None = None
    #: Paired-bootstrap differences (see :func:`register_and_promote`); empty without an active version.
    comparison: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        metrics = self.card.get("metrics", {})
        return {
            "version": self.version,
            "path": str(self.path),
            "promoted": self.promoted,
            "reason": self.reason,
            "text_only": self.card.get("text_only"),
            "data": self.card.get("data"),
            "metrics": {k: metrics.get(k) for k in (
                "routed_accuracy", "best_single_accuracy", "oracle_accuracy", "random_accuracy",
                "category_rule_accuracy", "selection_accuracy", "ece", "mean_cost", "decision_ms_p50",
            )},
            "promotion": self.comparison or {},
            "warnings": self.warnings,
        }


def train_version(
    *,
    out_dir: str | Path,
    pairs: Sequence[str | Path] = (),
    store: Any | None = None,
    backends: Sequence[BackendChoice] | None = None,
    config: TrainConfig | None = None,
    force: bool = False,
    strict: bool = True,
    text_encoder: TextEncoder | None = None,
    image_embedder: ImageEmbedder | None = None,
    image_embedder_name: str | None = None,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> TrainOutcome:
    """Pairs files and/or a Store -> a trained, saved version, promoted if it beats the active one.

    ``out_dir`` is the versions folder (``<out_dir>/<version>/`` plus ``versions.json``); with a
    ``store`` the version is also recorded in its ``router_versions`` table. ``progress(fraction, desc=...)``
    is told each step as it starts (:class:`RetrainProgress`).
    """
    if not pairs and store is None:
        raise RouterError("nothing to train on: give a pairs file, a store, or both")
    config = config or TrainConfig()
    steps = RetrainProgress(progress)
    steps.report("reading", f"Step 1 of {steps.TOTAL} · reading people's judgments and the benchmark pairs")
    table, warnings = build_table(pairs=pairs, store=store, backends=None if backends is None else [b.name for b in backends], strict=strict)
    if backends is None:
        backends, guess = infer_backends(table)
        warnings.append(guess)
    counting_encoder, counting_embedder = text_encoder, image_embedder
    if steps.progress is not None:
        embeds = image_embedder is not None and any(table.images)
        steps.expect_features(len({g for g, p in zip(table.groups, table.images, strict=True) if p}) if embeds else 0,
                              len(set(table.questions)) if text_encoder is not None else 0)
        if text_encoder is not None:
            counting_encoder = _CountingTextEncoder(text_encoder, steps)  # type: ignore[assignment]
        if image_embedder is not None:
            counting_embedder = _counting_embedder(image_embedder, steps)
    result = train_router(
        table,
        backends,
        config=config,
        text_encoder=counting_encoder,
        image_embedder=counting_embedder,
        image_embedder_name=image_embedder_name,
        llm_loader=llm_loader,
        llm_model_dir=llm_model_dir,
        warnings=warnings,
    )
    _unwrap(result, text_encoder, image_embedder)
    registry = VersionRegistry(out_dir, store)
    active_before = registry.active_version()
    held = result.table
    steps.expect_promotion(active_before, len({held.groups[i] for i in result.heldout_index if held.images[i]}))
    load_kwargs = {"text_encoder": result.router.extractor.text_encoder,
                   "image_embedder": counting_embedder if active_before and steps.progress is not None else image_embedder,
                   "llm_loader": llm_loader, "llm_model_dir": llm_model_dir}
    promotion = register_and_promote(registry, result, out_dir, force=force, load_kwargs=load_kwargs)
    steps.report("done", f"Promoted {promotion.version}: loading it" if promotion.promoted
                 else f"Not promoted: {active_before} stays active")
    return TrainOutcome(
        promotion.version, promotion.path, promotion.promoted, promotion.reason, result.card, result.warnings,
        promotion.active_metrics, promotion.comparison,
    )


def _unwrap(result: TrainResult, text_encoder: Any, image_embedder: Any) -> None:
    """Give the trained router back the caller's own encoders (the counting ones were for the progress bar)."""
    extractor = getattr(result.router, "extractor", None)
    if extractor is None:
        return
    if isinstance(getattr(extractor, "text_encoder", None), _CountingTextEncoder):
        extractor.text_encoder = text_encoder
    features = getattr(extractor, "image_features", None)
    if features is not None and image_embedder is not None:
        features.embedder = image_embedder


# ============================================================================ promotion
@dataclass
class PromotionResult:
    version: str
    path: Path
    promoted: bool
    reason: str
    candidate_metrics: dict[str, Any]
    active_metrics: dict[str, Any] | None
    #: Paired-bootstrap differences against the active version, the best single backend, the category rule.
    comparison: dict[str, Any] | None = None


#: Promote when the 95% lower bound of (candidate - active) routed accuracy is above this.
PROMOTION_MARGIN = -0.01
BOOTSTRAP_RESAMPLES = 2000


def routed_correctness(router: Router, table: PairTable, rows: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    """Per-row correctness (0..1) of the backend ``router`` picks on ``rows`` (each row judged for it)."""
    rows = np.asarray(rows, dtype=np.int64)
    questions = [table.questions[i] for i in rows]
    if features is not None and hasattr(router, "score_features"):
        probs, cats = router.score_features(features, questions)
    else:
        probs, cats = router.score_batch(
            [table.images[i] for i in rows], questions, image_keys=[table.image_keys[i] for i in rows]
        )
    picks = np.asarray(router.choose_batch(probs, categories=cats), dtype=np.int64)
    cols = np.array([table.backends.index(n) for n in router.backend_names])
    return table.correct[rows, cols[picks]].astype(np.float64)


def paired_bootstrap(diff: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diff`` over query resamples (paired: one draw, both routers)."""
    diff = np.asarray(diff, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def compare_on_rows(candidate: np.ndarray, other: np.ndarray, seed: int = 0) -> dict[str, float]:
    diff = candidate - other
    low, high = paired_bootstrap(diff, seed=seed)
    return {"difference": round(float(diff.mean()), 6), "ci95": [round(low, 6), round(high, 6)], "n_queries": int(diff.size)}


def register_and_promote(
    registry: VersionRegistry,
    result: TrainResult,
    out_dir: str | Path,
    *,
    force: bool = False,
    load_kwargs: Mapping[str, Any] | None = None,
) -> PromotionResult:
    """Save a trained router as a version and make it active only if it is not worse than the active one.

    Judged on the held-out queries both can be scored on (the image split is stable, so the active
    version did not train on them either when it used the same split salt) by a paired bootstrap of the
    difference in routed accuracy: promoted when the 95% lower bound is above ``PROMOTION_MARGIN`` and the
    difference is not negative, unless both pick the same backend on every row (nothing to gain). It fails
    closed: any error while evaluating the active version keeps the active one. ``force`` promotes
    regardless. The comparison (and the candidate against the best single backend and the category rule on
    the same rows) goes into the card under ``promotion``.
    """
    router = result.router
    path = save_router(router, Path(out_dir) / router.version)
    candidate = result.card["metrics"]
    active_version = registry.active_version()
    active_metrics: dict[str, Any] | None = None
    comparison: dict[str, Any] = {}
    if active_version is None:
        promoted, reason = True, "no active router yet"
    else:
        try:
            active = load_router(registry.path_of(active_version), **dict(load_kwargs or {}))
            rows = _common_rows(result.table, result.heldout_index, router.backend_names + active.backend_names)
            if rows.size == 0:
                raise RouterError("no held-out query has results for the backends of both routers")
            position = {q: i for i, q in enumerate(result.heldout_index)}
            feats = result.features[result.heldout_index][[position[q] for q in rows]]
            active_metrics = evaluate(active, result.table, rows, lambda_cost=router.lambda_cost, timing_sample=0)
            new = routed_correctness(router, result.table, rows, feats)
            old = routed_correctness(active, result.table, rows)
            comparison["vs_active"] = compare_on_rows(new, old)
            comparison.update(_against_baselines(router, result, rows, new))
            low = comparison["vs_active"]["ci95"][0]
            same = bool(np.array_equal(new, old))
            promoted = (not same) and low > PROMOTION_MARGIN and comparison["vs_active"]["difference"] >= 0
            diff = comparison["vs_active"]
            reason = (
                f"routed accuracy on the same {diff['n_queries']} held-out queries: candidate {new.mean():.4f} vs active "
                f"{active_version} {old.mean():.4f}, difference {diff['difference']:+.4f} "
                f"(95% paired bootstrap [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]; promoted when the lower bound "
                f"is above {PROMOTION_MARGIN:+.2f} and the difference is not negative)"
                + ("; both routers pick the same backend on every query" if same else "")
            )
        except Exception as exc:  # fail closed: an active router that cannot be judged stays active
            promoted, reason = False, f"kept the active router {active_version}: it could not be evaluated ({exc})"
        if force and not promoted:
            promoted, reason = True, "forced; " + reason
    card = _with_promotion(result.card, promoted, reason)
    if comparison:
        card["promotion"] = {**card.get("promotion", {}), **comparison}
    registry.record(path, card, active=promoted, reason=reason)
    return PromotionResult(router.version, path, promoted, reason, candidate, active_metrics, comparison)


def _against_baselines(router: Router, result: TrainResult, rows: np.ndarray, new: np.ndarray) -> dict[str, Any]:
    """The candidate against the best single backend and the category rule on the same rows."""
    from router.baselines import Priors

    priors = Priors.from_json(result.card.get("priors"))
    out: dict[str, Any] = {}
    if priors.accuracy:
        best = max(priors.accuracy, key=priors.accuracy.__getitem__)
        if best in result.table.backends:
            single = result.table.correct[rows, result.table.backends.index(best)].astype(np.float64)
            out["vs_best_single"] = {"backend": best, **compare_on_rows(new, single)}
    rule = CategoryRuleRouter(router.backends, priors=priors)
    out["vs_category_rule"] = compare_on_rows(new, routed_correctness(rule, result.table, rows))
    return out


def _common_rows(table: PairTable, index: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Rows of ``index`` with a result for every backend in ``names`` that the table has."""
    cols = [table.backends.index(n) for n in dict.fromkeys(names) if n in table.backends]
    ok = np.isfinite(table.correct[np.asarray(index)][:, cols]).all(axis=1)
    return np.asarray(index)[ok]


def _with_promotion(card: Mapping[str, Any], promoted: bool, reason: str) -> dict[str, Any]:
    out = dict(card)
    out["promotion"] = {"promoted": promoted, "reason": reason, "at": utc_now()}
    return out


def rollback(registry: VersionRegistry, version: str) -> str:
    """Make an earlier (or any) version active again; returns a one-line message."""
    previous = registry.active_version()
    registry.set_active(version, reason=f"rollback from {previous}")
    return f"router version {version} is active (was {previous})"


def load_active_router(
    root: str | Path | None = None,
    store: Any | None = None,
    *,
    backends: Sequence[BackendChoice],
    text_encoder: Any | None = None,
    image_embedder: Callable[[Any], np.ndarray] | None = None,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
    lambda_cost: float | None = None,
) -> tuple[Router, str | None]:
    """The router the app should serve, and a notice to show (None when all is as expected).

    Order: the active version; if it cannot be loaded, earlier versions newest first; if none loads
    (or there are none), the category rule over ``backends``. Never raises for missing or corrupt
    files; ``backends`` is required so the last resort always exists.
    """
    notices: list[str] = []
    kwargs = {
        "backends": backends, "text_encoder": text_encoder, "image_embedder": image_embedder,
        "llm_loader": llm_loader, "llm_model_dir": llm_model_dir, "lambda_cost": lambda_cost,
    }
    entries: list[VersionEntry] = []
    active: str | None = None
    if root is not None or store is not None:
        try:
            registry = VersionRegistry(root, store)
            entries = registry.versions()
            active = registry.active_version()
        except Exception as exc:  # a broken index must not stop the app
            notices.append(f"router versions could not be read ({exc.__class__.__name__}: {exc})")
    order = [e for e in entries if e.version == active] + [e for e in reversed(entries) if e.version != active]
    for entry in order:
        try:
            router = load_router(entry.path, **kwargs)
        except Exception as exc:  # try the next version
            notices.append(f"router version {entry.version} could not be loaded: {exc}")
            continue
        if entry.version != active:
            notices.append(f"using the previous router version {entry.version} instead")
        notices.extend(_compat_notices(router, backends, image_embedder))
        return router, "; ".join(notices) or None
    names = ", ".join(b.name for b in backends)
    if not entries and not notices:
        notices.append("no trained router yet")
    notices.append(f"routing by the category rule (recognition -> vlm, else vlm+llm) over {names}")
    return CategoryRuleRouter(backends, version="category-rule"), "; ".join(notices)


def ensure_router(
    root: str | Path,
    store: Any | None = None,
    *,
    backends: Sequence[BackendChoice],
    pairs: Sequence[str | Path] = (),
    text_encoder: Any | None = None,
    image_embedder: Callable[[Any], np.ndarray] | None = None,
    image_embedder_name: str | None = None,
    lambda_cost: float | None = None,
) -> tuple[Router, str | None]:
    """``load_active_router``, but first builds a default router when there is no version at all.

    The app calls this at start with the preset's shipped pairs file (and its store): the first run
    trains a router from them (seconds to a minute on this CPU, see docs/router.md), every later run
    just loads it. Any failure only adds to the notice; the category rule is the last resort.
    """
    notices: list[str] = []
    try:
        has_versions = bool(VersionRegistry(root, store).versions())
    except Exception:  # load_active_router reports unreadable versions itself
        has_versions = True
    if not has_versions and (pairs or store is not None):
        try:
            outcome = train_version(
                out_dir=root, pairs=[p for p in pairs if Path(p).is_file()], store=store, backends=backends,
                text_encoder=text_encoder, image_embedder=image_embedder, image_embedder_name=image_embedder_name,
                strict=False,
            )
            notices.append(f"built the first router {outcome.version} from {outcome.card['data']['pair_rows']} pair rows")
        except Exception as exc:  # the app must start anyway
            notices.append(f"could not build a first router: {exc}")
    router, notice = load_active_router(
        root, store, backends=backends, text_encoder=text_encoder, image_embedder=image_embedder, lambda_cost=lambda_cost
    )
    if notice:
        notices.append(notice)
    return router, "; ".join(notices) or None


def _compat_notices(router: Router, backends: Sequence[BackendChoice], image_embedder: Any) -> list[str]:
    out = []
    unknown = [b.name for b in backends if b.name not in router.backend_names]
    if unknown:
        out.append(f"router {router.version} was not trained on {', '.join(unknown)}, so it never picks them; retrain to include them")
    card = getattr(router, "card", {}) or {}
    if card and not card.get("text_only", True) and image_embedder is None:
        out.append(f"router {router.version} was trained with image features but none were given; it routes on the question only")
    return out


__all__ = [
    "QUESTION_WEIGHT",
    "RETRAIN_STEPS",
    "Progress",
    "PromotionResult",
    "RetrainProgress",
    "TrainOutcome",
    "ensure_router",
    "infer_backends",
    "load_active_router",
    "register_and_promote",
    "rollback",
    "train_version",
]
