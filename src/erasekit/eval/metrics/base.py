"""What every metric looks like: options validated up front, a pinned protocol, ``compute`` on one evaluated model.

A metric is a plug-in: a class with a ``name``, an options dataclass (validated with :func:`from_dict`, so a bad
option names its field) and ``compute(variant) -> dict``. It reads the cached images of one evaluated model
(a :class:`Variant`) and, for paired metrics, those the unerased model made from the same rows (``variant.base``).
``protocol()`` returns every setting that changes the number, for the results JSON.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ...errors import ConfigError, MetricUnavailableError
from ...registry import Registry
from ...validation import from_dict, to_dict
from ..prompts import PromptRow
from ..sampling import ImageCache


@dataclass
class Variant:
    """One evaluated model (the base, or the base with an edit): its rows with roles, and their cached images.

    ``rows[i]`` was generated as ``keys[i]``; ``base.keys[i]`` is the unerased model's image of the same row.
    ``memo`` is shared by all metrics of an evaluation (e.g. image features used by both FID and KID).
    """

    name: str
    concepts: list[str]
    rows: list[PromptRow]
    keys: list[str]
    cache: ImageCache
    base: Variant | None = None
    classifier: Any = None
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def indices(self, roles: Sequence[str] | None = None, families: Sequence[str] | None = None) -> list[int]:
        """Rows with one of ``roles`` and ``families`` (``None``: any)."""
        return [
            i
            for i, row in enumerate(self.rows)
            if (roles is None or row.role in roles) and (families is None or row.family in families)
        ]

    def images(self, indices: Sequence[int]) -> list[Image.Image]:
        return [self.cache.load(self.keys[i]) for i in indices]

    def mean_by_role(self, values: Sequence[float]) -> dict[str, float]:
        """Mean of a per-row value over each role's rows."""
        return {
            role: float(np.mean([values[i] for i in idx]))
            for role in sorted({r.role for r in self.rows})
            if (idx := self.indices(roles=[role]))
        }


def batches(indices: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` in consecutive chunks of at most ``size``."""
    return [list(indices[s : s + size]) for s in range(0, len(indices), size)]


class Metric(ABC):
    """Base class: subclasses set ``name`` and ``options_class`` and implement :meth:`compute`."""

    name: ClassVar[str]
    options_class: ClassVar[type]

    def __init__(self, options: Any = None) -> None:
        self.options = from_dict(self.options_class, options or {}, where=f"metric_options.{self.name}")

    def protocol(self) -> dict[str, Any]:
        """Every setting the number depends on (recorded in the results)."""
        return to_dict(self.options)

    def prepare(self) -> None:
        """Load weights and optional packages now, so that a missing one fails before any image is generated."""
        return None

    @property
    def needs_classifier(self) -> bool:
        """Whether the metric needs the evaluation's classifier (the world's judges or a stand-in)."""
        return False

    @property
    def needs_base(self) -> bool:
        """Whether the metric compares a model's images with the base model's (it is then not computed for the base)."""
        return False

    @abstractmethod
    def compute(self, variant: Variant) -> dict[str, Any]:
        """The metric's numbers for ``variant``; a ``per_row`` list (one entry per row) goes to ``rows.jsonl``."""


METRICS: Registry[type[Metric]] = Registry("metric")
register = METRICS.register()
"""Class decorator adding a metric to :data:`METRICS` under its ``name``."""


def require(module: str, extra: str = "eval") -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MetricUnavailableError(
            f"this metric needs the optional package '{module}': pip install 'erasekit[{extra}]'"
        ) from None


CLASSIFIERS: Registry[Callable[[], Any]] = Registry("classifier")
"""Named classifier factories for ``classifier:`` in a config (the benchmark world registers ``world`` from its
plugin); a classifier follows the world's contract: ``predict(images, head)`` and ``features(images)``."""


def load_classifier(spec: str | None) -> Any:
    """A registered classifier (``world``), ``module:factory`` (called with no argument), or None."""
    if spec is None:
        return None
    module, sep, attr = spec.partition(":")
    if not sep:
        if spec not in CLASSIFIERS:
            known = " or ".join(f"'{name}'" for name in [*CLASSIFIERS.names(), "module:factory"])
            raise ConfigError(f"classifier: expected {known}, got '{spec}'")
        return CLASSIFIERS.get(spec)()
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"classifier: cannot import '{spec}': {exc}") from None
    return factory()


def missing_classifier(metric: str) -> MetricUnavailableError:
    return MetricUnavailableError(
        f"metric '{metric}' needs a classifier: set 'classifier' in the eval config ('world' or 'module:factory') "
        "or pass classifier= to evaluate()"
    )


def load_weights(loader: Callable[[], Any], what: str, spec: str | None, option: str) -> Any:
    """Run ``loader``; a missing or unreadable checkpoint becomes one clear :class:`MetricUnavailableError`."""
    if not spec:
        raise MetricUnavailableError(f"{what} weights are not configured: set {option} to a local path or hub id")
    try:
        return loader()
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetricUnavailableError(
            f"{what} weights '{spec}' cannot be loaded ({first[:200]}); download them where a model hub is "
            f"reachable and set {option} to the local folder or file"
        ) from None
