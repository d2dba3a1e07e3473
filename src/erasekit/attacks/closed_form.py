"""RECE's closed-form adversarial embedding as an attack on any edit of the cross-attention keys and values.

RECE (Gong et al., ECCV 2024; docs/attacks.md, "closed_form") finds, for text embeddings ``c``, the embedding that
makes the *edited* model compute the keys and values the *original* model computes for ``c``:

    c' = argmin  sum_l ||W'_l c' - W_l c||^2 + lambda_reg ||c'||^2
       = (lambda_reg I + sum_l W'_l^T W'_l)^-1 (sum_l W'_l^T W_l) c

over every cross-attention K and V projection ``l`` (``W`` original, ``W'`` edited). In SD the text reaches the UNet
only through these projections, so with ``lambda_reg -> 0`` and invertible edits ``c'`` regenerates exactly what the
unedited model made; ``lambda_reg`` limits how far the attacker may move away from natural embeddings. RECE erases
these ``c'`` in its epochs, so it should resist this attack better than UCE: the claim the world table tests.

``methods/rece.py::derive_embedding`` computes the same map through RECE's cumulative transform ``T`` (``W' = W T``);
an attack must work on edits of any form, so here the edited maps are read from the pipeline: each projection is
probed with the identity (``W'^T = proj(I) - proj(0)``), which also captures modules added *on* the projections
(e.g. LoRA). Edits that leave every K/V projection as it was (GLoCE edits the attention output, DuMo a copy of the UNet
encoder) reduce the attack to a ridge-shrunk plain prompt: it is run and reported with ``kv_edited: false``. A
projection that is not linear after the edit (a gated module on K/V) makes the attack not applicable.

Row form, solved once for all prompts with the shared ridge solver: ``C' = C M``, ``M = (sum W^T W')(lambda_reg I +
sum W'^T W')^-1``.

SDXL: the rows are both encoders' penultimate layers concatenated (``d`` = 2048), the rows every K/V projection reads.
The UNet also takes the pooled embedding, which enters through the time embedding, not through K/V: the attack keeps
the original text's pooled vector (docs/attacks.md, "SDXL and SD2.x").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import ConfigError
from ..eval.prompts import PromptRow
from ..linalg import cross, gram, ridge_solve
from ..models.adapter import Conditioning, ModelAdapter
from ..validation import check_at_least
from .base import Adversarial, Attack, Target, register


class NotApplicableError(Exception):
    """The attack does not apply to this edit (the reason is reported in the results, not raised to the user)."""


def adversarial_map(
    originals: dict[str, torch.Tensor], edited: dict[str, torch.Tensor], lambda_reg: float
) -> torch.Tensor:
    """The ``d x d`` map ``M`` with ``c'^T = c^T M`` (float64), from the original and edited K/V weights by name."""
    if set(originals) != set(edited):
        raise ConfigError("closed_form: the original and edited K/V weights name different layers")
    rhs = sum(cross(originals[n], edited[n]) for n in originals)  # sum_l W_l^T W'_l
    system = sum(gram(edited[n]) for n in originals)  # sum_l W'_l^T W'_l
    return ridge_solve(rhs, system, lambda_reg)


def effective_kv(adapter: ModelAdapter, tolerance: float = 1e-4) -> dict[str, torch.Tensor]:
    """The linear maps the pipeline's K/V projections compute now, as weights ``[out, d]`` by state-dict name.

    Raises :class:`NotApplicableError` when a projection is not linear in its input (checked on random inputs).
    """
    d = adapter.embedding_dim
    probe = torch.Generator("cpu").manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer in adapter.layers:
            for name, proj in ((layer.key_weight, layer.to_k), (layer.value_weight, layer.to_v)):
                param = next(proj.parameters())
                eye = torch.eye(d, device=param.device, dtype=param.dtype)
                offset = proj(torch.zeros(1, d, device=param.device, dtype=param.dtype))
                weight = (proj(eye) - offset).T.float().cpu()
                x = torch.randn(4, d, generator=probe).to(param.device, param.dtype)
                expected = (x.float().cpu() @ weight.T) + offset.float().cpu()
                actual = proj(x).float().cpu()
                if not torch.allclose(actual, expected, rtol=tolerance, atol=tolerance * float(actual.abs().max())):
                    raise NotApplicableError(f"the edited projection '{name}' is not linear in the text embedding")
                out[name] = weight
    return out


@dataclass
class ClosedFormOptions:
    lambda_reg: float = field(
        default=0.1, metadata={"help": "ridge on ||c'|| (RECE's regular_scale: 0.1 nudity/objects, 1e-3 styles)"}
    )
    source: Literal["prompt", "concept"] = field(
        default="prompt",
        metadata={"help": "'prompt': map each row's own embeddings; 'concept': render the bare concept as RECE does"},
    )

    def __post_init__(self) -> None:
        check_at_least(self, "attacks.closed_form", 0, ("lambda_reg",), strict=True)


@register
class ClosedForm(Attack):
    """The embedding that reproduces the unedited model's keys and values on the edited model (no steps, no queries)."""

    name = "closed_form"
    options_class = ClosedFormOptions

    def run(self, target: Target, rows: Sequence[PromptRow], concept: str) -> list[Adversarial]:
        edited = effective_kv(target.adapter)
        kv_edited = any(not torch.equal(edited[n], target.original_kv[n].float().cpu()) for n in edited)
        originals = {n: target.original_kv[n].float().cpu() for n in edited}
        M = adversarial_map(originals, edited, self.options.lambda_reg)
        texts = [concept] * len(rows) if self.options.source == "concept" else [row.prompt for row in rows]
        cond = target.adapter.conditioning(texts)
        c = cond.hidden.to(torch.float64)
        adversarial = Conditioning((c @ M).float(), cond.pooled)  # the pooled embedding never reaches K/V: kept
        norm = float(adversarial.hidden.norm() / max(float(c.norm()), 1e-12))
        info = {"kv_edited": kv_edited, "norm_ratio": norm, "map_trace": float(M.trace())}
        return [Adversarial(embeds=adversarial[i], info=dict(info)) for i in range(len(rows))]
