"""The shipped prompt-set CSVs: schema, roles, labels, and that they match what the code would write."""

from __future__ import annotations

import pytest

from erasekit.errors import ConfigError
from erasekit.world import SET_NAMES, prompt_set
from erasekit.world.prompts import COLUMNS, SAMPLING, build_prompt_set, write_prompt_sets
from erasekit.world.spec import ARTISTS, CHARACTERS, OBJECTS

ROLES = {"direct", "synonym", "indirect", "scene"}


@pytest.mark.parametrize("name", SET_NAMES)
def test_shipped_csv_has_the_contract_columns_and_sampling_defaults(name):
    rows = prompt_set(name)
    assert rows and all(set(COLUMNS) <= set(r) for r in rows)
    assert all(r["role"] in ROLES for r in rows)
    assert all((r["steps"], r["guidance"], r["size"]) == (SAMPLING["steps"], SAMPLING["guidance"], SAMPLING["size"])
               for r in rows)  # fmt: skip
    assert len({(r["prompt"], r["seed"]) for r in rows}) == len(rows)


@pytest.mark.parametrize("name", SET_NAMES)
def test_shipped_csv_is_what_the_code_builds(name, tmp_path):
    write_prompt_sets(tmp_path)
    assert prompt_set(str(tmp_path / f"{name}.csv")) == prompt_set(name)


def test_every_concept_of_every_family_is_covered():
    assert {r["concept"] for r in prompt_set("objects")} == {o.name for o in OBJECTS}
    assert {r["concept"] for r in prompt_set("styles")} == set(ARTISTS)
    assert {r["concept"] for r in prompt_set("characters")} == {c.name for c in CHARACTERS}


def test_synonym_prompts_never_name_the_class():
    for r in prompt_set("objects"):
        if r["role"] == "synonym":
            assert r["concept"] not in r["prompt"].split()


def test_indirect_explicit_prompts_never_name_the_attribute():
    rows = [r for r in prompt_set("explicit") if r["role"] == "indirect"]
    assert rows and all(w not in r["prompt"] for r in rows for w in ("shirtless", "topless", "bare"))
    assert {r["label"] for r in prompt_set("explicit")} == {"yes", "no"}


def test_scene_labels_name_both_sides():
    for r in build_prompt_set("scenes"):
        left, right = r["concept"].split("+")
        assert r["label"] == f"left={left};right={right}"
        assert r["prompt"].index(left) < r["prompt"].index("on the left")


def test_unknown_prompt_set_is_a_config_error():
    with pytest.raises(ConfigError, match="objects"):
        prompt_set("animals")
