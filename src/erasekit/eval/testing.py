"""Offline stand-ins for the judges the metrics need, for tests, smoke runs and benchmarks (weights are random).

- :class:`PixelClassifier` follows the benchmark world's classifier contract (``predict(images, head)``,
  ``features(images)``) with answers that are a fixed function of the pixels: meaningless as a judge, but
  deterministic, so pipelines of numbers can be checked for exact reproducibility
  (``classifier: erasekit.eval.testing:PixelClassifier`` in an eval config).
- :func:`tiny_clip` saves a tiny CLIP (model, tokenizer, image processor) built from configs: the CLIP score and
  CLIP-feature FID code paths run on it exactly as on ``openai/clip-vit-base-patch32``.
- :func:`lpips_weight_files` saves AlexNet and LPIPS linear weights in the torchvision / lpips file layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class PixelClassifier:
    """Labels an image ``labels[sum of its bytes % len(labels)]`` (``yes``/``no`` for the ``explicit`` head)."""

    def __init__(self, labels: Sequence[str] = ("dog", "cat", "car")) -> None:
        self.labels = list(labels)

    def predict(self, images: Sequence[Image.Image], head: str) -> list[str]:
        sums = [int(np.asarray(image.convert("RGB"), dtype=np.int64).sum()) for image in images]
        if head == "explicit":
            return ["yes" if s % 2 else "no" for s in sums]
        return [self.labels[s % len(self.labels)] for s in sums]

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Mean colour (0-1) of each cell of a 4 x 4 grid: 48 features per image."""
        cells = [im.convert("RGB").resize((4, 4), Image.Resampling.BOX) for im in images]
        return np.stack([np.asarray(c, dtype=np.float64).ravel() / 255 for c in cells])


def tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIP (32-d, one layer, 32 px images, CLIP's real tokenizer) to ``path``; return it."""
    from transformers import CLIPConfig, CLIPModel

    from ..models.tokenizer import clip_tokenizer
    from .metrics.clip import image_processor_class

    path = Path(path)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**layers, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    processor = image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    return path


def lpips_weight_files(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save random AlexNet (torchvision keys) and LPIPS v0.1 linear weights (lpips keys); return both paths."""
    from .metrics.lpips import CHANNELS, LPIPSAlex

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone, linear = folder / "alexnet.pth", folder / "alex.pth"
    torch.save({f"features.{k}": v for k, v in LPIPSAlex().features.state_dict().items()}, backbone)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(CHANNELS)}, linear)
    return backbone, linear
