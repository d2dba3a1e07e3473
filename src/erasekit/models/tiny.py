"""``erasekit:tiny``: tiny, offline Stable Diffusion pipelines for tests, examples and first use.

The pipeline has the SD1.x layout (cross-attention in down, mid and up blocks; a causal CLIP text encoder; CLIP's real
tokenizer) at a size that runs in milliseconds on a CPU. Weights are random but deterministic for a seed
(``erasekit:tiny-<seed>``, default 0), so edits and images are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

from ..errors import ModelLayoutError
from ..io import atomic_dir
from .build import assemble_pipeline, clip_text_encoder
from .loading import MODELS, cache_dir

TINY_HIDDEN = 32


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build (in memory) a tiny SD1.x-layout pipeline with random weights fixed by ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_HIDDEN,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        )
        text_encoder = clip_text_encoder(TINY_HIDDEN, num_layers=2, num_heads=4, intermediate_size=64)
    finally:
        torch.random.set_rng_state(gen_state)
    return assemble_pipeline(vae, unet, text_encoder)


def tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny pipeline (safetensors) to ``path`` unless one is already there; return the path.

    Written atomically, so a crash never leaves a half-saved model behind.
    """
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    with atomic_dir(path) as tmp:
        build_tiny_pipeline(seed).save_pretrained(tmp, safe_serialization=True)
    return path


@MODELS.register("tiny")
def tiny_model(variant: str | None) -> Path:
    """``erasekit:tiny`` or ``erasekit:tiny-<seed>``: built on first use, cached under :func:`cache_dir`."""
    if variant is not None and not variant.isdigit():
        raise ModelLayoutError(f"erasekit:tiny-{variant}: the part after 'tiny-' is a seed, a non-negative integer")
    seed = int(variant) if variant is not None else 0
    return tiny_pipeline(cache_dir() / f"tiny-{seed}", seed=seed)
