"""Cached, resumable, shardable generation and the evaluate() pipeline end to end on the tiny models (SD1.x, and
`erasekit eval` / `erasekit generate` on SD2.x and SDXL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from erasekit import erase
from erasekit.errors import ConfigError
from erasekit.eval import EvalConfig, evaluate
from erasekit.eval.cli import app
from erasekit.eval.metrics.base import CLASSIFIERS, load_classifier
from erasekit.eval.prompts import PromptRow
from erasekit.eval.sampling import ImageCache, generate, image_key, image_spec, pipeline_fingerprint, sample_batch
from erasekit.eval.testing import PixelClassifier

STEPS, SIZE = 2, 16
CONCEPTS = ("dog", "cat", "car")


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "animals.csv"
    lines = ["prompt,seed,concept,role,family,label"]
    lines += [f"a photo of a {c},{s},{c},direct,object,{c}" for c in CONCEPTS for s in range(2)]
    lines += ["a photo of a puppy,0,dog,synonym,object,dog", "a person at the beach,0,nudity,indirect,explicit,yes"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uce_edit(tmp_path_factory, tiny_path) -> Path:
    from erasekit.models import load_pipeline

    path = tmp_path_factory.mktemp("edits") / "dog.safetensors"
    erase(load_pipeline(tiny_path), [{"text": "dog", "kind": "object"}], method="uce").save(path)
    return path


def _config(tiny_path, prompts_csv, tmp_path, **overrides) -> EvalConfig:
    fields = {
        "model": str(tiny_path),
        "prompts": [str(prompts_csv)],
        "metrics": ["accuracy", "nudenet"],
        "classifier": "erasekit.eval.testing:PixelClassifier",
        "sampling_steps": STEPS,
        "size": SIZE,
        "batch_size": 3,
        "output": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
        **overrides,
    }
    return EvalConfig(**fields)


def _rows(n: int) -> list[PromptRow]:
    return [PromptRow(f"a photo of a {CONCEPTS[i % 3]}", seed=i) for i in range(n)]


class CountingSampler:
    """Counts the images it samples and fails after ``fail_after`` pipeline calls (a killed run)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.images, self.calls, self.fail_after = 0, 0, fail_after

    def __call__(self, pipe, specs):
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.images += len(specs)
        return sample_batch(pipe, specs)


def test_a_killed_run_resumes_without_regenerating_any_cached_image(tiny_pipe, tmp_path):
    specs = [image_spec(r, STEPS, 7.5, SIZE) for r in _rows(7)]
    fingerprint = pipeline_fingerprint(tiny_pipe)
    keys = [image_key(s, fingerprint, None) for s in specs]
    cache = ImageCache(tmp_path)
    killed = CountingSampler(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_pipe, specs, keys, cache, batch_size=2, sampler=killed, progress=False)
    assert killed.images == 4 and sum(k in cache for k in keys) == 4

    resumed = CountingSampler()
    assert generate(tiny_pipe, specs, keys, cache, batch_size=2, sampler=resumed, progress=False) == 3
    assert resumed.images == 3  # only the images the killed run did not save
    again = CountingSampler()
    assert generate(tiny_pipe, specs, keys, cache, batch_size=2, sampler=again, progress=False) == 0
    assert again.calls == 0


def test_an_image_does_not_depend_on_its_batch(tiny_pipe, tmp_path):
    specs = [image_spec(r, STEPS, 7.5, SIZE) for r in _rows(4)]
    alone = sample_batch(tiny_pipe, specs[2:3])[0]
    batched = sample_batch(tiny_pipe, specs)[2]
    diff = max(abs(a - b) for a, b in zip(alone.tobytes(), batched.tobytes(), strict=True))
    assert diff <= 1  # same latents from the row's own generator; at most rounding differs across batch shapes


def test_cache_keys_change_with_every_setting_and_the_edit():
    spec = image_spec(PromptRow("a dog", seed=1), 50, 7.5, 512)
    keys = {
        image_key(spec, "m", None),
        image_key(image_spec(PromptRow("a dog", seed=2), 50, 7.5, 512), "m", None),
        image_key(image_spec(PromptRow("a dog", seed=1), 49, 7.5, 512), "m", None),
        image_key(image_spec(PromptRow("a dog", seed=1), 50, 7.0, 512), "m", None),
        image_key(image_spec(PromptRow("a dog", seed=1), 50, 7.5, 256), "m", None),
        image_key(spec, "other model", None),
        image_key(spec, "m", "an edit"),
    }
    assert len(keys) == 7


def test_processes_share_the_rows_by_rank(tiny_pipe, tmp_path):
    specs = [image_spec(r, STEPS, 7.5, SIZE) for r in _rows(5)]
    keys = [image_key(s, "m", None) for s in specs]
    cache = ImageCache(tmp_path)
    assert generate(tiny_pipe, specs, keys, cache, rank=1, world=2, progress=False) == 2
    assert [k in cache for k in keys] == [False, True, False, True, False]
    assert generate(tiny_pipe, specs, keys, cache, rank=0, world=2, progress=False) == 3
    assert all(k in cache for k in keys)


def test_evaluate_on_a_non_zero_rank_only_generates_its_share(tiny_path, prompts_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert evaluate(_config(tiny_path, prompts_csv, tmp_path), progress=False) is None
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 3  # rows 1, 4, 7 of 8
    assert not (tmp_path / "run").exists()


def test_base_and_uce_numbers_computed_twice_agree_exactly(tiny_path, prompts_csv, uce_edit, tmp_path):
    runs = []
    for k in range(2):
        config = _config(tiny_path, prompts_csv, tmp_path / str(k), edits={"uce": str(uce_edit)})
        runs.append(evaluate(config, progress=False))
    first, second = runs
    assert first["variants"]["uce"]["images_generated"] == 8
    for name in ("base", "uce"):
        assert first.metrics(name) == second.metrics(name)
    assert first.metrics("uce") != first.metrics("base")  # the edit changed the images the classifier sees
    assert first["variants"]["uce"]["concepts"] == ["dog"]
    accuracy = first.metrics("uce")["accuracy"]["families"]["object"]
    assert set(accuracy["acc"]) == {"erase", "synonym", "retain"} and "H_o" in accuracy
    protocol = first["protocol"]["metrics"]["nudenet"]
    assert (protocol["threshold"], protocol["nudenet_version"]) == (0.6, "3.4.2")
    assert first["variants"]["uce"]["edit_fingerprint"] and first["model"]["fingerprint"]
    for k in range(2):
        cached = sorted(p.read_bytes() for p in (tmp_path / str(k) / "cache").rglob("*.png"))
        assert len(cached) == 16
    assert cached == sorted(p.read_bytes() for p in (tmp_path / "0" / "cache").rglob("*.png"))


def test_an_evaluation_killed_half_way_regenerates_nothing_on_restart(tiny_path, prompts_csv, uce_edit, tmp_path):
    config = _config(tiny_path, prompts_csv, tmp_path, edits={"uce": str(uce_edit)})
    killed = CountingSampler(fail_after=4)  # base: 8 images in 3 calls; uce: killed after its first call
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, sampler=killed, progress=False)
    restarted = CountingSampler()
    results = evaluate(config, sampler=restarted, progress=False)
    assert (killed.images, restarted.images) == (11, 5)
    assert results["variants"]["base"]["images_generated"] == 0
    assert results["variants"]["uce"]["images_generated"] == 5


def test_the_eval_config_is_validated_and_errors_name_the_field(tmp_path):
    path = tmp_path / "eval.yaml"
    for data, message in [
        ({"model": "m"}, "missing required field 'prompts'"),
        ({"model": "m", "prompts": ["i2p"], "metric": ["fid"]}, "unknown field 'metric' .*did you mean 'metrics'"),
        ({"model": "m", "prompts": ["i2p"], "metrics": ["fdi"]}, "metrics: unknown metric 'fdi'"),
        (
            {"model": "m", "prompts": ["i2p"], "sampling_steps": "many"},
            r"eval\.yaml\.sampling_steps: expected an integer",
        ),
        ({"model": "m", "prompts": ["i2p"], "sampling_steps": 0}, "sampling_steps: must be >= 1, got 0"),
        ({"model": "m", "prompts": ["i2p"], "metric_options": {"fid": {}}}, "metric_options.fid: 'fid' is not in"),
        ({"model": "m", "prompts": ["i2p"], "size": 30}, "size: must be a positive multiple of 8"),
    ]:
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            EvalConfig.from_yaml(path)
    config = EvalConfig(model="m", prompts=["i2p"], metrics=["nudenet"], metric_options={"nudenet": {"thresh": 1}})
    with pytest.raises(ConfigError, match=r"metric_options\.nudenet: unknown field 'thresh'"):
        config.build_metrics()


def test_cli_eval_report_and_compare(tiny_path, prompts_csv, uce_edit, tmp_path):
    config = _config(tiny_path, prompts_csv, tmp_path, edits={"uce": str(uce_edit)}, metrics=["accuracy"])
    data = {k: v for k, v in vars(config).items() if v is not None}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(tmp_path / "eval.yaml"), "--no-progress", "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert "accuracy.families.object.acc.erase" in result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["prompts"]["rows"] == 4 and results["format"] == "erasekit.eval/1"
    result = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0 and (tmp_path / "run" / "report.html").is_file()
    result = runner.invoke(app, ["compare", str(tmp_path / "run"), str(tmp_path / "run"), "--include", "H_"])
    assert result.exit_code == 0 and "run/uce" in result.output


def test_classifiers_are_found_by_registered_name_or_module_path():
    assert isinstance(load_classifier("erasekit.eval.testing:PixelClassifier"), PixelClassifier)
    assert load_classifier(None) is None
    assert "world" in CLASSIFIERS  # registered by the benchmark world's plugin, not known to erasekit.eval
    with pytest.raises(ConfigError, match="classifier: expected 'world' or 'module:factory', got 'wrld'"):
        load_classifier("wrld")
    with pytest.raises(ConfigError, match=r"classifier: cannot import 'erasekit\.eval\.testing:Nope'"):
        load_classifier("erasekit.eval.testing:Nope")


def test_pixel_classifier_is_a_deterministic_stand_in():
    from PIL import Image

    images = [Image.new("RGB", (1, 1), (1, 0, 0)), Image.new("RGB", (1, 1), (2, 0, 0))]
    classifier = PixelClassifier(["a", "b"])
    assert classifier.predict(images, "object") == ["b", "a"]
    assert classifier.predict(images, "explicit") == ["yes", "no"]
    assert classifier.features(images).shape == (2, 48)


def test_a_paired_metric_without_the_base_model_is_refused_before_generating(
    tiny_path, prompts_csv, uce_edit, tmp_path
):
    config = _config(tiny_path, prompts_csv, tmp_path, edits={"uce": str(uce_edit)}, metrics=["lpips"], baseline=False)
    with pytest.raises(ConfigError, match="metric 'lpips' compares with the unedited model's images"):
        evaluate(config, sampler=CountingSampler(fail_after=0), progress=False)


@pytest.mark.slow
def test_world_numbers_for_base_and_uce_computed_twice_agree_exactly(tmp_path):
    from erasekit.errors import ErasekitError

    world = pytest.importorskip("erasekit.world")
    try:
        path = world.pipeline_path()
        world.load_classifiers()
    except ErasekitError:
        pytest.skip("the benchmark world's pipeline or classifiers are not shipped yet")
    from erasekit.models import load_pipeline

    edit_path = erase(load_pipeline(path), [{"text": "car", "kind": "object"}], method="uce").save(tmp_path / "car.st")
    runs = []
    for k in range(2):
        config = EvalConfig(
            model=str(path),
            prompts=["world:objects"],
            limit=40,  # every 5th row: 4 rows of each of the 10 object classes
            edits={"uce": str(edit_path)},
            classifier="world",
            output=str(tmp_path / f"run{k}"),
            cache_dir=str(tmp_path / f"cache{k}"),
        )
        runs.append(evaluate(config, progress=False))
    assert runs[0].metrics("base") == runs[1].metrics("base")
    assert runs[0].metrics("uce") == runs[1].metrics("uce")
    accuracy = runs[0].metrics("uce")["accuracy"]["families"]["object"]
    assert set(accuracy["n"]) == {"erase", "synonym", "retain"} and "H_o" in accuracy


def test_an_edit_of_another_model_is_refused_before_any_image_is_generated(
    tiny_path, other_tiny_path, prompts_csv, tmp_path
):
    from erasekit.errors import BaseModelMismatchError
    from erasekit.models import load_pipeline

    foreign = erase(load_pipeline(other_tiny_path), ["dog"], method="uce").save(tmp_path / "foreign.safetensors")
    config = _config(tiny_path, prompts_csv, tmp_path, edits={"uce": str(foreign)})
    sampler = CountingSampler()
    with pytest.raises(BaseModelMismatchError):
        evaluate(config, sampler=sampler, progress=False)
    assert sampler.calls == 0


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[1] / "examples" / "eval").glob("*.yaml")))
def test_example_eval_configs_are_valid(example):
    config = EvalConfig.from_yaml(example)
    config.build_metrics()


# ------------------------------------------------------------------------------------------------ SDXL and SD2.x
@pytest.fixture(scope="module", params=["xl", "sd2"])
def family_path(request, tmp_path_factory) -> Path:
    from erasekit.models.tiny import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("models") / f"tiny-{request.param}", family=request.param)


def test_eval_and_generate_run_on_every_family(family_path, tiny_path, prompts_csv, tmp_path):
    from PIL import Image

    from erasekit.cli import app as erasekit_app
    from erasekit.models import load_pipeline

    pipe = load_pipeline(family_path)
    edit = erase(pipe, ["dog"], method="uce").save(tmp_path / "dog.safetensors")
    config = _config(family_path, prompts_csv, tmp_path, edits={"uce": str(edit)}, metrics=["accuracy"])
    data = {k: v for k, v in vars(config).items() if v is not None}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(erasekit_app, ["eval", str(tmp_path / "eval.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [first["variants"][v]["images_generated"] for v in ("base", "uce")] == [8, 8]
    assert first["model"]["fingerprint"] == pipeline_fingerprint(pipe) != pipeline_fingerprint(load_pipeline(tiny_path))
    records = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    spec = image_spec(PromptRow(records[0]["prompt"], seed=records[0]["seed"]), STEPS, 7.5, SIZE)
    assert records[0]["variants"]["base"]["key"] == image_key(spec, pipeline_fingerprint(pipe), None)
    cache = ImageCache(tmp_path / "cache")
    assert cache.load(records[0]["variants"]["base"]["key"]).tobytes() == sample_batch(pipe, [spec])[0].tobytes()
    assert any(r["variants"]["base"]["key"] != r["variants"]["uce"]["key"] for r in records)
    result = runner.invoke(erasekit_app, ["eval", str(tmp_path / "eval.yaml"), "--no-progress"])
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result.exit_code == 0 and all(v["images_generated"] == 0 for v in again["variants"].values())
    assert {v: again["variants"][v]["metrics"] for v in again["variants"]} == {
        v: first["variants"][v]["metrics"] for v in first["variants"]
    }

    grid = tmp_path / "grid.png"
    args = ["generate", "--edit", str(edit), "--model", str(family_path), "a photo of a dog", "-o", str(grid)]
    result = runner.invoke(erasekit_app, [*args, "--steps", "2", "--size", "16"])
    assert result.exit_code == 0, result.output
    with Image.open(grid) as image:
        assert image.width >= 16 and image.height >= 32  # a "base" and an "erased" row


def test_the_sdxl_fingerprint_covers_the_second_encoder_and_the_empty_prompt_setting(tmp_path):
    from erasekit.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(0, "xl")
    reference = pipeline_fingerprint(pipe)
    with torch.no_grad():
        pipe.text_encoder_2.text_model.final_layer_norm.weight[0] += 1
    assert pipeline_fingerprint(pipe) != reference
    pipe = build_tiny_pipeline(0, "xl")
    assert pipeline_fingerprint(pipe) == reference
    pipe.register_to_config(force_zeros_for_empty_prompt=False)  # the negative half becomes the "" encoding
    assert pipeline_fingerprint(pipe) != reference
