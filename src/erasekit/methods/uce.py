"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761), the closed-form K/V edit.

For every cross-attention key/value projection ``W`` (``attn2.to_k``, ``attn2.to_v``) UCE solves

    min_W  s_e sum_i ||W c_i - W_old g_i||^2 + s_p sum_j ||W r_j - W_old r_j||^2 + lam ||W - W_old||_F^2

(c_i: token embeddings of the erased concept, g_i: of its guide, r_j: of preserved texts), whose solution is

    W = W_old (lam I + s_e sum g c^T + s_p sum r r^T)(lam I + s_e sum c c^T + s_p sum r r^T)^-1 = W_old T.

Because every target is produced by the same matrix's pre-edit weights, ``T`` is one d x d matrix shared by all 32
projections (docs/methods/uce.md, "What it does"): one solve instead of 32, and an edit that is exactly "apply T to
every text token before K/V".

Which token rows are used is the biggest difference between the official codes (docs/methods/uce.md, "Token
policies"); ``token_policy`` picks it:

- ``uce_legacy`` (default; the code behind the paper's numbers and RECE's UCE stage): the concept's last word token
  and the EOS/padding rows after it, aligned one-to-one with the guide's last word token onward; preserved texts
  contribute all 77 rows.
- ``uce_2025`` (the 2025 rewrite): only the last word token of concept, guide and preserved texts.
- ``rece``: all 77 rows, aligned by absolute position (RECE's own edit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..concepts import ConceptSet
from ..edits import Edit
from ..errors import ConfigError
from ..linalg import gram, ridge_solve
from ..models.adapter import ModelAdapter
from ..validation import check_at_least
from .base import TRANSFORMER_FAMILIES, UNET_FAMILIES, Method, guide_for, register_method

TokenPolicy = Literal["uce_legacy", "uce_2025", "rece"]

# The legacy code's `--add_prompts` templates (docs/methods/uce.md, "Templates"); the guide stays untemplated, as there.
TEMPLATES = {
    "style": ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}
TEMPLATES["celebrity"] = TEMPLATES["object"]
TEMPLATES["explicit"] = TEMPLATES["object"]


@dataclass
class UCEConfig:
    lamb: float = field(
        default=0.5, metadata={"help": "ridge weight anchoring W to W_old (legacy and 2025 default 0.5)"}
    )
    erase_scale: float = field(default=1.0, metadata={"help": "weight s_e of the erase term"})
    preserve_scale: float | None = field(
        default=None,
        metadata={"help": "weight s_p of the preserve term; None = max(0.1, 1/|preserve|) (legacy)"},
    )
    token_policy: TokenPolicy = field(
        default="uce_legacy", metadata={"help": "which token rows are edited: uce_legacy, uce_2025 or rece"}
    )
    templates: bool = field(
        default=False, metadata={"help": "also erase the legacy prompt templates of each concept's kind"}
    )
    erase_synonyms: bool = field(default=False, metadata={"help": "also erase each concept's synonyms"})
    preserve_empty: bool = field(default=True, metadata={"help": "preserve the empty prompt '' (legacy behaviour)"})
    edit_keys: bool = field(default=True, metadata={"help": "edit attn2.to_k"})
    edit_values: bool = field(default=True, metadata={"help": "edit attn2.to_v"})

    def __post_init__(self) -> None:
        check_at_least(self, "uce params", 0, ("lamb", "preserve_scale"))
        check_at_least(self, "uce params", 0, ("erase_scale",), strict=True)
        if not (self.edit_keys or self.edit_values):
            raise ConfigError("uce params: edit_keys and edit_values cannot both be false")


def erase_pairs(concepts: ConceptSet, templates: bool, synonyms: bool) -> list[tuple[str, str]]:
    """(erased text, guide text) pairs: each concept, optionally its synonyms and templated forms."""
    pairs = []
    for concept in concepts:
        guide = guide_for(concept)
        texts = [concept.text, *(concept.synonyms if synonyms else ())]
        for text in texts:
            pairs.append((text, guide))
            if templates:
                pairs.extend((t.format(text), guide) for t in TEMPLATES[concept.kind])
    return pairs


def token_rows(
    model: ModelAdapter,
    pairs: list[tuple[str, str]],
    preserve: list[str],
    policy: TokenPolicy,
    embeddings: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edit inputs ``C``, their guide rows ``G`` (paired row by row) and preserve rows ``R``, each ``[n, d]``.

    ``embeddings`` holds full 77-position encodings a caller already has (RECE shares its own with this stage; for
    ``uce_2025`` their first positions stand in for a shorter encoding, equal to float noise). Every other distinct
    text goes through the text encoder once, in one batched call.
    """
    erased, guides = [p[0] for p in pairs], [p[1] for p in pairs]
    d = model.embedding_dim
    positions = None
    if policy == "uce_2025":  # the last word's row(s): SD3 holds the word in its CLIP and its T5 segment
        idx_c = [model.last_word_rows(t) for t in erased]
        idx_g = [model.last_word_rows(t) for t in guides]
        idx_r = [model.last_word_rows(t) for t in preserve]
        positions = 1 + max(i for rows in idx_c + idx_g + idx_r for i in rows)  # causal: later rows are not needed
    known = embeddings or {}
    missing = [t for t in dict.fromkeys([*erased, *guides, *preserve]) if t not in known]
    emb = {t: e[:positions] for t, e in known.items()}
    emb.update(zip(missing, model.encode(missing, positions), strict=True))
    if policy == "uce_2025":
        pick = lambda texts, idx: torch.cat([emb[t][i] for t, i in zip(texts, idx, strict=True)])  # noqa: E731
        return pick(erased, idx_c), pick(guides, idx_g), pick(preserve, idx_r) if preserve else torch.zeros(0, d)
    rows_r = torch.cat([emb[t] for t in preserve]) if preserve else torch.zeros(0, d)
    if policy == "rece":
        return torch.cat([emb[t] for t in erased]), torch.cat([emb[t] for t in guides]), rows_r
    rows_c, rows_g = [], []
    length = model.max_length
    for text, guide in pairs:
        ic, ig = model.last_word_index(text), model.last_word_index(guide)
        n = length - max(ic, ig)
        rows_c.append(emb[text][ic : ic + n])
        rows_g.append(emb[guide][ig : ig + n])
    return torch.cat(rows_c), torch.cat(rows_g), rows_r


@dataclass(frozen=True)
class Update:
    """A closed form's shared matrix as ``T = I + U V^T`` (float64; ``U``, ``V`` are ``[d, r]``).

    Every closed form here changes ``W`` by a product whose inner width is the number of erased rows: UCE's
    ``T - I = s_e (G - C)^T C (lam I + s_e C^T C + s_p R^T R)^-1``, SPEED's ``(A - T) Q'``. When ``r`` is below half
    the width ``d`` (the last-word policies: one row per concept), ``W + (W U) V^T`` costs ``2r/d`` of ``W @ T`` at
    the same float64 precision: most of a repeated edit's time once its encodings are cached (benchmarks/README.md).
    """

    U: torch.Tensor
    V: torch.Tensor

    def dense(self) -> torch.Tensor:
        return torch.eye(self.U.shape[0], dtype=torch.float64) + self.U @ self.V.T

    def apply(self, W: torch.Tensor) -> torch.Tensor:
        """``W @ T`` in float64."""
        W = W.detach().to(torch.float64)
        U, V = self.U.to(W.device), self.V.to(W.device)
        return W + (W @ U) @ V.T if 2 * U.shape[1] < U.shape[0] else W @ (self.dense().to(W.device))


def uce_update(
    C: torch.Tensor,
    G: torch.Tensor,
    R: torch.Tensor,
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
    preserve_gram: torch.Tensor | None = None,
) -> Update:
    """The shared matrix ``T = (lam I + s_e sum g c^T + s_p sum r r^T)(lam I + s_e sum c c^T + s_p sum r r^T)^-1``.

    Every K/V weight becomes ``W_old @ T``, the minimiser of the UCE objective (see the module docstring). The
    numerator is the denominator plus ``s_e (G - C)^T C``, so ``T = I + (G - C)^T [s_e C (denominator)^-1]``.
    ``preserve_gram`` is ``s_p sum r r^T`` when the caller already has it (RECE edits with the same preserve set
    every epoch); otherwise it is computed from ``R``.
    """
    if preserve_gram is None:
        preserve_gram = gram(R, preserve_scale)
    system = gram(C, erase_scale) + preserve_gram
    C, G = C.to(torch.float64), G.to(torch.float64)
    return Update((G - C).T, ridge_solve(erase_scale * C, system, lamb).T)


def transform_weights(weights: dict[str, torch.Tensor], T: torch.Tensor | Update) -> dict[str, torch.Tensor]:
    """``W @ T`` for every weight, computed in float64 and returned in each weight's dtype.

    Measured on SD1.5's 32 K/V matrices (CPU, benchmarks/closed_form.py): a float32 product takes about half the time
    (0.7 s instead of 1.4 s) but is off by up to 1e-6 of max|W @ T| instead of 5e-8 (float32 rounding), also when
    written as ``W + W (T - I)``; so it stays float64, and a thin :class:`Update` saves the time instead.
    """
    if isinstance(T, Update):
        return {n: T.apply(w).to(w.dtype) for n, w in weights.items()}
    return {n: (w.detach().to(torch.float64) @ T.to(w.device)).to(w.dtype) for n, w in weights.items()}


def pooled_weights(
    model: ModelAdapter, pairs: list[tuple[str, str]], preserve: list[str], erase_scale: float, preserve_scale: float,
    lamb: float,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The edited weights of the maps that read the pooled text vector alone (FLUX's; none on UNet families).

    Every closed-form method edits them with UCE's closed form over pooled vectors, one per text: each erased text's
    vector is sent where its guide's goes, preserved ones stay. Without it a FLUX prompt would keep the concept's CLIP
    vector whatever the T5 rows say.
    """
    maps = model.pooled_projections()
    if not maps:
        return {}
    texts = list(dict.fromkeys([t for pair in pairs for t in pair] + preserve))
    pooled = dict(zip(texts, model.encode_pooled(texts).to(torch.float64), strict=True))
    stack = lambda items: torch.stack([pooled[t] for t in items]) if items else torch.zeros(0, model.pooled_dim)  # noqa: E731
    T = uce_update(stack([p[0] for p in pairs]), stack([p[1] for p in pairs]), stack(preserve), erase_scale,
                   preserve_scale, lamb)  # fmt: skip
    return transform_weights(maps, T)


def preserve_list(concepts: ConceptSet, empty: bool) -> list[str]:
    """The preserved texts, with the empty prompt first when asked (legacy UCE always preserves '')."""
    texts = concepts.preserve_texts()
    return ([""] if empty and "" not in texts else []) + texts


@register_method
class UCE(Method):
    """Closed-form erasure of concepts from the cross-attention K/V projections."""

    name = "uce"
    config_class = UCEConfig
    families = (*UNET_FAMILIES, *TRANSFORMER_FAMILIES)

    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        cfg = self.settings()
        T = self.transform(model, concepts)
        weights = transform_weights(model.text_projections(cfg.edit_keys, cfg.edit_values), T)
        weights.update(self.pooled(model, concepts))
        return Edit.from_weights(self.name, self.edit_config(cfg), concepts.to_dict(), model, weights)

    def preserve_scale(self, preserve: list[str]) -> float:
        cfg = self.settings()
        return cfg.preserve_scale if cfg.preserve_scale is not None else max(0.1, 1 / max(len(preserve), 1))

    def pooled(self, model: ModelAdapter, concepts: ConceptSet) -> dict[str, torch.Tensor]:
        """:func:`pooled_weights` with this config's pairs, preserve list and scales."""
        cfg = self.settings()
        pairs = erase_pairs(concepts, cfg.templates, cfg.erase_synonyms)
        preserve = preserve_list(concepts, cfg.preserve_empty)
        return pooled_weights(model, pairs, preserve, cfg.erase_scale, self.preserve_scale(preserve), cfg.lamb)

    def transform(
        self, model: ModelAdapter, concepts: ConceptSet, embeddings: Mapping[str, torch.Tensor] | None = None
    ) -> Update:
        """The shared ``T`` for ``concepts`` (RECE starts from it, passing the text ``embeddings`` it already has)."""
        cfg = self.settings()
        pairs = erase_pairs(concepts, cfg.templates, cfg.erase_synonyms)
        preserve = preserve_list(concepts, cfg.preserve_empty)
        C, G, R = token_rows(model, pairs, preserve, cfg.token_policy, embeddings)
        return uce_update(C, G, R, cfg.erase_scale, self.preserve_scale(preserve), cfg.lamb)
