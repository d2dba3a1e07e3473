"""The ``eval``, ``report`` and ``compare`` commands, mounted on the ``erasekit`` CLI with :func:`add_commands`.

Heavy imports (torch, diffusers) happen inside the commands, so ``erasekit --help`` stays fast. Errors a user can
cause are :class:`~erasekit.errors.ErasekitError`; the root CLI prints them as one line with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
PER_CLASS = (".detections.", ".images.")  # NudeNet per-class counts: in results.json and the report, not the summary


def _print_table(header: list[str], rows: list[list[object]]) -> None:
    table = Table(*header)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else "–" if v is None else str(v) for v in row))
    console.print(table)


OVERWRITE_HELP = "Replace the results of another configuration in the run folder."


def load_settings(cls: type, config: Path, output: Path | None, limit: int | None, overwrite: bool) -> Any:
    """A run config read from YAML, with the command line's overrides."""
    settings = cls.from_yaml(config)
    if output is not None:
        settings.output = str(output)
    if limit is not None:
        settings.limit = limit
    settings.overwrite = overwrite
    return settings


def print_images(results: dict[str, Any], per_row: bool = False) -> None:
    """How many images this run generated (a re-run generates none); with ``per_row`` (one image per prompt row and
    variant, as in an evaluation) also how many came from the cache."""
    generated = sum(v.get("images_generated", 0) for v in results["variants"].values())
    needed = results["prompts"]["rows"] * len(results["variants"]) if per_row else generated
    console.print(f"images: {generated} generated" + (f", {needed - generated} from the cache" if per_row else ""))


def eval_command(
    config: Annotated[Path, typer.Argument(help="Eval config (YAML): model, prompts, edits, metrics, ...")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (overrides 'output').")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most N rows of each prompt set, evenly spaced.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Generate (cached, resumable) images for the prompt sets and score every model variant."""
    from .run import EvalConfig, evaluate

    cfg = load_settings(EvalConfig, config, output, limit, overwrite)
    results = evaluate(cfg, progress=progress)
    if results is None:  # a non-zero rank of a multi-process run: rank 0 writes the results
        return
    flat = results.flat()
    paths = list(dict.fromkeys(p for values in flat.values() for p in values if not any(s in p for s in PER_CLASS)))
    _print_table(["metric", *flat], [[p, *(flat[v].get(p) for v in flat)] for p in paths])
    print_images(results, per_row=True)
    console.print(f"results: {Path(cfg.output) / 'results.json'}  (erasekit report {cfg.output})")


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'erasekit eval'.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default RUN_DIR/report.html).")
    ] = None,
    show_explicit: Annotated[bool, typer.Option(help="Include images of the explicit family (I2P).")] = False,
) -> None:
    """Write one self-contained HTML page: tables, plots, before/after image grids, config."""
    from ..report import write_report

    console.print(f"report: {write_report(run_dir, output, show_explicit)}")


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or results.json files) to put side by side.")],
    include: Annotated[str | None, typer.Option(help="Only metrics whose path contains this text (e.g. H_).")] = None,
) -> None:
    """Several evaluation runs side by side, one column per run and variant."""
    from .results import compare

    header, rows = compare(runs, include)
    _print_table(header, rows)


def add_commands(app: typer.Typer) -> typer.Typer:
    """Mount ``eval``, ``report`` and ``compare`` on ``app`` (the root ``erasekit`` CLI)."""
    app.command("eval")(eval_command)
    app.command("report")(report_command)
    app.command("compare")(compare_command)
    return app


app = add_commands(typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False))
"""The three commands as a stand-alone app (tests, ``python -m erasekit.eval.cli``)."""

if __name__ == "__main__":
    app()
