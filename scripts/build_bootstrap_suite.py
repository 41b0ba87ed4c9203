"""Build the bootstrap suite (data/bootstrap/): export the images packages ship, write train/eval JSONL.

Run: ``python scripts/build_bootstrap_suite.py`` (deterministic; rewrites data/bootstrap/images,
train.jsonl and eval.jsonl from data/bootstrap/questions.toml). The split is by image, as the TOML says.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "data" / "bootstrap"
#: Long side of exported photos: enough for every backend's preprocessing, small in the repository.
MAX_SIDE = 640


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return np.where(array, 0, 255).astype(np.uint8)  # skimage's horse: True is the background
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = (255 * (array - low) / max(high - low, 1e-9)).round().astype(np.uint8)
    return array


def load_source(source: str) -> Image.Image:
    """The image a ``package:loader`` source names."""
    package, _, loader = source.partition(":")
    if package == "scikit-image":
        import skimage.data as skdata

        name = loader.removeprefix("data.").split(" ")[0]
        array = skdata.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(skdata, name)()
        image = Image.fromarray(_to_uint8(array))
    elif package == "matplotlib":
        import matplotlib

        image = Image.open(Path(matplotlib.get_data_path()) / loader)
        image.load()
    elif package == "scikit-learn":
        from sklearn.datasets import load_sample_images

        wanted = loader.split(" ")[-1]
        images = load_sample_images()
        index = [os.path.basename(f) for f in images.filenames].index(wanted)
        image = Image.fromarray(images.images[index])
    else:
        raise ValueError(f"unknown source package {package!r}")
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "L" else image


def save_image(image: Image.Image, stem: str, folder: Path) -> str:
    """PNG for grey or small images, JPEG (quality 92) for colour photos; returns the file name."""
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    photo = image.mode == "RGB" and min(image.size) >= 256
    name = f"{stem}.jpg" if photo else f"{stem}.png"
    if photo:
        image.save(folder / name, quality=92, optimize=True)
    else:
        image.save(folder / name, optimize=True)
    return name


def _row(item_id: str, image: str, question: list[Any], split: str, source: str, licence: str) -> dict[str, Any]:
    text, answers, category, *rest = question
    return {
        "id": item_id, "image": f"images/{image}", "question": text, "answer": answers,
        "labels": rest[0] if rest else None, "category": category,
        "split": split, "source": source, "licence": licence,
    }


def photo_rows(spec: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    rows = []
    for entry in spec.get("image", []):
        name = save_image(load_source(entry["source"]), entry["name"], folder)
        for number, question in enumerate(entry["questions"], start=1):
            rows.append(_row(f"{entry['name']}-{number}", name, question, entry["split"], entry["source"], entry["licence"]))
    return rows


def face_rows(spec: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    import skimage.data as skdata

    faces = skdata.lfw_subset()  # 0-99 faces, 100-199 not
    rows = []
    for offset, answer in ((0, "yes"), (100, "no")):
        for position in range(spec["train"] + spec["eval"]):
            index = offset + position
            split = "train" if position < spec["train"] else "eval"
            image = Image.fromarray(_to_uint8(faces[index])).resize((100, 100), Image.Resampling.BICUBIC)
            name = save_image(image, f"lfw-{index:03d}", folder)
            for number, (text, _, category) in enumerate(spec["questions"], start=1):
                question = [text, [answer], category]
                rows.append(_row(f"lfw-{index:03d}-{number}", name, question, split, spec["source"], spec["licence"]))
    return rows


def digit_rows(spec: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = []
    for index in range(spec["train"] + spec["eval"]):
        split = "train" if index < spec["train"] else "eval"
        pixels = (255 - digits.images[index] * 255 / 16).round().astype(np.uint8)  # dark ink on white paper
        image = Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST)
        name = save_image(image, f"digit-{index:03d}", folder)
        for number, (text, _, category) in enumerate(spec["questions"], start=1):
            question = [text, [str(int(digits.target[index]))], category]
            rows.append(_row(f"digit-{index:03d}-{number}", name, question, split, spec["source"], spec["licence"]))
    return rows


def build(suite: Path = SUITE) -> dict[str, int]:
    spec = tomllib.loads((suite / "questions.toml").read_text(encoding="utf-8"))
    folder = suite / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    rows = photo_rows(spec, folder) + face_rows(spec["faces"], folder) + digit_rows(spec["digits"], folder)
    counts = {}
    for split in ("train", "eval"):
        chosen = [r for r in rows if r["split"] == split]
        with open(suite / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as handle:
            for row in chosen:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[split] = len(chosen)
    counts["images"] = len(list(folder.iterdir()))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=SUITE)
    args = parser.parse_args()
    print(json.dumps(build(args.suite)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
