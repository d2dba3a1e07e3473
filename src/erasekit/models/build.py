"""Assemble SD1.x-layout pipelines from networks built from configs.

The tiny test pipeline, the benchmark world and the full-size benchmark architecture share one recipe: CLIP's real
tokenizer, a CLIP text encoder with SD1.x's special tokens, and SD1.x's noise schedule sampled with DDIM.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import MODEL_MAX_LENGTH, clip_tokenizer

SD1_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    steps_offset=1,
)  # fmt: skip
"""Stable Diffusion 1.x's noise schedule, for training (DDPM) and sampling (DDIM)."""


def clip_text_encoder(hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int) -> CLIPTextModel:
    """A randomly initialised CLIP text encoder that reads CLIP's full vocabulary at 77 positions, as in SD1.x."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=MODEL_MAX_LENGTH,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act="quick_gelu",
        )
    )


def assemble_pipeline(
    vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel
) -> StableDiffusionPipeline:
    """The three networks as a standard StableDiffusionPipeline (no safety checker: nothing to check)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SD1_SCHEDULE, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
