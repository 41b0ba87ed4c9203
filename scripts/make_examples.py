"""Write the example photos the packages ship (scikit-image, matplotlib, scikit-learn) to data/examples.

Run once by a developer; the output is checked in so the app and the tests need no generation step.

    python scripts/make_examples.py [--out DIR]     # default: data/examples
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_sample_images

OUT = Path(__file__).resolve().parent.parent / "data" / "examples"

ITEMS = [
    ("chelsea", lambda: skdata.chelsea(), "What animal is this?", "cat", ["cat", "dog", "rocket", "coffee"], "object"),
    ("coffee", lambda: skdata.coffee(), "What is in the cup?", "coffee", None, "object"),
    ("rocket", lambda: skdata.rocket(), "Is this a rocket or an airplane?", "rocket", None, "object"),
    ("astronaut", lambda: skdata.astronaut(), "What is this person's job?", "astronaut", None, "knowledge"),
    ("motorcycle", lambda: skdata.stereo_motorcycle()[0], "How many wheels does this vehicle have?", "2", None, "counting"),
    ("grace_hopper", lambda: np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
     "Is this person wearing a uniform?", "yes", None, "attribute"),
    ("china", lambda: load_sample_images().images[0], "What kind of place is this?", ["temple", "pagoda", "palace"], None, "scene"),
    ("flower", lambda: load_sample_images().images[1], "What color is the flower?", "pink", ["red", "pink", "yellow", "white", "blue"], "attribute"),
    ("horse", lambda: (255 - skdata.horse().astype(np.uint8) * 255), "What animal is shown in this silhouette?", "horse", None, "object"),
    ("coins", lambda: skdata.coins(), "How many coins are there?", "24", None, "counting"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, make, question, answer, labels, category in ITEMS:
        image = Image.fromarray(make()).convert("RGB")
        image.thumbnail((448, 448))
        path = out / f"{name}.jpg"
        image.save(path, quality=88)
        rows.append({"id": name, "image": path.name, "question": question, "answer": answer, "labels": labels, "category": category})
    (out / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
