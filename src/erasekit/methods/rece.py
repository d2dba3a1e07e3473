"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024, arXiv 2407.12383).

RECE runs UCE, then for K epochs finds the text embedding that *still* regenerates each erased concept on the edited
model, and erases that embedding too (docs/methods/rece.md, "What it does"):

1. Derive (closed form, variant ``regzero``): for the bare concept's 77 token rows ``c``,

       c' = argmin ||W'_l c' - W_l c||^2 summed over all K/V layers l  +  lambda_reg ||c'||^2
          = (lambda_reg I + sum_l W'_l^T W'_l)^-1 (sum_l W'_l^T W_l) c

   with ``W_l`` the original and ``W'_l`` the current weights. ``c'`` reproduces the original model's keys and
   values for the concept on the edited model: the adversarial embedding.
2. Erase: a UCE edit (all 77 rows, aligned by absolute position to the guide's rows) mapping ``c'`` to the guide,
   preserving the preserve texts, anchored to the *current* weights (edits compound across epochs).
3. Validate (optional callback) and keep the best epoch.

Every edit here has the form ``W = W_orig @ T`` (UCE's shared-T identity), so RECE tracks one cumulative ``T`` and the
derivation needs only ``G = sum_l W_l^T W_l`` of the original weights:
``sum W'^T W' = T^T G T`` and ``sum W'^T W = T^T G``. ``G`` depends only on the base model, so it is computed once
per base model (:func:`cached_original_gram`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..concepts import ConceptSet
from ..edits import Edit
from ..linalg import gram, ridge_solve
from ..models.adapter import ModelAdapter
from ..models.cache import digest, memo_fingerprint
from ..validation import check_at_least
from .base import TRANSFORMER_FAMILIES, UNET_FAMILIES, Method, guide_for, register_method
from .uce import UCE, UCEConfig, preserve_list, transform_weights, uce_update

# Per-kind presets from the authors' README, model card and scripts. Celebrities are not in RECE's code: they take
# the art settings, for the reasons in docs/methods/rece.md ("Settings per kind").
PRESETS: dict[str, dict[str, Any]] = {
    "explicit": {"epochs": 3, "lambda_reg": 0.1},
    "style": {"epochs": 1, "lambda_reg": 1e-3},
    "object": {"epochs": 1, "lambda_reg": 0.1},
    "celebrity": {"epochs": 1, "lambda_reg": 1e-3},
}

Validator = Callable[[int, ModelAdapter], float]
"""Called as ``validator(epoch, model)`` with the epoch's weights applied; returns a score, lower is better."""


@dataclass
class RECEConfig:
    uce: UCEConfig = field(default_factory=UCEConfig, metadata={"help": "settings of the initial UCE stage"})
    epochs: int | None = field(default=None, metadata={"help": "RECE epochs; None = per kind (explicit 3, else 1)"})
    lambda_reg: float | None = field(
        default=None,
        metadata={
            "help": "ridge on ||c'|| in the derivation; None = per kind (explicit/object 0.1, style/celebrity 1e-3)"
        },
    )
    lamb: float = field(default=0.1, metadata={"help": "ridge weight of each RECE edit (lambda_2 = 0.1)"})
    erase_scale: float = field(default=1.0, metadata={"help": "erase weight of each RECE edit"})
    preserve_scale: float = field(default=0.1, metadata={"help": "preserve weight of each RECE edit (lambda_1 = 0.1)"})

    def __post_init__(self) -> None:
        check_at_least(self, "rece params", 0, ("epochs", "lamb", "erase_scale", "preserve_scale"))
        check_at_least(self, "rece params", 0, ("lambda_reg",), strict=True)  # keeps the derivation well posed


def derive_embedding(c: torch.Tensor, T: torch.Tensor, G: torch.Tensor, lambda_reg: float) -> torch.Tensor:
    """RECE's closed-form adversarial embedding ``c'`` for token rows ``c`` ``[n, d]`` (float64).

    Row form of ``c' = (lambda_reg I + T^T G T)^-1 T^T G c``: ``C' = C M``, ``M = (G T)(lambda_reg I + T^T G T)^-1``.
    Solving for the d x d map ``M`` costs the same for any number of rows, so all concepts' rows share one solve.
    """
    T = T.to(torch.float64)
    GT = G @ T
    return c.to(torch.float64) @ ridge_solve(GT, T.T @ GT, lambda_reg)


def original_gram(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """``G = sum_l W_l^T W_l`` over the K/V weights, float64."""
    return sum(gram(w.detach()) for w in weights.values())


def cached_original_gram(model: ModelAdapter, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`original_gram`, kept in ``model.tensor_cache`` by the fingerprint of the weights it sums (and the
    device kind and torch version that computed it): the same bits as computing it, at the cost of a file read."""
    cache = model.tensor_cache
    if cache is None:
        return original_gram(weights)
    device = next(iter(weights.values())).device
    key = digest("rece-gram", torch.__version__, device.type, memo_fingerprint(model.denoiser, weights))
    found = cache.get("rece-gram", key)
    if found is not None:
        return found["G"].to(device)
    G = original_gram(weights)
    cache.put("rece-gram", key, {"G": G})
    cache.evict()
    return G


@register_method
class RECE(Method):
    """UCE, then K epochs of deriving and erasing the adversarial embedding of each concept."""

    name = "rece"
    config_class = RECEConfig
    families = (*UNET_FAMILIES, *TRANSFORMER_FAMILIES)
    presets = PRESETS

    def fit(self, model: ModelAdapter, concepts: ConceptSet, *, validator: Validator | None = None) -> Edit:
        cfg = self.settings()
        d = model.embedding_dim
        words = [c.text for c in concepts]
        guide_texts = [guide_for(c) for c in concepts]
        preserve = preserve_list(concepts, empty=True)
        # All 77 rows of the bare words (not templated prompts), guides and preserved texts. Each distinct text is
        # encoded once and the UCE stage reuses these encodings: text encoding is most of what RECE costs
        # (docs/methods/rece.md, "Cost").
        texts = list(dict.fromkeys([*words, *guide_texts, *preserve]))
        embeddings = dict(zip(texts, model.encode(texts), strict=True))
        T = UCE(cfg.uce).transform(model, concepts, embeddings).dense()
        pooled = UCE(cfg.uce).pooled(model, concepts)  # FLUX's pooled map: UCE's edit, not refined by the epochs
        originals = model.text_projections(cfg.uce.edit_keys, cfg.uce.edit_values)  # live, left unchanged
        G = cached_original_gram(model, originals)
        per_kind = {kind: self.settings(kind) for kind in dict.fromkeys(c.kind for c in concepts)}
        epochs = max(per_kind[c.kind].epochs for c in concepts)

        c_rows = torch.stack([embeddings[w] for w in words])  # [n, 77, d]
        guides = torch.cat([embeddings[g] for g in guide_texts])
        R = torch.cat([embeddings[t] for t in preserve])
        preserve_gram = gram(R, cfg.preserve_scale)  # the same in every epoch
        lambda_regs = [per_kind[c.kind].lambda_reg for c in concepts]

        history = [T]
        derived = {}
        for epoch in range(1, epochs + 1):
            adversarial = torch.empty(c_rows.shape, dtype=torch.float64)
            for lambda_reg in dict.fromkeys(lambda_regs):  # concepts with the same lambda_reg share one derivation
                idx = [i for i, value in enumerate(lambda_regs) if value == lambda_reg]
                rows = derive_embedding(c_rows[idx].reshape(-1, d), T, G, lambda_reg)
                adversarial[idx] = rows.reshape(len(idx), -1, d)
            derived[f"rece/embeddings/epoch{epoch}"] = adversarial.float()
            T_k = uce_update(
                adversarial.reshape(-1, d), guides, R, cfg.erase_scale, cfg.preserve_scale, cfg.lamb, preserve_gram
            )
            T = T @ T_k.dense()
            history.append(T)

        scores = []  # of every epoch (0 = the UCE stage), with its weights temporarily in the model
        for epoch, T_epoch in enumerate(history if validator is not None else []):
            with model.temporary_weights({**transform_weights(originals, T_epoch), **pooled}):
                scores.append(float(validator(epoch, model)))
        best = min(range(len(scores)), key=scores.__getitem__) if scores else len(history) - 1
        weights = {**transform_weights(originals, history[best]), **pooled}
        info = {"epochs_run": epochs, "selected_epoch": best, "validation_scores": scores}
        config = self.edit_config(cfg)
        return Edit.from_weights(self.name, config, concepts.to_dict(), model, weights, extras=derived, info=info)
