"""What every erasure method looks like, and the registry that finds methods by name.

A method is one file, ``methods/<name>.py`` (or a folder with ``methods/<name>/method.py``), holding a config dataclass
(every hyper-parameter documented in its field's ``metadata["help"]``, as PEFT's configs) and a :class:`Method`
subclass registered with :func:`register_method`. As in scikit-learn, constructing a method validates its parameters
and computes nothing; ``fit(model, concepts, **options) -> Edit`` does the work and leaves the model unchanged. Extra
``fit`` options are keyword-only parameters of the subclass's ``fit`` (e.g. RECE's ``validator``). See
``docs/adding_a_method.md``.

Presets, one convention for every method: a preset is a named set of parameter values. A method ships one preset per
concept kind it has defaults for, in ``presets``; other packages add presets with :func:`register_preset` (the
benchmark world adds ``world``, its CPU-sized settings). The settings concepts of kind ``K`` run with are, each layer
over the one before: the config's field defaults, preset ``K``, the preset the user names with ``params: {preset:
NAME}`` and its specialisation ``NAME-K``, and finally the user's own parameters (a user's ``None`` leaves the value
to the presets).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import fields
from typing import Any, ClassVar, TypeVar

from ..concepts import Concept, ConceptSet
from ..edits import FAMILY_NAMES, Edit
from ..errors import ConfigError
from ..models.adapter import ModelAdapter
from ..registry import Registry, load_plugins
from ..validation import from_dict, to_dict

C = TypeVar("C")

# The concept each kind is mapped to when the user gives no guide (UCE's and RECE's defaults, docs/methods/uce.md;
# celebrity is our choice, as the references have no celebrity experiment: a generic person keeps faces plausible,
# as MACE does).
DEFAULT_GUIDES = {"style": "art", "object": " ", "explicit": " ", "celebrity": "a person"}

AUTO = "auto"
UNET_FAMILIES = ("sd1", "sd2", "sdxl")
"""Families whose denoiser is a UNet with cross-attention layers, which every method edits."""
TRANSFORMER_FAMILIES = ("flux", "sd3")
"""Families whose denoiser is a joint-attention transformer: text enters through two linear maps only."""


def _import_methods(name: str | None) -> None:
    """Import the method file of ``name`` (every method file for a listing): a new file is a new method.

    A method lives in ``methods/<name>.py`` or ``methods/<name>/method.py``; a method registered under another name
    than its file's is found by importing them all.
    """
    package = importlib.import_module(__package__)
    infos = {info.name: info for info in pkgutil.iter_modules(package.__path__)}
    wanted = [infos[name]] if name in infos else list(infos.values())
    for info in wanted:
        module = f"{__package__}.{info.name}"
        if info.ispkg:
            if importlib.util.find_spec(f"{module}.method") is not None:
                importlib.import_module(f"{module}.method")
        else:
            importlib.import_module(module)


METHODS: Registry[type[Method]] = Registry("method", loader=_import_methods)
EXTRA_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}
"""Presets added by other packages: method name -> preset name -> parameter values."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``get_method(cls.name)`` and in ``erasekit methods``."""
    METHODS.add(cls.name, cls)
    return cls


def register_preset(method: str, name: str, values: dict[str, Any]) -> None:
    """Add preset ``name`` (a plain parameter dict, validated when used) to ``method``, without importing it."""
    EXTRA_PRESETS.setdefault(method, {})[name] = dict(values)


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (case-insensitive)."""
    return METHODS.get(name.lower())


class Method(ABC):
    """Base class: subclasses set ``name``, ``config_class`` and optionally ``presets``, and implement :meth:`fit`.

    ``params`` holds the parameters as the user gave them, ``preset`` the chosen preset's name and ``config`` the
    validated config without any preset; :meth:`settings` resolves the config a concept kind runs with.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """Built-in presets by name; a preset named after a concept kind is that kind's default."""
    families: ClassVar[tuple[str, ...]] = UNET_FAMILIES
    """The model families (:attr:`ModelAdapter.family`) the method edits."""

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        where = f"{self.name} params"
        data = to_dict(config) if isinstance(config, self.config_class) else dict(config or {})
        data.update(overrides)
        preset = data.pop("preset", AUTO)
        if not isinstance(preset, str):
            raise ConfigError(f"{where}.preset: expected a preset name, got {preset!r}")
        self.preset = preset
        self.params = data
        self.config = from_dict(self.config_class, data, where=where)
        known = {n.split("-")[0] for n in self.all_presets()}
        if preset != AUTO and preset not in known:
            raise ConfigError(
                f"{where}.preset: unknown preset '{preset}'; available: {', '.join([AUTO, *sorted(known)])}"
            )

    @classmethod
    def all_presets(cls) -> dict[str, dict[str, Any]]:
        """Built-in and registered presets of this method, by name."""
        load_plugins()
        return {**cls.presets, **EXTRA_PRESETS.get(cls.name, {})}

    def _preset_names(self, kind: str | None) -> list[str]:
        """The presets that apply to ``kind`` (``None``: to concepts of several kinds), lowest layer first."""
        names = [kind] if kind is not None else []
        if self.preset != AUTO:
            names += [self.preset, *([f"{self.preset}-{kind}"] if kind is not None else [])]
        table = self.all_presets()
        return [n for n in names if n in table]

    def preset_values(self, kind: str | None) -> dict[str, Any]:
        """The values the presets give concepts of ``kind`` (see the module docstring)."""
        table = self.all_presets()
        values: dict[str, Any] = {}
        for name in self._preset_names(kind):
            values.update(table[name])
        return values

    def settings(self, kind: str | None = None) -> Any:
        """The config concepts of ``kind`` run with: defaults, then the preset, then the user's parameters."""
        given = {k: v for k, v in self.params.items() if v is not None}
        return from_dict(self.config_class, {**self.preset_values(kind), **given}, where=f"{self.name} params")

    def edit_config(self, settings: Any) -> dict[str, Any]:
        """The parameters an Edit records: the resolved settings and the preset (``Method(edit.config)`` refits)."""
        return {**to_dict(settings), **({"preset": self.preset} if self.preset != AUTO else {})}

    @abstractmethod
    def fit(self, model: ModelAdapter, concepts: ConceptSet, **options: Any) -> Edit:
        """Compute the edit that erases ``concepts`` from ``model`` (the model itself is left unchanged)."""

    @classmethod
    def check_model(cls, model: ModelAdapter) -> None:
        """A model of a family the method does not edit is a :class:`ConfigError` naming the methods that do."""
        if model.family not in cls.families:
            able = [n for n in METHODS.names() if model.family in get_method(n).families]
            raise ConfigError(
                f"{cls.name} does not edit {FAMILY_NAMES.get(model.family, model.family)} models; "
                f"methods that do: {', '.join(able) or 'none'}"
            )

    @classmethod
    def fit_options(cls) -> list[str]:
        """The names of the keyword-only options :meth:`fit` declares."""
        signature = inspect.signature(cls.fit)
        return [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @classmethod
    def check_fit_options(cls, options: dict[str, Any]) -> None:
        """An option :meth:`fit` does not declare is a :class:`ConfigError` naming those it does."""
        allowed = cls.fit_options()
        for key in options:
            if key not in allowed:
                raise ConfigError(f"{cls.name}.fit has no option '{key}'; its options: {', '.join(allowed) or 'none'}")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(field, default, help) for every hyper-parameter, for ``erasekit methods`` and the docs."""
        defaults = cls.config_class()
        return [(f.name, getattr(defaults, f.name), f.metadata.get("help", "")) for f in fields(cls.config_class)]


def single_kind(concepts: ConceptSet, method: str) -> str:
    """The one kind of ``concepts``, for methods whose settings hold per run rather than per concept."""
    kinds = sorted({c.kind for c in concepts})
    if len(kinds) > 1:
        raise ConfigError(
            f"{method}: concepts of several kinds ({', '.join(kinds)}) need one explicit params.preset, or one run "
            "per kind"
        )
    return kinds[0]


def guide_for(concept: Concept, default_guides: dict[str, str] = DEFAULT_GUIDES) -> str:
    """The concept's own guide, or the default for its kind."""
    return concept.guide if concept.guide is not None else default_guides[concept.kind]
