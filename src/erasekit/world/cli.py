"""``erasekit world``: train, sample and evaluate the embedded benchmark world."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..errors import ConfigError, ErasekitError

app = typer.Typer(help="The embedded benchmark world: a tiny trained text-to-image model where erasure is measurable.")


@app.callback()
def _threads(
    threads: Annotated[
        int, typer.Option(min=1, help="torch CPU threads: world models are so small that 1 is fastest")
    ] = 1,
) -> None:
    torch.set_num_threads(threads)


def _fail(err: ErasekitError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    run_dir: Annotated[Path, typer.Option(help="checkpoints; run the same command again to resume")] = Path(
        "runs/world"
    ),
    out: Annotated[Path | None, typer.Option(help="export the pipeline here when done")] = None,
    seed: Annotated[int, typer.Option(help="seed of data, weights and batches")] = 0,
    steps: Annotated[int, typer.Option(help="diffusion steps (UNet + text encoder)")] = 20_000,
    vae_steps: Annotated[int, typer.Option(help="autoencoder steps")] = 1500,
    n_images: Annotated[int, typer.Option(help="training images drawn from the world")] = 200_000,
    batch: Annotated[int, typer.Option(help="diffusion batch size")] = 64,
    max_minutes: Annotated[float | None, typer.Option(help="stop (after a checkpoint) after this long")] = None,
) -> None:
    """Train the world pipeline from scratch (CPU is fine), checkpointing and resuming in RUN_DIR."""
    from .train import WorldTrainConfig, WorldTrainer

    try:
        config = WorldTrainConfig(seed=seed, steps=steps, vae_steps=vae_steps, n_images=n_images, batch=batch)
        trainer = WorldTrainer(run_dir, config)
        deadline = None if max_minutes is None else time.time() + 60 * max_minutes
        summary = trainer.run(out=out, deadline=deadline)
    except ErasekitError as err:
        _fail(err)
    summary["command"] = "erasekit world " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"diffusion step {summary['diffusion_step']}, loss {summary['diffusion_final_loss']}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Option(help="training run to export")] = Path("runs/world"),
    out: Annotated[Path, typer.Option(help="pipeline folder to write")] = Path("world-pipeline"),
) -> None:
    """Export the latest checkpoint of RUN_DIR (EMA weights) as a StableDiffusionPipeline."""
    from .train import WorldTrainConfig, WorldTrainer

    try:
        saved = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else None
        if saved is None:
            raise ErasekitError(f"'{run_dir}' is not a world training run (no config.json)")
        WorldTrainer(run_dir, WorldTrainConfig(**saved)).export(out)
    except ErasekitError as err:
        _fail(err)


@app.command("train-classifiers")
def train_classifiers_command(
    out: Annotated[Path, typer.Option(help="safetensors file to write")] = Path("world-classifiers.safetensors"),
    seed: Annotated[int, typer.Option(help="seed of the generator images and of the weights")] = 0,
    steps: Annotated[int, typer.Option(help="optimisation steps per network")] = 2_000,
    n_train: Annotated[int, typer.Option(help="training images per network")] = 20_000,
) -> None:
    """Train the world's ground-truth classifiers on generator images and report held-out accuracy."""
    from .classifiers import train_classifiers

    try:
        clf = train_classifiers(out, seed=seed, steps=steps, n_train=n_train, log=typer.echo)
    except ErasekitError as err:
        _fail(err)
    typer.echo(json.dumps(clf.accuracy))


@app.command()
def sample(
    prompt: Annotated[str, typer.Argument(help="what to draw")],
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("world.png"),
    model: Annotated[Path | None, typer.Option(help="pipeline folder (default: the shipped world)")] = None,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    n: Annotated[int, typer.Option(help="images side by side, seeds seed..seed+n-1")] = 4,
    scale: Annotated[int, typer.Option(help="nearest-neighbour upscaling of the 32 px images")] = 4,
) -> None:
    """Draw PROMPT with the world pipeline and save the images side by side."""
    from PIL import Image

    from ..eval.sampling import ImageSpec, sample_batch
    from .prompts import SAMPLING

    try:
        pipe = _load(model)
    except ErasekitError as err:
        _fail(err)
    steps, guidance, size = int(SAMPLING["steps"]), float(SAMPLING["guidance"]), int(SAMPLING["size"])
    images = sample_batch(pipe, [ImageSpec(prompt, seed + k, guidance, size, size, steps) for k in range(n)])
    side = int(SAMPLING["size"]) * scale
    sheet = Image.new("RGB", (side * n, side))
    for k, im in enumerate(images):
        sheet.paste(im.resize((side, side), Image.Resampling.NEAREST), (k * side, 0))
    sheet.save(out)
    typer.echo(f"wrote {out}")


@app.command()
def evaluate(
    sets: Annotated[list[str] | None, typer.Option("--set", help="prompt set(s); default: all five")] = None,
    model: Annotated[Path | None, typer.Option(help="pipeline folder (default: the shipped world)")] = None,
    out: Annotated[Path, typer.Option(help="evaluation run folder (results.json, rows.jsonl)")] = Path(
        "runs/world-eval"
    ),
) -> None:
    """Sample prompt sets with the pipeline and print how often the classifiers see what each row asks for.

    Every concept counts as "erased" for the harness's roles, so rows keep their written role (direct rows are
    reported as erase); the neutral explicit rows ("a person at the office", label no) are the retain rows.
    """
    from ..eval.prompts import load_prompts
    from ..eval.run import EvalConfig
    from ..eval.run import evaluate as run_evaluation
    from .classifiers import load_classifiers
    from .prompts import SAMPLING, SET_NAMES

    try:
        pipe = _load(model)
        unknown = sorted(set(sets or ()) - set(SET_NAMES))
        if unknown:
            raise ConfigError(f"unknown world prompt set(s) {', '.join(unknown)}; choose from {', '.join(SET_NAMES)}")
        prompts = [f"world:{name}" for name in sets or SET_NAMES]
        shown = {row.concept for spec in prompts for row in load_prompts(spec) if row.label != "no"}
        config = EvalConfig(
            model=str(model or "erasekit:world"),
            prompts=prompts,
            concepts=sorted(shown),
            classifier="world",
            sampling_steps=int(SAMPLING["steps"]),
            guidance=float(SAMPLING["guidance"]),
            output=str(out),
        )
        results = run_evaluation(config, pipe=pipe, classifier=load_classifiers())
    except ErasekitError as err:
        _fail(err)
    for family, entry in results.metrics("base")["accuracy"]["families"].items():
        for role, accuracy in entry["acc"].items():
            typer.echo(f"{family + '/' + role:30s} {100 * accuracy:6.1f}%  (n={entry['n'][role]})")


@app.command()
def bench(
    task: Annotated[str, typer.Option(help="world task (see --list)")] = "object",
    method: Annotated[str, typer.Option(help="registered method")] = "uce",
    params: Annotated[str | None, typer.Option(help="method hyper-parameters as JSON")] = None,
    preserve: Annotated[str, typer.Option(help="none | neighbours (see docs/world.md)")] = "none",
    label: Annotated[str | None, typer.Option(help="name of this run (default: method-preserve-paramshash)")] = None,
    output: Annotated[Path, typer.Option(help="runs folder: edits, evaluations, summaries")] = Path("runs/world-bench"),
    list_tasks: Annotated[bool, typer.Option("--list", help="list the tasks and exit")] = False,
    table: Annotated[bool, typer.Option(help="print the table of every run of TASK so far, fit nothing")] = False,
) -> None:
    """Run a paper experiment on the world with METHOD (same prompts and seeds for every method); print the table."""
    from .experiments import TASKS, load_summaries, markdown_table, run_task

    if list_tasks:
        for name, spec in TASKS.items():
            typer.echo(f"{name:15s} {spec.description}")
        return
    try:
        if not table:
            try:
                parsed = json.loads(params) if params else None
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--params: not valid JSON ({exc})") from None
            if parsed is not None and not isinstance(parsed, dict):
                raise ConfigError(f"--params: expected a JSON object such as '{{\"lamb\": 0.1}}', got {params}")
            run_task(task, method, parsed, preserve=preserve, output=output, label=label)
        typer.echo(markdown_table(load_summaries(task, output)))
    except ErasekitError as err:
        _fail(err)


def _load(model: Path | None):
    from ..models import load_pipeline

    return load_pipeline(model if model is not None else "erasekit:world")
