"""MACE stage 1: closed-form cross-attention refinement (CFR) of every K/V projection, for all concepts at once.

Paper Eq. 1-2 with a ridge term; docs/methods/mace.md ("What it does", step 1, and "Memory"). In each ``old``
prompt (template + concept) the tokens around the concept phrase (BOS and prefix words, the words after the phrase,
EOS and the padding, whatever its token: EOS in SD1.x, "!" in SD2.x and SDXL's second encoder) are mapped to what
the *original* weights give in the ``new`` prompt (same template, surrogate instead of concept); the concept tokens
themselves are left to stage 2.
For every K/V matrix ``W`` with original ``W0``:

    min_W  sum_i ||W c_i - W0 g_i||^2 + lam ||W - W0||_F^2 + alpha sum_p ||W e_p - W0 e_p||^2

(c_i: aligned rows of the old prompts, g_i: their partners in the new prompts, e_p: preservation tokens), solved by

    W (lam I + sum c c^T + alpha P) = W0 (lam I + sum g c^T + alpha P),   P = sum_p e_p e_p^T.

Every target is produced by the same matrix's original weights, so ``W = W0 T`` with one d x d matrix ``T`` shared by
all projections (32 in SD1.x, 140 in SDXL; the identity UCE uses): the sums are d x d, accumulated concept by
concept, and memory does not grow with the number of concepts (the reference keeps every target vector, about 23 GB
for 100 concepts on SD1.x).

Preservation statistics ``P`` are sums over all 77 positions of captions (the reference's COCO "prior" cache; here
any caption source of ``erasekit.sources.CAPTIONS``) and of retained texts (its "domain" cache), cached on disk per
text encoders, tokenizers and caption set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from ...concepts import Concept
from ...errors import TokenizationError
from ...io import atomic_file
from ...linalg import cross, gram, ridge_solve
from ...models.adapter import ModelAdapter
from ...models.loading import cache_dir
from ...progress import progress_bar
from ...sources import CAPTIONS
from .prompts import prompt_pairs

REFERENCE_CAPTIONS = 616_767
"""Captions behind the reference's COCO cache (2014 train + val); a smaller caption set is rescaled to this mass."""


def align_tokens(old_ids: Sequence[int], new_ids: Sequence[int], length: int) -> tuple[list[int], list[int]]:
    """Positions of ``old`` and ``new`` paired by CFR: common prefix, common suffix, then the padding from the end.

    ``old_ids`` / ``new_ids`` are the un-padded ids with BOS and EOS. The differing middle (concept vs surrogate
    phrase) is left out. Padding positions are paired from the end of the ``length``-token sequence, so both lists
    have the same length; with k concept tokens each pair yields ``length - k`` rows when the surrogate is shorter.
    """
    n_old, n_new = len(old_ids), len(new_ids)
    prefix = 0
    while prefix < min(n_old, n_new) and old_ids[prefix] == new_ids[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(n_old, n_new) - prefix and old_ids[n_old - 1 - suffix] == new_ids[n_new - 1 - suffix]:
        suffix += 1
    pads = min(length - n_old, length - n_new)
    idx_old = [*range(prefix), *range(n_old - suffix, n_old), *range(length - pads, length)]
    idx_new = [*range(prefix), *range(n_new - suffix, n_new), *range(length - pads, length)]
    return idx_old, idx_new


def unpadded_ids(tokenizer: Any, text: str) -> list[int]:
    """``tokenizer``'s ids of ``text`` with BOS and EOS, without padding (what CFR aligns)."""
    return tokenizer(text).input_ids


def cfr_positions(model: ModelAdapter, old: str, new: str) -> tuple[list[int], list[int]]:
    """:func:`align_tokens` of one ``old`` / ``new`` prompt pair, the same for every tokenizer of the model.

    A position holds every encoder's row (SDXL concatenates both), so the pairing is one per position: it is computed
    from each tokenizer's ids and must agree. SDXL's two tokenizers share CLIP's vocabulary and differ only in the
    padding token (EOS, "!"), which CFR pairs by position whatever it is (docs/methods/mace.md, "SDXL and SD2.x").
    """
    first, *others = [
        align_tokens(unpadded_ids(tokenizer, old), unpadded_ids(tokenizer, new), model.max_length)
        for tokenizer, _ in model.encoders
    ]
    if any(other != first for other in others):
        raise TokenizationError(
            f"the tokenizers of this model split '{old}' or '{new}' differently; MACE pairs token positions, which "
            "needs every tokenizer to place the words at the same positions"
        )
    return first


def cfr_statistics(
    model: ModelAdapter, concepts: Sequence[Concept], n_templates: int, bar: Progress | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum c c^T, sum g c^T)`` over the aligned rows of every concept's prompt pairs, float64 ``[d, d]`` each.

    Concepts sharing a surrogate (e.g. 100 celebrities -> "a person") share their ``new`` prompts, which are encoded
    once per group: text encoding is most of this stage's cost. ``bar`` counts the concepts done.
    """
    bar = bar or progress_bar(False)
    d = model.embedding_dim
    S_cc = torch.zeros(d, d, dtype=torch.float64)
    S_gc = torch.zeros(d, d, dtype=torch.float64)
    groups: dict[tuple[str, ...], list[tuple[list[str], Concept]]] = {}
    for concept in concepts:
        old, new = prompt_pairs(concept, n_templates)
        groups.setdefault(tuple(new), []).append((old, concept))
    task = bar.add_task("MACE stage 1: prompt pairs", total=len(concepts))
    for new, members in groups.items():
        e_new = model.encode(list(new))
        for old, _ in members:
            e_old = model.encode(old)
            for j, text in enumerate(old):
                idx_old, idx_new = cfr_positions(model, text, new[j])
                c = e_old[j, idx_old]
                S_cc += gram(c)
                S_gc += cross(e_new[j, idx_new], c)
            bar.advance(task)
    return S_cc, S_gc


def refine_transform(S_cc: torch.Tensor, S_gc: torch.Tensor, preserve: torch.Tensor, lamb: float) -> torch.Tensor:
    """CFR's shared ``T = (lam I + S_gc + P)(lam I + S_cc + P)^-1``; every K/V weight becomes ``W0 @ T``.

    ``preserve`` is the already weighted preservation Gram ``alpha P``.
    """
    eye = torch.eye(S_cc.shape[-1], dtype=torch.float64)
    return ridge_solve(lamb * eye + S_gc + preserve, S_cc + preserve, lamb)


# ----------------------------------------------------------------------------------------- preservation statistics
def text_gram(model: ModelAdapter, texts: Sequence[str], bar: Progress | None = None, chunk: int = 64) -> torch.Tensor:
    """``sum e e^T`` over all 77 positions (BOS, words, EOS, padding) of every text, float64 ``[d, d]``."""
    d = model.embedding_dim
    total = torch.zeros(d, d, dtype=torch.float64)
    for start in (bar or progress_bar(False)).track(range(0, len(texts), chunk), description="MACE: text statistics"):
        total += gram(model.encode(list(texts[start : start + chunk])).reshape(-1, d))
    return total


def encodable(model: ModelAdapter, texts: Sequence[str]) -> list[str]:
    """The texts the tokenizer encodes faithfully (a caption longer than 75 tokens is skipped, not truncated)."""
    kept = []
    for text in texts:
        try:
            model.word_tokens(text)
        except TokenizationError:
            continue
        kept.append(text)
    return kept


def cached_text_gram(model: ModelAdapter, texts: Sequence[str], bar: Progress | None = None) -> torch.Tensor:
    """:func:`text_gram`, stored under ``$ERASEKIT_CACHE/mace`` keyed by the text encoders' weights, the
    tokenizers (vocabulary size and padding token: SD2's "!" gives other padding rows than EOS) and the texts.

    The reference computes its COCO cache once per base model; so do we, but for any caption set.
    """
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    tokenizers = "-".join(f"{type(t).__name__}{len(t)}p{t.pad_token_id}" for t, _ in model.encoders)
    key = f"{model.fingerprint()[:16]}-{tokenizers}-{digest}"
    path = cache_dir() / "mace" / f"gram-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["gram"]
    total = text_gram(model, texts, bar)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({"gram": total}, str(tmp), metadata={"texts": str(len(texts))})
    return total


def prior_gram(
    model: ModelAdapter,
    n_captions: int,
    source: str = "coco",
    exclude: Sequence[str] = (),
    bar: Progress | None = None,
) -> torch.Tensor:
    """The caption prior ``P`` from ``n_captions`` captions, rescaled to the reference's 616,767-caption mass.

    ``source`` names a caption source (``erasekit.sources.CAPTIONS``: ``coco``, the shipped MS-COCO captions as in
    the reference, or one a plugin adds), which may drop captions naming an ``exclude`` text. Rescaling keeps the
    reference's preservation scales (e.g. 1e-4) meaningful for a subset: the sum over 617k captions is about 617k/n
    times the sum over n of them.
    """
    if n_captions == 0:
        d = model.embedding_dim
        return torch.zeros(d, d, dtype=torch.float64)
    captions = encodable(model, CAPTIONS.get(source)(n_captions, exclude))
    return cached_text_gram(model, captions, bar) * (REFERENCE_CAPTIONS / len(captions))
