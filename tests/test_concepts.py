"""Concepts and run configs are validated up front, with messages that name the problem."""

from __future__ import annotations

import pytest

from erasekit import Concept, ConceptSet, RunConfig
from erasekit.errors import ConfigError
from erasekit.methods import UCE, get_method


def test_concepts_parse_from_strings_and_mappings():
    concepts = ConceptSet.build(["dog", {"text": "Van  Gogh", "kind": "style", "synonyms": ["Vincent"]}], ["cat"])
    assert [c.text for c in concepts] == ["dog", "Van Gogh"]
    assert concepts.concepts[1] == Concept("Van Gogh", "style", ("Vincent",))
    assert concepts.preserve_texts() == ["cat"]


@pytest.mark.parametrize(
    "concepts, preserve, message",
    [
        ([], [], "no concepts"),
        (["dog", "Dog "], [], "listed twice"),
        (["dog"], ["DOG"], "also in the preserve set"),
        ([{"text": "dog", "preserve": ["dog"]}], [], "its own preserve set"),
        ([{"text": "   "}], [], "non-empty"),
        ([{"text": "dog", "kind": "animal"}], [], "kind"),
        ([{"text": "dog", "knd": "object"}], [], "did you mean 'kind'"),
        ([{"text": "dog", "synonyms": "puppy"}], [], "expected a list"),
        ([{"text": "dog", "guide": " Dog"}], [], "its guide is the concept itself"),
        ([{"text": "dog", "synonyms": ["puppy"], "guide": "puppy"}], [], "its guide is the concept itself"),
    ],
)
def test_bad_concepts_raise_config_errors_that_say_why(concepts, preserve, message):
    with pytest.raises(ConfigError, match=message):
        ConceptSet.build(concepts, preserve)


def test_run_config_reports_the_yaml_line_of_a_syntax_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: erasekit:tiny\nconcepts: [dog\nmethod: uce\n")
    with pytest.raises(ConfigError, match="line"):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"model: erasekit:tiny\nmethod: uce\nconcepts: [dog]\nparams: {lamb: 1}\nparams: {lamb: 2}\n",
         "line 5.*duplicate key 'params'"),
        (b"model: erasekit:tiny\nmethod: uce\nconcepts: [{text: dog, kind: object, kind: style}]\n",
         "duplicate key 'kind'"),
        (b"model: erasekit:tiny\nmethod: uce\nconcepts: [caf\xe9]\n", "not UTF-8 text"),
    ],
)  # fmt: skip
def test_run_config_refuses_duplicate_keys_and_non_utf8_text(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_yaml(path)


def test_run_config_names_a_missing_field(tmp_path):
    path = tmp_path / "missing.yaml"
    path.write_text("model: erasekit:tiny\nconcepts: [dog]\n")
    with pytest.raises(ConfigError, match="missing required field 'method'"):
        RunConfig.from_yaml(path)


def test_method_params_are_validated_at_construction():
    with pytest.raises(ConfigError, match="did you mean 'lamb'"):
        UCE(lamda=0.1)
    with pytest.raises(ConfigError, match="token_policy"):
        UCE(token_policy="newest")
    with pytest.raises(ConfigError, match=r"lamb: must be >= 0"):
        UCE(lamb=-1)
    with pytest.raises(ConfigError, match=r"unknown method 'uec'.*'uce'"):
        get_method("uec")


def test_nested_method_params_are_validated():
    rece = get_method("rece")({"uce": {"token_policy": "uce_2025"}, "epochs": 2})
    assert rece.config.uce.token_policy == "uce_2025" and rece.config.epochs == 2
    with pytest.raises(ConfigError, match=r"uce\.lamb"):
        get_method("rece")({"uce": {"lamb": "big"}})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "cdua", "'cdua' is not a device name"),
        ("device", "cuda:99", "cuda:99"),
        ("device", "tpu", "not a device name|not supported"),
        ("seed", 2**64, r"seed: a seed must be in 0\.\.2\*\*63-1"),
        ("seed", -1, "a seed must be in"),
    ],
)
def test_run_config_refuses_devices_and_seeds_this_machine_cannot_use(field, value, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(model="erasekit:tiny", method="uce", concepts=["dog"], **{field: value})
