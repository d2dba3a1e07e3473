"""The world pipeline's architecture: a standard SD1.x layout, sized to train from scratch on two CPU cores.

32x32 RGB images -> AutoencoderKL (4x down) -> 8x8x4 latents; UNet2DConditionModel with cross-attention in its
down, mid and up blocks; a causal CLIPTextModel over CLIP's real 49408-token vocabulary and 77 positions; DDIM. So
every erasure method that runs on Stable Diffusion 1.x runs on the world unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from ..models.build import SD1_SCHEDULE, clip_text_encoder
from .spec import IMAGE_SIZE


@dataclass(frozen=True)
class Architecture:
    """Sizes of the three networks. The defaults are the shipped world; tests use a much smaller one."""

    vae_channels: tuple[int, ...] = (16, 32, 32)
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers_per_block: int = 1
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    norm_groups: int = 8

    @property
    def latent_size(self) -> int:
        return IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1)


def build_vae(arch: Architecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(arch.norm_groups, arch.vae_channels[0]),
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def build_unet(arch: Architecture) -> UNet2DConditionModel:
    n = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=4,
        norm_num_groups=min(arch.norm_groups, arch.unet_channels[0]),
    )


def build_text_encoder(arch: Architecture) -> CLIPTextModel:
    return clip_text_encoder(
        arch.text_hidden, arch.text_layers, arch.text_heads, intermediate_size=4 * arch.text_hidden
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD1_SCHEDULE)
