"""all-MiniLM-L6-v2's sentence embedding as a few plain torch calls, on the loaded model's own weights.

``SentenceTransformer.encode`` spends as long in Python as in arithmetic on one short question: it puts
the model in eval mode (a walk over every module), sorts and batches, and every BERT layer goes through
transformers' wrappers (output capturing, attention dispatch). The router embeds one question per
decision, so that overhead is its latency. :class:`MiniLMForward` does the same computation (embeddings,
six post-LayerNorm encoder layers with GELU, mean pooling over the attention mask, L2 normalisation,
truncation at the model's ``max_seq_length``) with one fused query/key/value projection per layer, and
matches ``encode`` to float rounding (a test holds it to 1e-5 on the packaged model).

:func:`MiniLMForward.from_sentence_transformer` returns None for any model whose layout it does not know
(another architecture, pooling or position embedding), and callers then keep ``encode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Texts per forward pass; texts are sorted by length first so a batch pads little.
BATCH_SIZE = 128


class MiniLMForward:
    """A BERT-style sentence encoder (mean pooled, normalised) over borrowed weight tensors."""

    def __init__(self, tokenizer: Any, weights: dict[str, torch.Tensor], *, layers: int, heads: int, eps: float,
                 max_length: int, onnx: bool = False) -> None:
        self.tokenizer = tokenizer
        self.w = weights
        self.layers = layers
        self.heads = heads
        self.eps = eps
        self.max_length = max_length
        self.qkv_weight = [torch.cat([weights[f"encoder.layer.{i}.attention.self.{p}.weight"] for p in ("query", "key", "value")])
                           for i in range(layers)]
        self.qkv_bias = [torch.cat([weights[f"encoder.layer.{i}.attention.self.{p}.bias"] for p in ("query", "key", "value")])
                         for i in range(layers)]
        #: The same forward in ONNX Runtime on the CPU (backends.onnx_cpu), or None: torch runs it.
        self.onnx = self._compile() if onnx and self.device.type == "cpu" else None

    @property
    def device(self) -> torch.device:
        return self.w["embeddings.word_embeddings.weight"].device

    @property
    def runtime_name(self) -> str:
        return "ONNX Runtime" if self.onnx is not None else "torch"

    def _compile(self) -> Any:
        from backends.onnx_cpu import compile_module

        encoder = self

        class Graph(torch.nn.Module):
            """The forward as a module, with the borrowed weights as its state (fingerprinted by onnx_cpu)."""

            def __init__(self) -> None:
                super().__init__()
                self.weights = torch.nn.ParameterDict(
                    {k.replace(".", "__"): torch.nn.Parameter(v, requires_grad=False) for k, v in encoder.w.items()})

            def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return encoder._forward(ids, mask)

        example = self.tokenizer(["How many coins are on the table?", "What is it?"], padding=True, return_tensors="pt")
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}}
        return compile_module(Graph().eval(), (example["input_ids"], example["attention_mask"]), name="minilm",
                              input_names=["input_ids", "attention_mask"], output_names=["embedding"], dynamic_axes=axes,
                              extra_fingerprint=f"{self.layers}|{self.heads}|{self.eps}")

    @classmethod
    def from_sentence_transformer(cls, model: Any, *, onnx: bool = True) -> MiniLMForward | None:
        """The fast path for ``model`` (a SentenceTransformer), or None if its layout is not the one handled here."""
        try:
            modules = list(model)
            names = [type(m).__name__ for m in modules]
            if names[:2] != ["Transformer", "Pooling"] or any(n not in ("Normalize",) for n in names[2:]):
                return None
            pooling = modules[1].get_config_dict()
            if pooling.get("pooling_mode", "mean") != "mean" and not pooling.get("pooling_mode_mean_tokens"):
                return None
            bert = modules[0].auto_model
            config = bert.config
            if (getattr(config, "model_type", "") != "bert" or getattr(config, "hidden_act", "") != "gelu"
                    or getattr(config, "position_embedding_type", "absolute") != "absolute"):
                return None
            weights = {k: v.detach() for k, v in bert.state_dict().items()}
            if "embeddings.word_embeddings.weight" not in weights:
                return None
            return cls(model.tokenizer, weights, layers=int(config.num_hidden_layers), heads=int(config.num_attention_heads),
                       eps=float(config.layer_norm_eps), max_length=int(model.max_seq_length), onnx=onnx)
        except Exception:  # an unknown model: the caller keeps SentenceTransformer.encode
            return None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 L2-normalised sentence embeddings, in the order of ``texts``."""
        texts = [str(t) for t in texts]
        dim = int(self.w["embeddings.word_embeddings.weight"].shape[1])
        out = np.zeros((len(texts), dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            if self.onnx is not None:
                out[rows] = self.onnx(batch["input_ids"].numpy().astype(np.int64), batch["attention_mask"].numpy().astype(np.int64))[0]
                continue
            with torch.inference_mode():
                out[rows] = self._forward(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w, eps = self.w, self.eps
        ids, mask = ids.to(self.device), mask.to(self.device)
        batch, length = ids.shape
        types = w["embeddings.token_type_embeddings.weight"][0]
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length] + types
        width = int(w["embeddings.word_embeddings.weight"].shape[1])
        x = F.layer_norm(x, (width,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        blocked = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        head_dim = width // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            qkv = F.linear(x, self.qkv_weight[i], self.qkv_bias[i]).view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=blocked)
            attended = attended.transpose(1, 2).reshape(batch, length, width)
            x = F.layer_norm(F.linear(attended, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"]) + x,
                             (width,), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
            hidden = F.gelu(F.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            x = F.layer_norm(F.linear(hidden, w[p + "output.dense.weight"], w[p + "output.dense.bias"]) + x,
                             (width,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        keep = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


__all__ = ["BATCH_SIZE", "MiniLMForward"]
