"""The embedded benchmark world: a tiny trained text-to-image model where erasure is measurable offline.

>>> from erasekit.world import pipeline_path, load_classifiers, prompt_set, generate
>>> from diffusers import StableDiffusionPipeline
>>> pipe = StableDiffusionPipeline.from_pretrained(pipeline_path())  # doctest: +SKIP
>>> rows = prompt_set("objects")  # doctest: +SKIP
>>> load_classifiers().predict(pipe("a photo of a car").images, "object")  # doctest: +SKIP
['car']

See ``docs/world.md`` and ``data/world/MODEL_CARD.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ModelLayoutError
from .classifiers import HEADS, WorldClassifiers, load_classifiers
from .generator import FAMILIES, WorldSample, generate
from .prompts import SAMPLING, SET_NAMES, prompt_set
from .spec import CHARACTERS, N_ERASABLE_CHARACTERS

ERASABLE_CHARACTERS: tuple[str, ...] = tuple(c.name for c in CHARACTERS[:N_ERASABLE_CHARACTERS])
RETAINED_CHARACTERS: tuple[str, ...] = tuple(c.name for c in CHARACTERS[N_ERASABLE_CHARACTERS:])


def data_dir() -> Path:
    """The shipped world folder (pipeline, classifiers, prompt sets, model card)."""
    return Path(str(resources.files("erasekit") / "data" / "world"))


def pipeline_path() -> Path:
    """Folder of the shipped world pipeline (``StableDiffusionPipeline.from_pretrained`` loads it)."""
    path = data_dir() / "pipeline"
    if not (path / "model_index.json").exists():
        raise ModelLayoutError(f"the world pipeline is missing from '{path}'; reinstall erasekit")
    return path


__all__ = [
    "ERASABLE_CHARACTERS",
    "FAMILIES",
    "HEADS",
    "RETAINED_CHARACTERS",
    "SAMPLING",
    "SET_NAMES",
    "WorldClassifiers",
    "WorldSample",
    "data_dir",
    "generate",
    "load_classifiers",
    "pipeline_path",
    "prompt_set",
]
