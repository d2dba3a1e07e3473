"""GLoCE's math (Lee et al., CVPR 2025; docs/methods/gloce.md, "What it does"): statistics, low-rank map, gate.

Everything here acts on the per-pixel image embeddings ``x`` (width ``d``) that a cross-attention output projection
(``attn2.to_out.0``) produces. For one erased concept and one layer:

- target statistics ``mu_t``, ``Sigma_t`` -> ``U_t`` (top ``r_u`` eigenvectors); mapping statistics ``mu_m``,
  ``Sigma_m`` -> ``U_m`` (top ``r_m``); the gate centre's mean ``mu_n``;
- the replacement ``x'' = mu_m + B A^T (x - mu_t)`` with ``B = U_m`` and ``A = (I - U_t U_t^T) U_m``, i.e.
  ``x'' = P* x + b*``, ``P* = U_m U_m^T (I - U_t U_t^T)``, ``b* = mu_m - P* mu_t``;
- the gate score ``s(x) = ||G^T (x - mu_n)||^2 / ||x - mu_n||^2`` with ``G`` the top ``r_g`` eigenvectors of
  ``Sigma_t + (mu_t - mu_n)(mu_t - mu_n)^T`` and the gate ``g(x) = sigmoid(k (s(x) - c))``;
- the layer output ``y = x + g (eta x'' - x)`` (= ``(1 - g) x + g eta x''``), where ``eta`` scales the mean too.

Many concepts are stacked along a leading dimension ``K``: every token takes the concept with the largest gate,
whose scores come from one matrix product per layer in factored form (no ``N x K x d`` difference tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ...errors import NumericalError

Calibration = Literal["hard", "soft"]
POOL_SCALES: tuple[int, ...] = (1, 2, 4, 8)
"""Multi-scale pooling of the token map for means and covariances: full resolution, 2x, 4x, 8x."""
GATE_LOGIT_SPAN = math.log(0.99 / 0.01)
"""The gate goes from 0.01 to 0.99 over ``GATE_LOGIT_SPAN / k`` around its centre ``c``."""


# ---------------------------------------------------------------------------------------------------- statistics
@dataclass
class Moments:
    """Running ``sum x``, ``sum x x^T`` and count of tokens, in float64 (the covariance is a small difference)."""

    dim: int
    total: torch.Tensor = field(init=False)
    outer: torch.Tensor = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.dim, dtype=torch.float64)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def add(self, tokens: torch.Tensor) -> None:
        """Accumulate the rows of ``tokens`` ``[n, d]``."""
        t = tokens.detach().to("cpu", torch.float64)
        self.total += t.sum(0)
        self.outer += t.T @ t
        self.count += t.shape[0]

    def merged(self, other: Moments) -> Moments:
        out = Moments(self.dim)
        out.total, out.outer, out.count = self.total + other.total, self.outer + other.outer, self.count + other.count
        return out

    def mean(self) -> torch.Tensor:
        self._check()
        return self.total / self.count

    def covariance(self) -> torch.Tensor:
        """``E[x x^T] - mu mu^T`` (the uncorrected second moment about the mean, as the reference computes it)."""
        mu = self.mean()
        return self.outer / self.count - torch.outer(mu, mu)

    def _check(self) -> None:
        if self.count == 0:
            raise NumericalError("no tokens were recorded for a GLoCE statistic: is the collection window empty?")


def pooled_tokens(x: torch.Tensor, scales: tuple[int, ...] = POOL_SCALES) -> torch.Tensor:
    """Tokens of ``x`` ``[B, T, d]`` at full resolution and after average pooling by each scale, as ``[n, d]``.

    The token map is taken as square (side ``sqrt(T)``, as in SD's latents); a scale that does not divide the side
    is skipped, so small maps (the mid block, the benchmark world's 4x4) use fewer scales. A non-square map
    contributes its full-resolution tokens only.
    """
    b, t, d = x.shape
    side = math.isqrt(t)
    if side * side != t:
        return x.reshape(-1, d)
    grid = x.transpose(1, 2).reshape(b, d, side, side)
    parts = []
    for s in scales:
        if s == 1:
            parts.append(x.reshape(-1, d))
        elif s <= side and side % s == 0:
            parts.append(F.avg_pool2d(grid, s).flatten(2).transpose(1, 2).reshape(-1, d))
    return torch.cat(parts)


def top_eigenvectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading eigenvectors ``[d, rank]`` of a symmetric matrix (float64), signs made deterministic.

    For a covariance these are the principal directions (the reference takes right singular vectors of the same
    symmetric matrix). Each column is flipped so that its largest-magnitude entry is positive: eigenvectors are only
    defined up to sign, and a fixed sign keeps artifacts reproducible across LAPACK builds.
    """
    sym = 0.5 * (matrix + matrix.T).to(torch.float64)
    values, vectors = torch.linalg.eigh(sym)
    lead = vectors[:, torch.argsort(values, descending=True)[:rank]]
    pivot = lead.abs().argmax(0)
    signs = torch.sign(lead[pivot, torch.arange(lead.shape[1])])
    return lead * torch.where(signs == 0, 1.0, signs)


def lowrank_update(U_t: torch.Tensor, U_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A = (I - U_t U_t^T) U_m`` and ``B = U_m``, so that ``B A^T = U_m U_m^T (I - U_t U_t^T)``."""
    return U_m - U_t @ (U_t.T @ U_m), U_m


def replacement(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, mu_t: torch.Tensor, mu_m: torch.Tensor):
    """``x'' = mu_m + B A^T (x - mu_t)`` for the rows of ``x`` (one concept)."""
    return mu_m + (x - mu_t) @ A @ B.T


def gate_directions(cov_t: torch.Tensor, mu_t: torch.Tensor, mu_n: torch.Tensor, rank: int) -> torch.Tensor:
    """``G``: top eigenvectors of the target's second moment about the gate centre, ``Sigma_t + v v^T``.

    ``v = mu_t - mu_n``: the directions along which target tokens differ most from the centre concept's mean.
    """
    diff = (mu_t - mu_n).to(torch.float64)
    return top_eigenvectors(cov_t + torch.outer(diff, diff), rank)


def calibrate(anchor_maxima: torch.Tensor, thresh: float, mode: Calibration = "hard") -> tuple[float, float]:
    """Gate centre ``c`` and slope ``k`` from the anchors' per-(prompt, seed, step) token maxima of ``s``.

    ``c = mean + thresh * std`` (unbiased std). ``hard``: ``k = ln 99 / (0.001 thresh)``, a near step at ``c``;
    ``soft``: 0.01 at ``c - 0.1 thresh std``, 0.99 at ``c + 0.1 thresh std`` (docs/methods/gloce.md, Gate calibration).
    """
    values = anchor_maxima.detach().to(torch.float64).flatten()
    if values.numel() < 2:
        raise NumericalError("GLoCE's gate calibration needs at least 2 anchor scores (more seeds or steps)")
    mean, std = float(values.mean()), float(values.std())
    center = mean + thresh * std
    width = 0.001 * thresh if mode == "hard" else 0.1 * thresh * max(std, 1e-6)
    return center, GATE_LOGIT_SPAN / width


# ---------------------------------------------------------------------------------------------------- the gate
class GateBasis:
    """The gate scores ``s_j(x)`` of ``K`` concepts at one layer, for all tokens at once.

    ``G`` is ``[K, d, r_g]`` (zero columns pad concepts of smaller gate rank) and ``mu_n`` ``[K, d]``. The numerator
    ``||G^T x - G^T mu_n||^2`` and the denominator ``||x||^2 - 2 x.mu_n + ||mu_n||^2`` both come from one product of
    ``x`` with the ``d x K (r_g + 1)`` matrix ``[G | mu_n^T]``.
    """

    def __init__(self, G: torch.Tensor, mu_n: torch.Tensor, eps: float = 1e-6) -> None:
        self.K, self.d, self.rank = G.shape
        self.eps = eps
        G, mu_n = G.float(), mu_n.float()
        self.weight = torch.cat([G.permute(1, 0, 2).reshape(self.d, -1), mu_n.T], dim=1)  # [d, K r_g + K]
        self.G_mu = torch.einsum("kdr,kd->kr", G, mu_n)  # [K, r_g]
        self.mu_sq = (mu_n * mu_n).sum(-1)  # [K]

    def to(self, device: torch.device) -> GateBasis:
        for name in ("weight", "G_mu", "mu_sq"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``s`` ``[N, K]`` in [0, 1] for the rows of ``x`` ``[N, d]`` (computed in float32)."""
        x = x.float()
        proj = x @ self.weight
        split = self.K * self.rank
        num = (proj[:, :split].view(-1, self.K, self.rank) - self.G_mu).square().sum(-1)
        den = (x * x).sum(-1, keepdim=True) - 2 * proj[:, split:] + self.mu_sq
        return num / den.clamp_min(self.eps)


@dataclass
class LayerModules:
    """The stacked GLoCE modules of ``K`` concepts at one layer: the layer output above, one concept per token."""

    A: torch.Tensor  # [K, d, r]  (the reference's lora_update)
    B: torch.Tensor  # [K, d, r]  (lora_degen)
    mu_t: torch.Tensor  # [K, d]  (debias)
    mu_m: torch.Tensor  # [K, d]  (bias)
    G: torch.Tensor  # [K, d, r_g]  (selector weight)
    mu_n: torch.Tensor  # [K, d]  (selector mean)
    center: torch.Tensor  # [K]  c
    slope: torch.Tensor  # [K]  k
    eta: torch.Tensor  # [K]
    min_gate: float = 1e-4
    eps: float = 1e-6

    FIELDS = ("A", "B", "mu_t", "mu_m", "G", "mu_n", "center", "slope", "eta")

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name).float())
        self.basis = GateBasis(self.G, self.mu_n, self.eps)

    def to(self, device: torch.device) -> LayerModules:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name).to(device))
        self.basis.to(device)
        return self

    def __call__(self, output: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor | None:
        """The layer output with the modules applied, or ``None`` when every gate is closed (output unchanged).

        ``active`` ``[K]`` (bool) masks concepts outside their activation window. A token whose largest gate is
        below ``min_gate`` is left exactly as it is, so a closed gate reproduces the unedited model bit for bit.
        """
        d = output.shape[-1]
        x = output.reshape(-1, d).float()
        logits = self.slope * (self.basis.scores(x) - self.center)
        if active is not None:
            logits = logits.masked_fill(~active, -math.inf)
        best, j = logits.max(dim=1)
        gate = torch.sigmoid(best)
        rows = torch.nonzero(gate >= self.min_gate).squeeze(1)
        if rows.numel() == 0:
            return None
        xs, js, gs = x[rows], j[rows], gate[rows].unsqueeze(1)
        coeff = torch.einsum("md,mdr->mr", xs - self.mu_t[js], self.A[js])
        replaced = self.mu_m[js] + torch.einsum("mr,mdr->md", coeff, self.B[js])
        edited = xs + gs * (self.eta[js].unsqueeze(1) * replaced - xs)
        out = output.reshape(-1, d).clone()
        out[rows] = edited.to(out.dtype)
        return out.view_as(output)


def pad_columns(matrix: torch.Tensor, width: int) -> torch.Tensor:
    """Append zero columns up to ``width`` (zero columns add nothing to ``B A^T`` nor to ``||G^T v||``)."""
    return F.pad(matrix, (0, width - matrix.shape[-1]))
