"""SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models (Li et al., ICLR 2026, arXiv
2503.07392).

A closed-form cross-attention edit (V by default) confined to the null space of a *refined retain set*, so the outputs
of the retained concepts do not move (docs/methods/speed.md). With ``c1`` the erased concepts' token rows, ``c*`` their
anchors' rows, ``T = mean c1 c1^T`` and ``A = mean c* c1^T``, each weight ``W`` gets the update

    dW = W (A - T) P [I - M C2 (C2^T P M C2 + lam I)^-1 C2^T P] M,     M = (T P + rho I)^-1

the minimiser of ``mean ||(W + dW) c1 - W c*||^2 + rho ||dW||^2`` over updates ``dW = dW P`` that also keep the
invariant embeddings ``C2`` fixed (exactly with ``lam = 0``). ``P`` projects onto the eigenvectors of
``R = mean c c^T`` (over the refined retain set) whose eigenvalue is below ``tau``: a retain row ``c`` in the span of
the eigenvectors at or above ``tau`` has ``P c = 0`` and hence ``dW c = 0``.

Since ``P`` commutes with ``N = (P T P + rho I)^-1``, ``P M = P N P =: Q`` is symmetric positive semi-definite and the
update reads ``dW = W (A - T) (Q - Q C2 (C2^T Q C2 + lam I)^-1 C2^T Q)``: two symmetric solves, done by the shared
:func:`~erasekit.linalg.ridge_solve`. Each weight becomes ``W @ (I + (A - T) Q')``.

The three parts of "prior knowledge", each switchable for ablation as in the paper's ablation study:

- IPF (influence-based prior filtering): keep the retain rows ``c`` whose erase influence ``||D c||`` is above the
  mean, with ``D = W (A - T) (I + T)^-1`` the plain (unconstrained) erase update.
- DPA (directed prior augmentation): ``dpa_copies`` noisy copies ``c + v v^T eps`` of each kept row, along the right
  singular vector ``v`` of ``W`` with the smallest singular value, kept when their influence is above the mean of
  their chunk. IPF and DPA depend on ``W``, so each weight gets its own refined retain set and ``P``.
- IEC (invariant equality constraints): ``C2`` = the empty prompt's start row and 3 k-means centroids of its other
  rows, which every prompt's padding resembles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..concepts import ConceptSet
from ..edits import Edit
from ..errors import ConfigError
from ..linalg import cross, gram, ridge_solve
from ..models.adapter import ModelAdapter
from ..validation import Seed, check_at_least
from .base import DEFAULT_GUIDES, TRANSFORMER_FAMILIES, UNET_FAMILIES, Method, guide_for, register_method, single_kind
from .uce import UCE, Update, pooled_weights, transform_weights

# The anchors of the reference scripts: "" (the start row) for objects and explicit content, "art" for styles,
# "person" for celebrities.
GUIDES = {**DEFAULT_GUIDES, "celebrity": "person"}

# Per-kind settings of the reference scripts (docs/methods/speed.md, "Presets"); the field defaults are the
# object (instance) settings.
PRESETS: dict[str, dict[str, Any]] = {
    "object": {"tau": 0.1, "rho": 1.0, "lamb": 0.0, "ipf": True, "dpa_copies": 10},
    "style": {"tau": 0.1, "rho": 1.0, "lamb": 0.0, "ipf": True, "dpa_copies": 10},
    "celebrity": {"tau": 1e-4, "rho": 0.05, "lamb": 0.0, "ipf": False, "dpa_copies": 0},
    "explicit": {"tau": 0.1, "rho": 0.7, "lamb": 0.5, "ipf": True, "dpa_copies": 10, "all_tokens": True},
}

DPA_CHUNK = 128
"""Retain rows whose augmented copies share one mean influence threshold (the reference's batch of 128)."""
IEC_CENTROIDS = 3
"""k-means centroids of the empty prompt's non-start rows in C2 (the reference's 3)."""


@dataclass
class SPEEDConfig:
    tau: float = field(
        default=0.1,
        metadata={"help": "eigenvalue threshold of the retain statistic below which a direction may change "
                          "(object/style/explicit 0.1, celebrity 1e-4)"},
    )  # fmt: skip
    rho: float = field(
        default=1.0, metadata={"help": "ridge weight on ||dW|| (object/style 1.0, celebrity 0.05, explicit 0.7)"}
    )
    lamb: float = field(
        default=0.0,
        metadata={"help": "softness of the invariant constraint, 0 = exact (explicit 0.5: its invariants lie in the "
                          "retained span)"},
    )  # fmt: skip
    ipf: bool = field(
        default=True, metadata={"help": "influence-based prior filtering of the retain rows (celebrity: off)"}
    )
    dpa_copies: int = field(
        default=10, metadata={"help": "directed augmentations per kept retain row, 0 = no DPA (celebrity: 0)"}
    )
    iec: bool = field(default=True, metadata={"help": "keep the empty prompt's invariant rows C2 fixed"})
    all_tokens: bool = field(
        default=False,
        metadata={"help": "erase every non-start row of concept and anchor, and retain the empty prompt's rows "
                          "(explicit: on); otherwise the last word token only"},
    )  # fmt: skip
    edit_keys: bool = field(default=False, metadata={"help": "edit attn2.to_k (the paper's K and KV variants)"})
    edit_values: bool = field(default=True, metadata={"help": "edit attn2.to_v (the paper's default, V only)"})
    seed: Seed = field(default=0, metadata={"help": "seed of DPA's noise and of the k-means initialisation"})

    def __post_init__(self) -> None:
        check_at_least(self, "speed params", 0, ("tau", "lamb", "dpa_copies"))
        check_at_least(self, "speed params", 0, ("rho",), strict=True)  # keeps M = (TP + rho I)^-1 defined
        if not (self.edit_keys or self.edit_values):
            raise ConfigError("speed params: edit_keys and edit_values cannot both be false")


def retain_texts(preserve: list[str], targets: list[str]) -> list[str]:
    """The preserved texts, without those that contain a target as a whole word (the reference drops them)."""
    patterns = [re.compile(rf"\b{re.escape(t)}\b", re.IGNORECASE) for t in targets]
    return [text for text in preserve if not any(p.search(text) for p in patterns)]


def kmeans(rows: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 100) -> torch.Tensor:
    """``k`` Euclidean k-means centroids of ``rows`` ``[n, d]`` (k-means++ start, Lloyd iterations), float64."""
    rows = rows.to(torch.float64)
    centroids = rows[torch.randint(len(rows), (1,), generator=generator)]
    while len(centroids) < k:
        distance = torch.cdist(rows, centroids).amin(1) ** 2
        pick = torch.multinomial(distance / distance.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, rows[pick]])
    for _ in range(iterations):
        labels = torch.cdist(rows, centroids).argmin(1)
        updated = torch.stack(
            [rows[labels == j].mean(0) if bool((labels == j).any()) else centroids[j] for j in range(k)]
        )
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def influence(D: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """IPF's score ``||D c||`` of every row ``c`` (the paper squares it: the same order)."""
    return torch.linalg.vector_norm(rows @ D.T, dim=-1)


def weakest_direction(W: torch.Tensor) -> torch.Tensor:
    """The unit right singular vector of ``W`` ``[out, d]`` with the smallest of its ``min(out, d)`` singular values.

    From the eigen-decomposition of the smaller Gram (``W^T W`` or ``W W^T``): only this one vector is needed, and
    on SD1.5's V weights that is 1.2 to 2 times faster than an SVD (CPU).
    """
    if W.shape[0] >= W.shape[1]:
        return torch.linalg.eigh(W.T @ W).eigenvectors[:, 0]
    u = torch.linalg.eigh(W @ W.T).eigenvectors[:, 0]
    v = W.T @ u
    return v / torch.linalg.vector_norm(v)


def refine(
    W: torch.Tensor,
    D: torch.Tensor,
    retain: torch.Tensor,
    ipf: bool,
    copies: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The refined retain set of one weight: IPF-kept rows plus their DPA copies that pass the chunk's mean influence.

    DPA's direction is the right singular vector of ``W`` with the smallest of its ``min(out, d)`` singular values:
    moving a row along it changes ``W c`` least, so the copies stay close in meaning to what they came from.
    """
    if len(retain) == 0:
        return retain
    if ipf:
        score = influence(D, retain)
        retain = retain[score > score.mean()]
    if copies == 0:
        return retain
    v = weakest_direction(W)
    augmented = []
    for start in range(0, len(retain), DPA_CHUNK):
        chunk = retain[start : start + DPA_CHUNK].repeat_interleave(copies, 0)
        eps = torch.randn(chunk.shape, generator=generator, dtype=torch.float64)
        chunk = chunk + (eps @ v)[:, None] * v  # c + v v^T eps
        score = influence(D, chunk)
        augmented.append(chunk[score > score.mean()])
    return torch.cat([retain, *augmented])


def null_space_projector(retain: torch.Tensor, tau: float) -> torch.Tensor:
    """``P = U0 U0^T`` over the eigenvectors of ``R = mean c c^T`` with eigenvalue ``< tau`` (identity if no rows)."""
    d = retain.shape[-1]
    if len(retain) == 0:
        return torch.eye(d, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(gram(retain, 1 / len(retain)))
    U0 = vectors[:, values < tau]
    return U0 @ U0.T


def speed_projection(T: torch.Tensor, P: torch.Tensor, C2: torch.Tensor, rho: float, lamb: float) -> torch.Tensor:
    """``Q' = Q - Q C2 (C2^T Q C2 + lam I)^-1 C2^T Q`` with ``Q = P (P T P + rho I)^-1 P`` (float64, symmetric): the
    update of the module docstring is ``dW = W (A - T) Q'``. ``C2`` is ``[d, m]`` (``m = 0``: no invariants)."""
    Q = ridge_solve(P, P @ T @ P, rho) @ P  # P N P; symmetric, as P commutes with N
    Q = 0.5 * (Q + Q.T)
    if C2.shape[-1]:
        QC2 = Q @ C2
        Q = Q - ridge_solve(QC2, C2.T @ QC2, lamb) @ QC2.T
    return Q


def speed_transform(
    T: torch.Tensor, A: torch.Tensor, P: torch.Tensor, C2: torch.Tensor, rho: float, lamb: float
) -> torch.Tensor:
    """``I + (A - T) Q'`` (:func:`speed_projection`): ``W @`` the result is ``W + dW`` of the module docstring
    (float64, ``[d, d]``)."""
    return torch.eye(T.shape[-1], dtype=torch.float64) + (A - T) @ speed_projection(T, P, C2, rho, lamb)


def speed_update(
    c1: torch.Tensor, c_star: torch.Tensor, T: torch.Tensor, P: torch.Tensor, C2: torch.Tensor, rho: float,
    lamb: float,
) -> Update:  # fmt: skip
    """:func:`speed_transform` with ``A = mean c* c1^T`` and ``T = mean c1 c1^T``, as ``I + U V^T``: ``A - T`` is
    ``(c* - c1)^T c1 / n``, so the update is thin (rank n) whenever the erased rows are fewer than the width."""
    Q = speed_projection(T, P, C2, rho, lamb)
    c1, c_star = c1.to(torch.float64), c_star.to(torch.float64)
    return Update((c_star - c1).T, Q @ c1.T / len(c1))


@register_method
class SPEED(Method):
    """Closed-form V (or K/V) edit in the null space of a refined retain set, with invariants kept exactly."""

    name = "speed"
    config_class = SPEEDConfig
    families = (*UNET_FAMILIES, *TRANSFORMER_FAMILIES)
    presets = PRESETS

    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        cfg = self.settings(single_kind(concepts, self.name))
        generator = torch.Generator().manual_seed(cfg.seed)
        targets = [c.text for c in concepts]
        anchors = [guide_for(c, GUIDES) for c in concepts]
        preserve = retain_texts(concepts.preserve_texts(), targets)

        texts = list(dict.fromkeys([*targets, *anchors, *preserve]))
        # Outside the all-token mode only the last word rows are read: the causal encoder needs no later position,
        # which makes encoding (most of the cost) several times cheaper. The empty prompt is always encoded whole.
        positions = None if cfg.all_tokens else 1 + max(i for t in texts for i in model.last_word_rows(t))
        rows = dict(zip(texts, model.encode(texts, positions), strict=True))
        emb = lambda text: rows[text].to(torch.float64)  # noqa: E731
        last = lambda text: emb(text)[model.last_word_rows(text)]  # noqa: E731  (SD3: its CLIP and T5 rows)
        empty = model.encode([""])[0].to(torch.float64)
        words = model.word_offset  # rows before it: CLIP's start token (T5 has none)
        if cfg.all_tokens:  # every row after the start token, paired by position (the reference's nudity mode)
            c1 = torch.cat([emb(t)[words:] for t in targets])
            c_star = torch.cat([emb(a)[words:] for a in anchors])
        else:
            c1 = torch.cat([last(t) for t in targets])
            c_star = torch.cat([last(a) for a in anchors])
        retain = torch.cat([last(t) for t in preserve]) if preserve else empty[:0]
        if cfg.all_tokens:
            retain = torch.cat([retain, empty[words:]])
        T = gram(c1, 1 / len(c1))
        C2 = (
            torch.cat([empty[:words], kmeans(empty[words:], IEC_CENTROIDS, torch.Generator().manual_seed(cfg.seed))]).T
            if cfg.iec
            else empty[:0].T
        )

        weights = model.text_projections(cfg.edit_keys, cfg.edit_values)
        refining = cfg.ipf or cfg.dpa_copies > 0  # then the refined retain set depends on W: one P per weight
        if refining:  # (A - T)(I + T)^-1: IPF's D = W @ erase_map, one solve for all W
            erase_map = ridge_solve(cross(c_star, c1, 1 / len(c1)) - T, T, 1.0)
        edited, kept = {}, {}
        shared = None
        for name, weight in weights.items():
            if refining:
                W = weight.detach().to(torch.float64)
                D = W @ erase_map  # W (A - T) (I + T)^-1
                refined = refine(W, D, retain, cfg.ipf, cfg.dpa_copies, generator)
                transform = speed_update(c1, c_star, T, null_space_projector(refined, cfg.tau), C2, cfg.rho, cfg.lamb)
            else:
                refined = retain
                if shared is None:
                    P = null_space_projector(retain, cfg.tau)
                    shared = speed_update(c1, c_star, T, P, C2, cfg.rho, cfg.lamb)
                transform = shared
            edited.update(transform_weights({name: weight}, transform))
            kept[name] = len(refined)
        uce = UCE()  # FLUX's / SD3's pooled map: UCE's closed form with its defaults (one vector per text to keep)
        pairs = list(zip(targets, anchors, strict=True))
        scale = uce.settings().erase_scale
        edited.update(pooled_weights(model, pairs, preserve, scale, uce.preserve_scale(preserve), uce.settings().lamb))
        info = {"retain_texts": len(preserve), "refined_retain_rows": kept}
        config = self.edit_config(cfg)
        return Edit.from_weights(self.name, config, concepts.to_dict(), model, edited, info=info)
