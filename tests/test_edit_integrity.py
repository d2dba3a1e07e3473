"""An artifact proves it is what erasekit wrote: same input -> same bytes; any change after writing is refused unless
the caller accepts it; metadata of the wrong shape is one clear error."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from erasekit import erase
from erasekit.edits import INTACT, MODIFIED, UNVERIFIED, Edit
from erasekit.errors import ArtifactError


@pytest.fixture(scope="module")
def artifact(tiny_path, tmp_path_factory):
    from erasekit.models import load_pipeline

    edit = erase(load_pipeline(tiny_path), ["dog"], preserve=["cat"])
    return edit.save(tmp_path_factory.mktemp("edits") / "dog.safetensors")


def read(path):
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["erasekit"]), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def rewrite(path, meta, tensors, header=None):
    save_file(tensors, str(path), metadata=header or {"erasekit": json.dumps(meta)})
    return path


def test_a_saved_artifact_loads_as_intact(artifact):
    assert Edit.load(artifact).integrity == INTACT


def test_the_same_edit_gives_byte_identical_files(tiny_path, artifact, tmp_path):
    """Same config, same seed, another process state: the very same bytes (no timings, sorted header keys)."""
    from erasekit.models import load_pipeline

    again = erase(load_pipeline(tiny_path), ["dog"], preserve=["cat"]).save(tmp_path / "again.safetensors")
    assert again.read_bytes() == artifact.read_bytes()
    assert again.with_suffix(".json").read_bytes() == artifact.with_suffix(".json").read_bytes()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m, t: m["concepts"]["concepts"][0].update(text="cat"), id="concept-renamed"),
        pytest.param(lambda m, t: m["config"].update(lamb=9.0), id="hyper-parameter"),
        pytest.param(lambda m, t: m.update(method="rece"), id="method"),
        pytest.param(lambda m, t: next(iter(t.values())).add_(1e-3), id="tensor-value"),
        pytest.param(lambda m, t: t.update({"extras/smuggled": torch.zeros(2)}), id="extra-tensor"),
    ],
)
def test_any_change_after_writing_is_refused_unless_accepted(artifact, tmp_path, tamper):
    meta, tensors = read(artifact)
    tamper(meta, tensors)
    path = rewrite(tmp_path / "tampered.safetensors", meta, tensors)
    with pytest.raises(ArtifactError, match="modified after erasekit wrote it"):
        Edit.load(path)
    assert Edit.load(path, verify=False).integrity == MODIFIED


def test_an_artifact_without_digest_is_unverified_not_intact(artifact, tmp_path):
    meta, tensors = read(artifact)
    del meta["integrity"]
    path = rewrite(
        tmp_path / "old.safetensors", meta, tensors, {"format": meta["format"], "erasekit": json.dumps(meta)}
    )
    assert Edit.load(path).integrity == UNVERIFIED


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("info", [], "'info' should be a JSON object, got list"),
        ("method", 3, "'method' should be a JSON string, got int"),
        ("config", "lamb=1", "'config' should be a JSON object, got str"),
        ("modules", {"kind": 1, "tensors": {}}, "'modules.kind' should be a JSON string, got int"),
        ("base_fingerprint", None, "'base_fingerprint' should be a JSON string, got NoneType"),
    ],
)
def test_metadata_of_the_wrong_type_is_one_clear_error(artifact, tmp_path, field, value, message):
    meta, tensors = read(artifact)
    meta[field] = value
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(")):
        Edit.load(rewrite(tmp_path / "bad.safetensors", meta, tensors))


def test_exports_follow_the_umask(tiny_path, artifact, tmp_path):
    from erasekit.models import load_pipeline

    old = os.umask(0o022)
    try:
        out = Edit.load(artifact).export(load_pipeline(tiny_path), tmp_path / "exported")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")] if not p.is_symlink()}
    assert modes == {0o755, 0o644}
