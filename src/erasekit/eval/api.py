"""``evaluate``: generate (cached) images for prompt sets from a model with and without edits, then score them.

    rows = load_prompts(...)                  one image per row
    for each variant (base, each edit):       edit.apply(pipe) -> generate missing images -> edit.remove(pipe)
        roles = assign_roles(rows, concepts)  which rows test erasure, generality, retention
        metrics[name].compute(variant)        from the cached images only
    write results.json + rows.jsonl           (results.py); ``erasekit report`` renders them

Re-running the same config regenerates nothing: images are looked up by content key (generation.py).
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..errors import ConfigError
from ..validation import from_dict, from_yaml, to_dict
from .generation import (
    SEEDING,
    ImageCache,
    ImageSpec,
    edit_fingerprint,
    generate,
    image_key,
    image_spec,
    native_size,
    pipeline_fingerprint,
    sample_batch,
    shard,
    wait_for,
)
from .metrics import METRICS, Metric, Variant
from .metrics.base import missing_classifier
from .prompts import PromptRow, assign_roles, load_prompts, rows_digest
from .results import Results, environment, write_run

BASE = "base"


def check_run_settings(config: Any, verb: str) -> None:
    """The checks every run that samples prompt sets with and without edits shares (evaluations, attacks)."""
    if not config.prompts:
        raise ConfigError("prompts: name at least one prompt set (a CSV path, a built-in set or world:<name>)")
    if not config.baseline and not config.edits:
        raise ConfigError(f"nothing to {verb}: baseline is false and no edits are given")
    if BASE in config.edits:
        raise ConfigError(f"edits: '{BASE}' is reserved for the unedited model; name the edit otherwise")
    for name, value in (("steps", config.steps), ("batch_size", config.batch_size), ("limit", config.limit or 1)):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if config.size is not None and (config.size <= 0 or config.size % 8):
        raise ConfigError(f"size: must be a positive multiple of 8, got {config.size}")


@dataclass
class EvalConfig:
    """An evaluation as written in YAML; every field is validated before any model is loaded."""

    model: str
    prompts: list[str]
    edits: dict[str, str] = field(default_factory=dict)
    concepts: list[str] | None = None
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    metric_options: dict[str, dict] = field(default_factory=dict)
    classifier: str | None = None
    baseline: bool = True
    steps: int = 50
    guidance: float = 7.5
    size: int | None = None
    limit: int | None = None
    batch_size: int = 8
    output: str = "runs/eval"
    cache_dir: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    wait_timeout: float = 3600.0

    def __post_init__(self) -> None:
        check_run_settings(self, "evaluate")
        for name in self.metrics:
            if name not in METRICS:
                raise ConfigError(f"metrics: unknown metric '{name}'; available: {', '.join(METRICS)}")
        for name in self.metric_options:
            if name not in self.metrics:
                raise ConfigError(f"metric_options.{name}: '{name}' is not in metrics")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalConfig:
        return from_yaml(cls, path)

    def build_metrics(self) -> list[Metric]:
        return [METRICS[name](self.metric_options.get(name)) for name in self.metrics]


def load_classifier(spec: str | None) -> Any:
    """``world`` (the benchmark world's classifiers), ``module:factory`` (called with no argument) or None."""
    if spec is None:
        return None
    if spec == "world":
        from .. import world

        return world.load_classifiers()
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"classifier: expected 'world' or 'module:factory', got '{spec}'")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"classifier: cannot import '{spec}': {exc}") from None
    return factory()


def _edit_concepts(edit) -> list[str]:
    return [c["text"] for c in edit.concepts.get("concepts", [])]


def evaluate(
    config: EvalConfig | dict[str, Any],
    pipe: Any = None,
    classifier: Any = None,
    progress: bool = True,
    sampler: Callable[[Any, Sequence[ImageSpec]], list[Image.Image]] | None = None,
) -> Results | None:
    """Run an evaluation and write its run folder; return the results (``None`` on ranks other than 0).

    ``pipe`` and ``classifier`` may be given as objects instead of through the config (``model`` is then only a
    label); ``sampler`` replaces :func:`~erasekit.eval.generation.sample_batch` (tests, other pipelines).
    """
    from ..edits import Edit
    from ..models import load_pipeline
    from ..models.loading import DTYPES, cache_dir

    config = from_dict(EvalConfig, config, where="eval config") if isinstance(config, dict) else config
    metrics = config.build_metrics()  # validate everything before the slow parts
    for metric in metrics:
        if metric.needs_base and not config.baseline:
            raise ConfigError(f"metric '{metric.name}' compares with the unedited model's images: set baseline: true")
        metric.prepare()  # a missing weight file or package fails here, before any image is generated
    protocols = {m.name: m.protocol() for m in metrics}
    edits = {name: Edit.load(path) for name, path in config.edits.items()}
    rows: list[PromptRow] = [row for spec in config.prompts for row in load_prompts(spec, config.limit)]
    classifier = classifier if classifier is not None else load_classifier(config.classifier)
    for metric in metrics:
        if metric.needs_classifier and classifier is None:
            raise missing_classifier(metric.name)
    rank, world = shard()
    if pipe is None:
        device = config.device
        if world > 1 and device == "cuda":  # one GPU per process
            device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        pipe = load_pipeline(config.model, dtype=DTYPES[config.dtype], device=device)
    for edit in edits.values():  # an edit fitted on another model fails here, before any image is generated
        edit.remove(edit.apply(pipe))
    cache = ImageCache(config.cache_dir or cache_dir() / "images")
    model_fp = pipeline_fingerprint(pipe)
    size = config.size or native_size(pipe)
    specs = [image_spec(row, config.steps, config.guidance, size) for row in rows]

    # 1. Images: every variant's missing images, this process's share.
    variants: dict[str, Any] = ({BASE: None} if config.baseline else {}) | edits
    fingerprints = {name: edit_fingerprint(edit) for name, edit in variants.items()}
    keys = {name: [image_key(spec, model_fp, fingerprints[name]) for spec in specs] for name in variants}
    generated = {}
    for name, edit in variants.items():
        if edit is not None:
            edit.apply(pipe)
        try:
            generated[name] = generate(
                pipe, specs, keys[name], cache, batch_size=config.batch_size, sampler=sampler or sample_batch,
                rank=rank, world=world, description=name, progress=progress,
            )  # fmt: skip
        finally:
            if edit is not None:
                edit.remove(pipe)
    if rank != 0:
        return None
    if world > 1:
        wait_for(cache, [k for ks in keys.values() for k in ks], config.wait_timeout)

    # 2. Roles: the base is scored against the configured concepts, or the first edit's.
    first_edit = next(iter(edits.values()), None)
    base_concepts = config.concepts if config.concepts is not None else _edit_concepts(first_edit) if first_edit else []
    memo: dict[Any, Any] = {}
    views: dict[str, Variant] = {}
    for name, edit in variants.items():
        concepts = base_concepts if edit is None or config.concepts is not None else _edit_concepts(edit)
        rows_with_roles = assign_roles(rows, concepts)
        views[name] = Variant(name, concepts, rows_with_roles, keys[name], cache, classifier=classifier, memo=memo)
    for name, view in views.items():
        view.base = views.get(BASE) if name != BASE else None

    # 3. Metrics, from the cached images.
    scores: dict[str, dict[str, Any]] = {name: {} for name in views}
    per_row: dict[str, list[dict[str, Any]]] = {name: [{} for _ in rows] for name in views}
    for metric in metrics:
        for name, view in views.items():
            if view.base is not None or not metric.needs_base:
                result = metric.compute(view)
                for i, extra in enumerate(result.pop("per_row", [])):
                    per_row[name][i].update(extra)
                scores[name][metric.name] = result

    generation = {
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": dict(pipe.scheduler.config),
        "steps": config.steps,
        "guidance": config.guidance,
        "size": size,
        "dtype": config.dtype,
        "seeding": SEEDING,
        "batch_size": config.batch_size,
        "processes": world,
    }
    results = Results(
        {
            "config": to_dict(config),
            "environment": environment(),
            "model": {"spec": config.model, "fingerprint": model_fp},
            "protocol": {"generation": generation, "metrics": protocols},
            "prompts": {"sets": dict(Counter(r.set for r in rows)), "rows": len(rows), "sha256": rows_digest(rows)},
            "cache_dir": str(Path(cache.root).resolve()),
            "variants": {
                name: {
                    "edit": config.edits.get(name),
                    "edit_fingerprint": fingerprints[name],
                    "method": edit.method if edit is not None else None,
                    "concepts": views[name].concepts,
                    "images_generated": generated[name],
                    "metrics": scores[name],
                }
                for name, edit in variants.items()
            },
        }
    )
    write_run(Path(config.output), results, rows, views, per_row)
    return results
