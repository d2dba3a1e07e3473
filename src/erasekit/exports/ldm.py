"""The original LDM single-file layout of an SD1.x, SD2.x or SDXL pipeline (what ``from_single_file`` and the web
UIs load).

diffusers ships the conversion only towards diffusers (``loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``). This module writes the reverse renaming, driven by the components' configs as
diffusers' is (block numbering from ``layers_per_block``), and checks every result by running diffusers' own conversion
on it: the round trip must give back every tensor under its name, bit for bit, or nothing is written.

Text encoders by family: SD1.x's CLIP keeps transformers' names under ``cond_stage_model.transformer.``; SD2.x's
OpenCLIP (``cond_stage_model.model.``) fuses q/k/v into one ``in_proj`` and renames the rest; SDXL holds CLIP ViT-L
under ``conditioner.embedders.0.transformer.`` and OpenCLIP bigG under ``conditioner.embedders.1.model.``, with its
``text_projection`` transposed.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, ModelLayoutError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {  # family -> the prefix of each text encoder (pipeline attribute) in the original layout
    "sd1": {"text_encoder": "cond_stage_model.transformer."},
    "sd2": {"text_encoder": "cond_stage_model.model."},
    "sdxl": {
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
}
OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "self_attn.out_proj": "attn.out_proj"}  # fmt: skip

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

    mapping = DIFFUSERS_TO_LDM_MAPPING["unet"]
    for names in (mapping["layers"], mapping["addition_embed_type"]):  # SDXL's add_embedding is LDM's label_emb
        if key in names:
            return names[key]
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


def hf_text_state_dict(encoder: Any) -> dict[str, torch.Tensor]:
    """``encoder``'s tensors under transformers' full names (``text_model.``; newer transformers flatten
    CLIPTextModel, the original layout and diffusers' conversion keep the wrapper), without position ids."""
    return {
        k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
        for k, v in encoder.state_dict().items()
        if not k.endswith("position_ids")
    }


def openclip_state_dict(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP names -> OpenCLIP's: q/k/v fused into ``in_proj``, ``text_projection`` transposed."""
    out: dict[str, torch.Tensor] = {}
    for key, value in text.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T
        elif key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rpartition(".")[2]] = value
        elif key.startswith("text_model.encoder.layers."):
            layer, _, rest = key.removeprefix("text_model.encoder.layers.").partition(".")
            block = f"transformer.resblocks.{layer}."
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rpartition(".")[2]
                parts = [text[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
                out[f"{block}attn.in_proj_{kind}"] = torch.cat(parts)
            elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                module, _, kind = rest.rpartition(".")
                out[f"{block}{OPENCLIP.get(module, module)}.{kind}"] = value
        else:
            raise ModelLayoutError(f"no OpenCLIP name for the text-encoder tensor '{key}'")
    return out


def ldm_state_dict(pipe: Any, family: str) -> dict[str, torch.Tensor]:
    """Copies of ``pipe``'s UNet, VAE and text encoder(s) under their LDM names for ``family`` (sd1, sd2, sdxl),
    checked against diffusers' conversion."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    if family not in TEXT_PREFIXES:
        raise ConfigError(f"--format single-file: no original layout for the '{family}' family (sd1, sd2, sdxl)")
    unet, vae = pipe.unet.state_dict(), pipe.vae.state_dict()
    checkpoint = {UNET_PREFIX + unet_key(k, pipe.unet.config): v for k, v in unet.items()}
    for key, value in vae.items():
        name = vae_key(key, pipe.vae.config)
        if ".mid.attn_1." in name and value.ndim == 2:  # LDM's VAE attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        checkpoint[VAE_PREFIX + name] = value
    texts = {}
    for attribute, prefix in TEXT_PREFIXES[family].items():
        texts[attribute] = hf_text_state_dict(getattr(pipe, attribute))
        original = texts[attribute] if prefix.endswith("transformer.") else openclip_state_dict(texts[attribute])
        checkpoint.update({prefix + k: v for k, v in original.items()})
    checkpoint = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in checkpoint.items()}
    checks = [
        ("UNet", unet, convert_ldm_unet_checkpoint(checkpoint, dict(pipe.unet.config))),
        ("VAE", vae, convert_ldm_vae_checkpoint(checkpoint, dict(pipe.vae.config))),
    ]
    for attribute, prefix in TEXT_PREFIXES[family].items():
        if prefix.endswith("transformer."):
            back = convert_ldm_clip_checkpoint(checkpoint)
        else:
            back = convert_open_clip_checkpoint(getattr(pipe, attribute), checkpoint, prefix=prefix)
        checks.append((attribute.replace("_", " "), texts[attribute], back))
    for what, original, back in checks:
        lost = sorted(
            k for k in original if k not in back or not torch.equal(back[k].reshape(original[k].shape), original[k])
        )
        if lost or len(back) != len(original):
            raise ModelLayoutError(
                f"the LDM layout of this {what} does not convert back exactly ({len(lost)} tensors differ, e.g. "
                f"{', '.join(lost[:2]) or 'extra tensors'}): its architecture is not one the layout describes"
            )
    return checkpoint
