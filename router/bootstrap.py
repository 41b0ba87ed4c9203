"""A first router for any preset: answer the bootstrap sets with the preset's backends, store the pairs, train.

    python -m router bootstrap --preset P [--data SET ...] [--limit N] [--db DB]

Which sets: ``--data`` (any spec :func:`data.datasets.load_eval_items` reads: JSONL, a folder,
``easyvqa:train:N``, ``hf:NAME:SPLIT:N``), else the preset's ``[router] bootstrap = [...]`` (paths relative to
the repository root), else :data:`DEFAULT_SETS`: the bootstrap suite's training part (real photos) and a
slice of easy-VQA train. The suite's evaluation part (:data:`HELD_OUT_SET`) is refused, and an item whose
photo is one of that part's photos is left out, so no router ever trains on it.

Resumable: every answer is stored in the database as it comes (an imported pair, source "benchmark",
with ``dataset``, ``item_id`` and ``error`` fields). An item is keyed by its image key and its question
(:func:`query_id_for`), so a rerun skips the items whose pairs are stored for every backend and asks only
the backends still missing, however the set was named (a relative or an absolute path).

Failures: a backend that fails on an item (it raises, or times out) is recorded as a pair with
``correct`` 0 and the ``error``: it gave the person no answer. A backend that fails to *load* is left
out of the run: a load failure says nothing about the items, and recording it would teach the router
that the backend is always wrong and keep a later run, where it loads, from asking it.

The app runs the same thing in the background (:mod:`router.bootstrap_background`) on the first start of
a preset that has no router and ships no pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.base import RouterError

ROOT = Path(__file__).resolve().parent.parent
#: The default sets, relative to the repository root.
DEFAULT_SETS: tuple[str, ...] = ("data/bootstrap/train.jsonl", "data/benchmarks/easyvqa_train_600.jsonl")
#: The suite's evaluation part: no router trains on it.
HELD_OUT_SET = "data/bootstrap/eval.jsonl"
#: Query ids of bootstrap pairs start with this.
QUERY_PREFIX = "bootstrap:"
MIN_READY_BACKENDS = 2
_SCHEMES = ("easyvqa:", "hf:")


class BootstrapError(RouterError):
    """Nothing to bootstrap from (no items, too few backends, a refused set); the message says why."""


# ============================================================================ which items
@dataclass(frozen=True)
class BootstrapItem:
    dataset: str  # the set's spec as written
    item: Any  # data.datasets.EvalItem


def resolve_spec(spec: str, base: Path | None) -> str:
    """A data spec with a relative path made absolute against ``base`` (None: as given); refuses the held-out set."""
    if spec.startswith(_SCHEMES):
        return spec
    path = Path(spec).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.resolve() == (ROOT / HELD_OUT_SET).resolve():
        raise BootstrapError(f"{spec} is the bootstrap suite's evaluation part, which no router trains on")
    return str(path)


def bootstrap_specs(preset: Any, data: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(label, spec)`` per set: ``data`` as given, else the preset's ``[router] bootstrap``, else the defaults."""
    if data:
        return [(spec, resolve_spec(spec, None)) for spec in data]
    listed = (getattr(preset, "router", None) or {}).get("bootstrap", DEFAULT_SETS)
    if not isinstance(listed, (list, tuple)) or not listed or not all(isinstance(s, str) and s.strip() for s in listed):
        raise BootstrapError(f"{getattr(preset, 'source', 'preset')}: [router] bootstrap must be a non-empty list of data specs")
    return [(spec, resolve_spec(spec, ROOT)) for spec in listed]


def load_items(
    specs: Sequence[tuple[str, str]],
    limit: int | None = None,
    *,
    strict: bool = True,
    warn: Callable[[str], None] | None = None,
) -> list[BootstrapItem]:
    """The items of every set, at most ``limit`` (see :func:`take`).

    A set that cannot be read raises :class:`BootstrapError` when ``strict`` (sets a person named), else
    it is skipped with a warning (a preset's ``hf:`` set where the hub does not answer).
    """
    from data.datasets import DatasetError, load_eval_items

    per_set: list[list[BootstrapItem]] = []
    for label, spec in specs:
        try:
            items = load_eval_items(spec)
        except (DatasetError, OSError) as exc:
            if strict:
                raise BootstrapError(f"cannot read {label}: {exc}") from None
            if warn is not None:
                warn(f"{label} skipped: {exc}")
            continue
        per_set.append([BootstrapItem(label, item) for item in items])
    chosen = take(per_set, limit)
    if not chosen:
        raise BootstrapError("no items to answer in " + ", ".join(label for label, _ in specs))
    return chosen


def take(per_set: Sequence[Sequence[Any]], limit: int | None) -> list[Any]:
    """Every item, or ``limit`` of them spread over the sets: an equal share each (what a small set cannot
    use goes to the others), evenly spaced within a set, so a small limit still covers every set and many
    images. Deterministic, so a rerun with the same limit resumes on the same items."""
    if limit is None:
        return [x for items in per_set for x in items]
    if limit < 1:
        raise BootstrapError(f"--limit must be at least 1, got {limit}")
    quotas = [0] * len(per_set)
    left = limit
    open_sets = [i for i, items in enumerate(per_set) if items]
    while left > 0 and open_sets:
        share = max(1, left // len(open_sets))
        for i in list(open_sets):
            give = min(share, len(per_set[i]) - quotas[i], left)
            quotas[i] += give
            left -= give
            if quotas[i] == len(per_set[i]):
                open_sets.remove(i)
            if left == 0:
                break
    out: list[Any] = []
    for items, quota in zip(per_set, quotas, strict=True):
        step = len(items) / quota if quota else 0
        out.extend(items[int(k * step)] for k in range(quota))
    return out


def held_out_keys(path: Path | None = None) -> frozenset[str]:
    """Image keys of the suite's evaluation part (empty when the file is absent)."""
    from backends.images import ImageError
    from data.datasets import read_eval_jsonl
    from data.images import image_key

    path = path or ROOT / HELD_OUT_SET
    if not path.is_file():
        return frozenset()
    keys: set[str] = set()
    for image in dict.fromkeys(item.image for item in read_eval_jsonl(path)):
        try:
            keys.add(image_key(Path(image)))
        except (ImageError, OSError):
            continue
    return frozenset(keys)


def query_id_for(image_key: str, question: str) -> str:
    """The query id of a bootstrap item: the same photo and question get the same id in every set and run."""
    digest = hashlib.blake2b(f"{image_key}\x00{question}".encode(), digest_size=12).hexdigest()
    return QUERY_PREFIX + digest


# ============================================================================ answering
@dataclass
class BootstrapStats:
    """What a run did; ``seconds_per_item`` is the wall time per answered item."""

    total: int = 0
    done: int = 0
    answered: int = 0
    already_stored: int = 0
    held_out: int = 0
    unreadable: list[str] = field(default_factory=list)
    pairs_stored: int = 0
    failed_pairs: int = 0
    answer_seconds: float = 0.0
    backends: list[str] = field(default_factory=list)
    #: Backends left out of the run because they did not load, with the reason.
    left_out: dict[str, str] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def seconds_per_item(self) -> float | None:
        return self.answer_seconds / self.answered if self.answered else None

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.done} of {self.total} items: {self.answered} answered, {self.already_stored} already stored, "
            f"{self.held_out} left out (photos of {HELD_OUT_SET}), {len(self.unreadable)} unreadable; "
            f"{self.pairs_stored} pairs stored, {self.failed_pairs} of them failed"
        ]
        if self.seconds_per_item is not None:
            means = ", ".join(f"{n} {sum(v) / len(v):.2f} s" for n, v in self.latency.items() if v)
            lines.append(
                f"wall time per answered item: {self.seconds_per_item:.2f} s ({self.answer_seconds:.1f} s over "
                f"{self.answered} items); mean latency per backend: {means}"
            )
        for name, reason in self.left_out.items():
            lines.append(f"left out {name}: {reason}")
        lines.extend(f"unreadable: {u}" for u in self.unreadable[:5])
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total, "done": self.done, "answered": self.answered, "already_stored": self.already_stored,
            "held_out": self.held_out, "unreadable": list(self.unreadable), "pairs_stored": self.pairs_stored,
            "failed_pairs": self.failed_pairs, "answer_seconds": round(self.answer_seconds, 3),
            "seconds_per_item": None if self.seconds_per_item is None else round(self.seconds_per_item, 4),
            "backends": list(self.backends), "left_out": dict(self.left_out), "interrupted": self.interrupted,
        }


def stored_keys(store: Any, backends: Sequence[str]) -> set[tuple[str, str]]:
    """``(query_id, backend)`` of the bootstrap pairs already in the store."""
    return {
        (row["query_id"], row["backend"])
        for row in store.performance_pairs(source="benchmark", backends=list(backends))
        if str(row["query_id"]).startswith(QUERY_PREFIX)
    }


class BootstrapRun:
    """Answer items with every backend that loads and store each pair as it comes.

    ``before_item`` is called before an item is answered (the app waits there while people's questions
    are answered); ``stop`` ends the run between items; ``progress(stats)`` follows every item.
    """

    def __init__(
        self,
        backends: Sequence[Any],
        items: Sequence[BootstrapItem],
        store: Any,
        *,
        held_out: frozenset[str] = frozenset(),
        before_item: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[BootstrapStats], None] | None = None,
    ) -> None:
        self.backends = list(backends)
        self.items = list(items)
        self.store = store
        self.held_out = held_out
        self.before_item = before_item
        self.stop = stop or threading.Event()
        self.progress = progress
        self.stats = BootstrapStats(total=len(self.items))

    def run(self) -> BootstrapStats:
        """Raises :class:`BootstrapError` when fewer than two backends load; KeyboardInterrupt passes through
        (what was stored stays stored)."""
        from backends.run_all import BackendRunner

        ready = []
        for backend in self.backends:
            if backend.load():
                ready.append(backend)
            else:
                self.stats.left_out[backend.name] = backend.describe().error or backend.describe().status
        self.stats.backends = [b.name for b in ready]
        if len(ready) < MIN_READY_BACKENDS:
            raise BootstrapError(
                f"a router needs at least {MIN_READY_BACKENDS} backends that load; {len(ready)} did"
                + "".join(f"; {name}: {reason}" for name, reason in self.stats.left_out.items())
            )
        stored = stored_keys(self.store, self.stats.backends)
        runner = BackendRunner(ready, workers_per_backend=1)  # its own threads: never queued before a person's call
        try:
            for entry in self.items:
                if self.stop.is_set():
                    self.stats.interrupted = True
                    break
                self._one(entry, runner, stored)
                if self.stats.interrupted:
                    break
                self.stats.done += 1
                if self.progress is not None:
                    self.progress(self.stats)
        finally:
            runner.close()
        return self.stats

    def _one(self, entry: BootstrapItem, runner: Any, stored: set[tuple[str, str]]) -> None:
        from backends.evaluate import pair_row
        from backends.images import ImageError, load_image
        from data.images import image_key

        item = entry.item
        try:
            image = load_image(Path(item.image) if isinstance(item.image, str) else item.image)
            key = image_key(image)
        except (ImageError, OSError) as exc:
            self.stats.unreadable.append(f"{entry.dataset} {item.id}: {exc}")
            return
        if key in self.held_out:
            self.stats.held_out += 1
            return
        qid = query_id_for(key, item.question)
        missing = [name for name in self.stats.backends if (qid, name) not in stored]
        if not missing:
            self.stats.already_stored += 1
            return
        if self.before_item is not None:
            self.before_item()
            if self.stop.is_set():  # stopped while it waited: leave the item for the next run
                self.stats.interrupted = True
                return
        # A photo that is no file (a hub dataset's) goes in the store, so the router can embed it later.
        path = item.image if isinstance(item.image, str) else str(self.store.image_path(self.store.put_image(image)))
        start = time.perf_counter()
        for answer in runner.stream(image, item.question, item.labels, only=missing):
            row = pair_row(item, answer, key, path)
            row.update(query_id=qid, dataset=entry.dataset, item_id=item.id)
            self.store.add_pairs([row])
            stored.add((qid, answer.backend))
            self.stats.pairs_stored += 1
            self.stats.failed_pairs += answer.error is not None
            self.stats.latency.setdefault(answer.backend, []).append(answer.latency_s)
        self.stats.answered += 1
        self.stats.answer_seconds += time.perf_counter() - start


def image_features_of(preset: Any, backends: Sequence[Any]) -> tuple[Callable[[Any], Any], str] | None:
    """``embed_image`` of the preset's ``[router] image_features`` backend among ``backends``, if it loads."""
    wanted = (getattr(preset, "router", None) or {}).get("image_features")
    for backend in backends:
        if backend.name == wanted and hasattr(backend, "embed_image") and backend.load():
            return backend.embed_image, backend.name
    return None


def train_first_router(
    store: Any,
    versions_dir: str | Path,
    backends: Sequence[Any],
    *,
    text_encoder: Any | None,
    image_features: tuple[Callable[[Any], Any], str] | None,
    force: bool = False,
) -> Any:
    """Train a version on every pair in the store (the bootstrap's and any judgments); promoted when there is
    no active version, when it beats the active one, or with ``force``. Returns the lifecycle's TrainOutcome."""
    from router.base import choices_from_backends
    from router.lifecycle import train_version

    embedder, name = image_features if image_features is not None else (None, None)
    return train_version(
        out_dir=versions_dir, store=store, backends=choices_from_backends(backends), force=force, strict=False,
        text_encoder=text_encoder, image_embedder=embedder, image_embedder_name=name,
    )


# ============================================================================ command line
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bootstrap`` on ``python -m router``'s subcommands."""
    p = subparsers.add_parser(
        "bootstrap", help="answer the bootstrap sets with a preset's backends, store the pairs, train and activate a router"
    )
    p.add_argument("--preset", required=True, help="offline, cpu, gpu, mixed or a preset .toml file")
    p.add_argument("--data", action="append",
                   help="a set to answer (repeatable): FILE.jsonl, a folder, easyvqa:train:N, hf:NAME:SPLIT:N "
                        "(default: the preset's [router] bootstrap, else " + ", ".join(DEFAULT_SETS) + ")")
    p.add_argument("--limit", type=int, default=None, help="answer at most N items, spread over the sets")
    p.add_argument("--db", help="SQLite store (default: the app's); versions go in routers/ beside it")
    p.add_argument("--encoder", choices=("minilm", "hashing"), default="minilm", help="text encoder of the router")
    p.add_argument("--force", action="store_true", help="make the new version active even if it is not better")
    p.add_argument("--no-quantize", action="store_true", help="load models in full precision instead of 4-bit")
    p.add_argument("--json", action="store_true", help="print the summary and the evaluate report as one JSON object")
    p.set_defaults(func=main)
    return p


def _build_backends(preset: Any, quantize: bool | None) -> list[Any]:
    from backends.registry import build_backends
    from backends.shared import SharedModels

    return build_backends(preset.backends, shared=SharedModels(), quantize=quantize)


def _text_encoder(name: str) -> Any:
    from router.features import HashingTextEncoder, MiniLMTextEncoder

    return HashingTextEncoder() if name == "hashing" else MiniLMTextEncoder()


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(args: argparse.Namespace, *, build: Callable[[Any, bool | None], list[Any]] | None = None) -> int:
    """``python -m router bootstrap``. ``build(preset, quantize)`` makes the backends (tests pass doubles)."""
    from backends.presets import PresetError, load_preset
    from data.store import Store, default_db_path

    try:
        preset = load_preset(args.preset)
    except PresetError as exc:
        raise BootstrapError(str(exc)) from None
    items = load_items(bootstrap_specs(preset, args.data), args.limit, strict=bool(args.data), warn=lambda m: _print(f"warning: {m}"))
    db_path = Path(args.db) if args.db else default_db_path()
    _print(f"bootstrap of preset {preset.name}: {len(items)} items from {', '.join(dict.fromkeys(i.dataset for i in items))}; db {db_path}")
    store = Store.open(db_path)  # before the models load, so a bad --db fails at once
    try:
        started = time.perf_counter()
        backends = (build or _build_backends)(preset, False if args.no_quantize else None)
        for backend in backends:
            backend.load()
            info = backend.describe()
            _print(f"  {backend.name}: {info.status if info.status == 'ready' else f'{info.status}: {info.error}'} ({info.load_time_s} s)")
        load_seconds = time.perf_counter() - started
        run = BootstrapRun(backends, items, store, held_out=held_out_keys(), progress=_progress_printer(len(items)))
        try:
            stats = run.run()
        except KeyboardInterrupt:
            for line in run.stats.summary_lines():
                _print(line)
            _print("interrupted: the pairs so far are stored; run the same command again to resume")
            return 130
        t_train = time.perf_counter()
        try:
            outcome = train_first_router(
                store, db_path.parent / "routers", backends, text_encoder=_text_encoder(args.encoder),
                image_features=image_features_of(preset, backends), force=args.force,
            )
        except RouterError as exc:
            raise BootstrapError(f"{stats.pairs_stored} new pairs stored, but no router was trained: {exc}") from None
        train_seconds = time.perf_counter() - t_train
    finally:
        store.close()
    _report(args, stats, outcome, load_seconds, train_seconds)
    return 0


def _progress_printer(total: int) -> Callable[[BootstrapStats], None]:
    every = max(1, total // 20)

    def progress(stats: BootstrapStats) -> None:
        if stats.done % every == 0 or stats.done == total:
            pace = f", {stats.seconds_per_item:.2f} s per answered item" if stats.seconds_per_item else ""
            _print(f"  {stats.done}/{total} items ({stats.answered} answered, {stats.already_stored} already stored{pace})")

    return progress


def _report(args: argparse.Namespace, stats: BootstrapStats, outcome: Any, load_seconds: float, train_seconds: float) -> None:
    metrics = outcome.card.get("metrics", {})
    if args.json:
        print(json.dumps({
            "bootstrap": stats.to_json(), "load_seconds": round(load_seconds, 3), "train_seconds": round(train_seconds, 3),
            "version": outcome.version, "promoted": outcome.promoted, "reason": outcome.reason, "evaluate": metrics,
        }, default=str))
        return
    for line in stats.summary_lines():
        print(line)
    print(f"loading backends: {load_seconds:.1f} s; training: {train_seconds:.1f} s")
    state = "promoted (now active)" if outcome.promoted else "saved, not promoted"
    print(f"router {outcome.version}: {state}: {outcome.reason}")
    for message in outcome.warnings[:5]:
        print(f"  warning: {message}")
    print("evaluate (held-out images of the new version):")
    for key, value in metrics.items():
        print(f"{key:>24}: {value}")


__all__ = [
    "DEFAULT_SETS",
    "HELD_OUT_SET",
    "BootstrapError",
    "BootstrapItem",
    "BootstrapRun",
    "BootstrapStats",
    "add_parser",
    "bootstrap_specs",
    "held_out_keys",
    "image_features_of",
    "load_items",
    "main",
    "query_id_for",
    "resolve_spec",
    "take",
    "train_first_router",
]
