"""The ``attack`` command, mounted on the ``erasekit`` CLI with :func:`add_commands` (as the ``eval`` commands are).

torch and diffusers are imported inside the command, so ``erasekit --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def attack_command(
    config: Annotated[Path, typer.Argument(help="Attack config (YAML): model, edits, prompts, attacks, judge.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (overrides 'output').")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most N rows of each prompt set, evenly spaced.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Attack the unedited model and every edit; print the attack success rate (ASR) of each attack."""
    from .config import AttackConfig
    from .runner import run_attacks

    cfg = AttackConfig.from_yaml(config)
    if output is not None:
        cfg.output = str(output)
    if limit is not None:
        cfg.limit = limit
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
    console.print(f"results: {Path(cfg.output) / 'results.json'}  (erasekit report {cfg.output})")


def add_commands(app: typer.Typer) -> typer.Typer:
    """Mount ``attack`` on ``app`` (the root ``erasekit`` CLI)."""
    app.command("attack")(attack_command)
    return app
