"""The original LDM single-file layout of an SD1.x pipeline (what ``from_single_file`` and the web UIs load).

diffusers ships the conversion only towards diffusers (``loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``). This module writes
the reverse renaming, driven by the components' configs as diffusers' is (block numbering from ``layers_per_block``),
and checks every result by running diffusers' own conversion on it: the round trip must give back every tensor under
its name, bit for bit, or nothing is written. SD1.x only: SD2.x stores OpenCLIP with fused q/k/v, SDXL has two text
encoders.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, ModelLayoutError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

# diffusers' resnet names -> LDM's (the inverse of ``update_unet_resnet_ldm_to_diffusers``)
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, names: dict[str, str]) -> str:
    head, _, tail = rest.rpartition(".")  # "conv1.weight" -> ("conv1", "weight")
    return f"{names.get(head, head)}.{tail}"


def unet_key(key: str, config: dict[str, Any]) -> str:
    """A diffusers UNet state-dict name -> its LDM name (without the ``model.diffusion_model.`` prefix)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    layers = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in layers:
        return layers[key]
    per_block = config["layers_per_block"] + 1  # LDM: the resnets, then the down/upsampler, numbered on
    parts = key.split(".")
    if parts[0] == "down_blocks":
        b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{1 + b * per_block + j}.0.{_rename(rest, UNET_RESNET)}"
        if kind == "attentions":
            return f"input_blocks.{1 + b * per_block + j}.1.{rest}"
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.weight
            return f"input_blocks.{(b + 1) * per_block}.0.op.{parts[-1]}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_rename(rest, UNET_RESNET)}"
        return f"middle_block.{2 * j + 1}.{rest}"
    if parts[0] == "up_blocks":
        b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"output_blocks.{b * per_block + j}.0.{_rename(rest, UNET_RESNET)}"
        if kind == "attentions":
            return f"output_blocks.{b * per_block + j}.1.{rest}"
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][b]
            return f"output_blocks.{b * per_block + per_block - 1}.{2 if has_attention else 1}.conv.{parts[-1]}"
    raise ModelLayoutError(f"no LDM name for the UNet tensor '{key}'")


def vae_key(key: str, config: dict[str, Any]) -> str:
    """A diffusers VAE state-dict name -> its LDM name (without the ``first_stage_model.`` prefix)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    mapping = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in mapping:
        return mapping[key]
    part, block, *parts = key.split(".")  # part: encoder / decoder
    if block == "down_blocks":
        i, kind, j, rest = parts[0], parts[1], parts[2], ".".join(parts[3:])
        if kind == "resnets":
            return f"{part}.down.{i}.block.{j}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
        return f"{part}.down.{i}.downsample.{rest}"  # downsamplers.0.conv.weight
    if block == "up_blocks":
        i, kind, j, rest = int(parts[0]), parts[1], parts[2], ".".join(parts[3:])
        ldm = len(config["up_block_types"]) - 1 - i  # LDM numbers the decoder's blocks from the bottom
        if kind == "resnets":
            return f"{part}.up.{ldm}.block.{j}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
        return f"{part}.up.{ldm}.upsample.{rest}"
    if block == "mid_block":
        kind, j, rest = parts[0], int(parts[1]), ".".join(parts[2:])
        if kind == "resnets":
            return f"{part}.mid.block_{j + 1}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
        return f"{part}.mid.attn_1.{_rename(rest, VAE_ATTENTION)}"
    raise ModelLayoutError(f"no LDM name for the VAE tensor '{key}'")


def ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """Copies of ``pipe``'s UNet, VAE and text encoder under their LDM names, checked against diffusers' conversion."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    if getattr(pipe, "text_encoder_2", None) is not None or type(pipe.text_encoder).__name__ != "CLIPTextModel":
        raise ConfigError("--format single-file: written for SD1.x pipelines only (one CLIP text encoder)")
    unet, vae = pipe.unet.state_dict(), pipe.vae.state_dict()
    text = {  # the original layout holds transformers' CLIPTextModel with its text_model wrapper (older transformers)
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in pipe.text_encoder.state_dict().items()
        if not k.endswith("position_ids")
    }
    checkpoint = {UNET_PREFIX + unet_key(k, pipe.unet.config): v for k, v in unet.items()}
    for key, value in vae.items():
        name = vae_key(key, pipe.vae.config)
        if ".mid.attn_1." in name and value.ndim == 2:  # LDM's VAE attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        checkpoint[VAE_PREFIX + name] = value
    checkpoint.update({TEXT_PREFIX + k: v for k, v in text.items()})
    checkpoint = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in checkpoint.items()}
    for what, original, back in [
        ("UNet", unet, convert_ldm_unet_checkpoint(checkpoint, dict(pipe.unet.config))),
        ("VAE", vae, convert_ldm_vae_checkpoint(checkpoint, dict(pipe.vae.config))),
        ("text encoder", text, convert_ldm_clip_checkpoint(checkpoint)),
    ]:
        lost = sorted(
            k for k in original if k not in back or not torch.equal(back[k].reshape(original[k].shape), original[k])
        )
        if lost or len(back) != len(original):
            raise ModelLayoutError(
                f"the LDM layout of this {what} does not convert back exactly ({len(lost)} tensors differ, e.g. "
                f"{', '.join(lost[:2]) or 'extra tensors'}): its architecture is not one the layout describes"
            )
    return checkpoint
