"""The benchmark world as a plugin: what it adds to the library's registries (entry point ``erasekit.plugins``).

The core never imports the world: the registries load this module when they meet a name they do not know, and it
registers the model ``erasekit:world`` and the world's settings presets for the methods.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLayoutError
from ..methods.base import register_preset
from ..models.loading import MODELS


@MODELS.register("world")
def world_model(variant: str | None) -> Path:
    """``erasekit:world``: the shipped trained pipeline."""
    if variant is not None:
        raise ModelLayoutError(f"erasekit:world-{variant}: the benchmark world has no variants; use erasekit:world")
    from . import pipeline_path

    return pipeline_path()


# CPU-sized settings for the world (32 px, 8x8 latents, a 3 M-parameter UNet), each measured in the method's page.
# MACE (docs/methods/mace.md): its per-kind presets with a faster LoRA and the world's own images and captions.
register_preset(
    "mace",
    "world",
    dict(learning_rate=1e-3, steps=50, images_per_concept=8, sampling_steps=20, guidance=5.0, prior_captions=1000,
         prior_source="world"),
)  # fmt: skip
# ESD and DuMo (docs/methods/esd.md, dumo.md): minutes on one CPU thread; DuMo needs eta 4 on the world.
register_preset("esd", "world", {"steps": 150, "lr": 2e-4, "sampling_steps": 20})
register_preset(
    "dumo",
    "world",
    {"steps": 200, "lr": 1e-4, "zero_conv_lr": 1e-3, "tlmo_lr": 1e-2, "sampling_steps": 20, "negative_guidance": 4.0},
)
