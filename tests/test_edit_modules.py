"""Edits that add modules: attach/detach through the registry, exact removal, artifacts, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import sample_image

from erasekit import Edit, load_edit, load_pipeline
from erasekit.edits import register_modules
from erasekit.errors import ArtifactError, BaseModelMismatchError
from erasekit.eval.sampling import edit_fingerprint
from erasekit.models import ModelAdapter

KIND = "test-output-shift"


@register_modules(KIND)
def _attach_shift(pipe, tensors, spec):
    """Adds ``scale * shift`` to the output of the first cross-attention layer (a stand-in for GLoCE/DuMo)."""
    layer = ModelAdapter(pipe).layers[0].to_out
    shift = tensors["shift"] * spec["scale"]
    handle = layer.register_forward_hook(lambda _module, _inputs, output: output + shift.to(output.dtype))
    return handle.remove


def _module_edit(pipe, scale: float = 1.0) -> Edit:
    model = ModelAdapter(pipe)
    width = model.layers[0].to_out.out_features
    return Edit.from_modules(
        "test",
        {"scale": scale},
        {"concepts": []},
        model,
        kind=KIND,
        tensors={"shift": torch.linspace(-1, 1, width)},
        spec={"scale": scale},
        base_names=[f"{model.layers[0].name}.to_out.0.weight"],
    )


def test_modules_change_outputs_and_detach_restores_them_exactly(tiny_pipe):
    edit = _module_edit(tiny_pipe)
    before = sample_image(tiny_pipe)
    edit.apply(tiny_pipe)
    assert edit.is_applied(tiny_pipe)
    assert not np.array_equal(sample_image(tiny_pipe), before)
    edit.remove(tiny_pipe)
    assert np.array_equal(sample_image(tiny_pipe), before)
    assert not tiny_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_out[0]._forward_hooks


def test_module_artifact_round_trip_reproduces_outputs(tiny_path, tmp_path):
    pipe = load_pipeline(tiny_path)
    edit = _module_edit(pipe, scale=0.5)
    edit.apply(pipe)
    expected = sample_image(pipe)
    path = edit.save(tmp_path / "shift.safetensors")
    fresh = load_pipeline(tiny_path)
    loaded = load_edit(fresh, path)
    assert loaded.module_kind == KIND and loaded.module_spec == {"scale": 0.5}
    assert torch.equal(loaded.modules["shift"], edit.modules["shift"])
    assert np.array_equal(sample_image(fresh), expected)


def test_module_edit_refuses_another_base_model(tiny_pipe, other_tiny_path):
    with pytest.raises(BaseModelMismatchError, match="different base model"):
        _module_edit(tiny_pipe).apply(load_pipeline(other_tiny_path))


def test_unknown_module_kind_and_export_are_clear_errors(tiny_pipe, tmp_path):
    edit = _module_edit(tiny_pipe)
    with pytest.raises(ArtifactError, match="plain diffusers folder"):
        edit.export(tiny_pipe, tmp_path / "out")
    edit.module_kind = "from-the-future"
    with pytest.raises(ArtifactError, match="does not know"):
        edit.apply(tiny_pipe)
    assert not edit.is_applied(tiny_pipe)


def test_fingerprint_tells_module_edits_apart(tiny_pipe):
    assert edit_fingerprint(_module_edit(tiny_pipe, 1.0)) != edit_fingerprint(_module_edit(tiny_pipe, 2.0))
    assert edit_fingerprint(_module_edit(tiny_pipe)) == edit_fingerprint(_module_edit(tiny_pipe))


def test_cli_describes_samples_and_refuses_to_export_a_module_edit(tiny_path, tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    edit = _module_edit(load_pipeline(tiny_path))
    edit.info["model"] = str(tiny_path)
    path = edit.save(tmp_path / "shift.safetensors")
    runner = CliRunner(env={"COLUMNS": "200"})
    described = runner.invoke(app, ["info", str(path)])
    assert described.exit_code == 0 and f"added {KIND} modules (1 tensors)" in described.output
    sampled = runner.invoke(
        app, ["generate", "--edit", str(path), "a dog", "--sampling-steps", "2", "-o", str(tmp_path / "g.png")]
    )
    assert sampled.exit_code == 0, sampled.output
    exported = runner.invoke(app, ["export", "--edit", str(path), "-o", str(tmp_path / "out")])
    assert exported.exit_code == 2 and "plain diffusers folder" in exported.output
    assert not (tmp_path / "out").exists()
