"""One run: sample prompt sets from a model with and without edits, judge the cached images, write a run folder.

Evaluations (:func:`evaluate`, below) and attacks (:func:`erasekit.attacks.run_attacks`) are both runs. They share
the settings (:class:`RunSettings`), the opening (:func:`open_run`), the sampler and image cache (``sampling.py``) and
the run folder (``results.py``)::

    open_run: edits -> prompt rows -> the run's own checks -> pipeline -> every edit applied once -> image cache
    evaluate, per variant (base, each edit):  edit.apply(pipe) -> generate missing images -> edit.remove(pipe)
        roles = assign_roles(rows, concepts)   which rows test erasure, generality, retention
        metrics[name].compute(variant)         from the cached images only
    write results.json + rows.jsonl            ``erasekit report`` renders them

Re-running the same config regenerates nothing: images are looked up by content key (``sampling.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from PIL import Image

from ..edits import Edit
from ..errors import ConfigError
from ..launch import process_device, process_rank
from ..validation import check_device, from_dict, from_yaml, to_dict
from .metrics import METRICS, Metric, Variant
from .metrics.base import load_classifier, missing_classifier
from .prompts import PromptRow, assign_roles, load_prompts, rows_digest
from .results import Results, check_run_folder, environment, write_run
from .sampling import (
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
    wait_for,
)

BASE = "base"
Settings = TypeVar("Settings", bound="RunSettings")


@dataclass
class RunSettings:
    """What every run sets: the model and its edits, the prompt sets, and how their images are sampled.

    ``sampling_steps``, ``guidance`` and ``size`` fill what a prompt row leaves empty; ``limit`` keeps that many rows
    of each set, evenly spaced. Every field is checked here, before any model is loaded.
    """

    model: str
    prompts: list[str]
    edits: dict[str, str] = field(default_factory=dict)
    concepts: list[str] | None = None
    baseline: bool = True
    sampling_steps: int = 50
    guidance: float = 7.5
    size: int | None = None
    limit: int | None = None
    batch_size: int = 8
    output: str = "runs/eval"
    cache_dir: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    allow_modified: bool = False  # use edit artifacts changed after erasekit wrote them (erasekit info tells)
    overwrite: bool = False  # replace the results of a different configuration in `output`

    verb: ClassVar[str] = "run"  # what the run does, for messages ("nothing to evaluate")

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts: name at least one prompt set (a CSV path or a named set such as i2p)")
        if not self.baseline and not self.edits:
            raise ConfigError(f"nothing to {self.verb}: baseline is false and no edits are given")
        if BASE in self.edits:
            raise ConfigError(f"edits: '{BASE}' is reserved for the unedited model; name the edit otherwise")
        checks = (("sampling_steps", self.sampling_steps), ("batch_size", self.batch_size), ("limit", self.limit or 1))
        for name, value in checks:
            if value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        if self.size is not None and (self.size <= 0 or self.size % 8):
            raise ConfigError(f"size: must be a positive multiple of 8, got {self.size}")
        check_device(self.device)

    @classmethod
    def from_yaml(cls: type[Settings], path: str | Path) -> Settings:
        return from_yaml(cls, path)


def variants(settings: RunSettings, edits: dict[str, Edit]) -> dict[str, Edit | None]:
    """The models a run samples, by name: the unedited one (``base``, unless ``baseline`` is false) and every edit."""
    return ({BASE: None} if settings.baseline else {}) | edits


def edit_concepts(edit: Edit) -> list[str]:
    """The concepts an edit erased, as written when it was fitted."""
    return [c["text"] for c in edit.concepts.get("concepts", [])]


@dataclass
class Run:
    """An opened run: the pipeline, the loaded edits and prompt rows, the image cache and the filled-in defaults."""

    settings: RunSettings
    pipe: Any
    edits: dict[str, Edit]
    rows: list[PromptRow]
    cache: ImageCache
    model_fp: str  # of the unedited pipeline: with the edit's fingerprint, part of every image key
    size: int
    rank: int = 0
    world: int = 1

    @property
    def variants(self) -> dict[str, Edit | None]:
        return variants(self.settings, self.edits)

    def spec(self, row: PromptRow) -> ImageSpec:
        return image_spec(row, self.settings.sampling_steps, self.settings.guidance, self.size)

    def key(self, spec: ImageSpec, edit_fp: str | None) -> str:
        return image_key(spec, self.model_fp, edit_fp)

    @contextmanager
    def applied(self, edit: Edit | None) -> Iterator[None]:
        """The pipeline with ``edit`` applied (``None``: unedited) for the duration of the block."""
        if edit is not None:
            edit.apply(self.pipe)
        try:
            yield
        finally:
            if edit is not None:
                edit.remove(self.pipe)

    def generation_protocol(self) -> dict[str, Any]:
        """Every sampling setting an image depends on (recorded in the results)."""
        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "scheduler_config": dict(self.pipe.scheduler.config),
            "sampling_steps": self.settings.sampling_steps,
            "guidance": self.settings.guidance,
            "size": self.size,
            "dtype": self.settings.dtype,
            "seeding": SEEDING,
        }

    def results(self, protocol: dict[str, Any], variants: dict[str, dict[str, Any]]) -> Results:
        """The run's ``results.json``: ``variants[name]`` (concepts, images generated, metrics) joins what the run
        knows of each variant (its edit file, fingerprint and method)."""
        rows, settings = self.rows, self.settings
        return Results(
            {
                "config": to_dict(settings),
                "environment": environment(),
                "model": {"spec": settings.model, "fingerprint": self.model_fp},
                "protocol": protocol,
                "prompts": {"sets": dict(Counter(r.set for r in rows)), "rows": len(rows), "sha256": rows_digest(rows)},
                "cache_dir": str(Path(self.cache.root).resolve()),
                "variants": {
                    name: {
                        "edit": settings.edits.get(name),
                        "edit_fingerprint": edit_fingerprint(edit),
                        "method": edit.method if edit is not None else None,
                        **variants[name],
                    }
                    for name, edit in self.variants.items()
                },
            }
        )


def open_run(
    settings: RunSettings,
    pipe: Any = None,
    check: Callable[[dict[str, Edit], list[PromptRow]], None] | None = None,
) -> Run:
    """Load the edits and prompt rows, run ``check`` on them (a run's own validation), then load the pipeline (unless
    given) and apply and remove every edit once: an edit fitted on another model fails before any image is made."""
    from ..models import load_pipeline
    from ..models.loading import DTYPES, cache_dir

    check_run_folder(Path(settings.output), to_dict(settings), settings.overwrite)
    edits = {name: Edit.load(path, verify=not settings.allow_modified) for name, path in settings.edits.items()}
    rows = []
    for spec in settings.prompts:
        found = load_prompts(spec, settings.limit)
        if not found:
            raise ConfigError(f"prompts: the prompt set '{spec}' has no rows; nothing to {settings.verb} with it")
        rows += found
    if check is not None:
        check(edits, rows)
    rank, world = process_rank()
    if pipe is None:
        pipe = load_pipeline(settings.model, dtype=DTYPES[settings.dtype], device=process_device(settings.device))
    for edit in edits.values():
        edit.remove(edit.apply(pipe))
    cache = ImageCache(settings.cache_dir or cache_dir() / "images")
    size = settings.size or native_size(pipe)
    return Run(settings, pipe, edits, rows, cache, pipeline_fingerprint(pipe), size, rank, world)


@dataclass
class EvalConfig(RunSettings):
    """An evaluation as written in YAML: a run, its metrics, and the classifier some metrics judge with."""

    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    metric_options: dict[str, dict] = field(default_factory=dict)
    classifier: str | None = None
    wait_timeout: float = 3600.0

    verb: ClassVar[str] = "evaluate"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.metrics:
            if name not in METRICS:
                raise ConfigError(f"metrics: unknown metric '{name}'; available: {', '.join(METRICS.names())}")
        for name in self.metric_options:
            if name not in self.metrics:
                raise ConfigError(f"metric_options.{name}: '{name}' is not in metrics")

    def build_metrics(self) -> list[Metric]:
        return [METRICS.get(name)(self.metric_options.get(name)) for name in self.metrics]


def evaluate(
    config: EvalConfig | dict[str, Any],
    pipe: Any = None,
    classifier: Any = None,
    progress: bool = True,
    sampler: Callable[[Any, Sequence[ImageSpec]], list[Image.Image]] | None = None,
) -> Results | None:
    """Run an evaluation and write its run folder; return the results (``None`` on ranks other than 0).

    ``pipe`` and ``classifier`` may be given as objects instead of through the config (``model`` is then only a
    label); ``sampler`` replaces :func:`~erasekit.eval.sampling.sample_batch` (tests, other pipelines).
    """
    config = from_dict(EvalConfig, config, where="eval config") if isinstance(config, dict) else config
    metrics = config.build_metrics()  # validate everything before the slow parts
    for metric in metrics:
        if metric.needs_base and not config.baseline:
            raise ConfigError(f"metric '{metric.name}' compares with the unedited model's images: set baseline: true")
        metric.prepare()  # a missing weight file or package fails here, before any image is generated
    protocols = {m.name: m.protocol() for m in metrics}

    def check_classifier(edits: dict[str, Edit], rows: list[PromptRow]) -> None:
        nonlocal classifier
        classifier = classifier if classifier is not None else load_classifier(config.classifier)
        for metric in metrics:
            if metric.needs_classifier and classifier is None:
                raise missing_classifier(metric.name)

    run = open_run(config, pipe, check_classifier)
    rows, cache = run.rows, run.cache

    # 1. Images: every variant's missing images, this process's share.
    specs = [run.spec(row) for row in rows]
    keys = {name: [run.key(spec, edit_fingerprint(edit)) for spec in specs] for name, edit in run.variants.items()}
    generated = {}
    for name, edit in run.variants.items():
        with run.applied(edit):
            generated[name] = generate(
                run.pipe, specs, keys[name], cache, batch_size=config.batch_size, sampler=sampler or sample_batch,
                rank=run.rank, world=run.world, description=name, progress=progress,
            )  # fmt: skip
    if run.rank != 0:
        return None
    if run.world > 1:
        wait_for(cache, [k for ks in keys.values() for k in ks], config.wait_timeout)

    # 2. Roles: the base is scored against the configured concepts, or the first edit's.
    first_edit = next(iter(run.edits.values()), None)
    base_concepts = config.concepts if config.concepts is not None else edit_concepts(first_edit) if first_edit else []
    memo: dict[Any, Any] = {}
    views: dict[str, Variant] = {}
    for name, edit in run.variants.items():
        concepts = base_concepts if edit is None or config.concepts is not None else edit_concepts(edit)
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

    generation = run.generation_protocol() | {"batch_size": config.batch_size, "processes": run.world}
    results = run.results(
        {"generation": generation, "metrics": protocols},
        {
            name: {"concepts": view.concepts, "images_generated": generated[name], "metrics": scores[name]}
            for name, view in views.items()
        },
    )
    records = [
        {
            **row.to_dict(),
            "variants": {
                name: {"key": view.keys[i], "role": view.rows[i].role, **per_row[name][i]}
                for name, view in views.items()
            },
        }
        for i, row in enumerate(rows)
    ]
    write_run(Path(config.output), results, records)
    return results
