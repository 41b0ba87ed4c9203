"""A pool of models that several backends use (for example the MiniLM text encoder), loaded once.

One pool belongs to one running app (or one eval run); it is passed to every backend the registry
builds. It holds weights only, never per-user data, so sharing it between web users is safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SharedModels:
    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: str, factory: Callable[[], T]) -> T:
        """Return the model stored under ``key``, building it with ``factory`` the first time only."""
        if key in self._items:
            return self._items[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._items:
                self._items[key] = factory()
            return self._items[key]

    def __contains__(self, key: str) -> bool:
        return key in self._items
