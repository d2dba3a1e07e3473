"""Ring-A-Bell's concept vector, as RECE re-implements it for all its baselines
(Tsai et al., ICLR 2024; RECE's ``attack_methods/RingABell.py``; docs/attacks.md, "ringabell").

The concept vector is the mean, over (sensitive, normal) prompt pairs, of the difference of their text embeddings,
kept per token position (``[77, d]``). The attack feeds ``embed(prompt) + eta * vector`` to the UNet: continuous and
in embedding space, with no genetic search for a discrete prompt, as in RECE's ``attack_methods/RingABell.py`` (so
numbers are comparable with RECE's Ring-A-Bell column, not with the original paper's K77/K38/K16 prompts). RECE uses
eta = 3 for nudity on the 142 UnlearnDiffAtk prompts and 0.9 for Van Gogh.

Pairs: a CSV with ``sensitive_prompt,normal_prompt`` columns, the shipped ``ringabell_nudity`` / ``ringabell_vangogh``
(RECE's files), or by default built from the attacked rows themselves: each distinct prompt that names the concept,
paired with the same prompt with the concept's words removed ("a photo of a shirtless person" / "a photo of a
person"). The text encoder is never edited by the methods here, but the vector is computed with the attacked pipeline's
encoder, as an attacker holding the released model would.

SDXL: the vector lives in the rows cross-attention reads (both encoders' penultimate layers, concatenated); the pooled
embedding, which RECE's SD1.x attack has no counterpart of, stays the attacked prompt's own (docs/attacks.md, "SDXL
and SD2.x").
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..errors import ConfigError
from ..eval.prompts import PromptRow
from ..models.adapter import Conditioning, ModelAdapter
from .base import Adversarial, Attack, Target, register

SHIPPED_PAIRS = {"ringabell_nudity": "ringabell_nudity.csv", "ringabell_vangogh": "ringabell_vangogh.csv"}


def read_pairs(spec: str) -> list[tuple[str, str]]:
    """(sensitive, normal) prompt pairs of a shipped set name or a CSV path."""
    if spec in SHIPPED_PAIRS:
        source = resources.files("erasekit") / "data" / "prompts" / SHIPPED_PAIRS[spec]
    else:
        source = Path(spec)
        if not source.is_file():
            raise ConfigError(f"ringabell pairs '{spec}': no such file (or use {', '.join(SHIPPED_PAIRS)})")
    with source.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"sensitive_prompt", "normal_prompt"} <= set(reader.fieldnames or ()):
            raise ConfigError(f"ringabell pairs '{spec}' needs the columns sensitive_prompt and normal_prompt")
        return [(r["sensitive_prompt"], r["normal_prompt"]) for r in reader]


def remove_concept(prompt: str, concept: str) -> str | None:
    """``prompt`` without the words of ``concept`` (case-insensitive), or None when it does not contain them."""
    pattern = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
    if not pattern.search(prompt):
        return None
    return " ".join(pattern.sub(" ", prompt).split())


def concept_vector(adapter: ModelAdapter, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Mean over pairs of ``embed(sensitive) - embed(normal)``, per token position: ``[77, d]``."""
    if not pairs:
        raise ConfigError("ringabell: no (sensitive, normal) prompt pairs to build the concept vector from")
    sensitive = adapter.encode([s for s, _ in pairs])
    normal = adapter.encode([n for _, n in pairs])
    return (sensitive - normal).mean(0)


@dataclass
class RingABellOptions:
    eta: float = field(default=3.0, metadata={"help": "strength of the concept vector (RECE: 3 nudity, 0.9 Van Gogh)"})
    pairs: str | None = field(
        default=None,
        metadata={"help": "ringabell_nudity, ringabell_vangogh, a CSV path, or None: pairs built from the rows"},
    )


@register
class RingABell(Attack):
    """``embed(prompt) + eta * concept vector`` (no steps, no queries)."""

    name = "ringabell"
    options_class = RingABellOptions

    def run(self, target: Target, rows: Sequence[PromptRow], concept: str) -> list[Adversarial]:
        if self.options.pairs is not None:
            pairs = read_pairs(self.options.pairs)
        else:
            prompts = dict.fromkeys(row.prompt for row in rows)
            pairs = [(p, normal) for p in prompts if (normal := remove_concept(p, concept)) is not None]
            if not pairs:
                raise ConfigError(
                    f"attacks.{self.label}: no attacked prompt names '{concept}' to build pairs from; set 'pairs'"
                )
        vector = concept_vector(target.adapter, pairs)
        cond = target.adapter.conditioning([row.prompt for row in rows])
        embeds = Conditioning(cond.hidden + self.options.eta * vector, cond.pooled)  # the prompt's own pooled vector
        info = {"pairs": len(pairs), "vector_norm": float(vector.norm())}
        return [Adversarial(embeds=embeds[i], info=dict(info)) for i in range(len(rows))]
