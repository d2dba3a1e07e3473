"""Model families end to end through artifacts and the CLI: an SDXL edit saves, loads, applies, removes exactly,
refuses other base weights and exports to a folder diffusers' own SDXL pipeline loads; broken SDXL pipelines and
edits of another family are one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from helpers import sample_image
from typer.testing import CliRunner

import erasekit
from erasekit.cli import app
from erasekit.edits import Edit
from erasekit.errors import BaseModelMismatchError
from erasekit.models import load_pipeline
from erasekit.models.build import clip_text_encoder
from erasekit.models.tiny import tiny_pipeline

runner = CliRunner()
LOADERS = {"xl": StableDiffusionXLPipeline, "sd2": StableDiffusionPipeline}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line starting with ``error:``, no traceback; return that line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny pipelines: SD1.x, SD2.x, SDXL (seed 0) and SDXL with other weights (seed 1, ``erasekit:tiny-xl-1``)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "sd1": tiny_pipeline(root / "tiny", family="sd1"),
        "sd2": tiny_pipeline(root / "tiny-sd2", family="sd2"),
        "xl": tiny_pipeline(root / "tiny-xl", family="xl"),
        "xl-1": tiny_pipeline(root / "tiny-xl-1", seed=1, family="xl"),
    }


@pytest.fixture(scope="module")
def edits(models, tmp_path_factory) -> dict[str, Path]:
    """A UCE edit of "dog" per family, saved."""
    root = tmp_path_factory.mktemp("edits")
    fit = lambda family: erasekit.erase(load_pipeline(models[family]), ["dog"], method="uce")  # noqa: E731
    return {family: fit(family).save(root / f"{family}.safetensors") for family in ("sd1", "sd2", "xl")}


# ------------------------------------------------------------------------------------------------ artifacts
@pytest.mark.parametrize("family", ["xl", "sd2"])
def test_an_edit_saves_loads_applies_and_removes_exactly(models, edits, family):
    pipe = load_pipeline(models[family])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = sample_image(pipe)
    fitted = erasekit.erase(pipe, ["dog"], method="uce")
    fitted.apply(pipe)
    erased = sample_image(pipe)
    fitted.remove(pipe)
    loaded = erasekit.load_edit(pipe, edits[family])
    assert loaded.info["family"] == {"xl": "sdxl", "sd2": "sd2"}[family]
    assert np.array_equal(sample_image(pipe), erased) and not np.array_equal(erased, plain)
    loaded.remove(pipe)
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert np.array_equal(sample_image(pipe), plain)


def test_an_sdxl_edit_refuses_a_pipeline_with_other_base_weights(models, edits):
    with pytest.raises(BaseModelMismatchError, match="different base model"):
        erasekit.load_edit(load_pipeline(models["xl-1"]), edits["xl"])
    grid = edits["xl"].parent / "other.png"
    result = invoke("generate", "--edit", edits["xl"], "--model", models["xl-1"], "-o", grid, "--steps", "1")
    assert_one_line_error(result, "different base model")
    assert not grid.exists()


@pytest.mark.parametrize("family", ["xl", "sd2"])
def test_export_writes_a_folder_diffusers_loads_and_samples_identically(models, edits, family, tmp_path):
    out = tmp_path / "exported"
    result = invoke("export", "--edit", edits[family], "--model", models[family], "-o", out)
    assert result.exit_code == 0, result.output
    exported = LOADERS[family].from_pretrained(out)
    exported.set_progress_bar_config(disable=True)
    assert type(exported) is LOADERS[family]
    pipe = load_pipeline(models[family])
    erasekit.load_edit(pipe, edits[family])
    assert np.array_equal(sample_image(exported), sample_image(pipe))
    recorded = json.loads((out / "erasekit_edit.json").read_text())
    assert recorded["info"]["family"] == Edit.load(edits[family]).info["family"]


def test_info_shows_the_model_family(edits):
    for family, name in (("sd1", "SD1.x"), ("sd2", "SD2.x"), ("xl", "SDXL")):
        result = runner.invoke(app, ["info", str(edits[family])], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if "model family" in line)
        assert name in row


# ------------------------------------------------------------------------------------------------ bad input
def _broken(models: dict[str, Path], tmp_path: Path, change) -> Path:
    """A copy of the tiny SDXL pipeline folder, changed by ``change(folder, model_index)``."""
    folder = tmp_path / "broken"
    shutil.copytree(models["xl"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    change(folder, index)
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def _without(*parts: str):
    """Drop components from the pipeline (``null`` in model_index.json, as a pipeline saved without them)."""

    def change(folder: Path, index: dict) -> None:
        for part in parts:
            index[part] = [None, None]
            shutil.rmtree(folder / part)

    return change


def _erase(folder: Path, tmp_path: Path):
    config = tmp_path / "erase.yaml"
    config.write_text(f"model: '{folder}'\nmethod: uce\nconcepts: [dog]\n", encoding="utf-8")
    return invoke("erase", config, "-o", tmp_path / "run")


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (("text_encoder_2",), "has no 'text_encoder_2'"),
        (("tokenizer_2",), "has no 'tokenizer_2'"),
        (("tokenizer",), "has no 'tokenizer'"),
        (("text_encoder", "tokenizer"), "only the second (OpenCLIP bigG) text encoder, as SDXL's refiner does"),
    ],
)
def test_an_sdxl_pipeline_missing_an_encoder_or_tokenizer_is_one_line(models, tmp_path, parts, message):
    assert_one_line_error(_erase(_broken(models, tmp_path, _without(*parts)), tmp_path), message)
    assert not (tmp_path / "run").exists()


def test_an_sdxl_folder_that_lists_an_encoder_it_does_not_hold_is_one_line(models, tmp_path):
    folder = _broken(models, tmp_path, lambda folder, _index: shutil.rmtree(folder / "text_encoder_2"))
    assert_one_line_error(_erase(folder, tmp_path), "could not load pipeline")


def test_cross_attention_wider_than_the_encoders_is_one_line(models, tmp_path):
    def wider_first_encoder(folder: Path, _index: dict) -> None:
        shutil.rmtree(folder / "text_encoder")
        clip_text_encoder(64, num_layers=3, num_heads=4, intermediate_size=64).save_pretrained(folder / "text_encoder")

    folder = _broken(models, tmp_path, wider_first_encoder)
    assert_one_line_error(_erase(folder, tmp_path), "expects 80-d context", "produce 112-d embeddings")


@pytest.mark.parametrize(
    ("edit", "model", "message"),
    [
        ("sd1", "xl", "SD1.x model and the pipeline is SDXL"),
        ("xl", "sd1", "SDXL model and the pipeline is SD1.x"),
        ("sd2", "xl", "SD2.x model and the pipeline is SDXL"),
    ],
)
def test_an_edit_of_another_family_is_one_line(models, edits, tmp_path, edit, model, message):
    grid = tmp_path / "grid.png"
    result = invoke("generate", "--edit", edits[edit], "--model", models[model], "-o", grid, "--steps", "1")
    assert_one_line_error(result, message)
    assert_one_line_error(invoke("export", "--edit", edits[edit], "--model", models[model], "-o", tmp_path / "x"),
                          message)  # fmt: skip
    assert not grid.exists() and not (tmp_path / "x").exists()
