"""DuMo's network and how an edit puts it into a pipeline (module kind ``dumo``), without its trainer.

DuMo: Dual encoder Modulation network (Han et al., AAAI 2025, arXiv 2501.01125). The UNet stays frozen; a second,
trainable copy of its encoder adds residuals to it (docs/methods/dumo.md, "What it does"):

- **EPR** (Eraser with PRior knowledge): ``conv_in``, the time embedding, the down blocks and the mid block, copied
  from the UNet, fed the same ``(x_t, t, text)`` as the UNet (both classifier-free-guidance halves). On SDXL the
  copy also holds the added (pooled text + size) embedding and reads the UNet's ``added_cond_kwargs``, as diffusers'
  SDXL ControlNet does (docs/methods/dumo.md, "SDXL and SD2.x"). Each of its feature taps (``conv_in``, every
  down-block ResNet/attention output and downsampler: the tensors the decoder reads as skip connections; plus the
  mid-block output, as in the reference code although the paper names only skip features) goes through a
  zero-initialised 1x1 conv and is *added* to the matching UNet tensor (diffusers' ``down_block_additional_residuals``
  and ``mid_block_additional_residual``, the ControlNet mechanism). At initialisation the output is exactly SD's.
- **TLMO** (Time-Layer MOdulation): a learnt table ``S`` of shape ``buckets x taps``, initialised to ones (13 taps on
  SD1.x, 10 on SDXL); tap ``i`` at DDPM timestep ``t`` is scaled by ``S[floor(t / (1000 / buckets)), i]``. The
  author's ablations ("time" only, "layer" only) are options.
- **Prompt gate** (the reference's artist/cartoon inference): all residuals are multiplied by
  ``rho = facilitate_factor * max_j max(clipcos_j, tokenuni_j)``, with ``clipcos_j`` the cosine between the flattened
  77 x d text embeddings of the prompt and of erased concept ``j`` and ``tokenuni_j`` the share of ``j``'s word tokens
  present in the prompt. It is *not* a hard gate: clipcos stays well above 0 for unrelated prompts.

Applying an edit builds the network and registers a forward pre-hook on the UNet that adds the residuals to every
call; removing it takes the hooks out, leaving the pipeline exactly as it was.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...edits import Detach, register_modules
from ...errors import ModelLayoutError

KIND = "dumo"
TLMOMode = Literal["time_layer", "time", "layer", "none"]


def _check_layout(unet: nn.Module) -> None:
    """Refuse UNets whose encoder takes conditioning the EPR does not copy (SDXL's ``text_time`` it does)."""
    cfg = unet.config
    extras = [k for k in ("class_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type") if cfg.get(k) is not None]
    if cfg.get("addition_embed_type") not in (None, "text_time"):
        extras.append(f"addition_embed_type={cfg.get('addition_embed_type')}")
    if extras or cfg.get("center_input_sample") or unet.time_embed_act is not None or unet.mid_block is None:
        raise ModelLayoutError(
            "DuMo copies an SD1.x/2.x or SDXL UNet encoder; this UNet has extra conditioning "
            f"({', '.join(extras) or 'other'})"
        )


def tap_channels(unet: nn.Module) -> list[int]:
    """Channels of the EPR's taps, in the UNet's skip order then the mid block (13 taps on SD1.x, 10 on SDXL)."""
    channels = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        channels += [resnet.out_channels for resnet in block.resnets]
        channels += [down.out_channels for down in block.downsamplers or ()]
    return [*channels, unet.mid_block.resnets[-1].out_channels]


def batch_timesteps(timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """The UNet's ``timestep`` argument (number, 0-d or [B] tensor) as a float [B] tensor on ``sample``'s device."""
    t = torch.as_tensor(timestep, device=sample.device)
    return t.reshape(-1).expand(sample.shape[0]).float() if t.numel() == 1 else t.float()


class EPR(nn.Module):
    """A trainable copy of ``unet``'s encoder path whose taps leave through zero-initialised 1x1 convolutions."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        _check_layout(unet)
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.add_time_proj = copy.deepcopy(getattr(unet, "add_time_proj", None))  # SDXL's added conditioning
        self.add_embedding = copy.deepcopy(getattr(unet, "add_embedding", None))
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(unet.mid_block)
        self.zero_convs = nn.ModuleList(nn.Conv2d(c, c, 1) for c in tap_channels(unet))
        for conv in self.zero_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(
        self, sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor, added: dict[str, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Tapped features for latents ``sample`` at timesteps ``t`` [B] with text embeddings ``text`` (and, on SDXL,
        the UNet's ``added_cond_kwargs``: pooled ``text_embeds`` and size ``time_ids``)."""
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        if self.add_embedding is not None:  # as UNet2DConditionModel.get_aug_embed for "text_time"
            sizes = self.add_time_proj(added["time_ids"].flatten()).reshape(len(added["text_embeds"]), -1)
            emb = emb + self.add_embedding(torch.cat([added["text_embeds"], sizes], dim=-1).to(emb.dtype))
        h = self.conv_in(sample)
        taps = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=text)
            else:
                h, res = block(hidden_states=h, temb=emb)
            taps += res
        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, encoder_hidden_states=text)
        else:
            h = self.mid_block(h, emb)
        taps.append(h)
        return [conv(f) for conv, f in zip(self.zero_convs, taps, strict=True)]


class TLMO(nn.Module):
    """The learnt scale of each tap per timestep bucket; ``mode`` picks which axes it varies along."""

    def __init__(self, n_taps: int, mode: TLMOMode, buckets: int, num_train_timesteps: int) -> None:
        super().__init__()
        rows = buckets if mode in ("time_layer", "time") else 1
        cols = n_taps if mode in ("time_layer", "layer") else 1
        self.scale = nn.Parameter(torch.ones(rows, cols))
        self.n_taps, self.width = n_taps, num_train_timesteps / buckets

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Scales [B, taps] for DDPM timesteps ``t`` [B]: bucket ``floor(t / width)``, clamped to the table."""
        k = torch.div(t, self.width, rounding_mode="floor").long().clamp(0, self.scale.shape[0] - 1)
        return self.scale[k].expand(-1, self.n_taps)


class DuMoNetwork(nn.Module):
    """EPR + TLMO: the residuals DuMo adds to a UNet call."""

    def __init__(self, unet: nn.Module, tlmo: TLMOMode, buckets: int, num_train_timesteps: int) -> None:
        super().__init__()
        self.epr = EPR(unet)
        self.tlmo = TLMO(len(self.epr.zero_convs), tlmo, buckets, num_train_timesteps)

    def residuals(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        rho: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(skip residuals, mid residual) for one UNet call with these arguments (the UNet's names):
        ``rho * S[bucket(t), i] * ZeroConv_i(EPR_i(...))``, with ``rho`` one multiplier per batch row (None = 1)."""
        t = batch_timesteps(timestep, sample)
        scale = self.tlmo(t) if rho is None else self.tlmo(t) * rho.to(t.device)[:, None]
        features = self.epr(sample, t, encoder_hidden_states, added_cond_kwargs)
        out = [f * scale[:, i].view(-1, 1, 1, 1).to(f.dtype) for i, f in enumerate(features)]
        return tuple(out[:-1]), out[-1]


class PromptGate:
    """The reference's prompt-match multiplier ``rho`` for erased concept texts (see the module docstring).

    ``rho = factor * max_j max(clipcos_j, tokenuni_j) = factor * max(max_j clipcos_j, max_j tokenuni_j)``: the two
    halves are computed where their inputs are (the rows at the UNet, the token ids at the text encoder)."""

    def __init__(self, embeddings: torch.Tensor, tokens: Sequence[Sequence[int]], factor: float) -> None:
        self.flat = embeddings.flatten(1).float()
        self.tokens = [set(t) for t in tokens]
        self.factor = factor

    def clipcos(self, text: torch.Tensor) -> torch.Tensor:
        """Per row of ``text`` [B, 77, d]: the largest cosine to an erased concept's embeddings."""
        return F.cosine_similarity(text.flatten(1).float()[:, None].cpu(), self.flat[None], dim=-1).max(dim=1).values

    def tokenuni(self, ids: torch.Tensor, specials: set[int]) -> torch.Tensor:
        """Per row of token ``ids``: the largest share of an erased concept's word tokens present in it."""
        rows = [set(r.tolist()) - specials for r in ids.cpu()]
        return torch.tensor([max(len(r & t) / max(len(t), 1) for t in self.tokens) for r in rows])

    def rho(self, text: torch.Tensor, tokenuni: torch.Tensor) -> torch.Tensor:
        """rho per row of ``text`` given each row's ``tokenuni`` (-inf where the tokens are unknown, e.g. for
        prompts passed as embeddings: clipcos alone)."""
        return self.factor * torch.maximum(self.clipcos(text), tokenuni)


def share_across_cfg_halves(rho: torch.Tensor) -> torch.Tensor:
    """Per-row ``rho`` of a pipeline's CFG batch ``[negatives; prompts]``: each pair takes the larger value, so a
    prompt's rho scales its unconditional half too (the reference's one-prompt scripts use one rho for both) and no
    prompt's rho depends on the other prompts in the batch. An odd batch (no CFG) is left as is."""
    if len(rho) % 2:
        return rho
    half = torch.maximum(*rho.chunk(2))
    return torch.cat([half, half])


def _row_key(row: torch.Tensor) -> bytes:
    """Identity of one prompt's embeddings as the UNet will see them (rounded to fp16, so a pipeline that casts
    them to its UNet's fp16 still matches)."""
    return hashlib.sha1(row.detach().to(torch.float16).cpu().numpy().tobytes()).digest()


@register_modules(KIND)
def attach_dumo(pipe: Any, tensors: dict[str, torch.Tensor], spec: dict[str, Any]) -> Detach:
    """Build the DuMo network on ``pipe``'s UNet and add its residuals to every UNet call until detached."""
    unet = pipe.unet
    network = DuMoNetwork(unet, spec["tlmo"], spec["tlmo_buckets"], spec["num_train_timesteps"])
    network.load_state_dict({k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")})
    network.to(unet.device, unet.dtype).eval().requires_grad_(False)
    gate = (
        PromptGate(tensors["gate.embeddings"], spec["gate_tokens"], spec["facilitate_factor"])
        if spec["gating"]
        else None
    )
    tokenizer = pipe.tokenizer
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    width = pipe.text_encoder.config.hidden_size  # the UNet's rows begin with the (first) text encoder's output
    shares: dict[bytes, float] = {}  # tokenuni of every prompt the text encoder encoded while attached

    def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is None:
            return
        if len(shares) > 1024:
            shares.clear()
        # what the pipeline passes on: the last layer (SD1.x/2.x) or, when it asks for all layers, the penultimate
        # (SDXL's first half of each row)
        layers = getattr(output, "hidden_states", None)
        share = gate.tokenuni(ids, specials).tolist()
        for hidden in [output[0], *([layers[-2]] if layers is not None else [])]:
            for row, value in zip(hidden, share, strict=True):
                shares[_row_key(row)] = value

    def add_residuals(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        names = ("sample", "timestep", "encoder_hidden_states")
        sample, timestep, text = [args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names)]
        rho = None
        if gate is not None:
            known = torch.tensor([shares.get(_row_key(row[:, :width]), -math.inf) for row in text])
            rho = share_across_cfg_halves(gate.rho(text, known))
        down, mid = network.residuals(sample, timestep, text, kwargs.get("added_cond_kwargs"), rho=rho)
        if kwargs.get("down_block_additional_residuals") is not None:  # another DuMo edit (or a ControlNet) is on
            down = tuple(a + b for a, b in zip(kwargs["down_block_additional_residuals"], down, strict=True))
            mid = kwargs["mid_block_additional_residual"] + mid
        return args, {**kwargs, "down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    handles = [unet.register_forward_pre_hook(add_residuals, with_kwargs=True)]
    if gate is not None:
        handles.append(pipe.text_encoder.register_forward_hook(record, with_kwargs=True))

    def detach() -> None:
        for handle in handles:
            handle.remove()
        shares.clear()

    return detach
