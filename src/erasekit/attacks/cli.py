"""The ``attack`` command, mounted on the ``erasekit`` CLI with :func:`add_commands` (as the ``eval`` commands are).

torch and diffusers are imported inside the command, so ``erasekit --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..eval.cli import OVERWRITE_HELP, load_settings, print_images

console = Console(highlight=False)


def attack_command(
    config: Annotated[Path, typer.Argument(help="Attack config (YAML): model, edits, prompts, attacks, judge.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (overrides 'output').")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most N rows of each prompt set, evenly spaced.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Attack the unedited model and every edit; print the attack success rate (ASR) of each attack."""
    from .config import AttackConfig
    from .runner import run_attacks

    cfg = load_settings(AttackConfig, config, output, limit, overwrite)
    results = run_attacks(cfg, progress=progress)
    variants = list(results["variants"])
    table = Table("ASR (%)", *variants)
    for label in results["variants"][variants[0]]["metrics"]["attack"]:
        cells = []
        for variant in variants:
            entry = results.metrics(variant)["attack"].get(label, {})
            cells.append(f"{100 * entry['asr']:.1f}" if entry.get("applicable") else "n/a")
        table.add_row(label, *cells)
    console.print(table)
    print_images(results)
    console.print(f"results: {Path(cfg.output) / 'results.json'}  (erasekit report {cfg.output})")


def add_commands(app: typer.Typer) -> typer.Typer:
    """Mount ``attack`` on ``app`` (the root ``erasekit`` CLI)."""
    app.command("attack")(attack_command)
    return app
