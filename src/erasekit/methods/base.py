"""What every erasure method looks like: hyper-parameters validated at construction, ``fit`` returns an Edit.

As in scikit-learn, constructing a method computes nothing; as in PEFT, a method is a config dataclass (each field
documented in its ``metadata["help"]``) plus the code that turns a model and concepts into an edit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import fields
from typing import Any, ClassVar

from ..concepts import ConceptSet
from ..edits import Edit
from ..models.adapter import ModelAdapter
from ..validation import from_dict, to_dict

# The concept each kind is mapped to when the user gives no guide (UCE/RECE note 1.5; celebrity is our choice,
# as the references have no celebrity experiment: a generic person keeps faces plausible, as MACE does).
DEFAULT_GUIDES = {"style": "art", "object": " ", "explicit": " ", "celebrity": "a person"}


class Method(ABC):
    """Base class: subclasses set ``name`` and ``config_class`` and implement :meth:`fit`."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        data = to_dict(config) if isinstance(config, self.config_class) else dict(config or {})
        data.update(overrides)
        self.config = from_dict(self.config_class, data, where=f"{self.name} params")

    @abstractmethod
    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        """Compute the edit that erases ``concepts`` from ``model`` (the model itself is left unchanged)."""

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(field, default, help) for every hyper-parameter, for ``erasekit methods`` and the docs."""
        defaults = cls.config_class()
        return [(f.name, getattr(defaults, f.name), f.metadata.get("help", "")) for f in fields(cls.config_class)]


def guide_for(concept, default_guides: dict[str, str] = DEFAULT_GUIDES) -> str:
    """The concept's own guide, or the default for its kind."""
    return concept.guide if concept.guide is not None else default_guides[concept.kind]
