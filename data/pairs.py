"""Performance pairs JSONL: read with validation (every bad line reported by number), write atomically.

One line per (query, backend)::

    {"query_id": "q1", "question": "what animal is this?", "image": "images/q1.png",
     "image_sha256": null, "category": "object", "backend": "clip-b32", "answer": "a cat",
     "correct": 1.0, "latency_s": 0.12, "source": "benchmark"}

Required: ``query_id`` (string, or an integer that becomes a string), ``question`` (non-empty string),
``backend`` (non-empty string), ``correct`` (a number in [0, 1]; true/false read as 1.0/0.0).
Optional (null when absent): ``image`` (a path relative to the JSONL file's folder, or absolute),
``image_sha256`` (64 hex digits), ``category``, ``answer`` (strings), ``latency_s`` (a number >= 0),
``source`` ("benchmark" when absent, or "judgment"). Other keys are kept as they are.
``(query_id, backend, source)`` must be unique within a file.

Rows returned by :func:`read_pairs` hold every field of the format (absent ones as None), with
``image`` made absolute. :func:`write_pairs` writes image paths relative to the file's folder when
the image lies under it, else absolute, so a file read and written back keeps every row.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.atomic import atomic_writer

#: The format's fields, in the order they are written.
FIELDS: tuple[str, ...] = (
    "query_id",
    "question",
    "image",
    "image_sha256",
    "category",
    "backend",
    "answer",
    "correct",
    "latency_s",
    "source",
)
REQUIRED: tuple[str, ...] = ("query_id", "question", "backend", "correct")
SOURCES: tuple[str, ...] = ("benchmark", "judgment")
DEFAULT_SOURCE = "benchmark"

MAX_ID_CHARS = 200
MAX_BACKEND_CHARS = 128


class PairsError(ValueError):
    """A pairs file has bad lines; ``errors`` holds every ``(line number, message)``."""

    def __init__(self, path: str | os.PathLike[str], errors: list[tuple[int, str]]) -> None:
        self.path = str(path)
        self.errors = list(errors)
        shown = "; ".join(f"line {n}: {m}" for n, m in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        super().__init__(f"{self.path}: {len(self.errors)} bad line(s): {shown}{more}")


@dataclass
class PairsReadResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: (1-based line number, message) for every bad line; a row is in ``rows`` only if its line is good.
    errors: list[tuple[int, str]] = field(default_factory=list)
    #: The 1-based line number of each row in ``rows``.
    line_numbers: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _text(row: Mapping[str, Any], key: str, *, required: bool, max_chars: int | None = None) -> str | None:
    value = row.get(key)
    if value is None:
        if required:
            raise ValueError(f"'{key}' is required" if key not in row else f"'{key}' must not be null")
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"'{key}' must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise ValueError(f"'{key}' is longer than {max_chars} characters")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"'{key}' must be finite, got {value!r}")
    return number


def validate_pair(row: Any, *, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check one pair and return it normalised (all format fields present, ``image`` absolute).

    ``base_dir`` is the folder relative image paths are resolved against (the JSONL file's folder);
    None means the current directory. Raises ValueError with a one-line message.
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise ValueError(f"missing required field(s): {', '.join(missing)}")
    out: dict[str, Any] = {}

    query_id = row["query_id"]
    if isinstance(query_id, int) and not isinstance(query_id, bool):
        query_id = str(query_id)
    if not isinstance(query_id, str) or not query_id.strip():
        raise ValueError("'query_id' must be a non-empty string")
    if len(query_id) > MAX_ID_CHARS:
        raise ValueError(f"'query_id' is longer than {MAX_ID_CHARS} characters")
    out["query_id"] = query_id
    out["question"] = _text(row, "question", required=True)

    image = row.get("image")
    if image is not None:
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        if not isinstance(image, str) or not image.strip():
            raise ValueError("'image' must be a non-empty path string or null")
        if "\x00" in image:
            raise ValueError("'image' must not contain NUL characters")
        base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
        image = os.path.normpath(os.path.join(os.path.abspath(base), image))
    out["image"] = image

    sha = row.get("image_sha256")
    if sha is not None:
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
            raise ValueError("'image_sha256' must be 64 hex digits or null")
        sha = sha.lower()
    out["image_sha256"] = sha
    out["category"] = _text(row, "category", required=False, max_chars=MAX_ID_CHARS)
    backend = _text(row, "backend", required=True, max_chars=MAX_BACKEND_CHARS)
    out["backend"] = backend
    out["answer"] = _text(row, "answer", required=False)

    correct = row["correct"]
    if correct is None:
        raise ValueError("'correct' must be a number in [0, 1], got null")
    try:
        correct = _number(correct, "correct")
    except ValueError:
        raise ValueError(f"'correct' must be a number in [0, 1], got {row['correct']!r}") from None
    if not 0.0 <= correct <= 1.0:
        raise ValueError(f"'correct' must be in [0, 1], got {row['correct']!r}")
    out["correct"] = correct

    latency = row.get("latency_s")
    if latency is not None:
        latency = _number(latency, "latency_s")
        if latency < 0:
            raise ValueError(f"'latency_s' must be >= 0, got {row['latency_s']!r}")
    out["latency_s"] = latency

    source = row.get("source", DEFAULT_SOURCE)
    if source is None:
        source = DEFAULT_SOURCE
    if source not in SOURCES:
        raise ValueError(f"'source' must be one of {', '.join(SOURCES)}, got {source!r}")
    out["source"] = source

    for key, value in row.items():
        if key not in out:
            if not isinstance(key, str):
                raise ValueError(f"field names must be strings, got {key!r}")
            out[key] = value
    try:
        json.dumps(out, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains text that is not valid Unicode (a lone surrogate)") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"not representable as JSON: {error}") from None
    return out


def pair_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (row["query_id"], row["backend"], row["source"])


def iter_validated(
    lines: Iterable[bytes | str], errors: list[tuple[int, str]], *, base_dir: str | os.PathLike[str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Validated rows with their line numbers, streamed; bad lines go to ``errors`` as (number, message).

    Blank lines are skipped and a leading byte-order mark is ignored. Duplicates are not checked here (a
    streaming reader of millions of rows cannot hold every key); :func:`parse_pairs` checks them.
    """
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                errors.append((number, f"not valid UTF-8 ({error.reason} at byte {error.start})"))
                continue
        else:
            text = raw
        if number == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as error:
            errors.append((number, f"not valid JSON: {error}"))
            continue
        try:
            yield number, validate_pair(obj, base_dir=base_dir)
        except ValueError as error:
            errors.append((number, str(error)))


def iter_pairs_file(path: str | os.PathLike[str], errors: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`iter_validated` over a file (image paths relative to its folder). Raises OSError if unreadable."""
    path = Path(path)
    with open(path, "rb") as handle:
        yield from iter_validated(handle, errors, base_dir=path.absolute().parent)


def format_line_errors(source: str, errors: Sequence[tuple[int, str]], limit: int = 10) -> str:
    """``source: N bad line(s):`` and the first ``limit`` of them, one a line."""
    shown = "\n".join(f"  line {n}: {m}" for n, m in errors[:limit])
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"{source}: {len(errors)} bad line(s):\n{shown}{more}"


def parse_pairs(
    lines: Iterable[bytes | str], *, base_dir: str | os.PathLike[str] | None = None
) -> PairsReadResult:
    """Validate JSONL lines (bytes or str), duplicates included. Never raises for bad content."""
    result = PairsReadResult()
    seen: dict[tuple[str, str, str], int] = {}
    for number, row in iter_validated(lines, result.errors, base_dir=base_dir):
        key = pair_key(row)
        if key in seen:
            result.errors.append(
                (number, f"duplicate of line {seen[key]} (same query_id, backend and source)")
            )
            continue
        seen[key] = number
        result.rows.append(row)
        result.line_numbers.append(number)
    return result


def read_pairs(path: str | os.PathLike[str], *, strict: bool = True) -> PairsReadResult:
    """Read and validate a pairs JSONL file.

    ``strict=True`` (the default): raise :class:`PairsError` listing every bad line if there is any,
    so a caller never trains on half a file. ``strict=False``: return the good rows and the errors.
    Raises OSError (FileNotFoundError, ...) when the file cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        result = parse_pairs(handle, base_dir=path.absolute().parent)
    if strict and result.errors:
        raise PairsError(path, result.errors)
    return result


def _portable_image(image: str | None, folder: Path) -> str | None:
    if image is None:
        return None
    absolute = Path(os.path.normpath(os.path.abspath(image)))
    try:
        return absolute.relative_to(folder).as_posix()
    except ValueError:
        return str(absolute)


def dump_pair(row: Mapping[str, Any], folder: Path) -> str:
    """One validated row as a JSONL line (without the newline), image relative to ``folder`` if under it."""
    ordered: dict[str, Any] = {key: row.get(key) for key in FIELDS}
    ordered["image"] = _portable_image(row.get("image"), folder)
    for key in sorted(k for k in row if k not in ordered):
        ordered[key] = row[key]
    return json.dumps(ordered, ensure_ascii=False, allow_nan=False)


def write_pairs(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> int:
    """Validate and write ``rows`` as pairs JSONL; returns the number written.

    Relative ``image`` paths in ``rows`` are taken relative to the current directory. The file is
    replaced atomically: on a bad row (ValueError naming its index) the old file is left as it was.
    """
    path = Path(path).absolute()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    seen: dict[tuple[str, str, str], int] = {}
    with atomic_writer(path, "w", newline="\n") as handle:
        for index, row in enumerate(rows):
            try:
                clean = validate_pair(row)
            except ValueError as error:
                raise ValueError(f"pair {index}: {error}") from None
            key = pair_key(clean)
            if key in seen:
                raise ValueError(f"pair {index}: duplicate of pair {seen[key]} (same query_id, backend and source)")
            seen[key] = index
            handle.write(dump_pair(clean, folder))
            handle.write("\n")
            count += 1
    return count
