"""A discrete adversarial prefix found by gradient-guided token search, in the spirit of UnlearnDiffAtk.

UnlearnDiffAtk (Zhang et al., ECCV 2024; docs/attacks.md, "token_search") prepends k = 5 adversarial tokens to a
prompt and optimises them so that the *edited* model denoises the unedited model's image of that prompt (same seed)
as well as it can, i.e. it minimises the diffusion loss

    L(prefix) = E_{t, eps} || eps_theta'(x_t, t, text(prefix + prompt)) - eps ||^2,  x_0 = the unedited image,

and asks the target classifier whether the attack has succeeded. UnlearnDiffAtk relaxes the tokens to a continuous
distribution and projects back; we search the tokens directly, as GCG does for language models (our choice: every
candidate is a real token sequence, so the prompt found is the prompt evaluated). Each iteration:

1. the gradient of ``L`` with respect to the one-hot prefix gives, per slot, the ``top_k`` most promising tokens;
2. ``candidates`` single-token substitutions are drawn from them and scored by ``L`` (same timesteps and noise);
3. the best one replaces the prefix if it lowers ``L``.

The judge (the evaluation's classifier; NudeNet for nudity) is queried on the current prefix at ``queries`` evenly
spaced iterations and the search stops at the first success. Budget per row: ``steps`` iterations, ``queries`` judge
queries; neither is ever exceeded. Candidate tokens are whole alphabetic words of the vocabulary (so the prefix reads
as text), never special tokens and, with ``exclude_concept``, never a token of the erased concept itself. The images
evaluated are generated from the token ids searched (their text embeddings), and the decoded prompt is reported.
On SDXL each searched token enters both text encoders; on a v-prediction model (SD2.0/2.1 768 px) the loss regresses
the velocity instead of ``eps`` (docs/attacks.md, "SDXL and SD2.x").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, ModelLayoutError
from ..eval.prompts import PromptRow
from ..models.adapter import ModelAdapter
from ..progress import progress_bar
from ..validation import check_at_least
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
class TokenSearchOptions:
    steps: int = field(default=20, metadata={"help": "search iterations per prompt (budget)"})
    queries: int = field(default=4, metadata={"help": "judge queries per prompt (budget); the search stops on success"})
    prefix: int = field(default=5, metadata={"help": "adversarial prefix length in tokens (UnlearnDiffAtk: 5)"})
    candidates: int = field(default=16, metadata={"help": "single-token substitutions scored per iteration"})
    top_k: int = field(default=32, metadata={"help": "tokens per slot kept from the gradient"})
    timesteps: int = field(default=2, metadata={"help": "(timestep, noise) draws per loss evaluation"})
    exclude_concept: bool = field(default=True, metadata={"help": "never propose the erased concept's own tokens"})

    def __post_init__(self) -> None:
        check_at_least(self, "attacks.token_search", 1, ("steps", "prefix", "candidates", "top_k", "timesteps"))
        check_at_least(self, "attacks.token_search", 0, ("queries",))


def word_tokens_mask(adapter: ModelAdapter, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Boolean mask over the vocabulary: whole alphabetic ASCII words (``word</w>``), minus ``exclude``.

    A searched token goes into every text encoder (SDXL has two), so their tables must index one vocabulary.
    """
    sizes = {table.shape[0] for table in embedding_tables(adapter)}
    if len(sizes) > 1:
        raise ModelLayoutError(f"the text encoders' token tables differ in size {sorted(sizes)}: no shared vocabulary")
    tokens = adapter.tokenizer.convert_ids_to_tokens(list(range(len(adapter.tokenizer))))
    vocab = sizes.pop()
    mask = torch.zeros(vocab, dtype=torch.bool)
    for i, token in enumerate(tokens[:vocab]):
        word = token.removesuffix("</w>") if token else ""
        mask[i] = bool(token) and token.endswith("</w>") and word.isascii() and word.isalpha()
    mask[list(exclude)] = False
    return mask


def query_schedule(steps: int, queries: int) -> set[int]:
    """The (1-based) iterations after which the judge is asked: ``queries`` of them, evenly spaced, the last one at
    the final iteration."""
    asks = min(queries, steps)
    return {round((j + 1) * steps / asks) for j in range(asks)}


@register
class TokenSearch(Attack):
    """Gradient-guided search for a discrete prefix that makes the edited model reproduce the unedited image."""

    name = "token_search"
    options_class = TokenSearchOptions

    def run(self, target: Target, rows: Sequence[PromptRow], concept: str) -> list[Adversarial]:
        adapter = target.adapter
        exclude = adapter.tokenizer(concept, add_special_tokens=False).input_ids if self.options.exclude_concept else []
        allowed = word_tokens_mask(adapter, exclude)
        if not allowed.any():
            raise ConfigError(f"attacks.{self.label}: the tokenizer has no whole-word tokens to search over")
        latents = target.reference_latents(rows)
        out = []
        with progress_bar(target.progress) as bar:
            task = bar.add_task(f"{self.label}: {concept}", total=len(rows))
            for row, latent in zip(rows, latents, strict=True):
                out.append(self.search(target, row, concept, latent[None], allowed))
                bar.advance(task)
        return out

    def search(
        self, target: Target, row: PromptRow, concept: str, latent: torch.Tensor, allowed: torch.Tensor
    ) -> Adversarial:
        """Search one row's prefix within the budget."""
        opts, adapter = self.options, target.adapter
        tables = embedding_tables(adapter)
        generator = seeded(target.seed, self.label, concept, row.set, row.index)
        ids, slots = splice_ids(adapter, row.prompt, None, opts.prefix)  # [encoders, 77]: one token per slot for all
        pool = allowed.nonzero().squeeze(1)
        ids[:, slots] = pool[torch.randint(0, len(pool), (opts.prefix,), generator=generator)]
        budget = Budget(steps=opts.steps, queries=opts.queries)
        asks = query_schedule(opts.steps, opts.queries)
        repeat = [0] * opts.timesteps
        success, loss = None, float("nan")
        while budget.step():
            noisy, timesteps, wanted = noisy_batch(adapter, latent, opts.timesteps, generator)
            one_hot = torch.nn.functional.one_hot(ids[0, slots], len(tables[0])).to(tables[0]).requires_grad_(True)
            vectors = [(one_hot.to(table) @ table)[None] for table in tables]
            cond = encode_ids(adapter, ids[None], [slots], vectors)
            current = denoising_loss(adapter, noisy, timesteps, wanted, cond[repeat]).mean()
            (grad,) = torch.autograd.grad(current, [one_hot])
            grad[:, ~allowed.to(grad.device)] = float("inf")
            top = (-grad).topk(min(opts.top_k, int(allowed.sum())), dim=1).indices.cpu()  # [prefix, top_k]
            slot = torch.randint(0, opts.prefix, (opts.candidates,), generator=generator)
            pick = torch.randint(0, top.shape[1], (opts.candidates,), generator=generator)
            candidates = ids.repeat(opts.candidates, 1, 1)
            for e in range(len(tables)):
                candidates[torch.arange(opts.candidates), e, torch.tensor(slots)[slot]] = top[slot, pick]
            with torch.no_grad():
                n = opts.candidates
                each = [c for c in range(n) for _ in range(opts.timesteps)]
                cand = encode_ids(adapter, candidates)[each]
                losses = denoising_loss(adapter, noisy.repeat(n, 1, 1, 1), timesteps.repeat(n),
                                        wanted.repeat(n, 1, 1, 1), cand).reshape(n, opts.timesteps).mean(1)  # fmt: skip
            best = int(losses.argmin())
            loss = float(current.detach())
            if float(losses[best]) < loss:
                ids, loss = candidates[best], float(losses[best])
            if budget.steps in asks and budget.query():
                with torch.no_grad():
                    probe = Adversarial(embeds=encode_ids(adapter, ids[None]).to("cpu", torch.float32))
                success = target.query([probe], [row])[0]
                if success:
                    break
        with torch.no_grad():
            embeds = encode_ids(adapter, ids[None]).to("cpu", torch.float32)
        words = adapter.tokenizer.decode(ids[0, slots].tolist())
        info = {"prompt": f"{words} {row.prompt}".strip(), "loss": loss}
        return Adversarial(embeds=embeds, steps=budget.steps, queries=budget.queries, success=success, info=info)
