"""Assemble SD1.x, SD2.x, SDXL, FLUX and SD3-layout pipelines from networks built from configs.

The tiny test pipelines, the benchmark world and the full-size benchmark architectures share one recipe: CLIP's real
tokenizer, CLIP text encoders with SD's special tokens, and SD's noise schedule sampled with DDIM.
"""

from __future__ import annotations

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from .tokenizer import MODEL_MAX_LENGTH, clip_tokenizer, t5_tokenizer

SD1_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    steps_offset=1,
)  # fmt: skip
"""Stable Diffusion 1.x's noise schedule, for training (DDPM) and sampling (DDIM)."""


def clip_text_encoder(
    hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int, projection_dim: int | None = None
) -> CLIPTextModel:
    """A randomly initialised CLIP text encoder that reads CLIP's full vocabulary at 77 positions, as in SD; with
    ``projection_dim`` the projected variant SDXL's second encoder is (its pooled embedding conditions the UNet)."""
    config = CLIPTextConfig(
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
        projection_dim=projection_dim or hidden_size,
    )
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def assemble_pipeline(
    vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, prediction_type: str = "epsilon"
) -> StableDiffusionPipeline:
    """The three networks as a standard StableDiffusionPipeline (no safety checker: nothing to check).

    ``prediction_type="v_prediction"`` with OpenCLIP's "!" padding is the SD2.0/2.1 (768 px) layout."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer("!" if prediction_type == "v_prediction" else "<|endoftext|>"),
        unet=unet,
        scheduler=DDIMScheduler(**SD1_SCHEDULE, set_alpha_to_one=False, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_sdxl_pipeline(
    vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
) -> StableDiffusionXLPipeline:  # fmt: skip
    """The four networks as a standard StableDiffusionXLPipeline: the first tokenizer pads with EOS, the second with
    "!" (OpenCLIP), as SDXL's do; no watermarker (an optional package, and nothing to mark in tests)."""
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer("!"),
        unet=unet,
        scheduler=DDIMScheduler(**SD1_SCHEDULE, set_alpha_to_one=False),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_flux_pipeline(
    vae: AutoencoderKL, transformer: FluxTransformer2DModel, text_encoder: CLIPTextModel,
    text_encoder_2: T5EncoderModel,
) -> FluxPipeline:  # fmt: skip
    """The four networks as a standard FluxPipeline: CLIP's real tokenizer for the pooled vector, an in-memory T5-style
    tokenizer (:func:`~erasekit.models.tokenizer.t5_tokenizer`) for the rows, FLUX's flow-matching Euler sampler."""
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_sd3_pipeline(
    vae: AutoencoderKL, transformer: SD3Transformer2DModel, text_encoder: CLIPTextModelWithProjection,
    text_encoder_2: CLIPTextModelWithProjection, text_encoder_3: T5EncoderModel | None,
) -> StableDiffusion3Pipeline:  # fmt: skip
    """The networks as a standard StableDiffusion3Pipeline: CLIP's real tokenizer twice (EOS and "!" padding, as SD3's
    two CLIP tokenizers pad), the in-memory T5-style tokenizer, SD3's flow-matching Euler sampler (shift 3)."""
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer() if text_encoder_3 is not None else None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
