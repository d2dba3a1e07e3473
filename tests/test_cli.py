"""The erasekit CLI on the tiny offline pipeline: every command produces what it says (in-process, via CliRunner)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from diffusers import StableDiffusionPipeline
from helpers import sample_image
from PIL import Image
from typer.testing import CliRunner

import erasekit
from erasekit.cli import app
from erasekit.edits import Edit
from erasekit.eval.sampling import ImageSpec, before_after, sample_batch
from erasekit.models import load_pipeline
from erasekit.report import HEADER_HEIGHT, LABEL_WIDTH, MIN_CELL

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
runner = CliRunner(env={"COLUMNS": "200"})


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def write_config(path: Path, **fields: object) -> Path:
    path.write_text(yaml.safe_dump(fields), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def dog_config(workdir: Path, tiny_path: Path) -> Path:
    concepts = [{"text": "dog", "kind": "object", "synonyms": ["puppy"]}]
    return write_config(
        workdir / "dog.yaml", model=str(tiny_path), method="uce", concepts=concepts, preserve=["cat"], output="unused"
    )


@pytest.fixture(scope="module")
def erased(workdir: Path, dog_config: Path):
    """The result of ``erasekit erase dog.yaml -o <workdir>/run`` and the artifact it wrote."""
    result = invoke("erase", dog_config, "-o", workdir / "run")
    assert result.exit_code == 0, result.output
    return result, workdir / "run" / "edit.safetensors"


@pytest.fixture(scope="module")
def artifact(erased) -> Path:
    return erased[1]


def test_version_flag_prints_package_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"erasekit {erasekit.__version__}"


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("erase", "info", "generate", "export", "methods"):
        assert command in result.output


def test_methods_lists_each_method_with_its_hyper_parameters():
    result = invoke("methods")
    assert result.exit_code == 0, result.output
    for text in ("uce", "rece", "lamb", "token_policy", "lambda_reg", "epochs", "UCEConfig()"):
        assert text in result.output
    flat = " ".join(result.output.split())  # titles may wrap
    assert flat.count("[SD1.x, SD2.x, SDXL, FLUX.1, SD3]") == 4  # uce, rece, speed, esd
    assert flat.count("[SD1.x, SD2.x, SDXL]") == 3  # mace, gloce, dumo


def test_erase_writes_artifact_and_json_metadata(artifact: Path):
    meta = json.loads(artifact.with_suffix(".json").read_text())
    assert meta["method"] == "uce"
    assert meta["concepts"]["concepts"][0]["text"] == "dog"
    assert meta == Edit.load(artifact).artifact_metadata()


def test_erase_prints_layers_changed_time_and_path(erased):
    result, artifact = erased
    assert "changed 14 tensors (to_k, to_v) in 7 layers" in result.stdout
    assert " s\n" in result.stdout
    assert str(artifact) in result.stdout


def test_erase_artifact_equals_python_api_result(artifact: Path, tiny_path: Path):
    expected = erasekit.erase(load_pipeline(tiny_path), [{"text": "dog", "synonyms": ["puppy"]}], preserve=["cat"])
    edit = Edit.load(artifact)
    assert edit.base_fingerprint == expected.base_fingerprint
    assert all(edit.weights[n].equal(w) for n, w in expected.weights.items())


def test_erase_records_the_base_model(artifact: Path, tiny_path: Path):
    assert Edit.load(artifact).info["model"] == str(tiny_path)


def test_erase_without_output_option_uses_config_output(tmp_path: Path, tiny_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.yaml", model=str(tiny_path), method="uce", concepts=["dog"], output="out/x")
    assert invoke("erase", config).exit_code == 0
    assert (tmp_path / "out" / "x" / "edit.safetensors").is_file()


def test_erase_without_any_output_writes_to_runs_named_after_config(tmp_path: Path, tiny_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "cat_run.yaml", model=str(tiny_path), method="uce", concepts=["cat"])
    assert invoke("erase", config).exit_code == 0
    assert (tmp_path / "runs" / "cat_run" / "edit.safetensors").is_file()


def test_erase_overwrite_flag_replaces_existing_artifact(tmp_path: Path, dog_config: Path):
    stale = tmp_path / "edit.safetensors"
    stale.write_bytes(b"stale")
    result = invoke("erase", dog_config, "-o", tmp_path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert Edit.load(stale).method == "uce"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_runs_as_is_on_a_fresh_machine(example: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))  # no built-in model yet
    result = invoke("erase", example, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert Edit.load(tmp_path / "run" / "edit.safetensors").info["model"].startswith("erasekit:")


def test_required_examples_exist():
    assert {"uce_object", "rece_explicit"} <= {p.stem for p in EXAMPLES}


def test_info_names_method_base_model_layers_and_fingerprint(artifact: Path, tiny_path: Path):
    result = invoke("info", artifact)
    assert result.exit_code == 0, result.output
    edit = Edit.load(artifact)
    for text in ("uce", str(tiny_path), edit.base_fingerprint, "mid_block.attentions.0.transformer_blocks.0.attn2"):
        assert text in result.output
    assert "14 tensors (to_k, to_v) in 7 layers" in result.output
    assert "params.lamb" in result.output
    assert "dog" in result.output and "puppy" in result.output


def test_info_json_prints_the_artifact_metadata(artifact: Path):
    result = invoke("info", artifact, "--json")
    assert result.exit_code == 0, result.output
    printed, written = json.loads(result.stdout), json.loads(artifact.with_suffix(".json").read_text())
    assert printed.pop("integrity") == {**written.pop("integrity"), "verdict": "intact"}
    assert printed == written


def test_info_shows_rece_fit_results_and_extras(tmp_path: Path, tiny_path: Path):
    concepts = [{"text": "nudity", "kind": "explicit"}]
    config = write_config(tmp_path / "r.yaml", model=str(tiny_path), method="rece", concepts=concepts)
    assert invoke("erase", config, "-o", tmp_path).exit_code == 0
    result = invoke("info", tmp_path / "edit.safetensors")
    assert result.exit_code == 0, result.output
    for text in ("rece", "params.uce.lamb", "fit.selected_epoch", "extras/rece/embeddings/epoch3"):
        assert text in result.output


def test_generate_writes_grid_with_a_base_and_an_erased_row_per_prompt(artifact: Path, tmp_path: Path):
    grid = tmp_path / "grid.png"
    result = invoke(
        "generate", "-e", artifact, "a photo of a dog", "a cat", "--sampling-steps", 1, "--size", 16, "-o", grid
    )
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size == (LABEL_WIDTH + 2 * MIN_CELL, HEADER_HEIGHT + 2 * MIN_CELL)


def test_generate_defaults_to_one_column_per_erased_concept(artifact: Path, tmp_path: Path, tiny_path: Path):
    grid = tmp_path / "grid.jpg"
    result = invoke("generate", "-e", artifact, "-m", tiny_path, "--steps", 1, "--size", 16, "-o", grid)
    assert result.exit_code == 0, result.output
    assert Image.open(grid).format == "JPEG"
    assert Image.open(grid).size == (LABEL_WIDTH + MIN_CELL, HEADER_HEIGHT + 2 * MIN_CELL)


def test_before_after_samples_both_rows_from_the_same_seed_and_restores_the_pipeline(artifact: Path, tiny_path):
    pipe, edit = load_pipeline(tiny_path), Edit.load(artifact)
    base, erased_images = before_after(pipe, edit, ["a photo of a dog"], seed=3, sampling_steps=2, guidance=7.5)
    assert not edit.is_applied(pipe)
    spec = ImageSpec("a photo of a dog", seed=3, guidance=7.5, width=16, height=16, steps=2)  # 16 px: the tiny default
    assert np.array_equal(np.asarray(base[0]), np.asarray(sample_batch(pipe, [spec])[0]))
    edit.apply(pipe)
    assert np.array_equal(np.asarray(erased_images[0]), np.asarray(sample_batch(pipe, [spec])[0]))
    assert not np.array_equal(np.asarray(base[0]), np.asarray(erased_images[0]))


def test_export_folder_loads_with_from_pretrained_and_reproduces_the_edited_pipeline(
    artifact: Path, tmp_path: Path, tiny_path: Path
):
    out = tmp_path / "erased-pipeline"
    result = invoke("export", "-e", artifact, "-o", out)
    assert result.exit_code == 0, result.output
    exported = StableDiffusionPipeline.from_pretrained(out)
    exported.set_progress_bar_config(disable=True)
    edit = Edit.load(artifact)
    edited_image = sample_image(edit.apply(load_pipeline(tiny_path)))
    assert np.array_equal(sample_image(exported), edited_image)
    assert not np.array_equal(sample_image(load_pipeline(tiny_path)), edited_image)  # the edit is really in there
    assert json.loads((out / "erasekit_edit.json").read_text()) == edit.metadata()


def test_export_leaves_the_model_folder_untouched(artifact: Path, tmp_path: Path, tiny_path: Path):
    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*")
            if p.is_file()
        }

    before = digest(tiny_path)
    assert invoke("export", "-e", artifact, "-m", tiny_path, "-o", tmp_path / "out").exit_code == 0
    assert digest(tiny_path) == before


def test_world_subcommand_is_mounted_when_its_module_exists(monkeypatch):
    world = typer.Typer()

    @world.command()
    def hello() -> None:
        typer.echo("hello from world")

    monkeypatch.setitem(sys.modules, "erasekit.world.cli", types.SimpleNamespace(app=world))
    assert "world" in invoke("--help").output
    result = invoke("world", "hello")
    assert result.exit_code == 0, result.output
    assert result.output == "hello from world\n"


def test_cli_works_without_the_world_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "erasekit.world.cli", None)  # makes the import fail as if it did not exist
    assert not re.search(r"^\W*world\s", invoke("--help").output, re.MULTILINE)  # no `world` command listed
    assert invoke("world").exit_code == 2
    assert invoke("--version").exit_code == 0


def test_unexpected_exception_keeps_its_traceback(dog_config: Path, tmp_path: Path, monkeypatch):
    def broken(config):
        raise RuntimeError("a bug")

    monkeypatch.setattr("erasekit.api.run_config", broken)
    result = invoke("erase", dog_config, "-o", tmp_path)
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
