"""Concepts to erase, the texts to preserve, and the validated run config.

A :class:`Concept` is what a user wants gone: its text, its kind (which picks method defaults such as the guide a
concept is mapped to), synonyms (used to test generality), an optional guide (the mapping / anchor / surrogate concept
its outputs are redirected to) and texts that must survive. A :class:`ConceptSet` bundles several concepts with a
shared preserve list and rejects contradictions (duplicates, a concept preserved and erased at once) up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .validation import Seed, check_device, check_value, from_dict, from_yaml

Kind = Literal["object", "celebrity", "style", "explicit"]
KINDS: tuple[str, ...] = ("object", "celebrity", "style", "explicit")


def normalize(text: str) -> str:
    """Compare texts the way a tokenizer sees them: case- and whitespace-insensitive."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Concept:
    """One concept to erase.

    ``guide`` is the concept the erased one is mapped to; ``None`` lets the method choose its default for ``kind``
    (e.g. UCE maps styles to "art" and other kinds to the unconditional prompt).
    """

    text: str
    kind: Kind = "object"
    synonyms: tuple[str, ...] = ()
    guide: str | None = None
    preserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError("a concept's text must be a non-empty string")
        if self.kind not in KINDS:
            raise ConfigError(f"concept '{self.text}': kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "text", " ".join(self.text.split()))
        object.__setattr__(self, "synonyms", tuple(self.synonyms))
        object.__setattr__(self, "preserve", tuple(self.preserve))
        if self.guide is not None and normalize(self.guide) in {normalize(t) for t in (self.text, *self.synonyms)}:
            raise ConfigError(
                f"concept '{self.text}': its guide is the concept itself, so erasing it would change nothing; "
                "give another guide (what the concept should become) or none for the kind's default"
            )
        if normalize(self.text) in {normalize(p) for p in self.preserve}:
            raise ConfigError(f"concept '{self.text}' is also in its own preserve set; a concept cannot be both")

    @classmethod
    def parse(cls, item: Any, where: str = "concepts") -> Concept:
        """A concept from a plain string or a mapping (as written in YAML)."""
        if isinstance(item, Concept):
            return item
        if isinstance(item, str):
            return cls(text=item)
        return from_dict(cls, item, where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "kind": self.kind,
            "synonyms": list(self.synonyms),
            "guide": self.guide,
            "preserve": list(self.preserve),
        }


@dataclass(frozen=True)
class ConceptSet:
    """Concepts erased together plus texts every method should leave unchanged."""

    concepts: tuple[Concept, ...]
    preserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        concepts = tuple(self.concepts)
        if not concepts:
            raise ConfigError("no concepts given: name at least one concept to erase")
        seen: dict[str, str] = {}
        for concept in concepts:
            key = normalize(concept.text)
            if key in seen:
                raise ConfigError(f"concept '{concept.text}' is listed twice")
            seen[key] = concept.text
        preserve = tuple(" ".join(p.split()) for p in self.preserve)
        for text in [*preserve, *(p for c in concepts for p in c.preserve)]:
            if normalize(text) in seen:
                raise ConfigError(
                    f"concept '{seen[normalize(text)]}' is also in the preserve set; a concept cannot be both"
                )
        object.__setattr__(self, "concepts", concepts)
        object.__setattr__(self, "preserve", preserve)

    @classmethod
    def build(cls, concepts: Iterable[Any], preserve: Sequence[str] = ()) -> ConceptSet:
        """From strings, dicts or Concepts, validating each."""
        if isinstance(concepts, (str, dict, Concept)):
            concepts = [concepts]
        parsed = tuple(Concept.parse(c, f"concepts[{i}]") for i, c in enumerate(concepts))
        return cls(parsed, tuple(check_value(list(preserve), list[str], "preserve")))

    def preserve_texts(self) -> list[str]:
        """The global preserve list, then each concept's own, without repeats (order kept)."""
        out, seen = [], set()
        for text in [*self.preserve, *(p for c in self.concepts for p in c.preserve)]:
            if normalize(text) not in seen:
                seen.add(normalize(text))
                out.append(text)
        return out

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self):
        return iter(self.concepts)

    def to_dict(self) -> dict[str, Any]:
        return {"concepts": [c.to_dict() for c in self.concepts], "preserve": list(self.preserve)}


@dataclass
class RunConfig:
    """An erasure run as written in YAML (see ``examples/``)."""

    model: str
    method: str
    concepts: list[Any]
    preserve: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    seed: Seed = 0
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        self.concept_set = ConceptSet.build(self.concepts, self.preserve)
        check_value(self.seed, Seed, "seed")  # also when constructed in Python, not only from YAML
        check_device(self.device)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read and validate a run config; every problem is a one-line :class:`ConfigError`."""
        return from_yaml(cls, path)
