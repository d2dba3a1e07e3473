"""Data a method may draw on besides the model, by name: captions, images of a concept and their exact masks.

A method asks a registry for a source by name (MACE's ``prior_source``, ``image_source``, ``mask_source``). The core
registers the shipped MS-COCO captions as ``coco``; plugins add their own (the benchmark world registers ``world`` in
all three, ``world/plugin.py``). An image source and the mask source of the same name describe the same samples: the
masks of seed ``s`` are those of the image drawn with seed ``s``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from importlib import resources
from itertools import islice

import torch

from .concepts import Concept
from .registry import Registry

CaptionSource = Callable[[int, Sequence[str]], list[str]]
"""``source(n, exclude)``: ``n`` captions of the model's training distribution; a source may drop those naming an
``exclude`` text (the concepts being erased), so fewer may come back."""
ImageSource = Callable[[Concept, Sequence[int]], torch.Tensor]
"""``source(concept, seeds)``: one image of ``concept`` per seed, ``[n, 3, H, W]`` in [-1, 1]."""
ExactMaskSource = Callable[[Concept, Sequence[int]], torch.Tensor | None]
"""``source(concept, seeds)``: the concept's pixels (1) in the images of the image source of the same name, ``[n, H,
W]`` float, or ``None`` when the concept covers the whole image (a style)."""

CAPTIONS: Registry[CaptionSource] = Registry("caption source")
IMAGES: Registry[ImageSource] = Registry("image source")
MASKS: Registry[ExactMaskSource] = Registry("mask source")


@CAPTIONS.register("coco")
def coco_captions(n: int, exclude: Sequence[str] = ()) -> list[str]:
    """The first ``n`` captions of the shipped MS-COCO 30k set (CC BY 4.0, see ``data/prompts/NOTICE``).

    Nothing is excluded: MACE's reference prior sums every COCO caption as it is.
    """
    path = resources.files("erasekit") / "data" / "prompts" / "coco_30k.csv"
    with path.open("r", encoding="utf-8", newline="") as handle:
        return [record["prompt"] for record in islice(csv.DictReader(handle), n)]
