"""Helpers shared by the tests (import as ``from helpers import ...``; pytest puts this folder on the path)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

# Settings that make each method fast on the tiny pipeline; a method not listed runs with its defaults.
FAST: dict[str, dict] = {
    "rece": {"epochs": 1},
    "mace": {"templates": 3, "images_per_concept": 2, "sampling_steps": 2, "steps": 3, "prior_captions": 0,
             "progress": False},
    "gloce": {"sampling_steps": 5, "guidance": 5.0, "seeds": 2, "progress": False},
    "esd": {"steps": 2, "sampling_steps": 4, "progress": False},
    "dumo": {"steps": 2, "sampling_steps": 4, "progress": False},
}  # fmt: skip


def sample_image(pipe: StableDiffusionPipeline, prompt: str = "a photo of a dog", seed: int = 0, steps: int = 3):
    """A deterministic 16x16 image as a float numpy array: enough to compare tiny pipelines bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, height=16, width=16, generator=generator, output_type="np").images
