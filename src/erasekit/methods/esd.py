"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, arXiv 2303.07345).

ESD fine-tunes part of the UNet with negative guidance (the loop and objective are in ``training.py``): on latents
``x_t`` of the erased prompt ``c`` the trained UNet learns to predict
``eps_0(x_t, c) - eta (eps_0(x_t, c) - eps_0(x_t, ''))``, i.e. what classifier-free guidance *away* from ``c`` would
produce with the frozen model ``eps_0``. Which tensors are trained is the variant (``train_method``), as in the
authors' 2025 diffusers rewrite: the weights and biases of every Linear and Conv2d module

- ``x`` (ESD-x): inside the cross-attention layers (``attn2``): erases what the *text* asks for, keeps the rest;
  the paper's choice for artistic styles;
- ``u`` (ESD-u): everywhere *but* cross-attention: erases the concept whatever the prompt (the paper's choice for
  nudity and objects), at a larger cost to unrelated prompts;
- ``full``: all of them; ``x-strict``: only the cross-attention key and value projections.

Normalisation layers are never trained (as in the rewrite). The 2023 code's ESD-u also froze the time embedding and
the output convolution; the rewrite trains them, and so do we.

The result is an ordinary weight edit (``Edit.from_weights``): the trained tensors replace the originals; the
pipeline is never modified (the trained tensors are float32 copies swapped in for the fit, the frozen rest stays in
the model's dtype). Preset ``sdxl`` is the authors' SDXL recipe (docs/methods/esd.md, "SDXL and SD2.x").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..concepts import ConceptSet
from ..edits import Edit
from ..models.adapter import Conditioning, ModelAdapter, tensors_fingerprint
from .base import TRANSFORMER_FAMILIES, UNET_FAMILIES, Method, register_method
from .training import (
    NegativeGuidanceObjective,
    TrainingConfig,
    float32_copies,
    frozen,
    gradient_checkpointing,
    run_identity,
    run_training,
    training_pairs,
)

TrainMethod = Literal["x", "u", "full", "x-strict"]


@dataclass
class ESDConfig(TrainingConfig):
    train_method: TrainMethod = field(
        default="x",
        metadata={"help": "trained tensors: x = cross-attention (ESD-x), u = all but cross-attention (ESD-u), "
                  "full, x-strict = cross-attention K/V only"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.check("esd params")


def trainable_names(model: ModelAdapter, train_method: TrainMethod) -> list[str]:
    """Denoiser state-dict names of the weights and biases that ``train_method`` fine-tunes. What reads the text
    (``x``, ``x-strict``) comes from the adapter: a UNet's cross-attention layers, a transformer's text-stream
    attention projections."""
    text = set(model.text_attention_modules(strict=train_method == "x-strict"))
    names = []
    for name, module in model.denoiser.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        chosen = {"x": name in text, "x-strict": name in text, "u": name not in text, "full": True}[train_method]
        if chosen:
            names += [f"{name}.{n}" for n, _ in module.named_parameters(recurse=False)]
    return names


@register_method
class ESD(Method):
    """Negative-guidance fine-tuning of cross-attention (ESD-x) or of the rest of the UNet (ESD-u)."""

    name = "esd"
    config_class = ESDConfig
    families = (*UNET_FAMILIES, *TRANSFORMER_FAMILIES)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # esd_sdxl.py of the authors' 2025 rewrite (esd-x; 1024 px follows from SDXL's latent size); checkpointing
        # so that it trains on one 24 GB GPU with the pipeline loaded in bf16
        "sdxl": {"lr": 2e-4, "start_guidance": 2.0, "negative_guidance": 1.0, "steps": 200,
                 "gradient_checkpointing": True},
    }  # fmt: skip

    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        cfg = self.settings()
        weights, record = self._train(model, concepts, cfg)
        config = self.edit_config(cfg)
        log = {"training_seconds": record.pop("seconds"), "resumed_from": record.pop("resumed_from")}
        return Edit.from_weights(
            self.name, config, concepts.to_dict(), model, weights, info={"training": record}, log=log
        )

    def _train(self, model: ModelAdapter, concepts: ConceptSet, cfg: ESDConfig) -> tuple[dict, dict]:
        """Fine-tune float32 copies of the variant's tensors; return them and the training record."""
        denoiser = model.denoiser
        names = trainable_names(model, cfg.train_method)
        originals = model.unet_parameters(names)  # the teacher's: the copies replace them in the model while training

        def teacher(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            return model.denoise(x, t, cond, params=originals)

        config = self.edit_config(cfg)
        identity = run_identity(self.name, config, concepts.to_dict(), tensors_fingerprint(originals))
        objective = NegativeGuidanceObjective(
            model, model.denoise, teacher, training_pairs(concepts, cfg), concepts.preserve_texts(), cfg
        )
        with (
            frozen(denoiser),
            float32_copies(denoiser, names) as copies,
            gradient_checkpointing(cfg.gradient_checkpointing, denoiser),
        ):
            record = run_training(
                objective, dict(copies), [{"params": list(copies.values()), "lr": cfg.lr}], cfg, identity,
                f"ESD-{cfg.train_method}",
            )  # fmt: skip
        return {n: c.detach() for n, c in copies.items()}, record
