"""CLIP score (image-prompt agreement) and CLIP image embeddings, from a transformers ``CLIPModel``.

CLIP score = 100 x cosine(image embedding, prompt embedding), i.e. ``logits_per_image`` of the pretrained CLIP whose
logit scale is 100, as MACE and GLoCE compute it (``openai/clip-vit-base-patch32``; docs/evaluation.md); it is not
clipped at 0 (torchmetrics' CLIPScore is). Reported per role: CLIP_e on erased-concept rows, CLIP_s on retained
rows, and MACE's art score H_a = CLIP_s - CLIP_e (Table 3). Prompts longer than CLIP's 77 tokens are truncated.

No weights can be downloaded here: ``model`` is a local folder (``save_pretrained`` layout) or a hub id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from .accuracy import h_a
from .base import Metric, Variant, batches, load_weights, register

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def image_processor_class() -> type:
    """CLIP's PIL/numpy image processor: transformers >= 5 names it ``CLIPImageProcessorPil`` (the default one there
    needs torchvision), older versions ``CLIPImageProcessor``."""
    try:
        from transformers.models.clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


class CLIPEncoder:
    """A CLIP model with its tokenizer and image preprocessing; embeddings as float64 numpy arrays."""

    def __init__(self, spec: str, option: str = "metric_options.clip_score.model") -> None:
        from transformers import AutoTokenizer, CLIPModel

        def load() -> tuple[Any, Any, Any]:
            model = CLIPModel.from_pretrained(spec).eval()
            return model, AutoTokenizer.from_pretrained(spec), image_processor_class().from_pretrained(spec)

        self.spec = spec
        self.model, self.tokenizer, self.processor = load_weights(load, "CLIP", spec, option)

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled).double().numpy()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        pooled = self.model.text_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).pooler_output
        return self.model.text_projection(pooled).double().numpy()


@cache
def clip_encoder(spec: str, option: str) -> CLIPEncoder:
    """One loaded CLIP per spec and process (CLIP score and CLIP-feature FID share it)."""
    return CLIPEncoder(spec, option)


def clip_scores(encoder: CLIPEncoder, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
    """100 x cosine similarity of each image with its prompt."""
    a, b = encoder.images(images), encoder.texts(prompts)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return 100.0 * np.sum(a * b, axis=1)


@dataclass
class CLIPScoreOptions:
    model: str = DEFAULT_CLIP
    batch_size: int = 32


@register
class CLIPScore(Metric):
    """Mean CLIP score per role, and H_a = CLIP_s - CLIP_e."""

    name = "clip_score"
    options_class = CLIPScoreOptions

    def prepare(self) -> None:
        clip_encoder(self.options.model, f"metric_options.{self.name}.model")

    def compute(self, variant: Variant) -> dict[str, Any]:
        encoder = clip_encoder(self.options.model, f"metric_options.{self.name}.model")
        scores = np.zeros(len(variant.rows))
        for chunk in batches(range(len(variant.rows)), self.options.batch_size):
            prompts = [variant.rows[i].prompt for i in chunk]
            scores[chunk] = clip_scores(encoder, variant.images(chunk), prompts)
        by_role = variant.mean_by_role(scores)
        result: dict[str, Any] = {"mean": float(scores.mean()) if len(scores) else None, "by_role": by_role}
        if "erase" in by_role and "retain" in by_role:
            result["H_a"] = h_a(by_role["erase"], by_role["retain"])
        result["per_row"] = [{"clip_score": float(s)} for s in scores]
        return result
