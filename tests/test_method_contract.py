"""The contract every registered method keeps, checked on the tiny pipeline: a new method gets these tests for free.

fit leaves the model as it was; the Edit changes exactly the tensors (or adds exactly the modules) it declares;
save -> load -> apply reproduces its images bit for bit; remove restores the pipeline bit for bit; the same seed gives
the same tensors; a bad parameter is a one-line ConfigError that names it; extra fit options are keyword-only.
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import numpy as np
import pytest
import torch
from helpers import FAST, sample_image

from erasekit.concepts import ConceptSet
from erasekit.edits import Edit
from erasekit.errors import ConfigError
from erasekit.methods import METHODS, get_method
from erasekit.models import ModelAdapter, load_pipeline

CONCEPTS = ConceptSet.build(["dog"], preserve=["cat"])
NAMES = METHODS.names()


def state(pipe) -> dict[str, torch.Tensor]:
    return {
        **{f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()},
        **{f"text_encoder.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()},
    }


def fit(name: str, pipe) -> Edit:
    torch.manual_seed(0)
    return get_method(name)(FAST.get(name, {})).fit(ModelAdapter(pipe), CONCEPTS)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, tiny_path):
    """(method name, a fresh pipeline, its state and image before, the edit) — fitted once per method."""
    pipe = load_pipeline(tiny_path)
    before, image = state(pipe), sample_image(pipe)
    edit = fit(request.param, pipe)
    return request.param, pipe, before, image, edit


def test_every_method_is_registered():
    assert {"uce", "rece", "speed", "mace", "gloce", "esd", "dumo"} <= set(NAMES)


def test_fit_leaves_the_model_unchanged(fitted):
    _, pipe, before, _, _ = fitted
    assert changed(before, state(pipe)) == set()


def test_the_edit_changes_exactly_what_it_declares(fitted):
    _, pipe, before, image, edit = fitted
    edit.apply(pipe)
    try:
        after = state(pipe)
        assert changed(before, after) <= {f"unet.{n}" for n in edit.weights}
        for name, weight in edit.weights.items():
            assert torch.equal(after[f"unet.{name}"], weight)
        assert set(after) == set(before), "modules must be added as hooks/wrappers, not as new state"
        assert edit.weights or edit.modules, "an edit that declares nothing"
        assert not np.array_equal(sample_image(pipe), image), "the edit must change what the model draws"
    finally:
        edit.remove(pipe)


def test_remove_restores_the_pipeline_bit_for_bit(fitted):
    _, pipe, before, image, edit = fitted
    edit.apply(pipe)
    edit.remove(pipe)
    assert changed(before, state(pipe)) == set()
    assert np.array_equal(sample_image(pipe), image)


def test_save_load_apply_reproduces_the_images(fitted, tiny_path, tmp_path):
    name, pipe, _, _, edit = fitted
    edit.apply(pipe)
    try:
        expected = sample_image(pipe)
    finally:
        edit.remove(pipe)
    loaded = Edit.load(edit.save(tmp_path / f"{name}.safetensors"))
    fresh = load_pipeline(tiny_path)
    loaded.apply(fresh)
    assert np.array_equal(sample_image(fresh), expected)
    assert loaded.config == edit.config and loaded.method == name


def test_the_same_seed_gives_identical_tensors_and_artifact_bytes(fitted, tiny_path, tmp_path):
    name, _, _, _, edit = fitted
    again = fit(name, load_pipeline(tiny_path))
    for mine, theirs in ((edit.weights, again.weights), (edit.modules, again.modules), (edit.extras, again.extras)):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    first, second = edit.save(tmp_path / "first.safetensors"), again.save(tmp_path / "second.safetensors")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_parameter_is_a_config_error_naming_it(name):
    method = get_method(name)
    with pytest.raises(ConfigError, match="no_such_setting"):
        method({"no_such_setting": 1})
    numeric = next(f.name for f in fields(method.config_class) if f.type in ("int", "float", "float | None"))
    with pytest.raises(ConfigError, match=rf"{name} params\.{numeric}: expected"):
        method({numeric: "many"})
    with pytest.raises(ConfigError, match="preset"):
        method({"preset": "no-such-preset"})


@pytest.mark.parametrize("name", NAMES)
def test_fit_options_are_declared_keyword_only_and_documented(name):
    method = get_method(name)
    parameters = list(inspect.signature(method.fit).parameters.values())[3:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty for p in parameters)
    with pytest.raises(ConfigError, match="no option 'bogus'"):
        method.check_fit_options({"bogus": 1})
    assert all(help_text for _, _, help_text in method.describe()), "every hyper-parameter says what it does"
