"""Explicit cross-attention probabilities, for MACE's loss (stage 2) and its attention-map masks.

SDPA and xformers never materialise the attention probabilities, so while probing, every cross-attention layer runs
diffusers' classic ``AttnProcessor``, whose ``get_attention_scores`` we wrap to hand the probabilities ``[batch *
heads, pixels, 77]`` to a callback. Only ``attn2`` is touched (the reference replaces the
processors of ``attn1`` too, which is unnecessary).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor

from ...models.adapter import ModelAdapter

Sink = Callable[[int, torch.Tensor], None]
"""Called as ``sink(layer_index, probabilities)`` for every cross-attention call."""


@contextmanager
def cross_attention_probes(model: ModelAdapter, sink: Sink) -> Iterator[None]:
    """Within the block, every ``attn2`` of ``model`` computes its probabilities explicitly and reports them."""
    saved = []
    for index, layer in enumerate(model.layers):
        attn = layer.module
        saved.append(attn.processor)
        attn.set_processor(AttnProcessor())
        original = type(attn).get_attention_scores.__get__(attn)

        def scores(query, key, attention_mask=None, _original=original, _index=index):
            probs = _original(query, key, attention_mask)
            sink(_index, probs)
            return probs

        attn.get_attention_scores = scores
    try:
        yield
    finally:
        for layer, processor in zip(model.layers, saved, strict=True):
            del layer.module.get_attention_scores
            layer.module.set_processor(processor)


def side(pixels: int) -> int:
    """The side of a square feature map with ``pixels`` positions (MACE trains on square images)."""
    return round(pixels**0.5)
