"""The run folder an evaluation or an attack writes, and the side-by-side view of several runs.

    <run>/results.json   every number, per variant and metric, with the config, the pinned protocols, the model and
                         edit fingerprints, the prompt sets' digest and the package versions (format erasekit.eval/1)
    <run>/rows.jsonl     one line per prompt row (per attack and row for attacks): the row, and per variant its image
                         key, role and per-row outputs (classifier prediction, CLIP score, NudeNet boxes, LPIPS)

Images stay in the shared content-addressed cache (``results["cache_dir"]``); the report reads them from there.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import EvaluationError, OutputExistsError
from ..io import atomic_file, check_output

FORMAT = "erasekit.eval/1"
RESULTS_FILE = "results.json"
ROWS_FILE = "rows.jsonl"
PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "pillow", "nudenet", "onnxruntime")


class Results(dict):
    """A parsed ``results.json``: ``results["variants"][name]["metrics"][metric]`` holds the numbers."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__({"format": FORMAT, **data})

    def metrics(self, variant: str) -> dict[str, Any]:
        return self["variants"][variant]["metrics"]

    def flat(self) -> dict[str, dict[str, float]]:
        """Per variant, every numeric leaf as ``metric.path.to.value`` (for tables and comparisons)."""
        return {name: dict(_leaves(v["metrics"])) for name, v in self["variants"].items()}


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [(prefix[:-1], tree)]
    return []


def environment() -> dict[str, Any]:
    """When and with what an evaluation ran."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "erasekit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_run(out_dir: Path, results: Results, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``results.json`` and ``rows.jsonl`` (one line per record) into ``out_dir``, each atomically (a re-run
    replaces them). Evaluations write one record per prompt row, attacks one per attack and row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / RESULTS_FILE) as tmp:
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with atomic_file(out_dir / ROWS_FILE) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    return out_dir


def load_run(path: str | Path) -> Results:
    """The results of a run folder (or of a ``results.json`` path)."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise EvaluationError(f"'{path}' is not an evaluation run: no {RESULTS_FILE} (run 'erasekit eval' first)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EvaluationError(f"'{file}' is not an erasekit evaluation result (not JSON text)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("variants"), dict):
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise EvaluationError(f"'{file}' is not an erasekit evaluation result (format {found!r})")
    return Results(data)


def check_run_folder(out_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Before any work: ``out_dir`` must be a writable folder, and results already there must come from the same
    configuration (a re-run continues it) unless ``overwrite``; never silently replace another run's results."""
    check_output(out_dir, overwrite=True, folder=True)
    if overwrite or not (out_dir / RESULTS_FILE).is_file():
        return
    try:
        previous = load_run(out_dir)["config"]
    except (EvaluationError, KeyError):
        previous = None
    ignored = {"output", "overwrite", "allow_modified"}
    if not isinstance(previous, dict):
        raise OutputExistsError(f"'{out_dir}' holds a {RESULTS_FILE} that is not an erasekit result; pass --overwrite")
    changed = sorted(k for k in {*config, *previous} - ignored if config.get(k) != previous.get(k))
    if changed:
        raise OutputExistsError(
            f"'{out_dir}' holds the results of another configuration (it differs in {', '.join(changed)}); "
            "choose another output folder or pass --overwrite to replace them"
        )


def load_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    file = Path(run_dir) / ROWS_FILE
    if not file.is_file():
        raise EvaluationError(f"'{run_dir}' has no {ROWS_FILE}")
    try:
        with file.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EvaluationError(f"'{file}' is damaged (not JSON lines); run the evaluation again") from None


def compare(runs: Sequence[str | Path], include: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Several runs side by side: (header, rows) with one column per run and variant, one row per metric value.

    ``include`` keeps only the metric paths containing that text (e.g. ``accuracy`` or ``H_``).
    """
    columns: list[tuple[str, dict[str, float]]] = []
    for run in runs:
        results = load_run(run)
        label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        columns += [(f"{label}/{variant}", values) for variant, values in results.flat().items()]
    paths: list[str] = []
    for _, values in columns:
        paths += [p for p in values if p not in paths and (include is None or include in p)]
    table = [[path, *(values.get(path) for _, values in columns)] for path in paths]
    return ["metric", *(label for label, _ in columns)], table
