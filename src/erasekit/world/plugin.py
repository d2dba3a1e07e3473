"""The benchmark world as a plugin: what it adds to the library's registries (entry point ``erasekit.plugins``).

The core never imports the world: the registries load this module when they meet a name they do not know, and it
registers the model ``erasekit:world``, the world's settings presets for the methods, its data sources
(``erasekit.sources``: images, exact masks, training captions), its prompt sets and its classifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..concepts import Concept, normalize
from ..errors import ModelLayoutError
from ..eval.metrics.base import CLASSIFIERS
from ..eval.prompts import PROMPT_SETS, PromptRow, rows_from_records
from ..methods.base import register_preset
from ..models.loading import MODELS
from ..sources import CAPTIONS, IMAGES, MASKS
from .spec import SET_NAMES


@MODELS.register("world")
def world_model(variant: str | None) -> Path:
    """``erasekit:world``: the shipped trained pipeline."""
    if variant is not None:
        raise ModelLayoutError(f"erasekit:world-{variant}: the benchmark world has no variants; use erasekit:world")
    from . import pipeline_path

    return pipeline_path()


# CPU-sized settings for the world (32 px, 8x8 latents, a 3 M-parameter UNet), each measured in the method's page.
# MACE (docs/methods/mace.md): its per-kind presets with a faster LoRA, world-sized sampling and the world's own
# captions as prior.
register_preset(
    "mace",
    "world",
    dict(learning_rate=1e-3, steps=50, images_per_concept=8, sampling_steps=20, guidance=5.0, prior_captions=1000,
         prior_source="world"),
)  # fmt: skip
# ESD and DuMo (docs/methods/esd.md, dumo.md): minutes on one CPU thread; DuMo needs eta 4 on the world.
register_preset("esd", "world", {"steps": 150, "lr": 2e-4, "sampling_steps": 20})
register_preset(
    "dumo",
    "world",
    {"steps": 200, "lr": 1e-4, "zero_conv_lr": 1e-3, "tlmo_lr": 1e-2, "sampling_steps": 20, "negative_guidance": 4.0},
)

# Data sources (erasekit.sources) for methods that learn from a concept's images (MACE's image_source, mask_source
# and prior_source: world): the generator's label-true images, their exact masks, and the world's training captions
# (its analogue of MS-COCO: captions of the model's own training distribution).
_FAMILY = {"object": "object", "celebrity": "character", "style": "style", "explicit": "explicit"}
"""The generator family that depicts each concept kind."""


@IMAGES.register("world")
def world_images(concept: Concept, seeds: Sequence[int]) -> torch.Tensor:
    """The generator's images of ``concept``, one per seed, ``[n, 3, 32, 32]`` in [-1, 1]."""
    from .generator import generate

    arrays = [np.asarray(generate(_FAMILY[concept.kind], seed, concept.text).image) for seed in seeds]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


@MASKS.register("world")
def world_masks(concept: Concept, seeds: Sequence[int]) -> torch.Tensor | None:
    """The exact masks of :func:`world_images` (``world/masks.py``); ``None`` for a style, which is everywhere."""
    from .masks import concept_mask

    if concept.kind == "style":
        return None
    masks = [concept_mask(_FAMILY[concept.kind], seed, concept.text) for seed in seeds]
    return torch.from_numpy(np.stack(masks)).float()


@CAPTIONS.register("world")
def world_captions(n: int, exclude: Sequence[str] = ()) -> list[str]:
    """The training captions of seeds ``0..n-1``, minus those naming an ``exclude`` text (an erased concept)."""
    from .generator import generate_mixed

    banned = [normalize(text) for text in exclude]
    captions = (generate_mixed(seed).caption for seed in range(n))
    return [c for c in captions if not any(b in normalize(c) for b in banned)]


# Evaluation and attacks (docs/evaluation.md): the world's prompt sets as `world:<name>`, its classifiers as
# `classifier: world` / `judge: world`. Both load on first use: this module must not import the image generator.


def world_prompt_set(name: str) -> list[PromptRow]:
    """``world:<name>``: the rows of the world's prompt set ``name``."""
    from .prompts import prompt_set

    return rows_from_records(prompt_set(name), f"world:{name}")


@CLASSIFIERS.register("world")
def world_classifiers() -> object:
    """The shipped ground-truth classifiers (``predict(images, head)``, ``features(images)``)."""
    from .classifiers import load_classifiers

    return load_classifiers()


for _set in SET_NAMES:
    PROMPT_SETS.add(f"world:{_set}", partial(world_prompt_set, _set))
