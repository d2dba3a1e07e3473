"""The one ridge solver: its output must minimise the objective it documents."""

from __future__ import annotations

import pytest
import torch

from erasekit.errors import NumericalError
from erasekit.linalg import cross, gram, ridge_solve


def _problem(seed: int = 0, out: int = 5, d: int = 7, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(n, out, generator=g, dtype=torch.float64)
    X0 = torch.randn(out, d, generator=g, dtype=torch.float64)
    return A, B, X0


def test_ridge_solve_zeroes_gradient_of_its_objective():
    A, B, X0 = _problem()
    w, lam = 2.5, 0.3
    X = ridge_solve(lam * X0 + cross(B, A, w), gram(A, w), lam)
    # d/dX [ w sum ||X a - b||^2 + lam ||X - X0||^2 ] = 2w (X A^T - B^T) A + 2 lam (X - X0)
    grad = 2 * w * (X @ A.T - B.T) @ A + 2 * lam * (X - X0)
    assert grad.abs().max() < 1e-10


def test_ridge_solve_equals_direct_least_squares():
    A, B, X0 = _problem(1)
    w, lam = 0.7, 0.05
    X = ridge_solve(lam * X0 + cross(B, A, w), gram(A, w), lam)
    d = A.shape[1]
    design = torch.cat([w**0.5 * A, lam**0.5 * torch.eye(d, dtype=torch.float64)])
    target = torch.cat([w**0.5 * B, lam**0.5 * X0.T])
    direct = torch.linalg.lstsq(design, target).solution.T
    assert torch.allclose(X, direct, atol=1e-10)


def test_ridge_solve_batches_over_leading_dimensions():
    problems = [_problem(s) for s in range(3)]
    lam = 0.1
    rhs = torch.stack([lam * X0 + cross(B, A) for A, B, X0 in problems])
    system = torch.stack([gram(A) for A, _, _ in problems])
    batched = ridge_solve(rhs, system, lam)
    for i, (A, B, X0) in enumerate(problems):
        assert torch.allclose(batched[i], ridge_solve(lam * X0 + cross(B, A), gram(A), lam), atol=1e-12)


def test_ridge_solve_computes_in_float64_from_float32_inputs():
    A, B, X0 = _problem(2)
    X = ridge_solve((0.1 * X0 + cross(B, A)).float(), gram(A).float(), 0.1)
    assert X.dtype == torch.float64


def test_ridge_solve_refuses_a_singular_system():
    A = torch.ones(2, 4, dtype=torch.float64)  # rank 1 Gram, no ridge
    with pytest.raises(NumericalError, match="singular"):
        ridge_solve(torch.ones(3, 4), gram(A), 0.0)


def test_ridge_solve_refuses_a_negative_ridge():
    with pytest.raises(NumericalError):
        ridge_solve(torch.ones(3, 4), torch.eye(4), -1.0)


def test_an_ill_conditioned_system_is_refused_not_solved_into_huge_weights():
    """Rank-deficient data with no ridge: Cholesky may succeed on rounding noise, the answer would be meaningless."""
    A, B, _ = _problem(2, n=3)  # 3 rows in 7 dimensions
    nearly_singular = gram(A) + 1e-14 * torch.eye(7, dtype=torch.float64)
    with pytest.raises(NumericalError, match=r"ill-conditioned.*increase the ridge coefficient lambda or preserve"):
        ridge_solve(cross(B, A), nearly_singular, 0.0)
    ridge_solve(cross(B, A), nearly_singular, 1e-3)  # the same data with a small ridge is well posed
