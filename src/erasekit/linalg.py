"""The one ridge least-squares solver behind every closed-form edit (UCE, RECE, MACE stages 1 and 3).

All of them minimise, for a matrix ``X`` (``out x d``),

    sum_i w_i ||X a_i - b_i||^2 + lam ||X - X_0||_F^2

whose normal equations ``X (lam I + sum_i w_i a_i a_i^T) = lam X_0 + sum_i w_i b_i a_i^T`` are solved here. Callers
accumulate the two sums (the Gram ``sum w a a^T`` and the cross term ``sum w b a^T``) and this module does the
solve: in float64, with a Cholesky factorisation of the symmetric positive-definite system matrix (never an explicit
inverse), batched over any leading dimensions (e.g. layers).
"""

from __future__ import annotations

import torch

from .errors import NumericalError

MAX_CONDITION = 1e11
"""Past this condition number a float64 solve keeps fewer than 5 significant digits, and in practice the system is
rank-deficient: with lambda 0 and few texts UCE's weights came out 1.7e5 times the original (benchmarks: well-posed
edits of UCE, RECE and MACE stay below 2e3)."""


def gram(rows: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight * sum_i a_i a_i^T`` for the rows ``a_i`` of ``rows`` (``[..., n, d]`` -> ``[..., d, d]``), float64."""
    rows = rows.to(torch.float64)
    return weight * rows.transpose(-1, -2) @ rows


def cross(targets: torch.Tensor, inputs: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight * sum_i b_i a_i^T`` for paired rows ``b_i`` of ``targets`` and ``a_i`` of ``inputs``, float64."""
    return weight * targets.to(torch.float64).transpose(-1, -2) @ inputs.to(torch.float64)


def ridge_solve(rhs: torch.Tensor, system: torch.Tensor, lam: float) -> torch.Tensor:
    """Return ``X = rhs (lam I + system)^{-1}`` in float64.

    ``system`` is the (symmetric, positive semi-definite) Gram ``[..., d, d]`` and ``rhs`` is ``[..., out, d]``; both
    broadcast over leading dimensions. ``lam`` must be positive unless ``system`` is itself positive definite.
    """
    if lam < 0:
        raise NumericalError(f"ridge coefficient must be >= 0, got {lam}")
    system = system.to(torch.float64)
    rhs = rhs.to(torch.float64)
    d = system.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=system.device)
    matrix = 0.5 * (system + system.transpose(-1, -2)) + lam * eye
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise NumericalError(
            "the closed-form system is singular (not positive definite); increase the ridge coefficient lambda"
        )
    diagonal = torch.diagonal(factor, dim1=-2, dim2=-1)
    condition = float(((diagonal.amax(-1) / diagonal.amin(-1)) ** 2).max())  # a lower bound of cond(matrix)
    if condition > MAX_CONDITION:
        raise NumericalError(
            f"the closed-form system is ill-conditioned (condition number >= {condition:.1e}): the texts given do not "
            "determine the edit (fewer independent token rows than the embedding width, and no ridge to anchor the "
            "rest); increase the ridge coefficient lambda or preserve more texts"
        )
    # X M = R  <=>  M X^T = R^T (M symmetric)
    solution = torch.cholesky_solve(rhs.transpose(-1, -2), factor).transpose(-1, -2)
    if not torch.isfinite(solution).all():
        raise NumericalError("the closed-form solve produced NaN or infinite values")
    return solution
