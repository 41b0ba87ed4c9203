"""One image identity everywhere: the store, the eval runner's pairs, every dataset reader, the checked-in data.

A photo judged in the app and the same photo in a benchmark must share ``image_sha256``, or a split
by image could put it on both sides of train/held-out. The key (``data.images.image_key``) hashes the
pixels after the app's own normalisation (``backends.images.load_image``), so it does not depend on
the file's encoding: the store re-encodes a JPEG as PNG and must still give it the JPEG's key.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import datasets  # a pinned requirement: failing to import it fails the run
import numpy as np
import pytest
from PIL import Image

from backends.evaluate import run_eval
from backends.images import MAX_SIDE, MIN_SIDE, load_image
from backends.presets import parse_preset
from components.runtime import AppConfig, Runtime
from data.datasets import EvalItem, load_eval_items, read_eval_jsonl
from data.images import check_sha256, image_key, normalise, pixel_key
from data.pairs import read_pairs
from data.store import Store
from tests.doubles import EchoBackend

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "data" / "examples"
BENCHMARKS = ROOT / "data" / "benchmarks"
ORIENTATION = 0x0112


def _photo(width: int = 96, height: int = 64) -> Image.Image:
    """A deterministic image with detail, so a lossy codec really changes its pixels."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([(x * 7 + y * 3) % 256, (x * y) % 256, (255 - x * 2) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.fixture()
def store(tmp_path):
    opened = Store.open(tmp_path / "db" / "store.sqlite")
    yield opened
    opened.close()


def _stored_key(store: Store, image: Image.Image) -> str:
    """The key the store gives ``image``, checked against the file it wrote (decoded again)."""
    sha = store.put_image(image)
    path = store.image_path(sha)
    with Image.open(path) as written:
        assert written.format == "PNG"
        assert image_key(written) == sha, "the stored PNG does not decode back to its own key"
    assert image_key(path) == sha
    return sha


# ----------------------------------------------------------------------------- the case: one JPEG everywhere


def test_a_jpeg_gets_one_key_in_the_store_the_pairs_and_every_reader(tmp_path, store) -> None:
    jpeg = _save(_photo(), tmp_path / "photo.jpg", quality=80)
    key = image_key(jpeg)
    assert check_sha256(key) == key
    assert key != hashlib.sha256(jpeg.read_bytes()).hexdigest()  # the file's bytes are not the identity

    # the store: what the app hands it (load_image's output), re-encoded as PNG
    assert _stored_key(store, load_image(jpeg)) == key
    assert store.put_image(Image.open(jpeg)) == key  # a raw decoded JPEG is normalised the same way

    # the dataset reader (eval-set JSONL) and the eval runner's pairs
    eval_file = tmp_path / "set.jsonl"
    eval_file.write_text(json.dumps({"id": "p1", "image": "photo.jpg", "question": "what?", "answer": "circle"}) + "\n")
    items = read_eval_jsonl(eval_file)
    assert items[0].image_sha256 == key
    run_eval([EchoBackend("echo-a"), EchoBackend("echo-b")], items, tmp_path / "out" / "pairs.jsonl")
    rows = read_pairs(tmp_path / "out" / "pairs.jsonl").rows
    assert [r["image_sha256"] for r in rows] == [key, key]

    # a folder dataset and a saved hub dataset (which holds decoded PIL images, not paths)
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    _save(Image.open(jpeg), tmp_path / "folder" / "cat" / "a.png")  # the decoded pixels, stored losslessly
    assert [i.image_sha256 for i in load_eval_items(str(tmp_path / "folder"))] == [key]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat"])})
    hub = datasets.Dataset.from_dict({"image": [str(jpeg)], "label": [0]}, features=features)
    hub.save_to_disk(str(tmp_path / "hub"))
    hub_items = load_eval_items(f"hf:{tmp_path / 'hub'}:train")
    assert isinstance(hub_items[0].image, Image.Image) and hub_items[0].image_sha256 == key
    run_eval([EchoBackend("echo-a")], hub_items, tmp_path / "out" / "hub.jsonl")
    assert [r["image_sha256"] for r in read_pairs(tmp_path / "out" / "hub.jsonl").rows] == [key]


def test_a_photo_asked_in_the_app_has_the_key_of_its_benchmark_pairs(tmp_path) -> None:
    jpeg = _save(_photo(), tmp_path / "photo.jpg", quality=75)
    preset = parse_preset({"name": "doubles", "backends": [{"name": "echo", "family": "open_clip"}]}, "test")
    # Not start_loading(): the page answers while the router still loads (the category rule decides),
    # and loading the router's text model here would only cost time.
    runtime = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=[EchoBackend("echo")])
    try:
        result = runtime.compare_all(str(jpeg), "Is this a cat or a dog?", "")
        assert result.query_id is not None, result.notices
        stored = runtime.store.query(result.query_id)["image_sha256"]
    finally:
        runtime.close()
    item = EvalItem(id="p1", image=str(jpeg), question="Is this a cat or a dog?", answer="cat")
    run_eval([EchoBackend("echo")], [item], tmp_path / "pairs.jsonl")
    assert stored == item.image_sha256 == read_pairs(tmp_path / "pairs.jsonl").rows[0]["image_sha256"]


# ----------------------------------------------------------------------------- encodings and EXIF


@pytest.mark.parametrize(
    "fmt, kwargs", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})], ids=["png", "bmp", "tiff", "webp"]
)
def test_a_lossless_re_encoding_keeps_the_key_of_the_jpeg_it_came_from(tmp_path, store, fmt, kwargs) -> None:
    jpeg = _save(_photo(), tmp_path / "photo.jpg", quality=70)
    with Image.open(jpeg) as decoded:
        copy = _save(decoded, tmp_path / f"copy.{fmt.lower()}", format=fmt, **kwargs)
    assert image_key(copy) == image_key(jpeg) == _stored_key(store, load_image(copy))


def test_a_lossy_re_encoding_is_another_image(tmp_path) -> None:
    """The key is of pixels: the same scene saved at two JPEG qualities is two images (this test fails
    if the key ever stops looking at pixels, for example by hashing only the size and mode)."""
    first = _save(_photo(), tmp_path / "q90.jpg", quality=90)
    second = _save(_photo(), tmp_path / "q30.jpg", quality=30)
    assert image_key(first) != image_key(second)


def test_exif_rotation_is_part_of_the_identity(tmp_path, store) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown rotated 90 degrees clockwise
    rotated = _save(_photo(), tmp_path / "rotated.jpg", quality=85, exif=exif.tobytes())
    plain = _save(_photo(), tmp_path / "plain.jpg", quality=85)
    with Image.open(plain) as decoded:
        upright = decoded.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows for orientation 6
    key = image_key(rotated)
    assert key == image_key(upright) != image_key(plain)
    assert key == _stored_key(store, load_image(rotated)) == _stored_key(store, Image.open(rotated))
    with Image.open(store.image_path(key)) as written:
        assert written.size == (64, 96) and ORIENTATION not in written.getexif()
    eval_file = tmp_path / "set.jsonl"
    eval_file.write_text(json.dumps({"image": "rotated.jpg", "question": "what?", "answer": "x"}) + "\n")
    assert read_eval_jsonl(eval_file)[0].image_sha256 == key


# ----------------------------------------------------------------------------- modes and sizes: one normalisation


def _modes() -> dict[str, tuple[Image.Image, Image.Image]]:
    """Each odd mode and the RGB image load_image makes of it, built by hand."""
    rgba = np.zeros((40, 48, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :24, 3] = 255  # left half opaque red, right half fully transparent
    expected_rgba = np.full((40, 48, 3), 255, dtype=np.uint8)
    expected_rgba[:, :24] = (200, 0, 0)
    gray = (np.arange(40 * 48) % 256).astype(np.uint8).reshape(40, 48)
    palette = Image.fromarray(gray % 4, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 252)
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)[gray % 4]
    return {
        "RGBA": (Image.fromarray(rgba, mode="RGBA"), Image.fromarray(expected_rgba, mode="RGB")),
        "P": (palette, Image.fromarray(colours, mode="RGB")),
        "L": (Image.fromarray(gray, mode="L"), Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")),
    }


@pytest.mark.parametrize("mode", ["RGBA", "P", "L"])
def test_every_mode_is_keyed_after_the_apps_normalisation(tmp_path, store, mode) -> None:
    image, as_rgb = _modes()[mode]
    png = _save(image, tmp_path / f"{mode}.png")
    key = image_key(image)
    assert key == pixel_key(as_rgb)  # transparency on white, palette and gray to RGB, as the app does
    assert key == image_key(png) == image_key(load_image(image)) == image_key(load_image(png))
    assert key == _stored_key(store, image) == _stored_key(store, load_image(png))
    assert store.counts()["images"] == 1


@pytest.mark.parametrize(
    "size", [(2000, 1000), (8, 8), (4000, 10)], ids=["downscaled", "upscaled", "long-and-thin"]
)
def test_size_limits_are_part_of_the_normalisation(tmp_path, store, size) -> None:
    image = Image.fromarray((np.indices(size[::-1]).sum(axis=0) % 251).astype(np.uint8), mode="L")
    png = _save(image, tmp_path / "image.png")
    normal = normalise(png)
    assert min(normal.size) >= MIN_SIDE and max(normal.size) <= MAX_SIDE
    key = image_key(png)
    assert key == pixel_key(normal) == image_key(load_image(png)) == _stored_key(store, load_image(png))
    assert normalise(normal).tobytes() == normal.tobytes()  # normalising twice changes nothing


def test_the_key_is_taken_from_pixels_mode_and_size(store) -> None:
    rgb = Image.new("RGB", (40, 40), (10, 20, 30))
    assert pixel_key(rgb) == hashlib.sha256(b"RGB:40x40:" + rgb.tobytes()).hexdigest()
    assert image_key(rgb) != image_key(Image.new("RGB", (40, 40), (10, 20, 31)))
    assert image_key(rgb) != image_key(Image.new("RGB", (80, 20), (10, 20, 30)))  # same bytes, other shape
    with pytest.raises(ValueError, match="not an image"):
        image_key(b"a text file")
    with pytest.raises(ValueError, match="PIL image"):
        store.put_image("cat.png")  # type: ignore[arg-type]  # the store takes decoded images only


# ----------------------------------------------------------------------------- the checked-in data


def test_the_example_photos_have_the_keys_of_their_benchmark_pairs(store) -> None:
    examples = {item.id: item for item in read_eval_jsonl(EXAMPLES / "examples.jsonl")}
    pairs = {r["query_id"]: r for r in read_pairs(BENCHMARKS / "offline_pairs_photos.jsonl").rows}
    assert set(pairs) <= set(examples)
    for query_id, row in pairs.items():
        item = examples[query_id]
        assert row["image_sha256"] == item.image_sha256 == _stored_key(store, load_image(item.image)), query_id


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("offline_pairs_*.jsonl")), ids=lambda p: p.stem)
def test_benchmark_pairs_carry_the_key_of_their_image(path) -> None:
    """scripts/refresh_image_keys.py keeps these in step; a stale file-bytes hash fails here."""
    rows = read_pairs(path).rows
    keys: dict[str, str] = {}
    for row in rows:
        assert row["image"] is not None and Path(row["image"]).is_file(), row["query_id"]
        if row["image"] not in keys:
            keys[row["image"]] = image_key(Path(row["image"]))
        assert row["image_sha256"] == keys[row["image"]], row["query_id"]


def test_an_image_given_as_bytes_or_a_file_object_has_the_same_key(tmp_path) -> None:
    jpeg = _save(_photo(), tmp_path / "photo.jpg", quality=80)
    data = jpeg.read_bytes()
    assert image_key(data) == image_key(io.BytesIO(data)) == image_key(jpeg) == image_key(str(jpeg))
