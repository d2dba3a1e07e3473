"""Which prompts GLoCE generates for each erased concept (docs/methods/gloce.md, "Concept roles"): *target* prompts
carry the concept, *mapping* prompts the distribution it is replaced by, the *gate centre* a generic concept of its
kind, and *anchors* the concepts most similar to it (text-embedding similarity), for which the gate must stay shut."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...concepts import ConceptSet, normalize
from ...models.adapter import ModelAdapter
from .config import GLoCEConfig


@dataclass
class Roles:
    """The prompts of one concept's four roles and the settings of its kind."""

    concept: str
    target: list[str]
    mapping: list[str]
    centre: str
    anchors: list[str]
    settings: GLoCEConfig

    @property
    def window(self) -> tuple[float, float, int]:
        """What the partial generations of this concept depend on: the statistics window and the seeds."""
        s = self.settings
        return s.collect_from, s.collect_until, s.seeds


class TextSimilarity:
    """Prompt similarity: mean over token positions 1..n of the cosine between text embeddings.

    Each distinct prompt is encoded once (only its first ``1 + n`` positions: the encoder is causal), however many
    concepts compare against it: at 100 concepts with 100 candidates that is 200 encodings, not 10,000.
    """

    def __init__(self, model: ModelAdapter, n_tokens: int) -> None:
        self.model, self.n_tokens = model, n_tokens
        self.cache: dict[str, torch.Tensor] = {}

    def prefetch(self, texts: Sequence[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            emb = self.model.encode(missing, positions=1 + self.n_tokens)[:, 1:]
            self.cache.update(zip(missing, torch.nn.functional.normalize(emb, dim=-1), strict=True))

    def __call__(self, query: str, candidates: Sequence[str]) -> torch.Tensor:
        self.prefetch([query, *candidates])
        emb = torch.stack([self.cache[c] for c in candidates])
        return (emb * self.cache[query]).sum(-1).mean(-1)


def _ranked(similarity: TextSimilarity, fmt: Callable[[str], str], text: str, pool: list[str]) -> list[str]:
    """``pool`` from the most to the least similar to ``text`` (both put in the template)."""
    if not pool:
        return []
    sims = similarity(fmt(text), [fmt(p) for p in pool])
    return [pool[i] for i in torch.argsort(sims, descending=True, stable=True).tolist()]


def resolve_roles(
    model: ModelAdapter, concepts: ConceptSet, settings: Callable[[str | None], GLoCEConfig]
) -> list[Roles]:
    """Target, mapping, gate-centre and anchor prompts of every concept; ``settings(kind)`` gives a kind's config.

    Candidates are the preserved texts, else (anchors only, ``anchors_from_erased``) the other erased concepts of the
    kind: docs/methods/gloce.md, "Choices where the reference is silent or brittle", says why.
    """
    per_kind = {kind: settings(kind) for kind in dict.fromkeys(c.kind for c in concepts)}
    similarity = TextSimilarity(model, settings(None).n_tokens)
    pools, anchor_pools = [], []
    for c in concepts:
        pool = [p for p in dict.fromkeys([*concepts.preserve, *c.preserve]) if normalize(c.text) not in normalize(p)]
        from_erased = per_kind[c.kind].anchors_from_erased
        others = [o.text for o in concepts if o is not c and o.kind == c.kind] if from_erased else []
        pools.append(pool)
        anchor_pools.append(pool or others)
    similarity.prefetch([per_kind[c.kind].template.format(t) for c, pool in zip(concepts, anchor_pools, strict=True)
                         for t in ([c.text, *pool] if pool else [])])  # fmt: skip
    roles = []
    for concept, pool, anchor_pool in zip(concepts, pools, anchor_pools, strict=True):
        s = per_kind[concept.kind]
        fmt = s.template.format
        target = [fmt(concept.text), *(fmt(x) for x in concept.synonyms if s.include_synonyms)]
        ranked = _ranked(similarity, fmt, concept.text, pool)
        if concept.guide is not None:
            mapping = [fmt(concept.guide)]
        elif s.mapping == "dissimilar" and ranked:
            mapping = [fmt(p) for p in ranked[::-1][: s.n_mapping]]
        else:
            mapping = [s.centre]
        near = ranked if pool else _ranked(similarity, fmt, concept.text, anchor_pool)
        anchors = list(s.anchors or [fmt(p) for p in near[: s.n_anchors]] or [s.centre])
        roles.append(Roles(concept.text, target, mapping, s.centre, anchors, s))
    return roles
