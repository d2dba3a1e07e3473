"""MACE stage 3: closed-form fusion of all concepts' LoRAs into one set of K/V weights.

Paper Eq. 7 with a ridge term; docs/methods/mace.md ("What it does", step 3, and "Memory"). For every K/V matrix
with stage-1 weights ``W'`` and original weights ``W0``, find ``W*`` reproducing each concept's own LoRA-modified
output on that concept's prompt tokens (all 77 positions of its template prompts), while keeping the original
outputs on the preservation tokens:

    min_W*  sum_i sum_{c in i} ||W* c - (W' + dW_i) c||^2 + lam ||W* - W'||_F^2 + beta sum_p ||W* e_p - W0 e_p||^2

    W* (lam I + S + beta P) = lam W' + W' S + sum_i dW_i S_i + beta W0 P,     S_i = sum_{c in i} c c^T,  S = sum_i S_i

Sufficient statistics are accumulated as concepts are trained: one d x d ``S`` and, per matrix, ``sum_i dW_i S_i``
(an ``out x d`` matrix; ``dW_i S_i = up_i (down_i S_i)`` costs a rank-1 product). Memory therefore stays flat in the
number of concepts; the reference keeps every target vector instead (about 23 GB for 100 concepts on SD1.x).
"""

from __future__ import annotations

import torch

from ...linalg import gram, ridge_solve
from .lora import ConceptLoRA

SOLVE_CHUNK_BYTES = 2**28
"""The stacked right-hand sides of one solve stay below 256 MiB (float64): SD1.x's 32 matrices (~150 MiB) are solved
at once, SDXL's 140 (2.7 GB) in chunks, so the solver's copies of them cost a chunk's size, not all matrices'."""


class FusionAccumulator:
    """Running sums of stage 3, for the K/V weights named in ``shapes`` (``name -> (out, d)``)."""

    def __init__(self, shapes: dict[str, tuple[int, int]]):
        d = {shape[1] for shape in shapes.values()}
        if len(d) != 1:
            raise ValueError("every fused matrix must take the same input width")
        self.dim = d.pop()
        self.S = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.lora_terms = {n: torch.zeros(shape, dtype=torch.float64) for n, shape in shapes.items()}
        self.concepts = 0

    def add(self, contexts: torch.Tensor, lora: ConceptLoRA) -> None:
        """Add one concept: its prompt token rows ``[n, d]`` and its trained LoRA."""
        S_i = gram(contexts.reshape(-1, self.dim))
        self.S += S_i
        for name, (up, down) in lora.factors.items():
            self.lora_terms[name] += up.double() @ (down.double() @ S_i)
        self.concepts += 1

    def nbytes(self) -> int:
        """Memory held by the statistics (independent of the number of concepts added)."""
        tensors = [self.S, *self.lora_terms.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def solve(
        self, refined: dict[str, torch.Tensor], original: dict[str, torch.Tensor], preserve: torch.Tensor, lamb: float
    ) -> dict[str, torch.Tensor]:
        """``W*`` for every matrix; ``preserve`` is the weighted preservation Gram ``beta P``.

        All matrices share the system ``S + beta P``, so their right-hand sides are stacked into one solve per chunk
        of at most ``SOLVE_CHUNK_BYTES``.
        """
        max_rows = SOLVE_CHUNK_BYTES // (8 * self.dim)
        chunks: list[list[str]] = [[]]
        rows_in_chunk = 0
        for name, term in self.lora_terms.items():
            if chunks[-1] and rows_in_chunk + term.shape[0] > max_rows:
                chunks.append([])
                rows_in_chunk = 0
            chunks[-1].append(name)
            rows_in_chunk += term.shape[0]
        solved: dict[str, torch.Tensor] = {}
        for names in chunks:
            rows = [self.lora_terms[n].shape[0] for n in names]
            rhs = torch.empty(sum(rows), self.dim, dtype=torch.float64)
            start = 0
            for name, n_rows in zip(names, rows, strict=True):
                W_ref = refined[name].detach().double().cpu()
                W0 = original[name].detach().double().cpu()
                rhs[start : start + n_rows] = lamb * W_ref + W_ref @ self.S + self.lora_terms[name] + W0 @ preserve
                start += n_rows
            solved.update(zip(names, ridge_solve(rhs, self.S + preserve, lamb).split(rows), strict=True))
        return solved
