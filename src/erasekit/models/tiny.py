"""``erasekit:tiny``: tiny, offline Stable Diffusion pipelines for tests, examples and first use.

``erasekit:tiny`` has the SD1.x layout (cross-attention in down, mid and up blocks; a causal CLIP text encoder; CLIP's
real tokenizer), ``erasekit:tiny-sd2`` SD2.x's (OpenCLIP's "!" padding, v-prediction, linear projections) and
``erasekit:tiny-xl`` SDXL's (two text encoders, penultimate layers concatenated, pooled and size conditioning, no
attention in the first level), each at a size that runs in milliseconds on a CPU. Weights are random but
deterministic for a seed (``erasekit:tiny-<seed>``, ``erasekit:tiny-xl-<seed>``, default 0), so edits and images are
reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

from ..errors import ModelLayoutError
from ..io import atomic_dir
from .build import (
    assemble_flux_pipeline,
    assemble_pipeline,
    assemble_sd3_pipeline,
    assemble_sdxl_pipeline,
    clip_text_encoder,
)
from .loading import MODELS, cache_dir

LAYOUT_VERSION = 2
"""Part of the cache folder's name: bumped whenever a tiny architecture changes, so no stale build is reused."""
TINY_HIDDEN = 32
TINY_HIDDEN_2 = 48  # SDXL's second (OpenCLIP bigG-like) encoder
TINY_T5 = 40  # FLUX's T5: a width of its own, so a swapped encoder cannot pass a shape check
TINY_SD3_T5 = 96  # SD3's T5: wider than both CLIPs side by side (32 + 48), which are zero-padded to it


def tiny_vae(shift_factor: float | None = None) -> AutoencoderKL:
    """A two-level autoencoder (4 latent channels, downsampling 2): the tiny pipelines' VAE, and the full-size
    benchmarks' where only the UNet and text encoders matter (it saves memory). SD3's latents are shifted as well as
    scaled (``shift_factor``)."""
    return AutoencoderKL(
        shift_factor=shift_factor,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def build_tiny_pipeline(seed: int = 0, family: str = "sd1") -> DiffusionPipeline:
    """Build (in memory) a tiny pipeline of ``family`` (``sd1``, ``sd2``, ``xl``, ``flux`` or ``sd3``) with random
    weights fixed by ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if family == "xl":
            return _tiny_sdxl()
        if family == "flux":
            return _tiny_flux()
        if family == "sd3":
            return _tiny_sd3()
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
            use_linear_projection=family == "sd2",
        )
        vae = tiny_vae()
        text_encoder = clip_text_encoder(TINY_HIDDEN, num_layers=2, num_heads=4, intermediate_size=64)
    finally:
        torch.random.set_rng_state(gen_state)
    return assemble_pipeline(vae, unet, text_encoder, "v_prediction" if family == "sd2" else "epsilon")


def _tiny_sdxl() -> DiffusionPipeline:
    """SDXL's layout in miniature: 32 + 48-d encoders (3 layers, so the penultimate differs from the last; of unequal
    widths, as CLIP ViT-L's 768 and bigG's 1280, which is how single-file loaders tell them apart), a UNet
    whose first level has no attention and whose second has two transformer layers, pooled + six size ids."""
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=TINY_HIDDEN + TINY_HIDDEN_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + TINY_HIDDEN_2,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    text_encoder = clip_text_encoder(TINY_HIDDEN, num_layers=3, num_heads=4, intermediate_size=64)
    text_encoder_2 = clip_text_encoder(TINY_HIDDEN_2, num_layers=3, num_heads=4, intermediate_size=96,
                                       projection_dim=TINY_HIDDEN_2)  # fmt: skip
    return assemble_sdxl_pipeline(vae, unet, text_encoder, text_encoder_2)


def _tiny_flux() -> DiffusionPipeline:
    """FLUX's layout in miniature (diffusers' own test shapes): one double- and one single-stream block, a 2-layer T5
    encoder 40 wide over the in-memory T5 tokenizer's vocabulary, CLIP's pooled vector 32 wide, a one-channel VAE."""
    from diffusers import FluxTransformer2DModel

    t5 = _tiny_t5(TINY_T5)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TINY_T5, pooled_projection_dim=TINY_HIDDEN, axes_dims_rope=(4, 4, 8),
    )  # fmt: skip
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    text_encoder = clip_text_encoder(TINY_HIDDEN, num_layers=2, num_heads=4, intermediate_size=64)
    return assemble_flux_pipeline(vae, transformer, text_encoder, t5)


def _tiny_t5(width: int):
    from transformers import T5Config, T5EncoderModel

    from .tokenizer import t5_tokenizer

    return T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer()), d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=width // 8,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    ))  # fmt: skip


def _tiny_sd3() -> DiffusionPipeline:
    """SD3's layout in miniature (diffusers' own test shapes): one joint block, CLIP-L 32 and CLIP-G 48 wide read at
    their penultimate layers (80 columns, zero-padded to T5's 96), a 2-layer T5, pooled 32 + 48."""
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=TINY_SD3_T5, pooled_projection_dim=TINY_HIDDEN + TINY_HIDDEN_2,
        out_channels=4,
    )  # fmt: skip
    text_encoder = clip_text_encoder(TINY_HIDDEN, num_layers=3, num_heads=4, intermediate_size=64,
                                     projection_dim=TINY_HIDDEN)  # fmt: skip
    text_encoder_2 = clip_text_encoder(TINY_HIDDEN_2, num_layers=3, num_heads=4, intermediate_size=96,
                                       projection_dim=TINY_HIDDEN_2)  # fmt: skip
    t5 = _tiny_t5(TINY_SD3_T5)
    return assemble_sd3_pipeline(tiny_vae(shift_factor=0.0609), transformer, text_encoder, text_encoder_2, t5)


def tiny_pipeline(path: str | Path, seed: int = 0, family: str = "sd1") -> Path:
    """Save a tiny pipeline (safetensors) to ``path`` unless one is already there; return the path.

    Written atomically, so a crash never leaves a half-saved model behind.
    """
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    with atomic_dir(path) as tmp:
        build_tiny_pipeline(seed, family).save_pretrained(tmp, safe_serialization=True)
    return path


def tiny_variant(variant: str | None) -> tuple[str, int]:
    """``(family, seed)`` of ``erasekit:tiny-<variant>``: ``<seed>``, ``sd2[-<seed>]`` or ``xl[-<seed>]``."""
    parts = variant.split("-") if variant else []
    family = parts.pop(0) if parts and parts[0] in ("sd2", "xl", "flux", "sd3") else "sd1"
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ModelLayoutError(
            f"erasekit:tiny-{variant}: expected erasekit:tiny-<seed>, erasekit:tiny-sd2[-<seed>], "
            "erasekit:tiny-xl[-<seed>], erasekit:tiny-flux[-<seed>] or erasekit:tiny-sd3[-<seed>] (a seed is a "
            "non-negative integer)"
        )
    return family, int(parts[0]) if parts else 0


@MODELS.register("tiny")
def tiny_model(variant: str | None) -> Path:
    """``erasekit:tiny[-<seed>]``, ``erasekit:tiny-sd2[-<seed>]``, ``erasekit:tiny-xl[-<seed>]``,
    ``erasekit:tiny-flux[-<seed>]``, ``erasekit:tiny-sd3[-<seed>]``: built on first use, cached under
    :func:`cache_dir`."""
    family, seed = tiny_variant(variant)
    name = f"tiny-{seed}" if family == "sd1" else f"tiny-{family}-{seed}"
    return tiny_pipeline(cache_dir() / f"{name}-layout{LAYOUT_VERSION}", seed=seed, family=family)
