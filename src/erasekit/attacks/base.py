"""What every attack looks like, and the pieces they share: the attacked model, text encoding with substituted token
embeddings, and the denoising loss.

An attack is a plug-in like a metric: a ``name``, an options dataclass validated up front (with its budget: optimiser
steps and judge queries), and ``run(target, rows, concept)`` that returns, for each prompt row of one erased concept,
an :class:`Adversarial`: a prompt, or text embeddings fed to the UNet instead of the prompt's. Attacks only use the
pipeline's forward pass (text encoder, UNet, VAE) and the judge through :class:`Target`, so they work against any edit:
replaced weights (UCE, RECE, MACE) or added modules (GLoCE, DuMo). The closed-form attack is the one exception: by
definition it reads the cross-attention key/value maps (see ``closed_form.py``).

Every family goes through the model adapter: text is encoded by each of its text encoders (``model.encoders``: one
on SD1.x/2.x, two on SDXL) from that encoder's own token-embedding table, and every UNet call and training target is
the adapter's (``model.denoise``, ``model.noise_target``: v-prediction on SD2.0/2.1 768 px). An attack's text
embeddings are a :class:`~erasekit.models.adapter.Conditioning`: the rows cross-attention reads and, on SDXL, the
pooled embedding.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelLayoutError
from ..eval.prompts import PromptRow
from ..models.adapter import Conditioning, ModelAdapter
from ..registry import Registry
from ..validation import from_dict, to_dict


@dataclass
class Adversarial:
    """An attack's input for one row: ``prompt`` (text) or ``embeds`` (the text conditioning of one row: rows
    ``[1, 77, d]``, and SDXL's pooled embedding ``[1, p]``), and its cost.

    ``steps`` and ``queries`` are what the attack spent (optimiser steps, judge queries); ``info`` is what to report
    (e.g. the prompt a search found, its final loss).
    """

    prompt: str | None = None
    embeds: Conditioning | None = None
    steps: int = 0
    queries: int = 0
    success: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.embeds is None):
            raise ValueError("an Adversarial is either a prompt or text embeddings")


class Budget:
    """Counts optimiser steps and judge queries and refuses to go over the configured limits."""

    def __init__(self, steps: int = 0, queries: int = 0) -> None:
        self.max_steps, self.max_queries = steps, queries
        self.steps = self.queries = 0

    def step(self) -> bool:
        """Take one optimiser step if the budget allows it; False when it is spent."""
        if self.steps >= self.max_steps:
            return False
        self.steps += 1
        return True

    def query(self) -> bool:
        """Spend one judge query if the budget allows it; False when it is spent."""
        if self.queries >= self.max_queries:
            return False
        self.queries += 1
        return True


@dataclass
class Target:
    """The attacked model and what an attacker may use against it.

    ``pipe`` carries the edit (nothing else is touched); ``original_kv`` are the unedited cross-attention K/V weights
    (the closed-form attack's "original model"); ``reference_latents(specs)`` encodes the *unedited* model's images of
    ``(prompt, seed)`` specs, the targets UnlearnDiffAtk and concept inversion fit to; ``query(adversarials, rows)``
    generates the images of attack inputs and returns the judge's verdicts (one query each).
    """

    pipe: Any
    adapter: ModelAdapter
    original_kv: dict[str, torch.Tensor]
    reference_latents: Callable[[Sequence[PromptRow]], torch.Tensor]
    query: Callable[[Sequence[Adversarial], Sequence[PromptRow]], list[bool]]
    seed: int = 0
    progress: bool = False


class Attack(ABC):
    """Base class: subclasses set ``name`` and ``options_class`` and implement :meth:`run`."""

    name: ClassVar[str]
    options_class: ClassVar[type]

    def __init__(self, options: Any = None, label: str | None = None) -> None:
        self.label = label or self.name
        self.options = from_dict(self.options_class, options or {}, where=f"attacks.{self.label}")

    def describe(self) -> dict[str, Any]:
        """Every setting the attack's numbers depend on (recorded in the results)."""
        return {"type": self.name, **to_dict(self.options)}

    @property
    def max_steps(self) -> int:
        return int(getattr(self.options, "steps", 0))

    @property
    def max_queries(self) -> int:
        return int(getattr(self.options, "queries", 0))

    @abstractmethod
    def run(self, target: Target, rows: Sequence[PromptRow], concept: str) -> list[Adversarial]:
        """One :class:`Adversarial` per row; all rows are prompts of the erased ``concept``."""


ATTACKS: Registry[type[Attack]] = Registry("attack type")
register = ATTACKS.register()
"""Class decorator adding an attack to :data:`ATTACKS` under its ``name``."""


def build_attack(label: str, options: dict[str, Any] | None) -> Attack:
    """The attack configured as ``label: {type: <attack>, ...options}`` (``type`` defaults to the label)."""
    options = dict(options or {})
    kind = options.pop("type", label)
    try:
        attack = ATTACKS.get(kind)
    except ConfigError as exc:
        raise ConfigError(f"attacks.{label}: {exc}") from None
    return attack(options, label=label)


def seeded(*parts: Any) -> torch.Generator:
    """A CPU generator seeded from ``parts`` (e.g. run seed, attack, concept, row): the same parts always draw the
    same numbers, whatever ran before, so an attack on one row does not depend on the order of rows or variants."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


# ------------------------------------------------------------------------------------------------ text encoding
def splice_ids(
    adapter: ModelAdapter, prompt: str, concept: str | None, n_tokens: int
) -> tuple[torch.Tensor, list[int]]:
    """Token ids ``[E, 77]`` of ``prompt``, one row per text encoder (``adapter.encoders``, each padded as the pipeline
    pads for it), with ``n_tokens`` free slots, and the slots' positions (the same in every row).

    The slots replace the first occurrence of ``concept``'s tokens in the prompt; a prompt that does not name the
    concept (an I2P prompt, or ``concept=None``) gets them as a prefix, as UnlearnDiffAtk's adversarial prefix.
    Words beyond the 77 positions are cut, as the pipeline cuts them.
    """
    rows, slots = [], None
    for tok, _ in adapter.encoders:
        words = tok(prompt, add_special_tokens=False).input_ids
        start, stop = 0, 0
        if concept:
            part = tok(concept, add_special_tokens=False).input_ids
            found = next((i for i in range(len(words) - len(part) + 1) if words[i : i + len(part)] == part), None)
            if found is not None:
                start, stop = found, found + len(part)
        # The slots' input embeddings are overwritten; the padding token marks them, so that nothing reading the ids
        # mistakes them for the concept's words (DuMo's prompt gate matches token overlap) and CLIP's pooled
        # embedding, read at the first EOS, stays at the real EOS where the pad token is not EOS (SDXL's second
        # encoder, SD2). SD runs CLIP without a mask, so the marker is harmless.
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        body = words[:start] + [pad] * n_tokens + words[stop:]
        body = body[: adapter.max_length - 2]
        ids = [tok.bos_token_id, *body, tok.eos_token_id]
        rows.append(ids + [pad] * (adapter.max_length - len(ids)))
        positions = list(range(1 + start, 1 + start + n_tokens))
        if slots is not None and positions != slots:
            raise ModelLayoutError("the text encoders' tokenizers split the prompt differently; cannot splice tokens")
        slots = positions
    return torch.tensor(rows), slots or []


def embedding_tables(adapter: ModelAdapter) -> list[torch.Tensor]:
    """Each text encoder's token-embedding table ``[vocab, d_e]`` (detached), in ``adapter.encoders`` order."""
    return [encoder.get_input_embeddings().weight.detach() for _, encoder in adapter.encoders]


@contextmanager
def substituted_embeddings(
    adapter: ModelAdapter, positions: Sequence[Sequence[int]], vectors: Sequence[torch.Tensor]
) -> Iterator[None]:
    """While active, text encoder ``e``'s input embedding of batch row ``b`` at ``positions[b]`` is
    ``vectors[e][b]`` (``vectors[e]``: ``[B, k, d_e]``, one per encoder of ``adapter.encoders``).

    Forward hooks on the token-embedding tables, so gradients reach the vectors and any CLIP text encoder works
    without a patched forward.
    """
    handles = []
    for (_, encoder), vector in zip(adapter.encoders, vectors, strict=True):

        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor, vector=vector) -> torch.Tensor:
            output = output.clone()
            for b, pos in enumerate(positions):
                output[b, list(pos)] = vector[b].to(output.device, output.dtype)
            return output

        handles.append(encoder.get_input_embeddings().register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def encode_ids(
    adapter: ModelAdapter,
    ids: torch.Tensor,
    positions: Sequence[Sequence[int]] | None = None,
    vectors: Sequence[torch.Tensor] | None = None,
) -> Conditioning:
    """The conditioning of token ids ``[B, E, 77]`` (see :func:`splice_ids`), optionally with substituted input
    embeddings (see :func:`substituted_embeddings`); differentiable, unlike :meth:`ModelAdapter.conditioning`."""
    per_encoder = list(ids.unbind(1))
    if vectors is None:
        return adapter.encode_ids(per_encoder)
    with substituted_embeddings(adapter, positions or [], vectors):
        return adapter.encode_ids(per_encoder)


# ------------------------------------------------------------------------------------------------ denoising loss
def noisy_batch(
    adapter: ModelAdapter, latents: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` draws per latent of (timestep, noise): noisy latents, timesteps and the regression target (the noise,
    or the velocity of a v-prediction model)."""
    scheduler = adapter.pipe.scheduler
    latents = latents.repeat_interleave(n, dim=0)
    total = int(scheduler.config.num_train_timesteps)
    timesteps = torch.randint(0, total, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return noisy, timesteps, adapter.noise_target(latents, noise, timesteps)


def denoising_loss(
    adapter: ModelAdapter, noisy: torch.Tensor, timesteps: torch.Tensor, wanted: torch.Tensor, cond: Conditioning
) -> torch.Tensor:
    """Per-sample mean squared error of the UNet's prediction: the training loss, as UnlearnDiffAtk and textual
    inversion minimise it (``cond``: one row per noisy latent).

    The UNet is called once per distinct timestep, as a sampler calls it, so that added modules which read the call's
    timestep (GLoCE's activation window reads the first one of the batch) see the right one for every sample.
    """
    device = adapter.device
    losses = torch.empty(len(noisy), device=device)
    for t in timesteps.unique():
        idx = (timesteps == t).nonzero().squeeze(1)
        pred = adapter.denoise(noisy[idx].to(device), t.to(device), cond[idx.tolist()])
        error = F.mse_loss(pred.float(), wanted[idx].to(device).float(), reduction="none")
        losses = losses.index_put((idx.to(device),), error.flatten(1).mean(1))
    return losses


def vae_latents(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents (the mean of the posterior) of images ``[B, 3, H, W]`` in [0, 1]."""
    vae = pipe.vae
    with torch.no_grad():
        posterior = vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist
    return (posterior.mean * vae.config.scaling_factor).float().cpu()
