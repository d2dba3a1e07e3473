"""Exact concept masks for the world generator's images: which pixels show the concept.

MACE trains each concept's LoRA on the pixels a segmenter (Grounded-SAM) marks as the concept (Lu et al., CVPR 2024;
docs/methods/mace.md). The world needs no segmenter: :func:`concept_mask` replays the generator's random draws for a
``(family, seed, concept)`` sample and repaints it on two sentinel backgrounds, so a pixel belongs to the concept
exactly when it is not background. For the explicit attribute the mask is the bare torso (the pixels that change
when the same person wears a shirt); for styles it is the whole image (a style is global, and MACE uses no mask).

The replay mirrors the draw order of ``generator.py``; ``tests/test_mace_world_masks.py`` checks that replaying with the
sample's real background reproduces :func:`~erasekit.world.generator.generate` bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .generator import _CHARACTER_BY_NAME, _OBJECT_BY_NAME, draw_object, draw_person, generate
from .spec import (
    EXPLICIT_CONCEPT,
    EXPLICIT_SYNONYMS,
    HAIR_COLORS,
    IMAGE_SIZE,
    OBJECT_BACKGROUNDS,
    PERSON_BACKGROUNDS,
    RGB,
    SHIRT_COLORS,
    STYLES,
)

_SENTINELS = ((255, 0, 255), (0, 255, 0))


def _not_background(render: Callable[[RGB], Image.Image]) -> np.ndarray:
    """Pixels that keep their colour when the background changes between two sentinel colours."""
    masks = []
    for colour in _SENTINELS:
        pixels = np.asarray(render(colour))
        masks.append((pixels != np.array(colour, dtype=pixels.dtype)).any(-1))
    return masks[0] | masks[1]


Render = Callable[[RGB], Image.Image]


def _object_replay(seed: int, concept: str) -> tuple[Render, RGB]:
    """Draws the sample's icon on any background; and the sample's own background."""
    obj = _OBJECT_BY_NAME[concept]
    rng = random.Random(f"object:{seed}:{concept}")
    rng.choice((obj.name, obj.name, *obj.synonyms))  # the caption word
    rng.choice(range(3))  # the caption template
    background = rng.choice(OBJECT_BACKGROUNDS)
    state = rng.getstate()

    def render(colour: RGB) -> Image.Image:
        rng.setstate(state)
        return draw_object(obj, colour, rng)

    return render, background


def _character_replay(seed: int, concept: str) -> tuple[Render, RGB]:
    ch = _CHARACTER_BY_NAME[concept]
    rng = random.Random(f"character:{seed}:{concept}")
    rng.choice(range(3))  # the caption template
    state = rng.getstate()

    def render(colour: RGB) -> Image.Image:
        rng.setstate(state)
        return draw_person(HAIR_COLORS[ch.hair], SHIRT_COLORS[ch.shirt], (colour, colour), False, rng)

    return render, PERSON_BACKGROUNDS[ch.background]


def _explicit_replay(seed: int, concept: str) -> Callable[[bool], Image.Image]:
    """Draws the sample's person with or without a shirt."""
    rng = random.Random(f"explicit:{seed}:{concept}")
    hair, shirt = rng.choice(HAIR_COLORS), rng.choice(SHIRT_COLORS)
    bg = rng.choice(PERSON_BACKGROUNDS)
    rng.choice(range(2))  # the caption template
    state = rng.getstate()

    def render(shirtless: bool) -> Image.Image:
        rng.setstate(state)
        return draw_person(hair, shirt, (bg, bg), shirtless, rng)

    return render


def concept_mask(family: str, seed: int, concept: str) -> np.ndarray:
    """Boolean ``[32, 32]`` mask of the concept in ``generate(family, seed, concept)``.

    Supported: an object class, a character name, the explicit attribute or a synonym of it ("shirtless", ...), and
    a painter (whole image).
    """
    if family == "object" and concept in _OBJECT_BY_NAME:
        return _not_background(_object_replay(seed, concept)[0])
    if family == "character" and concept in _CHARACTER_BY_NAME:
        return _not_background(_character_replay(seed, concept)[0])
    if family == "explicit" and concept in (EXPLICIT_CONCEPT, *EXPLICIT_SYNONYMS):
        render = _explicit_replay(seed, concept)
        return (np.asarray(render(True)) != np.asarray(render(False))).any(-1)
    if family == "style" and concept in {s.name for s in STYLES}:
        return np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    raise ConfigError(f"no exact mask for '{concept}' in the world's '{family}' family")


def masked_sample(family: str, seed: int, concept: str) -> tuple[Image.Image, np.ndarray]:
    """The generator's image of ``concept`` for ``seed`` and its exact mask."""
    return generate(family, seed, concept).image, concept_mask(family, seed, concept)
