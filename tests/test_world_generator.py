"""The world generator: deterministic from a seed, exact labels, the concept counts issue 4 asks for."""

from __future__ import annotations

import numpy as np
import pytest

from erasekit.errors import ConfigError
from erasekit.models.tokenizer import clip_tokenizer
from erasekit.world import ERASABLE_CHARACTERS, RETAINED_CHARACTERS, generate
from erasekit.world.generator import FAMILIES, generate_mixed
from erasekit.world.spec import ARTISTS, CHARACTERS, OBJECTS, SHAPES, STYLES


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_same_image_caption_and_labels(family):
    a, b = generate(family, 123), generate(family, 123)
    assert a.caption == b.caption and a.labels == b.labels
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.image.size == (32, 32) and a.image.mode == "RGB"


def test_different_seeds_give_different_images():
    images = {np.asarray(generate("object", s).image).tobytes() for s in range(20)}
    assert len(images) == 20


def test_world_has_the_concept_counts_of_the_issue():
    assert len(OBJECTS) >= 10 and all(len(o.synonyms) >= 2 for o in OBJECTS)
    assert len(STYLES) >= 20
    assert len(ERASABLE_CHARACTERS) == 100 and len(RETAINED_CHARACTERS) > 0
    assert not set(ERASABLE_CHARACTERS) & set(RETAINED_CHARACTERS)


def test_every_character_has_a_distinct_identity():
    identities = {(c.hair, c.shirt, c.background) for c in CHARACTERS}
    assert len(identities) == len(CHARACTERS) == len({c.name for c in CHARACTERS})


def test_invented_names_split_into_several_bpe_tokens():
    tok = clip_tokenizer()
    for name in (*ARTISTS, *(c.name for c in CHARACTERS)):
        assert len(tok(name).input_ids) - 2 >= 4, name


def test_fixed_concept_is_drawn_and_labelled():
    assert generate("object", 1, concept="car").labels == {"object": "car"}
    assert generate("style", 1, concept=ARTISTS[3]).labels == {"style": ARTISTS[3]}
    assert generate("character", 1, concept=CHARACTERS[7].name).labels == {"character": CHARACTERS[7].name}
    assert generate("explicit", 1, concept="shirtless").labels == {"explicit": "yes"}
    assert generate("explicit", 1, concept="a person in an office").labels == {"explicit": "no"}
    scene = generate("scene", 1, concept=f"car+{CHARACTERS[0].name}")
    assert scene.labels == {"scene_left": "car", "scene_right": CHARACTERS[0].name}


def test_caption_names_the_labelled_concept():
    for seed in range(50):
        s = generate("object", seed)
        obj = next(o for o in OBJECTS if o.name == s.labels["object"])
        assert any(w in s.caption.split() for w in (obj.name, *obj.synonyms))
        s = generate("style", seed)
        assert s.labels["style"] in s.caption or s.labels["style"] == "none"
        assert any(shape in s.caption for shape in SHAPES)


def test_shirtless_is_drawn_as_a_bare_torso():
    bare = np.asarray(generate("explicit", 0, concept="shirtless").image)[28, 4:28]
    assert (np.abs(bare.astype(int) - (240, 190, 150)).sum(axis=1) < 30).mean() > 0.5


def test_training_mix_covers_every_family():
    assert {generate_mixed(s).family for s in range(200)} == set(FAMILIES)


def test_unknown_family_or_concept_is_a_config_error():
    with pytest.raises(ConfigError, match="family"):
        generate("animals", 0)
    with pytest.raises(ConfigError, match="dragon"):
        generate("object", 0, concept="dragon")
    with pytest.raises(ConfigError, match="left"):
        generate("scene", 0, concept="car")
