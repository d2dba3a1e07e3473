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
from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ..errors import ModelLayoutError

# Imported on first use: the registries load the world's plugin module (world/plugin.py) on any name they miss, and
# that should not cost the generator, classifiers and prompt sets.
_EXPORTS = {
    "HEADS": "classifiers",
    "WorldClassifiers": "classifiers",
    "load_classifiers": "classifiers",
    "FAMILIES": "generator",
    "WorldSample": "generator",
    "generate": "generator",
    "SAMPLING": "prompts",
    "SET_NAMES": "prompts",
    "prompt_set": "prompts",
    "ERASABLE_CHARACTERS": "spec",
    "RETAINED_CHARACTERS": "spec",
}

if TYPE_CHECKING:
    from .classifiers import HEADS, WorldClassifiers, load_classifiers
    from .generator import FAMILIES, WorldSample, generate
    from .prompts import SAMPLING, SET_NAMES, prompt_set
    from .spec import ERASABLE_CHARACTERS, RETAINED_CHARACTERS


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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
