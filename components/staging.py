"""Folders for files the page hands to a download box, pruned so a long-running Space does not fill its disk.

Gradio copies a returned file into its own cache (which ``delete_cache`` on the Blocks cleans), so the
folder a handler writes into is only needed until the handler returns. Each call makes a fresh folder
under one parent in the system temp directory (two people exporting at once never share a folder) and
removes sibling folders older than ``max_age_s``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

PARENT_NAME = "routelens-downloads"
#: Old enough that gradio has long since copied the file out.
MAX_AGE_S = 3600.0


def staging_folder(prefix: str, *, parent: Path | None = None, max_age_s: float = MAX_AGE_S) -> Path:
    """A new empty folder for one download; folders older than ``max_age_s`` beside it are removed."""
    root = parent or Path(tempfile.gettempdir()) / PARENT_NAME
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - max_age_s
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another process removed it first
            continue
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


__all__ = ["MAX_AGE_S", "PARENT_NAME", "staging_folder"]
