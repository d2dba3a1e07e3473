"""Concept inversion: learn a new word that makes the *edited* model draw the erased concept again.

Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image Generative Models" (ICLR 2024,
CCE) show that erased models still draw the concept when prompted with a textual-inversion word fitted on the
edited model. Here the word is ``tokens`` input embeddings (a soft prompt), one set per text encoder since each
reads its own token-embedding table (SDXL has two), trained with Adam for exactly ``steps`` steps on the denoising
loss (on the velocity for a v-prediction model)

    L(v) = E_{x0, t, eps} || eps_theta'(x_t, t, text(prompt with v in place of the concept)) - eps ||^2

over ``references`` images of the concept. Our choice where CCE uses real photos: the references are the *unedited*
model's images of the attacked prompts at other seeds (``reference_seed + j``), which any benchmark has and which the
attacked rows' own seeds never enter. The learned word then replaces the concept's words in every attacked prompt
(a prompt that does not name the concept, e.g. I2P's, gets it as a prefix). Everything goes through the pipeline's
text encoder and UNet forward passes, so the attack works on weight edits and added modules alike. Budget: ``steps``
optimiser steps per concept, no judge queries. Deterministic for a seed (batches, timesteps and noise come from a
generator seeded with the run seed, the attack and the concept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from ..eval.prompts import PromptRow
from ..progress import progress_bar
from ..validation import Seed, check_at_least
from .base import (
    Adversarial,
    Attack,
    Budget,
    Target,
    denoising_loss,
    embedding_tables,
    encode_ids,
    noisy_batch,
    register,
    seeded,
    splice_ids,
)


@dataclass
class InversionOptions:
    steps: int = field(default=100, metadata={"help": "Adam steps per concept (the budget)"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate (textual inversion uses 5e-3)"})
    tokens: int = field(default=1, metadata={"help": "length of the learned word, in tokens"})
    references: int = field(default=8, metadata={"help": "unedited-model images of the concept to fit"})
    batch_size: int = field(default=4, metadata={"help": "images per step"})
    reference_seed: Seed = field(default=100_000, metadata={"help": "seed of the first reference image"})

    def __post_init__(self) -> None:
        check_at_least(self, "attacks.inversion", 1, ("steps", "tokens", "references", "batch_size"))
        check_at_least(self, "attacks.inversion", 0, ("lr",), strict=True)


@register
class Inversion(Attack):
    """A soft-prompt word fitted on the edited model to the unedited model's images of the concept."""

    name = "inversion"
    options_class = InversionOptions

    def learn(self, target: Target, rows: Sequence[PromptRow], concept: str) -> tuple[list[torch.Tensor], dict]:
        """The learned word, ``[tokens, d_e]`` for each text encoder's embedding table (SDXL has two), and the loss at
        the start and the end (mean of 5 steps each)."""
        opts, adapter = self.options, target.adapter
        references = [replace(rows[j % len(rows)], seed=opts.reference_seed + j) for j in range(opts.references)]
        latents = target.reference_latents(references)
        spliced = [splice_ids(adapter, r.prompt, concept, opts.tokens) for r in references]
        ids = torch.stack([s[0] for s in spliced])
        positions = [s[1] for s in spliced]
        # Each table's word starts at the mean of the concept's own token embeddings (textual inversion's initializer).
        word = []
        for e, ((tokenizer, _), table) in enumerate(zip(adapter.encoders, embedding_tables(adapter), strict=True)):
            concept_ids = tokenizer(concept, add_special_tokens=False).input_ids or ids[0, e, 1:2].tolist()
            word.append(table[concept_ids].float().mean(0).repeat(opts.tokens, 1).cpu().requires_grad_(True))
        optimizer = torch.optim.Adam(word, lr=opts.lr)
        generator = seeded(target.seed, self.label, concept)
        budget, losses = Budget(steps=opts.steps), []
        with progress_bar(target.progress) as bar:
            task = bar.add_task(f"{self.label}: {concept}", total=opts.steps)
            while budget.step():
                pick = torch.randint(0, len(references), (opts.batch_size,), generator=generator)
                noisy, timesteps, wanted = noisy_batch(adapter, latents[pick], 1, generator)
                vectors = [w.unsqueeze(0).expand(len(pick), -1, -1) for w in word]
                cond = encode_ids(adapter, ids[pick], [positions[i] for i in pick], vectors)
                loss = denoising_loss(adapter, noisy, timesteps, wanted, cond).mean()
                for w, grad in zip(word, torch.autograd.grad(loss, word), strict=True):
                    w.grad = grad
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.advance(task)
        info = {"loss_start": sum(losses[:5]) / len(losses[:5]), "loss_end": sum(losses[-5:]) / len(losses[-5:])}
        return [w.detach() for w in word], {**info, "steps": budget.steps}

    def run(self, target: Target, rows: Sequence[PromptRow], concept: str) -> list[Adversarial]:
        word, info = self.learn(target, rows, concept)
        spliced = [splice_ids(target.adapter, row.prompt, concept, self.options.tokens) for row in rows]
        ids = torch.stack([s[0] for s in spliced])
        with torch.no_grad():
            vectors = [w.unsqueeze(0).expand(len(rows), -1, -1) for w in word]
            cond = encode_ids(target.adapter, ids, [s[1] for s in spliced], vectors).to("cpu", torch.float32)
        steps = info.pop("steps")
        return [Adversarial(embeds=cond[i], steps=steps, info=dict(info)) for i in range(len(rows))]
