"""Helpers shared by the tests (import as ``from helpers import ...``; pytest puts this folder on the path)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline


def sample_image(pipe: StableDiffusionPipeline, prompt: str = "a photo of a dog", seed: int = 0, steps: int = 3):
    """A deterministic 16x16 image as a float numpy array: enough to compare tiny pipelines bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, height=16, width=16, generator=generator, output_type="np").images
