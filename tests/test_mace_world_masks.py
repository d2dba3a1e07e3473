"""World exact masks: the replay reproduces the generator's image bit for bit, and the mask is the concept's pixels;
the world plugs them, the generator's images and its captions into the data sources MACE draws on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasekit.concepts import Concept
from erasekit.errors import ConfigError
from erasekit.sources import CAPTIONS, IMAGES, MASKS
from erasekit.world import generate
from erasekit.world import masks as world_masks
from erasekit.world.masks import concept_mask, masked_sample
from erasekit.world.spec import CHARACTERS, OBJECTS, STYLES

CASES = [("object", o.name) for o in OBJECTS] + [("character", CHARACTERS[7].name), ("explicit", "shirtless")]


@pytest.mark.parametrize("family, concept", CASES)
def test_replaying_the_generator_reproduces_its_image_bit_for_bit(family: str, concept: str) -> None:
    for seed in (0, 11):
        image = np.asarray(generate(family, seed, concept).image)
        if family == "explicit":
            replayed = world_masks._explicit_replay(seed, concept)(True)
        else:
            replay = world_masks._object_replay if family == "object" else world_masks._character_replay
            render, background = replay(seed, concept)
            replayed = render(background)
        assert np.array_equal(np.asarray(replayed), image)


def test_pixels_outside_an_object_or_character_mask_are_its_background():
    for family, concept in CASES[:-1]:
        image = np.asarray(generate(family, 4, concept).image)
        outside = image[~concept_mask(family, 4, concept)]
        assert len(outside) and (outside == outside[0]).all()


def test_masks_cover_the_subject_not_the_whole_image():
    for family, concept in CASES:
        fraction = concept_mask(family, 3, concept).mean()
        assert 0.05 < fraction < 0.7, (family, concept, fraction)
    assert concept_mask("style", 0, STYLES[0].name).all()


def test_explicit_mask_is_the_bare_torso():
    image, mask = masked_sample("explicit", 5, "shirtless")
    pixels = np.asarray(image)[mask]
    skin = np.array([240, 190, 150])
    assert (np.abs(pixels.astype(int) - skin).sum(-1) < 10).mean() > 0.7
    assert mask[24:].any() and not mask[:12].any()  # the torso is low in the frame, the head is not in the mask


def test_unknown_concept_has_no_exact_mask():
    with pytest.raises(ConfigError, match="no exact mask"):
        concept_mask("object", 0, "dragon")


def test_the_world_registers_its_images_masks_and_captions_as_sources():
    character = Concept(CHARACTERS[7].name, kind="celebrity")
    images = IMAGES.get("world")(character, [3, 4])
    expected = np.stack([np.asarray(generate("character", seed, character.text).image) for seed in (3, 4)])
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert np.array_equal(((images + 1) * 127.5).round().permute(0, 2, 3, 1).numpy(), expected)
    masks = MASKS.get("world")(character, [3, 4])
    assert torch.equal(
        masks, torch.from_numpy(np.stack([concept_mask("character", s, character.text) for s in (3, 4)]))
    )
    assert MASKS.get("world")(Concept(STYLES[0].name, kind="style"), [0]) is None  # a style is the whole image
    erased = CHARACTERS[0].name
    captions = CAPTIONS.get("world")(400, ())
    kept = CAPTIONS.get("world")(400, (erased.upper(),))
    assert any(erased.lower() in c.lower() for c in captions)
    assert kept == [c for c in captions if erased.lower() not in c.lower()]
