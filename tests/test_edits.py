"""Edit artifacts: apply/remove are exact, save -> load -> apply reproduces outputs bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import sample_image
from safetensors.torch import load_file, save_file

from erasekit import Edit, erase, load_edit, load_pipeline
from erasekit.errors import ArtifactError, BaseModelMismatchError, OutputExistsError


@pytest.fixture
def dog_edit(tiny_pipe) -> Edit:
    return erase(tiny_pipe, [{"text": "dog", "kind": "object", "synonyms": ["puppy"]}], preserve=["cat"])


def test_apply_changes_outputs_and_remove_restores_weights_exactly(tiny_pipe, dog_edit):
    before_state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    before = sample_image(tiny_pipe)
    dog_edit.apply(tiny_pipe)
    assert not np.array_equal(sample_image(tiny_pipe), before)
    dog_edit.remove(tiny_pipe)
    assert all(torch.equal(before_state[k], v) for k, v in tiny_pipe.unet.state_dict().items())
    assert np.array_equal(sample_image(tiny_pipe), before)


def test_save_load_apply_reproduces_the_edited_outputs_bit_for_bit(tiny_path, dog_edit, tmp_path):
    fitted_on = load_pipeline(tiny_path)
    dog_edit.apply(fitted_on)
    expected = sample_image(fitted_on)
    path = dog_edit.save(tmp_path / "dog.safetensors")
    fresh = load_pipeline(tiny_path)
    loaded = load_edit(fresh, path)
    assert np.array_equal(sample_image(fresh), expected)
    assert loaded.method == "uce" and loaded.config == dog_edit.config and loaded.concepts == dog_edit.concepts


def test_artifact_also_loads_with_plain_load_state_dict(tiny_path, dog_edit, tmp_path):
    path = dog_edit.save(tmp_path / "dog.safetensors")
    plain = load_pipeline(tiny_path)
    result = plain.unet.load_state_dict(load_file(str(path)), strict=False)
    assert not result.unexpected_keys
    ours = load_pipeline(tiny_path)
    load_edit(ours, path)
    assert np.array_equal(sample_image(plain), sample_image(ours))


def test_metadata_records_method_config_concepts_version_and_fingerprint(dog_edit, tmp_path):
    path = dog_edit.save(tmp_path / "dog.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["method"] == "uce" and meta["config"]["lamb"] == 0.5
    assert meta["concepts"]["concepts"][0]["synonyms"] == ["puppy"] and meta["concepts"]["preserve"] == ["cat"]
    assert meta["erasekit_version"] and len(meta["base_fingerprint"]) == 64
    assert set(meta["tensors"]) == set(dog_edit.weights)


def test_save_refuses_an_existing_file_and_leaves_no_temp_files(dog_edit, tmp_path):
    path = dog_edit.save(tmp_path / "dog.safetensors")
    with pytest.raises(OutputExistsError):
        dog_edit.save(path)
    dog_edit.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog.json", "dog.safetensors"]


def test_apply_refuses_another_base_model(other_tiny_path, dog_edit):
    with pytest.raises(BaseModelMismatchError, match="different base model"):
        dog_edit.apply(load_pipeline(other_tiny_path))


def test_apply_refuses_a_pipeline_that_already_carries_the_edit(tiny_path, dog_edit, tmp_path):
    path = dog_edit.save(tmp_path / "dog.safetensors")
    pipe = load_pipeline(tiny_path)
    dog_edit.apply(pipe)
    with pytest.raises(ArtifactError, match="already applied"):
        dog_edit.apply(pipe)
    with pytest.raises(BaseModelMismatchError, match="already carries"):
        Edit.load(path).apply(pipe)


def test_remove_refuses_a_pipeline_the_edit_was_not_applied_to(tiny_pipe, dog_edit):
    with pytest.raises(ArtifactError, match="not applied"):
        dog_edit.remove(tiny_pipe)


def test_load_refuses_an_artifact_with_nan_weights(dog_edit, tmp_path):
    path = dog_edit.save(tmp_path / "dog.safetensors")
    tensors = load_file(str(path))
    first = next(iter(dog_edit.weights))
    tensors[first][0, 0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ArtifactError, match="NaN"):
        Edit.load(path)


def test_export_writes_a_loadable_pipeline_and_leaves_the_source_unchanged(tiny_path, dog_edit, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_path)
    original = sample_image(pipe)
    out = dog_edit.export(pipe, tmp_path / "erased")
    assert np.array_equal(sample_image(pipe), original), "export must not leave the edit applied"
    exported = StableDiffusionPipeline.from_pretrained(out)
    exported.set_progress_bar_config(disable=True)
    dog_edit.apply(pipe)
    assert np.array_equal(sample_image(exported), sample_image(pipe))
    assert json.loads((out / "erasekit_edit.json").read_text())["method"] == "uce"


def test_saved_artifacts_get_the_usual_file_permissions(dog_edit, tmp_path):
    import os

    mask = os.umask(0)
    os.umask(mask)
    path = dog_edit.save(tmp_path / "dog.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
