"""Bad input never ends in a traceback: the CLI prints one line ``error: <message>`` on stderr and exits with 2."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from typer.testing import CliRunner

import erasekit
from erasekit.cli import app
from erasekit.models import load_pipeline
from erasekit.models.tiny import build_tiny_pipeline

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line starting with ``error:``, no traceback; return that line."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def erase_yaml(tmp_path: Path, tiny_path: Path):
    """Run ``erasekit erase`` on a config whose body (after a valid ``model:`` line) is ``text``."""

    def run(text: str, model: Path | str = tiny_path):
        config = tmp_path / "config.yaml"
        config.write_text(f"model: '{model}'\n{text}", encoding="utf-8")
        return invoke("erase", config, "-o", tmp_path / "run")

    return run


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, tiny_path: Path) -> Path:
    """A UCE edit of the tiny model (seed 0) that records its base model."""
    edit = erasekit.erase(load_pipeline(tiny_path), ["dog"])
    edit.info["model"] = str(tiny_path)
    return edit.save(tmp_path_factory.mktemp("artifact") / "edit.safetensors")


def save_pipeline(pipe, path: Path) -> Path:
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# ------------------------------------------------------------------ configs
def test_missing_config_file_is_one_line_error(tmp_path: Path):
    assert_one_line_error(invoke("erase", tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_yaml_syntax_error_names_the_line(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog\n"), "YAML syntax error", "line")


def test_missing_required_field_is_named(erase_yaml):
    assert_one_line_error(erase_yaml("concepts: [dog]\n"), "missing required field 'method'")


def test_unknown_field_is_named_with_a_suggestion(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\nconcept: [cat]\n"), "unknown field 'concept'")


def test_wrong_type_names_the_field(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\nseed: zero\n"), "seed", "integer")


def test_wrong_hyper_parameter_type_names_the_parameter(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\nparams: {lamb: big}\n"), "lamb", "number")


def test_unknown_method_suggests_the_closest(erase_yaml):
    assert_one_line_error(erase_yaml("method: ucee\nconcepts: [dog]\n"), "unknown method 'ucee'", "'uce'")


def test_empty_concept_list_is_refused(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: []\n"), "no concepts")


def test_duplicate_concepts_are_refused(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog, ' Dog']\n"), "listed twice")


def test_concept_in_its_own_preserve_set_is_refused(erase_yaml):
    line = assert_one_line_error(erase_yaml("method: uce\nconcepts: [{text: dog, preserve: [cat, dog]}]\n"))
    assert "'dog'" in line and "preserve" in line


def test_concept_in_global_preserve_list_is_refused(erase_yaml):
    line = assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog, cat]\npreserve: [horse, cat]\n"))
    assert "'cat'" in line and "preserve" in line


def test_concept_longer_than_the_tokenizer_accepts_is_refused(erase_yaml):
    long_text = " ".join(["dog"] * 80)
    assert_one_line_error(erase_yaml(f"method: uce\nconcepts: ['{long_text}']\n"), "80 tokens", "at most 75")


# ------------------------------------------------------------------- models
def test_folder_without_model_index_is_an_unknown_layout(erase_yaml, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n", model=tmp_path / "empty"), "model_index.json")


def test_missing_model_is_reported(erase_yaml, tmp_path: Path):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n", model=tmp_path / "gone"), "not found")


def test_unet_without_cross_attention_is_an_unknown_layout(erase_yaml, tmp_path: Path):
    pipe = build_tiny_pipeline()
    pipe.register_modules(
        unet=UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            mid_block_type=None,
            cross_attention_dim=32,
            norm_num_groups=8,
        )
    )
    model = save_pipeline(pipe, tmp_path / "no-xattn")
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n", model=model), "no cross-attention layers")


def test_nan_in_model_weights_is_reported(erase_yaml, tmp_path: Path):
    pipe = build_tiny_pipeline()
    with torch.no_grad():
        pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight[0, 0] = math.nan
    model = save_pipeline(pipe, tmp_path / "nan")
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n", model=model), "mid_block", "NaN")


# ---------------------------------------------------------------- artifacts
def test_missing_artifact_is_reported(tmp_path: Path):
    assert_one_line_error(invoke("info", tmp_path / "nope.safetensors"), "not found")


def test_corrupted_artifact_is_reported(tmp_path: Path):
    path = tmp_path / "edit.safetensors"
    path.write_bytes(os.urandom(4096))
    assert_one_line_error(invoke("info", path), "not a readable safetensors file")


def test_truncated_artifact_is_reported(artifact: Path, tmp_path: Path):
    path = tmp_path / "edit.safetensors"
    data = artifact.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("info", path), "corrupted or truncated")


def test_safetensors_file_that_is_not_an_edit_is_reported(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    assert_one_line_error(invoke("info", path), "not an erasekit edit")


def test_artifact_for_another_base_model_is_refused_by_generate(artifact: Path, other_tiny_path: Path, tmp_path):
    result = invoke("generate", "-e", artifact, "-m", other_tiny_path, "--steps", 1, "-o", tmp_path / "grid.png")
    assert_one_line_error(result, "different base model")
    assert not (tmp_path / "grid.png").exists()


def test_artifact_for_another_base_model_is_refused_by_export(artifact: Path, other_tiny_path: Path, tmp_path):
    assert_one_line_error(invoke("export", "-e", artifact, "-m", other_tiny_path, "-o", tmp_path / "out"), "different")
    assert not (tmp_path / "out").exists()


def test_artifact_without_recorded_model_needs_model_option(tiny_path: Path, tmp_path: Path):
    path = erasekit.erase(load_pipeline(tiny_path), ["dog"]).save(tmp_path / "edit.safetensors")
    assert_one_line_error(invoke("export", "-e", path, "-o", tmp_path / "out"), "--model")


# ------------------------------------------------------------------ outputs
def test_erase_refuses_existing_output_without_overwrite(erase_yaml, tmp_path: Path):
    existing = tmp_path / "run" / "edit.safetensors"
    existing.parent.mkdir()
    existing.write_bytes(b"keep me")
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n"), "already exists", "--overwrite")
    assert existing.read_bytes() == b"keep me"


def test_generate_refuses_existing_image_without_overwrite(artifact: Path, tmp_path: Path):
    (tmp_path / "grid.png").write_bytes(b"keep me")
    assert_one_line_error(invoke("generate", "-e", artifact, "-o", tmp_path / "grid.png"), "already exists")


def test_generate_refuses_an_unknown_image_suffix(artifact: Path, tmp_path: Path):
    assert_one_line_error(invoke("generate", "-e", artifact, "-o", tmp_path / "grid.xyz"), "image format")


def test_generate_refuses_a_size_that_is_not_a_multiple_of_8(artifact: Path, tmp_path: Path):
    result = invoke("generate", "-e", artifact, "--size", 20, "-o", tmp_path / "grid.png")
    assert_one_line_error(result, "multiple of 8")


def test_export_refuses_existing_output_without_overwrite(artifact: Path, tmp_path: Path):
    (tmp_path / "out").mkdir()
    assert_one_line_error(invoke("export", "-e", artifact, "-o", tmp_path / "out"), "already exists")


def test_export_refuses_the_model_folder_itself_even_with_overwrite(artifact: Path, tmp_path: Path, tiny_path):
    model = Path(shutil.copytree(tiny_path, tmp_path / "model"))
    before = sorted(p.name for p in model.iterdir())
    result = invoke("export", "-e", artifact, "-m", model, "-o", model, "--overwrite")
    assert_one_line_error(result, "overlaps the input model folder")
    assert sorted(p.name for p in model.iterdir()) == before


def test_export_refuses_a_folder_that_contains_the_model(artifact: Path, tmp_path: Path, tiny_path: Path):
    model = Path(shutil.copytree(tiny_path, tmp_path / "models" / "tiny"))
    result = invoke("export", "-e", artifact, "-m", model, "-o", tmp_path / "models", "--overwrite")
    assert_one_line_error(result, "overlaps the input model folder")
    assert (model / "model_index.json").is_file()


# -------------------------------------------------------------------- usage
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["erase", "c.yaml", "--bogus"], "No such option"),
        (["frobnicate"], "No such command"),
        (["erase"], "Missing argument"),
        (["world", "--threads", "0", "bench", "--list-tasks"], "--threads"),
        (["generate", "--edit", "e.safetensors", "--size", "4"], "--size"),
        (["generate", "--edit", "e.safetensors", "--seed", str(2**64)], "--seed"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args, fragment):
    assert_one_line_error(invoke(*args), fragment)


def test_entry_point_prints_one_line_and_exits_2_without_traceback(tmp_path: Path):
    executable = shutil.which("erasekit")
    if executable is None:
        pytest.skip("the erasekit console script is not installed")
    result = subprocess.run([executable, "erase", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: config file '{tmp_path / 'missing.yaml'}' not found"]
    assert result.stdout == ""


# -------------------------------------------------- classes of bad input, nothing written
def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("method: uce\nconcepts: [dog]\ndevice: cdua\n", "'cdua' is not a device name"),
        ("method: uce\nconcepts: [dog]\ndevice: 'cuda:99'\n", "cuda:99"),
        ("method: uce\nconcepts: [dog]\nseed: 18446744073709551616\n", "seed: a seed must be in"),
        ("method: uce\nconcepts: [dog]\nparams: {lamb: .inf}\n", "expected a finite number"),
        ("method: uce\nconcepts: [dog]\nparams: {lamb: 1}\nparams: {lamb: 2}\n", "duplicate key 'params'"),
        ("method: uce\nconcepts: [{text: dog, guide: dog}]\n", "its guide is the concept itself"),
        ("method: uce\nconcepts: [dog]\npreserve_empty: true\n", "unknown field 'preserve_empty'"),
        ("method: uce\nconcepts: [dog]\nparams: {lamb: 0, preserve_empty: false}\n", "ill-conditioned"),
        ("method: esd\nconcepts: [dog]\nparams: {seed: -1}\n", "esd params.seed: a seed must be in"),
        ("method: uce\nconcepts: [dog]\nparams: {preset: nope}\n", "uce params.preset: unknown preset 'nope'"),
    ],
)
def test_bad_configs_are_one_line_and_write_nothing(erase_yaml, tmp_path: Path, body: str, fragment: str):
    assert_one_line_error(erase_yaml(body), fragment)
    assert listing(tmp_path) == ["config.yaml"]  # the config the fixture wrote, and no run folder


def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"model: erasekit:tiny\nmethod: uce\nconcepts: [caf\xe9]\n")
    assert_one_line_error(invoke("erase", config, "-o", tmp_path / "out"), "not UTF-8 text")
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_a_folder_is_one_line(tmp_path: Path):
    assert_one_line_error(invoke("erase", tmp_path), "not found")


def test_model_names_with_a_bad_variant_are_refused(erase_yaml):
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n", model="erasekit:tiny-abc"), "a seed")
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n", model="erasekit:nope"), "unknown built-in")


def test_an_output_where_a_file_stands_is_refused_before_the_fit(erase_yaml, tmp_path: Path):
    (tmp_path / "run").write_text("not a folder")
    assert_one_line_error(erase_yaml("method: uce\nconcepts: [dog]\n"), "is a file, not a folder")
    assert (tmp_path / "run").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "not a readable safetensors file"),
        (b"hello world, not tensors", "not a readable safetensors file"),
        (b"\xff" * 64, "not a readable safetensors file"),
    ],
)
def test_info_on_files_that_are_not_artifacts(tmp_path: Path, content: bytes, fragment: str):
    path = tmp_path / "edit.safetensors"
    path.write_bytes(content)
    assert_one_line_error(invoke("info", path), fragment)


def test_a_modified_artifact_is_shown_by_info_and_refused_elsewhere(artifact: Path, tmp_path: Path):
    tensors = {}
    from safetensors import safe_open

    with safe_open(str(artifact), framework="pt") as handle:
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    first = next(iter(tensors))
    tensors[first] = tensors[first] * 1.001
    tampered = tmp_path / "tampered.safetensors"
    save_file(tensors, str(tampered), metadata=header)
    shown = invoke("info", tampered)
    assert shown.exit_code == 0 and "MODIFIED" in shown.output
    assert_one_line_error(invoke("generate", "--edit", tampered, "-o", tmp_path / "g.png"), "modified after")
    assert_one_line_error(invoke("export", "--edit", tampered, "-o", tmp_path / "x"), "modified after")
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "x").exists()
    accepted = invoke("generate", "--edit", tampered, "-o", tmp_path / "g.png", "--allow-modified", "--steps", "1")
    assert accepted.exit_code == 0, accepted.output
    assert "was modified" in accepted.stderr


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[1, 2]", b'{"format": "other"}'])
def test_report_and_compare_on_files_that_are_not_results(tmp_path: Path, content: bytes):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    assert_one_line_error(invoke("compare", path), "not an erasekit evaluation result")
    assert_one_line_error(invoke("report", tmp_path), "not an erasekit evaluation result")


@pytest.mark.parametrize("params", ["[1]", '"lamb"', "3", "{bad json"])
def test_world_bench_params_must_be_a_json_object(params: str, tmp_path: Path):
    result = invoke("world", "bench", "--task", "object", "--method", "uce", "--params", params, "--output", tmp_path)
    assert_one_line_error(result, "--params")
