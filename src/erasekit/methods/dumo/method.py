"""DuMo's training (ours: the authors never released theirs) and the method that returns the edit.

The network (EPR + TLMO + prompt gate) is in ``modules``; the recipe, and why, is in docs/methods/dumo.md ("The
training recipe"). The negative-guidance objective of ESD (``training.py``) with the EPR-equipped UNet as the
student and the plain UNet as the frozen teacher, plus a preservation term on the preserved prompts and the empty
prompt (which keeps the unconditional branch, which the EPR also sees, unchanged). EPR body, zero convolutions and
TLMO table are trained jointly with Adam at their own learning rates (``lr``, ``zero_conv_lr``, ``tlmo_lr``); the
gate is not used during training (rho = 1) and applies at inference. One network is trained for the whole concept
set (the reference trains one per concept and sums their residuals; applying several DuMo edits does exactly that).

The edit adds modules (``Edit.from_modules``, kind ``dumo``), which ``modules`` attaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...concepts import ConceptSet
from ...edits import Edit
from ...models.adapter import Conditioning, ModelAdapter, tensors_fingerprint
from ...validation import check_at_least
from ..base import Method, register_method
from ..training import (
    NegativeGuidanceObjective,
    TrainingConfig,
    frozen,
    gradient_checkpointing,
    run_identity,
    run_training,
    training_pairs,
)
from ..uce import preserve_list
from .modules import KIND, DuMoNetwork, TLMOMode, tap_channels


@dataclass
class DuMoConfig(TrainingConfig):
    lr: float = field(default=1e-5, metadata={"help": "learning rate of the EPR (Adam; ControlNet's 1e-5)"})
    steps: int = field(default=1000, metadata={"help": "optimisation steps (unknown for DuMo; ours)"})
    preserve_weight: float = field(
        default=1.0, metadata={"help": "weight of ||eps_phi(p) - eps_0(p)||^2 on preserved prompts and ''"}
    )
    preserve_empty: bool = field(
        default=True, metadata={"help": "preserve the empty prompt: the EPR also runs on the unconditional branch"}
    )
    tlmo: TLMOMode = field(
        default="time_layer",
        metadata={"help": "TLMO table: time_layer (20 x taps, DuMo), time (20), layer (taps) or none (fixed 1)"},
    )
    tlmo_buckets: int = field(default=20, metadata={"help": "timestep buckets of the table (DuMo: 20 = 50 steps each)"})
    tlmo_lr: float = field(default=1e-3, metadata={"help": "learning rate of the TLMO table (ours)"})
    zero_conv_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the 1x1 output convolutions; None = lr (ours)"}
    )
    gating: bool | None = field(
        default=None,
        metadata={"help": "scale residuals by the prompt-match rho at inference; None = on unless a concept is "
                  "explicit (the reference uses it for artists and cartoons, not nudity)"},
    )  # fmt: skip
    facilitate_factor: float = field(default=1.0, metadata={"help": "rho's factor (the reference's default 1)"})

    def __post_init__(self) -> None:
        self.check("dumo params")
        check_at_least(self, "dumo params", 0, ("tlmo_buckets", "tlmo_lr", "zero_conv_lr"), strict=True)
        check_at_least(self, "dumo params", 0, ("facilitate_factor",))


def base_names(model: ModelAdapter) -> list[str]:
    """UNet tensors fingerprinted with a DuMo edit: the ends of the network (conv_in, conv_out) and every
    cross-attention K/V weight identify the base model at a small share of the cost of hashing the whole UNet."""
    return ["conv_in.weight", "conv_out.weight", *model.kv_weights()]


@register_method
class DuMo(Method):
    """Trains an EPR + TLMO network that erases concepts through the UNet's skip connections."""

    name = "dumo"
    config_class = DuMoConfig

    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        cfg = self.settings()
        unet = model.unet
        timesteps = model.pipe.scheduler.config.num_train_timesteps
        # the trained network in float32 (its master weights), the frozen UNet in its own dtype (autocast joins them)
        network = DuMoNetwork(unet, cfg.tlmo, cfg.tlmo_buckets, timesteps).to(unet.device, torch.float32)

        def student(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            kwargs = model.unet_kwargs(cond, x)
            down, mid = network.residuals(x, t, **kwargs)
            return unet(x, t, **kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

        pairs = training_pairs(concepts, cfg)
        config = self.edit_config(cfg)
        names = base_names(model)
        identity = run_identity(
            self.name, config, concepts.to_dict(), tensors_fingerprint(model.unet_parameters(names))
        )
        network.requires_grad_(True)
        zero = list(network.epr.zero_convs.parameters())
        body = [p for n, p in network.epr.named_parameters() if not n.startswith("zero_convs.")]
        groups = [{"params": body, "lr": cfg.lr}, {"params": zero, "lr": cfg.zero_conv_lr or cfg.lr}]
        if cfg.tlmo == "none":
            network.tlmo.scale.requires_grad_(False)
        else:
            groups.append({"params": [network.tlmo.scale], "lr": cfg.tlmo_lr})
        objective = NegativeGuidanceObjective(
            model, student, model.denoise, pairs, preserve_list(concepts, cfg.preserve_empty), cfg
        )
        with frozen(unet), gradient_checkpointing(cfg.gradient_checkpointing, unet, network):
            record = run_training(objective, dict(network.named_parameters()), groups, cfg, identity, "DuMo")
        texts = list(dict.fromkeys(text for text, _ in pairs))
        gating = cfg.gating if cfg.gating is not None else all(c.kind != "explicit" for c in concepts)
        tensors = {f"network.{k}": v.detach() for k, v in network.state_dict().items()}
        tensors["gate.embeddings"] = model.encode(texts)
        spec = {
            "tlmo": cfg.tlmo,
            "tlmo_buckets": cfg.tlmo_buckets,
            "num_train_timesteps": timesteps,
            "taps": tap_channels(unet),
            "gating": gating,
            "facilitate_factor": cfg.facilitate_factor,
            "gate_texts": texts,
            "gate_tokens": [model.word_tokens(t) for t in texts],
            "tlmo_table": network.tlmo.scale.detach().cpu().tolist(),
        }
        log = {"training_seconds": record.pop("seconds"), "resumed_from": record.pop("resumed_from")}
        return Edit.from_modules(
            self.name, config, concepts.to_dict(), model, KIND, tensors, spec, names, info={"training": record},
            log=log,
        )  # fmt: skip
