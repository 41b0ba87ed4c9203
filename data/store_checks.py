"""Input checks of the store: pure functions that run before any transaction, and the limits they apply.

Each raises ValueError with a one-line message naming the field, so a caller can show it as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

MAX_REASON_CHARS = 2000
MAX_TRUE_ANSWER_CHARS = 2000
MAX_ANNOTATOR_CHARS = 100
MAX_QUESTION_CHARS = 10_000
MAX_NAME_CHARS = 128
MAX_KEY_CHARS = 200
MAX_LABELS = 1000
MAX_GUIDELINES_CHARS = 50_000
MAX_FLAG_CHARS = 500
#: Most judgments per item a session may ask for.
MAX_K = 100
#: Values of ``best`` that are not a backend name.
BEST_SPECIAL: tuple[str, ...] = ("tie", "all_wrong")


def check_text(value: Any, name: str, max_chars: int, *, required: bool = True) -> str | None:
    """``value`` if it is a string of at most ``max_chars`` (non-blank when ``required``); None stays None
    unless ``required``."""
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{name} is {len(value)} characters long; the limit is {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text") from None
    return value


def check_required(value: Any, name: str, max_chars: int) -> str:
    """:func:`check_text` for a required value, typed as a plain ``str``."""
    text = check_text(value, name, max_chars)
    assert text is not None  # required=True never returns None
    return text


def check_name(value: Any, what: str) -> str:
    """A backend (or similar) name: a short single-line string."""
    name = check_required(value, what, MAX_NAME_CHARS)
    if name != name.strip() or any(unicodedata.category(c).startswith("C") for c in name):
        raise ValueError(f"{what} {name!r} must not have surrounding spaces or control characters")
    return name


def check_backend(value: Any) -> str:
    name = check_name(value, "backend name")
    if name in BEST_SPECIAL:
        raise ValueError(f"{name!r} is reserved and cannot be a backend name")
    return name


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 required: bool = False) -> float | None:
    """A finite float in [low, high]; numpy scalars and the like are accepted, bools and strings are not."""
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # numpy scalars and the like
            if isinstance(value, (str, bytes, bool)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {type(value).__name__}") from None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name} must be in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value!r}")
    return number


def as_mapping(obj: Any, what: str) -> dict[str, Any]:
    """A dict of ``obj``: a mapping, a dataclass, or anything with a ``to_json()`` returning a mapping."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if callable(getattr(obj, "to_json", None)):
        data = obj.to_json()
        if isinstance(data, Mapping):
            return dict(data)
    raise ValueError(f"{what} must be a dict (or a dataclass), got {type(obj).__name__}")


def check_verdict(value: Any, backend: str) -> float | None:
    """A verdict in [0, 1] (True/False as 1/0); None means the backend was not judged."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return check_number(value, f"verdict for {backend!r}", low=0.0, high=1.0)


def check_k(value: Any) -> int:
    """Judgments wanted per item: a whole number from 1 to :data:`MAX_K`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"judgments per item (k) must be a whole number, got {value!r}")
    if not 1 <= int(value) <= MAX_K:
        raise ValueError(f"judgments per item (k) must be from 1 to {MAX_K}, got {int(value)}")
    return int(value)


def normalize_since(since: Any) -> str | None:
    """A ``since`` filter as the store's UTC ISO timestamp text (naive times are taken as UTC)."""
    if since is None:
        return None
    if isinstance(since, datetime):
        moment = since
    elif isinstance(since, date):
        moment = datetime(since.year, since.month, since.day)
    elif isinstance(since, str):
        try:
            moment = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"since must be an ISO date or time such as 2026-11-01, got {since!r}") from None
    else:
        raise ValueError(f"since must be an ISO date/time string or a datetime, got {type(since).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def loads_json(text: str | None) -> Any:
    """A JSON column's value (NULL stays None)."""
    return None if text is None else json.loads(text)
