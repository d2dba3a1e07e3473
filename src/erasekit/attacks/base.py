"""What every attack looks like, and the pieces they share: the attacked model, text encoding with substituted token
embeddings, and the denoising loss.

An attack is a plug-in like a metric: a ``name``, an options dataclass validated up front (with its budget: optimiser
steps and judge queries), and ``run(target, rows, concept)`` that returns, for each prompt row of one erased concept,
an :class:`Adversarial`: a prompt, or text embeddings fed to the UNet instead of the prompt's. Attacks only use the
pipeline's forward pass (text encoder, UNet, VAE) and the judge through :class:`Target`, so they work against any edit:
replaced weights (UCE, RECE, MACE) or added modules (GLoCE, DuMo). The closed-form attack is the one exception: by
definition it reads the cross-attention key/value maps (see ``closed_form.py``).
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

from ..errors import ConfigError
from ..eval.prompts import PromptRow
from ..models.adapter import ModelAdapter
from ..registry import Registry
from ..validation import from_dict, to_dict


@dataclass
class Adversarial:
    """An attack's input for one row: ``prompt`` (text) or ``embeds`` (``[77, d]`` text embeddings), and its cost.

    ``steps`` and ``queries`` are what the attack spent (optimiser steps, judge queries); ``info`` is what to report
    (e.g. the prompt a search found, its final loss).
    """

    prompt: str | None = None
    embeds: torch.Tensor | None = None
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
def splice_ids(adapter: ModelAdapter, prompt: str, concept: str | None, n_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` (77, padded as the pipeline pads) with ``n_tokens`` free slots, and the slots' positions.

    The slots replace the first occurrence of ``concept``'s tokens in the prompt; a prompt that does not name the
    concept (an I2P prompt, or ``concept=None``) gets them as a prefix, as UnlearnDiffAtk's adversarial prefix.
    Words beyond the 77 positions are cut, as the pipeline cuts them.
    """
    tok = adapter.tokenizer
    words = tok(prompt, add_special_tokens=False).input_ids
    start, stop = 0, 0
    if concept:
        part = tok(concept, add_special_tokens=False).input_ids
        found = next((i for i in range(len(words) - len(part) + 1) if words[i : i + len(part)] == part), None)
        if found is not None:
            start, stop = found, found + len(part)
    # The slots' input embeddings are overwritten; EOS marks them so that nothing reading the ids (DuMo's prompt gate
    # matches token overlap) mistakes them for the concept's words. SD runs CLIP without a mask, so EOS is harmless.
    body = words[:start] + [tok.eos_token_id] * n_tokens + words[stop:]
    body = body[: adapter.max_length - 2]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = [tok.bos_token_id, *body, tok.eos_token_id]
    ids += [pad] * (adapter.max_length - len(ids))
    return ids, list(range(1 + start, 1 + start + n_tokens))


@contextmanager
def substituted_embeddings(
    adapter: ModelAdapter, positions: Sequence[Sequence[int]], vectors: torch.Tensor
) -> Iterator[None]:
    """While active, the text encoder's input embedding of batch row ``b`` at ``positions[b]`` is ``vectors[b]``.

    A forward hook on the token-embedding table, so gradients reach ``vectors`` ``[B, k, d]`` and any text encoder
    (CLIP of SD1.x or SD2.x) works without a patched forward.
    """
    table = adapter.text_encoder.get_input_embeddings()

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for b, pos in enumerate(positions):
            output[b, list(pos)] = vectors[b].to(output.device, output.dtype)
        return output

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_ids(
    adapter: ModelAdapter,
    ids: torch.Tensor,
    positions: Sequence[Sequence[int]] | None = None,
    vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Text embeddings ``[B, 77, d]`` of token ``ids`` ``[B, 77]``, optionally with substituted input embeddings
    (see :func:`substituted_embeddings`); differentiable, unlike :meth:`ModelAdapter.encode`."""
    encoder = adapter.text_encoder
    ids = ids.to(encoder.device)
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
    mask = (ids != adapter.tokenizer.pad_token_id).long() if use_mask else None
    if vectors is None:
        return encoder(ids, attention_mask=mask)[0]
    with substituted_embeddings(adapter, positions or [], vectors):
        return encoder(ids, attention_mask=mask)[0]


# ------------------------------------------------------------------------------------------------ denoising loss
def noisy_batch(
    scheduler: Any, latents: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` draws per latent of (timestep, noise): noisy latents, timesteps and the regression target."""
    latents = latents.repeat_interleave(n, dim=0)
    total = int(scheduler.config.num_train_timesteps)
    timesteps = torch.randint(0, total, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        wanted = noise
    elif kind == "v_prediction":
        wanted = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ConfigError(f"attacks need an epsilon or v-prediction scheduler, got prediction_type '{kind}'")
    return noisy, timesteps, wanted


def denoising_loss(
    unet: Any, noisy: torch.Tensor, timesteps: torch.Tensor, wanted: torch.Tensor, embeds: torch.Tensor
) -> torch.Tensor:
    """Per-sample mean squared error of the UNet's prediction: the training loss, as UnlearnDiffAtk and textual
    inversion minimise it (``embeds`` ``[B, 77, d]``, one per noisy latent).

    The UNet is called once per distinct timestep, as a sampler calls it, so that added modules which read the call's
    timestep (GLoCE's activation window reads the first one of the batch) see the right one for every sample.
    """
    device = unet.device
    losses = torch.empty(len(noisy), device=device)
    for t in timesteps.unique():
        idx = (timesteps == t).nonzero().squeeze(1)
        pred = unet(noisy[idx].to(device), t.to(device), encoder_hidden_states=embeds[idx.to(embeds.device)].to(device))
        error = F.mse_loss(pred.sample.float(), wanted[idx].to(device).float(), reduction="none")
        losses = losses.index_put((idx.to(device),), error.flatten(1).mean(1))
    return losses


def vae_latents(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents (the mean of the posterior) of images ``[B, 3, H, W]`` in [0, 1]."""
    vae = pipe.vae
    with torch.no_grad():
        posterior = vae.encode((2 * images - 1).to(vae.device, vae.dtype)).latent_dist
    return (posterior.mean * vae.config.scaling_factor).float().cpu()
