"""The papers' experiments, on the benchmark world: one protocol for every method, so their numbers compare.

A :class:`Task` fixes what is erased (one edit, or several single-concept edits whose scores are averaged, as MACE
does for CIFAR-10), which world prompts judge it (the shipped held-out rows: same prompts and seeds for every method)
and which score ranks it. :func:`run_task` fits the method's edits (cached: a re-run refits nothing), evaluates them
with :func:`erasekit.eval.evaluate` (images cached by content, so the unedited model's images are generated once for
all methods) and returns a summary; :func:`markdown_table` lays several summaries side by side.

Choices (documented in docs/world.md):

* Synonyms are NOT given to the methods: Acc_g measures whether erasure generalises to words it was not told about.
* ``preserve="none"`` (default) gives a method no preserve list, so it relies on its own prior (UCE: the empty
  prompt; MACE: its caption cache; GLoCE: its anchors). ``preserve="neighbours"`` passes the other concepts of the
  erased family that are not erased (UCE's usual recipe); for characters these are the erasable characters left
  un-erased, never the retained set that measures specificity.
* Characters: efficacy on the erased characters, specificity on the 20 retained ones (MACE's disjoint retained set).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_file
from .spec import ERASABLE_CHARACTERS as ERASABLE
from .spec import EXPLICIT_CONCEPT, OBJECTS, STYLES
from .spec import RETAINED_CHARACTERS as RETAINED

OBJECT_NAMES = [o.name for o in OBJECTS]
SCENE_TARGETS = ("church", "house", "cup")  # the three objects that appear most often in the scene prompts
PRESERVE_POLICIES = ("none", "neighbours")


@dataclass(frozen=True)
class Task:
    """One experiment: ``edits`` lists, per edit, the concepts it erases (dicts for :class:`~erasekit.Concept`)."""

    name: str
    description: str
    prompt_set: str
    family: str  # the accuracy metric's family entry that carries the score
    score: str  # H_o, H_c, H_cc or H
    edits: tuple[tuple[dict[str, Any], ...], ...]
    neighbours: tuple[str, ...] = ()  # candidates for preserve="neighbours"
    keep_rows: Callable[[dict[str, str], set[str]], bool] = lambda row, erased: True


def _characters(n: int) -> Task:
    erased = tuple({"text": name, "kind": "celebrity"} for name in ERASABLE[:n])
    return Task(
        name=f"characters-{n}",
        description=f"erase {n} character(s) at once (MACE's 1/10/100 celebrities)",
        prompt_set="characters",
        family="character",
        score="H_c",
        edits=(erased,),
        neighbours=tuple(ERASABLE),
        keep_rows=lambda row, erased: row["concept"] in erased or row["concept"] in RETAINED,
    )


def _single(kind: str, names: Sequence[str]) -> tuple[tuple[dict[str, Any], ...], ...]:
    return tuple(({"text": name, "kind": kind},) for name in names)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        _characters(1),
        _characters(10),
        _characters(100),
        Task(
            "object",
            "erase one object (car); the other nine measure specificity, its synonyms generality",
            "objects",
            "object",
            "H_o",
            _single("object", ["car"]),
            tuple(OBJECT_NAMES),
        ),
        Task(
            "objects-10",
            "erase each of the ten objects in turn (ten edits, scores averaged: MACE's CIFAR-10 protocol)",
            "objects",
            "object",
            "H_o",
            _single("object", OBJECT_NAMES),
            tuple(OBJECT_NAMES),
        ),
        Task(
            "style",
            f"erase one style ({STYLES[0].name}); the other 19 styles measure specificity",
            "styles",
            "style",
            "H",
            _single("style", [STYLES[0].name]),
            tuple(s.name for s in STYLES),
        ),
        Task(
            "explicit",
            f"erase '{EXPLICIT_CONCEPT}' (nudity analogue): direct, synonym and indirect prompts; neutral prompts "
            "must stay clothed",
            "explicit",
            "explicit",
            "H",
            _single("explicit", [EXPLICIT_CONCEPT]),
        ),
        Task(
            "scene-local",
            f"erase one object of two-subject scenes ({', '.join(SCENE_TARGETS)} in turn): the other subject must "
            "survive (GLoCE's localized erasure, H_cc)",
            "scenes",
            "scene",
            "H_cc",
            _single("object", SCENE_TARGETS),
            tuple(OBJECT_NAMES),
            keep_rows=lambda row, erased: bool(erased & set(row["concept"].split("+"))),
        ),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown world task '{name}'; available: {', '.join(TASKS)}")
    return TASKS[name]


def _preserve(task: Task, concepts: Sequence[dict[str, Any]], policy: str) -> list[str]:
    if policy not in PRESERVE_POLICIES:
        raise ConfigError(f"preserve: expected one of {', '.join(PRESERVE_POLICIES)}, got '{policy}'")
    if policy == "none":
        return []
    erased = {c["text"] for c in concepts}
    return [name for name in task.neighbours if name not in erased]


def _write_rows(task: Task, path: Path) -> Path:
    """The task's prompt rows (a subset of the shipped world set) as a CSV the evaluation reads."""
    from .prompts import prompt_set

    if path.exists():
        return path
    erased = {c["text"] for concepts in task.edits for c in concepts}
    rows = [row for row in prompt_set(task.prompt_set) if task.keep_rows(row, erased)]
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_label(method: str, params: dict[str, Any] | None, preserve: str) -> str:
    """A folder name for (method, params, preserve): readable, and distinct for distinct settings."""
    digest = hashlib.sha256(json.dumps(params or {}, sort_keys=True).encode()).hexdigest()[:8]
    return f"{method}-{preserve}" + (f"-{digest}" if params else "")


def run_task(
    task: str | Task,
    method: str,
    params: dict[str, Any] | None = None,
    preserve: str = "none",
    output: str | Path = "runs/world-bench",
    label: str | None = None,
    pipe: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``method``'s edits for ``task`` on the world model, evaluate them, and return (and save) the summary.

    Edits are saved under ``output/<task>/<label>/`` and reused when present, so an interrupted run resumes.
    """
    import torch

    from ..api import erase
    from ..edits import Edit
    from ..eval.run import EvalConfig, evaluate
    from ..methods import get_method
    from ..models import load_pipeline
    from . import load_classifiers
    from .prompts import SAMPLING

    task = get_task(task) if isinstance(task, str) else task
    get_method(method)(params)  # validate the method and its params before any work
    _preserve(task, (), preserve)
    label = label or run_label(method, params, preserve)
    folder = Path(output) / task.name / label
    folder.mkdir(parents=True, exist_ok=True)
    pipe = pipe if pipe is not None else load_pipeline("erasekit:world")
    edits: dict[str, str] = {}
    fit_seconds: list[float] = []
    for index, concepts in enumerate(task.edits):
        path = folder / f"edit-{index}.safetensors"
        if path.exists():
            info = Edit.load(path).info
        else:
            torch.manual_seed(index)
            start = time.perf_counter()
            kept = _preserve(task, concepts, preserve)
            edit = erase(pipe, list(concepts), method=method, preserve=kept, params=params)
            edit.info["fit_seconds"] = time.perf_counter() - start
            edit.info["model"] = "erasekit:world"
            edit.save(path)
            info = edit.info
        fit_seconds.append(float(info.get("fit_seconds", float("nan"))))
        edits[f"edit-{index}"] = str(path)
    config = EvalConfig(
        model="erasekit:world",
        prompts=[str(_write_rows(task, Path(output) / task.name / "prompts.csv"))],
        edits=edits,
        classifier="world",
        sampling_steps=int(SAMPLING["steps"]),
        guidance=float(SAMPLING["guidance"]),
        output=str(folder / "eval"),
    )
    results = evaluate(config, pipe=pipe, classifier=load_classifiers(), progress=progress)
    summary = summarize(task, results, label, method, params, preserve)
    summary["fit_seconds_per_edit"] = sum(fit_seconds) / len(fit_seconds)
    with atomic_file(folder / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def summarize(
    task: Task, results: Any, label: str, method: str, params: dict[str, Any] | None, preserve: str
) -> dict[str, Any]:
    """Accuracies per role and the task's score: the base model's, and the edits' averaged over edits."""

    def family(variant: str) -> dict[str, Any]:
        return results.metrics(variant)["accuracy"]["families"].get(task.family, {})

    def mean(entries: list[dict[str, Any]]) -> dict[str, float]:
        keys = sorted({k for e in entries for k in e.get("acc", {})})
        out = {k: sum(e["acc"][k] for e in entries) / len(entries) for k in keys if all(k in e["acc"] for e in entries)}
        scores = [e[task.score] for e in entries if task.score in e]
        if len(scores) == len(entries):
            out[task.score] = sum(scores) / len(scores)
        return out

    edited = [family(name) for name in results["variants"] if name != "base"]
    return {
        "task": task.name,
        "description": task.description,
        "method": method,
        "params": params or {},
        "preserve": preserve,
        "label": label,
        "edits": len(edited),
        "base": mean([family("base")]),
        "edited": mean(edited),
    }


ROLE_COLUMNS = {
    "erase": "Acc_e",
    "synonym": "Acc_g",
    "indirect": "Acc_i",
    "retain": "Acc_s",
    "target": "Acc_t",
    "remaining": "Acc_r",
}


def load_summaries(task: str, output: str | Path = "runs/world-bench") -> list[dict[str, Any]]:
    """Every summary :func:`run_task` wrote for ``task`` under ``output``, by label."""
    paths = sorted((Path(output) / get_task(task).name).glob("*/summary.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per summary (plus the unedited model's row first), percentages, the task's score last."""
    if not summaries:
        return ""
    score = get_task(summaries[0]["task"]).score
    roles = [r for r in ROLE_COLUMNS if any(r in s["edited"] for s in summaries)]
    header = ["method", *[ROLE_COLUMNS[r] for r in roles], score, "fit s/edit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(values: dict[str, float]) -> list[str]:
        return [f"{100 * values[k]:.1f}" if k in values else "" for k in [*roles, score]]

    lines.append("| " + " | ".join(["unedited", *cells(summaries[0]["base"]), ""]) + " |")
    for s in summaries:
        lines.append("| " + " | ".join([s["label"], *cells(s["edited"]), f"{s['fit_seconds_per_edit']:.1f}"]) + " |")
    return "\n".join(lines)
