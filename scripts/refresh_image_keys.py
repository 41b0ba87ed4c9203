"""One-off: rewrite ``image_sha256`` in the checked-in benchmark pairs as :func:`data.images.image_key`.

Pairs used to carry the sha256 of the image file's bytes; the store keys a photo by its decoded
pixels, so one JPEG had two keys. This sets each row's ``image_sha256`` to the key of its ``image``
(null when the row has no image file at hand) and changes nothing else; files are replaced atomically.

    python scripts/refresh_image_keys.py [PAIRS.jsonl ...]   # default: data/benchmarks/offline_pairs_*.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def refresh(path: Path) -> tuple[int, int]:
    """Rewrite one pairs file; returns (rows, rows whose key changed)."""
    from backends.images import ImageError
    from data.images import image_key
    from data.pairs import read_pairs, write_pairs

    rows = read_pairs(path).rows
    keys: dict[str, str | None] = {}
    changed = 0
    for row in rows:
        image = row["image"]
        if image is not None and image not in keys:
            try:
                keys[image] = image_key(Path(image))
            except ImageError:  # missing or unreadable: no image at hand
                keys[image] = None
        key = keys.get(image) if image is not None else None
        changed += key != row["image_sha256"]
        row["image_sha256"] = key
    write_pairs(rows, path)
    return len(rows), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    files = args.files or sorted((ROOT / "data" / "benchmarks").glob("offline_pairs_*.jsonl"))
    for path in files:
        rows, changed = refresh(path)
        print(f"{path}: {rows} rows, {changed} image_sha256 values changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
