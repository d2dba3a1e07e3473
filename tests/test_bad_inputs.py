"""Property-based bad input: whatever a user writes into a method's params or does to an artifact, erasekit either
works or says what is wrong in one ErasekitError; never another exception, never a silently wrong result."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erasekit.concepts import ConceptSet
from erasekit.edits import Edit
from erasekit.errors import ArtifactError, ConfigError, ErasekitError
from erasekit.methods import METHODS, get_method
from erasekit.models import ModelAdapter, load_pipeline

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def params_for(name: str) -> st.SearchStrategy[dict]:
    """Dicts of the method's own fields (and some unknown ones) with values of any JSON type."""
    keys = st.sampled_from([f.name for f in fields(get_method(name).config_class)] + ["preset", "lamda", "x"])
    return st.dictionaries(keys, JSON, max_size=4)


@pytest.mark.parametrize("name", METHODS.names())
def test_any_params_either_construct_or_raise_one_config_error(name):
    @QUICK
    @given(params=params_for(name))
    def check(params):
        try:
            get_method(name)(params)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc)

    check()


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return ModelAdapter(load_pipeline(tiny_path))


@QUICK
@given(params=params_for("uce"))
def test_uce_with_any_valid_params_fits_or_fails_cleanly(tiny, params):
    """What validates also fits: the result is finite or the fit is an ErasekitError (never NaN weights)."""
    try:
        method = get_method("uce")(params)
    except ConfigError:
        return
    try:
        edit = method.fit(tiny, ConceptSet.build(["dog"], ["cat"]))
    except ErasekitError as exc:
        assert "\n" not in str(exc)
        return
    assert all(torch.isfinite(w).all() for w in edit.weights.values())


@pytest.fixture(scope="module")
def artifact_bytes(tiny, tmp_path_factory):
    path = get_method("uce")().fit(tiny, ConceptSet.build(["dog"])).save(tmp_path_factory.mktemp("a") / "e.safetensors")
    return path.read_bytes(), Edit.load(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_artifact_is_refused_or_loads_unchanged(artifact_bytes, tmp_path, data):
    raw, original = artifact_bytes
    damage = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if damage == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        damaged = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == "truncate":
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        damaged = raw + data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damaged)
    try:
        loaded = Edit.load(path)
    except ArtifactError as exc:
        assert "\n" not in str(exc)
        return
    assert loaded.metadata() == original.metadata()  # e.g. a flip inside the header's padding
    assert all(torch.equal(loaded.weights[k], original.weights[k]) for k in original.weights)
