"""Attack success rates on the benchmark world: every attack against the unedited model and each method's edits.

Tasks (one edit per method and task, no preserve list, as ``erasekit world bench``'s default): the object ``car``, the
style of the first painter, three characters erased at once, and the explicit attribute ``shirtless``. The attacked
rows are the first ``--rows`` prompts naming each erased concept in the shipped world prompt sets (same prompts and
seeds for every method); the judge is the world classifier of the row's family. Adding a method is one argument
(``--methods uce rece mace``; ``--params mace='{"...": ...}'`` for settings); edits are fitted once and cached under
``--output``, each variant's attack run in its own folder (``--output/<task>/<variant>``, rendered by ``erasekit
report``), so a re-run only fits and attacks what is new (``--force`` redoes variants).

    python benchmarks/attacks_world.py                         # every registered method among uce rece mace gloce dumo
    python benchmarks/attacks_world.py --methods uce rece --rows 3

Prints one table per task (ASR in %, rows = attacks, columns = base and methods; † = the closed form on an edit that
leaves the K/V maps unchanged, i.e. the plain prompt), then the attack-only success on the unedited model, and writes
``benchmarks/results/attacks_world.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_form import machine

from erasekit import erase, load_pipeline
from erasekit.attacks import run_attacks
from erasekit.eval.results import load_run
from erasekit.io import atomic_file
from erasekit.methods import METHODS
from erasekit.world import ERASABLE_CHARACTERS, load_classifiers
from erasekit.world.prompts import prompt_set
from erasekit.world.spec import ARTISTS, EXPLICIT_CONCEPT

TASKS: dict[str, tuple[str, list[dict[str, str]]]] = {
    "object": ("objects", [{"text": "car", "kind": "object"}]),
    "style": ("styles", [{"text": ARTISTS[0], "kind": "style"}]),
    "characters": ("characters", [{"text": name, "kind": "celebrity"} for name in ERASABLE_CHARACTERS[:3]]),
    "explicit": ("explicit", [{"text": EXPLICIT_CONCEPT, "kind": "explicit"}]),
}
ATTACKS: dict[str, dict[str, Any]] = {
    "closed_form": {"lambda_reg": 0.1},
    "closed_form_1e-3": {"type": "closed_form", "lambda_reg": 1e-3},
    "ringabell": {"eta": 3.0},
    "ringabell_eta1": {"type": "ringabell", "eta": 1.0},
    "inversion": {"steps": 50},
    "token_search": {"steps": 8, "queries": 2, "candidates": 8},
}
DEFAULT_METHODS = ("uce", "rece", "mace", "gloce", "dumo")


def default_params() -> dict[str, dict[str, Any]]:
    """The methods' world presets where their defaults are SD's (``--params`` overrides them)."""
    return {"mace": {"preset": "world"}, "dumo": {"preset": "world"}}


RESULTS = Path(__file__).resolve().parent / "results"


def write_rows(set_name: str, concepts: list[str], per_concept: int, path: Path) -> Path:
    """The first ``per_concept`` direct prompts of each concept, as a prompt CSV."""
    rows = [r for r in prompt_set(set_name) if r["concept"] in concepts and r["role"] == "direct"]
    kept = [r for c in concepts for r in [r for r in rows if r["concept"] == c][:per_concept]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    return path


def fit(pipe: Any, method: str, concepts: list[dict[str, str]], params: dict[str, Any], path: Path) -> float:
    """Fit and save the edit unless it exists; return the seconds fitting took (recorded in the edit's info)."""
    if path.exists():
        return float(json.loads(path.with_suffix(".json").read_text())["info"].get("fit_seconds", float("nan")))
    torch.manual_seed(0)
    start = time.perf_counter()
    edit = erase(pipe, concepts, method=method, params=params)
    seconds = time.perf_counter() - start
    edit.info["fit_seconds"] = seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    edit.save(path, overwrite=True)  # only reached when the edit is missing or --force asked for a refit
    return seconds


def untouched(variant: str, entry: dict[str, Any]) -> str:
    """A mark for the closed form on an edit that leaves the K/V maps as they were (it is then the plain prompt)."""
    return " †" if variant != "base" and entry.get("info", {}).get("kv_edited") == 0.0 else ""


def markdown(task: str, variants: list[str], table: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [f"| {task} | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for label, cells in table.items():
        values = ["n/a" if cells.get(v) is None else f"{100 * cells[v]['asr']:.0f}" + untouched(v, cells[v])
                  for v in variants]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def sanity(report: dict[str, Any]) -> str:
    """Attack-only success on the unedited model (the ASR there is 100 by definition: its plain prompts succeed)."""
    tasks = list(report)
    labels = list(dict.fromkeys(label for r in report.values() for label in r["asr"]))
    lines = ["| unedited model, attacked images alone | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for label in labels:
        cells = [report[t]["asr"].get(label, {}).get("base") for t in tasks]
        values = ["n/a" if c is None else f"{100 * c['attack_success']:.0f}" for c in cells]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=[m for m in DEFAULT_METHODS if m in METHODS])
    parser.add_argument("--params", nargs="*", default=[], help="METHOD=JSON hyper-parameters")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--rows", type=int, default=5, help="attacked prompts per erased concept")
    parser.add_argument("--output", default="runs/attacks-world")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--force", nargs="*", default=[], help="refit and re-attack these variants (base or methods)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = default_params() | {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.params)}
    missing = [m for m in args.methods if m not in METHODS]
    if missing:
        parser.error(f"methods not registered: {', '.join(missing)} (registered: {', '.join(METHODS)})")

    pipe, classifier = load_pipeline("erasekit:world"), load_classifiers()
    out, report, fit_seconds = Path(args.output), {}, {}
    for task in args.tasks:
        set_name, concepts = TASKS[task]
        names = [c["text"] for c in concepts]
        prompts = write_rows(set_name, names, args.rows, out / task / "prompts.csv")
        columns: dict[str, dict[str, Any]] = {}
        for variant in ["base", *args.methods]:
            run_dir = out / task / variant
            if not (run_dir / "results.json").exists() or variant in args.force:
                edits = {}
                if variant != "base":
                    path = out / task / "edits" / f"{variant}.safetensors"
                    if variant in args.force:  # refit too: the method's code or --params may have changed
                        path.unlink(missing_ok=True)
                    fit_seconds[f"{task}/{variant}"] = fit(pipe, variant, concepts, params.get(variant, {}), path)
                    edits = {variant: str(path)}
                run_attacks(
                    {"model": "erasekit:world", "prompts": [str(prompts)], "edits": edits, "concepts": names,
                     "baseline": variant == "base", "attacks": ATTACKS, "judge": "world", "output": str(run_dir),
                     "cache_dir": args.cache_dir},
                    pipe=pipe, classifier=classifier, progress=args.progress,
                )  # fmt: skip
            results = load_run(run_dir)
            columns[variant] = results.metrics(variant)["attack"]
            columns[variant]["_seconds"] = sum(e.get("seconds", 0.0) for e in columns[variant].values())
        variants = list(columns)
        labels = [label for label in columns["base"] if not label.startswith("_")]
        table = {
            label: {v: columns[v][label] for v in variants if columns[v].get(label, {}).get("applicable")}
            for label in labels
        }
        seconds = {v: columns[v].pop("_seconds") for v in variants}
        report[task] = {"concepts": names, "variants": variants, "asr": table, "attack_seconds": seconds}
        print(markdown(task, variants, table), flush=True)

    payload = {"machine": machine(), "attacks": ATTACKS, "rows_per_concept": args.rows, "params": params,
               "fit_seconds": fit_seconds, "tasks": report}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    with atomic_file(RESULTS / "attacks_world.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tables = [markdown(t, r["variants"], r["asr"]) for t, r in report.items()]
    tables.append(sanity(report))
    print(tables[-1])
    with atomic_file(RESULTS / "attacks_world.md") as tmp:
        tmp.write_text("\n\n".join(tables) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
