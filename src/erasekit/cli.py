"""The ``erasekit`` command line: erase concepts from a YAML config, inspect the artifact, sample it, export it.

Bad input (any :class:`ErasekitError`) ends as one line ``error: <message>`` on stderr and exit code 2; any other
exception is a bug and keeps its traceback. torch and diffusers are imported inside the commands that need them, so
``erasekit --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from . import __version__

try:  # typer >= 0.26 vendors click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover (older typer uses click itself)
    from click.exceptions import ClickException, UsageError
from .concepts import RunConfig
from .errors import ConfigError, ErasekitError, OutputExistsError
from .io import atomic_file, check_output
from .validation import MAX_SEED, check_device

if TYPE_CHECKING:
    from .edits import Edit

WORLD_MODULE = "erasekit.world.cli"
ARTIFACT_NAME = "edit.safetensors"
ALLOW_MODIFIED_HELP = "Use an artifact even if it was changed after erasekit wrote it (see `erasekit info`)."

console = Console(highlight=False)
status_console = Console(stderr=True, highlight=False)


# What an interrupted command leaves behind and how to go on (every output is written atomically).
RESUME = {
    "erase": "nothing was saved (the artifact is written when the fit completes); ESD, DuMo and MACE with "
    "params.work_dir set resume from their last checkpoint when run again",
    "eval": "the images generated so far are cached: run the same command again to continue from there",
    "attack": "the images generated so far are cached: run the same command again to continue from there",
    "world": "finished parts are kept (world train resumes from its checkpoints, world bench from its saved "
    "edits and cached images): run the same command again",
}
DEFAULT_RESUME = "no partial output was written"


class RootGroup(TyperGroup):
    """The top-level command: reports :class:`ErasekitError` as one line with exit code 2, says what an interrupt
    (Ctrl-C) left behind with exit code 130, mounts ``world`` lazily."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ErasekitError as exc:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except UsageError as exc:  # a wrong option or value: one line too, with where to read more
            if type(exc).__name__ == "NoArgsIsHelpError":  # `erasekit` alone: the help, as usual
                exc.show()
                sys.exit(exc.exit_code)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            command = ctx.invoked_subcommand or ""
            typer.echo(f"\ninterrupted: {RESUME.get(command, DEFAULT_RESUME)}", err=True)
            sys.exit(130)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [*names, "world"] if world_app() is not None else names

    def get_command(self, ctx: typer.Context, name: str) -> Any:
        if name == "world" and (world := world_app()) is not None:
            command = typer.main.get_group(world)  # as add_typer would mount it: a group, no completion flags
            command.name = name
            return command
        return super().get_command(ctx, name)


def world_app() -> typer.Typer | None:
    """The ``erasekit world`` sub-app, or None where :mod:`erasekit.world` is not installed."""
    try:
        module = importlib.import_module(WORLD_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name in ("erasekit.world", WORLD_MODULE):
            return None
        raise
    return module.app


app = typer.Typer(
    cls=RootGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"erasekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    cache: Annotated[
        bool,
        typer.Option(
            help="Reuse and store text encodings (and RECE's Gram) in the on-disk cache; --no-cache bypasses it, "
            "as ERASEKIT_TEXT_CACHE=0 does. See 'erasekit cache --help'."
        ),
    ] = True,
) -> None:
    """Erase concepts from diffusers text-to-image models, inspect the edits, ship the result."""
    if not cache:
        os.environ["ERASEKIT_TEXT_CACHE"] = "0"  # read by every model adapter this command builds (models/cache.py)


# ------------------------------------------------------------------ commands
@app.command()
def erase(
    config: Annotated[Path, typer.Argument(help="Run config (YAML); see examples/.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output folder. Default: the config's `output`, else runs/<config name>."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact.")] = False,
) -> None:
    """Fit the edit a run config describes and save it as <output>/edit.safetensors (+ edit.json)."""
    run = RunConfig.from_yaml(config)
    path = Path(output or run.output or Path("runs") / config.stem) / ARTIFACT_NAME
    check_output(path, overwrite)  # before the fit, not after it

    from .api import run_config
    from .launch import process_rank

    concepts = ", ".join(c.text for c in run.concept_set)
    start = time.perf_counter()
    with status_console.status(f"Erasing {escape(concepts)} from {escape(run.model)} with {run.method}..."):
        edit = run_config(run)
        if process_rank()[0] != 0:  # a data-parallel fit: every process holds the same edit, the first writes it
            return
        edit.save(path, overwrite=overwrite)
    elapsed = time.perf_counter() - start
    console.print(
        f"Erased {escape(concepts)} with {edit.method}: {_changes(edit)} in {elapsed:.1f} s",
        soft_wrap=True,
    )
    console.print(f"Saved {escape(str(path))} and {escape(path.with_suffix('.json').name)}", soft_wrap=True)


@app.command()
def info(
    artifact: Annotated[Path, typer.Argument(help="Edit artifact (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the artifact's metadata as JSON.")] = False,
) -> None:
    """Show what an edit changes, on which base model, with which settings."""
    from .edits import FAMILY_NAMES, INTEGRITY, MODIFIED, Edit

    edit = Edit.load(artifact, verify=False)  # showing what a file holds is how one decides whether to trust it
    if as_json:
        meta = edit.artifact_metadata()
        meta["integrity"] = {**meta.get("integrity", {}), "verdict": edit.integrity}
        typer.echo(json.dumps(meta, indent=2, sort_keys=True))
        return
    table = Table(title=escape(str(artifact)), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    verdict = escape(INTEGRITY[edit.integrity])
    table.add_row("integrity", f"[bold red]{verdict}[/]" if edit.integrity == MODIFIED else verdict)
    table.add_row("method", edit.method)
    table.add_row("model family", FAMILY_NAMES.get(edit.info.get("family", ""), "(not recorded)"))
    table.add_row("base model", escape(str(edit.info.get("model", "(not recorded)"))))
    table.add_row("base fingerprint", edit.base_fingerprint)
    table.add_row("erasekit version", edit.version)
    table.add_row("changes", _changes(edit))
    table.add_row("layers", "\n".join(_layers(edit.weights)))
    for key, value in _flatten(edit.config):
        table.add_row(f"params.{key}", escape(json.dumps(value)))
    table.add_row("preserve", escape(", ".join(edit.concepts.get("preserve", [])) or "-"))
    for name, tensor in edit.extras.items():
        table.add_row(f"extras/{name}", f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}")
    for key, value in _flatten({k: v for k, v in edit.info.items() if k not in ("model", "family")}):
        table.add_row(f"fit.{key}", escape(json.dumps(value)))
    console.print(table)

    concepts = Table("erased concept", "kind", "guide", "synonyms", "preserve", title_justify="left")
    for concept in edit.concepts.get("concepts", []):
        concepts.add_row(
            escape(concept.get("text", "?")),
            concept.get("kind", "?"),
            escape(concept["guide"]) if concept.get("guide") is not None else "(method default)",
            escape(", ".join(concept.get("synonyms", []))),
            escape(", ".join(concept.get("preserve", []))),
        )
    console.print(concepts)


@app.command()
def generate(
    edit_path: Annotated[Path, typer.Option("--edit", "-e", help="Edit artifact (.safetensors).")],
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts. Default: the erased concepts.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model. Default: the one recorded in the artifact.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Grid image (.png, .jpg, ...).")] = Path("grid.png"),
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of every image, with and without the edit.")] = 0,
    sampling_steps: Annotated[int, typer.Option("--sampling-steps", "--steps", min=1, help="Denoising steps.")] = 30,
    guidance: Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance scale.")] = 7.5,
    size: Annotated[
        int | None, typer.Option(min=8, help="Image side in pixels, a multiple of 8. Default: the model's.")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing image.")] = False,
    allow_modified: Annotated[bool, typer.Option(help=ALLOW_MODIFIED_HELP)] = False,
) -> None:
    """Sample the base model and the edited one from the same seed: a grid with a "base" and an "erased" row."""
    from PIL import Image

    if size is not None and size % 8:
        raise ConfigError(f"--size: must be a multiple of 8 (the autoencoder's downsampling), got {size}")
    check_device(device, "--device")
    image_format = Image.registered_extensions().get(output.suffix.lower())
    if image_format is None:
        raise ConfigError(f"cannot tell the image format of '{output}'; use a suffix such as .png or .jpg")
    check_output(output, overwrite)

    from .eval.sampling import before_after
    from .report import image_grid

    edit = _load_edit(edit_path, allow_modified)
    pipe = _load_base(edit, model, device)
    prompts = prompts or [c["text"] for c in edit.concepts.get("concepts", [])]
    with status_console.status(f"Sampling {len(prompts)} prompt(s) with and without the edit..."):
        base, erased = before_after(pipe, edit, prompts, seed, sampling_steps, guidance, size)
    grid = image_grid([("base", base), ("erased", erased)], prompts)
    with atomic_file(output) as tmp:
        grid.save(tmp, format=image_format)
    console.print(f"Saved {escape(str(output))} ({grid.width}x{grid.height})", soft_wrap=True)


@app.command()
def export(
    edit_path: Annotated[Path, typer.Option("--edit", "-e", help="Edit artifact (.safetensors).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder (diffusers) or .safetensors file (lora, single-file).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model. Default: the one recorded in the artifact.")
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="diffusers: a pipeline folder; lora: the weight change as a LoRA file; single-file: one "
            "SD1.x/SD2.x/SDXL checkpoint in the original layout (from_single_file, web UIs).",
        ),
    ] = "diffusers",
    lora_format: Annotated[
        str | None,
        typer.Option(help="LoRA keys: diffusers (pipe.load_lora_weights; default) or kohya (AUTOMATIC1111, ComfyUI)."),
    ] = None,
    rank: Annotated[
        int | None, typer.Option(help="LoRA rank of every layer. Default: the smallest rank keeping --energy.")
    ] = None,
    energy: Annotated[
        float | None,
        typer.Option(help="Share of each layer's squared weight change the LoRA keeps when no --rank (default 0.999)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    allow_modified: Annotated[bool, typer.Option(help=ALLOW_MODIFIED_HELP)] = False,
) -> None:
    """Save the edit as a diffusers folder, a LoRA file or a single-file checkpoint (see docs/exports.md)."""
    from .exports import check_exportable, export
    from .models.loading import quiet_libraries, resolve_model

    edit = _load_edit(edit_path, allow_modified)
    check_exportable(edit, format, lora_format, rank, energy)
    model = _base_model(edit, model)
    quiet_libraries()  # resolving erasekit:tiny imports diffusers pipelines, which warn on import
    source = resolve_model(model)
    if isinstance(source, Path):
        src, out = source.resolve(), output.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise OutputExistsError(
                f"output '{output}' overlaps the input model folder '{source}'; export to a separate folder"
            )
    check_output(output, overwrite, folder=format == "diffusers")
    pipe = _load_base(edit, model)
    with status_console.status(f"Exporting to {escape(str(output))}..."):
        result = export(
            edit, pipe, output, format, overwrite=overwrite, rank=rank, energy=energy, lora_format=lora_format
        )
    if result.errors:
        table = Table(title="LoRA factors (error = |dW - BA| / |dW|)", title_justify="left")
        table.add_column("layer", overflow="fold")
        table.add_column("rank")
        table.add_column("relative error")
        for layer, error in result.errors.items():
            table.add_row(escape(layer), str(result.ranks[layer]), f"{error:.2e}")
        console.print(table)
        console.print(f"max relative error {result.max_error:.2e} over {len(result.errors)} layers")
    console.print(
        f"Exported {escape(model)} with the {edit.method} edit as {format} to {escape(str(output))}", soft_wrap=True
    )


@app.command()
def methods() -> None:
    """List the erasure methods and their hyper-parameters (the `params:` of a run config)."""
    from .edits import FAMILY_NAMES
    from .methods import METHODS

    for name, method in METHODS.items():
        summary = (method.__doc__ or "").strip().splitlines()[0]
        families = ", ".join(FAMILY_NAMES.get(f, f) for f in method.families)
        title = f"{name}: {summary} [{families}]"
        table = Table("param", "default", "meaning", title=title, title_justify="left")
        for field, default, help_text in method.describe():
            shown = f"{type(default).__name__}()" if dataclasses.is_dataclass(default) else json.dumps(default)
            table.add_row(field, shown, escape(help_text))
        console.print(table)


cache_app = typer.Typer(
    no_args_is_help=True,
    help="The on-disk cache of text encodings (and RECE's Gram), reused by every method on the same model: "
    "$ERASEKIT_CACHE/computed, at most $ERASEKIT_TEXT_CACHE_MB MiB (least recently used entries go first).",
)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is, how many entries of each kind it holds, its size and limit, whether it is on."""
    from .models.cache import TensorCache

    stats = TensorCache().stats()
    table = Table("", "", title="erasekit cache", title_justify="left", show_header=False)
    table.add_row("folder", escape(str(stats.folder)))
    table.add_row("enabled", "yes" if stats.enabled else "no (ERASEKIT_TEXT_CACHE)")
    for namespace, count in stats.entries.items():
        table.add_row(f"{namespace} entries", str(count))
    table.add_row("size", f"{stats.bytes / 2**20:.1f} MiB of {stats.limit / 2**20:.0f} MiB")
    console.print(table)


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete every cached encoding and Gram (built-in models and evaluation images are kept)."""
    from .models.cache import TensorCache

    cache = TensorCache()
    freed = cache.clear()
    console.print(f"cleared {escape(str(cache.folder))} ({freed / 2**20:.1f} MiB)")


@app.command()
def demo(
    concept: Annotated[
        str, typer.Option(help="The benchmark world's object to erase (car, tree, house, ...).")
    ] = "car",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the edit, grid and report.")] = Path(
        "runs/demo"
    ),
    limit: Annotated[int | None, typer.Option(help="Use at most N object prompts (evenly spaced).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Erase an object from the shipped benchmark world with UCE; print accuracy before/after; write grid + report."""
    from .demo import run_demo

    start = time.perf_counter()
    result = run_demo(concept, output, limit=limit, progress=progress)
    title = f"World classifier accuracy (%) on object prompts, '{escape(concept)}' erased with UCE"
    table = Table("model", "erased prompts (Acc_e)", "synonyms (Acc_g)", "other objects (Acc_s)", "H_o", title=title)
    for variant, acc in result.accuracy.items():
        cells = [acc.get(role) for role in ("erase", "synonym", "retain")] + [result.score.get(variant)]
        table.add_row(variant, *("–" if v is None else f"{100 * v:.1f}" for v in cells))
    console.print(table)
    console.print(
        f"Lower Acc_e/Acc_g = stronger erasure; Acc_s should stay. Edit: {escape(str(result.edit))}; "
        f"grid: {escape(str(result.grid))}; report: {escape(str(result.report))} "
        f"({time.perf_counter() - start:.0f} s)",
        soft_wrap=True,
    )


def main() -> None:
    """Console-script entry point (``erasekit``); error reporting lives in :class:`RootGroup` so tests see it too."""
    app()


# ------------------------------------------------------------------- helpers
def _base_model(edit: Edit, model: str | None) -> str:
    """``model``, else the base model recorded in the artifact."""
    model = model or edit.info.get("model")
    if not model:
        raise ConfigError("this edit does not record its base model; pass it with --model")
    return model


def _load_edit(path: Path, allow_modified: bool) -> Edit:
    """The artifact at ``path``; one modified after it was written only when the user accepts it, with a warning."""
    from .edits import MODIFIED, Edit

    edit = Edit.load(path, verify=not allow_modified)
    if edit.integrity == MODIFIED:
        status_console.print(f"[bold red]warning:[/] '{escape(str(path))}' was modified after erasekit wrote it")
    return edit


def _load_base(edit: Edit, model: str | None, device: str = "cpu") -> Any:
    """The edit's base pipeline, loaded in the dtype the edit was fitted in (its fingerprint covers the dtype)."""
    from .models import load_pipeline

    return load_pipeline(_base_model(edit, model), dtype=edit.base_dtype, device=device)


def _layers(names: Iterable[str]) -> list[str]:
    """The modules owning the parameters ``names`` (``...attn2.to_k.weight`` -> ``...attn2``), in order."""
    return list(dict.fromkeys(n.rsplit(".", 2)[0] for n in names))


def _changes(edit: Edit) -> str:
    """E.g. ``changed 32 tensors (to_k, to_v) in 16 layers`` or ``added gloce modules on 16 layers``."""
    projections = sorted({n.rsplit(".", 2)[1] for n in edit.weights})
    parts = [f"changed {len(edit.weights)} tensors ({', '.join(projections)}) in {len(_layers(edit.weights))} layers"]
    if edit.module_kind is not None:
        parts = parts if edit.weights else []
        parts.append(f"added {edit.module_kind} modules ({len(edit.modules)} tensors)")
    return " and ".join(parts)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) pairs of a nested dict, e.g. RECE's ``uce.lamb``."""
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


from .attacks.cli import add_commands as add_attack_commands  # noqa: E402 (attach to the app defined above)
from .eval.cli import add_commands  # noqa: E402 (the eval commands attach to the app defined above)

add_commands(app)
add_attack_commands(app)
