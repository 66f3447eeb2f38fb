"""Linear operators: adjoints, pseudo-inverses, proximal maps, and bad input.

Everything runs in float64 on tiny shapes, so the reference values (dense matrices built by
applying an operator to basis vectors, ``torch.linalg.pinv``, direct solves of the normal
equations) are exact to rounding: the tolerances below are rounding-level (1e-12 for closed
forms, 1e-8..1e-10 where a CG solve with a 1e-10..1e-14 stopping tolerance is involved).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from diffsci.core.operators import (
    BlockMean,
    Composed,
    Identity,
    LinearOperator,
    Mask,
    MatrixOperator,
    check_adjoint,
)

F64, C128 = torch.float64, torch.complex128


def _randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64)
    if dtype.is_complex:
        x = x + 1j * torch.randn(shape, generator=g, dtype=F64)
    return x.to(dtype)


def _mask(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=F64) < 0.5).to(F64)


MASK6 = torch.tensor([1, 0, 1, 1, 0, 0], dtype=F64)


def _dense(op: LinearOperator, sample_shape: tuple[int, ...], dtype: torch.dtype = F64):
    """Matrix (m, n) of ``op`` on one flattened sample: basis vectors travel as the batch."""
    n = math.prod(sample_shape)
    e = torch.eye(n, dtype=dtype).reshape(n, *sample_shape)
    return op.forward(e).reshape(n, -1).T


def _dense_adjoint(op: LinearOperator, out_shape: tuple[int, ...], dtype: torch.dtype = F64):
    """Matrix (n, m) of ``op.adjoint`` on one flattened measurement."""
    m = math.prod(out_shape)
    e = torch.eye(m, dtype=dtype).reshape(m, *out_shape)
    return op.adjoint(e).reshape(m, -1).T


# (operator factory, input shape with batch first, dtype)
ADJOINT_CASES = {
    "identity": (Identity, (3, 4), F64),
    "identity-complex": (Identity, (3, 4), C128),
    "mask-real": (lambda: Mask(MASK6), (2, 6), F64),
    "mask-complex": (lambda: Mask(MASK6), (2, 6), C128),
    "mask-broadcast-image": (lambda: Mask(_mask(1, 1, 4, 4, seed=1)), (2, 3, 4, 4), F64),
    "mask-bool-complex": (lambda: Mask(_mask(4, 4, seed=2).bool()), (2, 4, 4), C128),
    "blockmean-1d": (lambda: BlockMean(2, spatial_dims=1), (2, 3, 8), F64),
    "blockmean-2d": (lambda: BlockMean(2), (2, 3, 8, 8), F64),
    "blockmean-2d-anisotropic": (lambda: BlockMean((2, 4)), (2, 1, 6, 8), F64),
    "blockmean-3d-anisotropic": (
        lambda: BlockMean((1, 2, 3), spatial_dims=3),
        (2, 2, 4, 6, 9),
        F64,
    ),
    "matrix-wide": (lambda: MatrixOperator(_randn(3, 5, seed=3)), (4, 5), F64),
    "matrix-tall": (lambda: MatrixOperator(_randn(7, 5, seed=4)), (4, 5), F64),
    "matrix-complex": (lambda: MatrixOperator(_randn(3, 5, seed=5, dtype=C128)), (4, 5), C128),
    "composed-matrices": (
        lambda: MatrixOperator(_randn(3, 5, seed=6)) @ MatrixOperator(_randn(5, 4, seed=7)),
        (2, 4),
        F64,
    ),
    "composed-blockmean-mask": (
        lambda: Composed(BlockMean(2), Mask(_mask(1, 1, 4, 6, seed=8))),
        (2, 2, 4, 6),
        F64,
    ),
}


# ---------------------------------------------------------------------------------------------
# adjoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ADJOINT_CASES))
def test_check_adjoint_passes_in_float64(name):
    factory, shape, dtype = ADJOINT_CASES[name]
    op = factory()
    for seed in (0, 1):
        err = check_adjoint(
            op, shape, dtype=dtype, rtol=1e-12, generator=torch.Generator().manual_seed(seed)
        )
        assert err < 1e-12, (name, err)


@pytest.mark.parametrize("name", list(ADJOINT_CASES))
def test_adjoint_is_the_conjugate_transpose_of_the_dense_matrix(name):
    # Independent of check_adjoint's random dot-product test: build both matrices explicitly.
    factory, shape, dtype = ADJOINT_CASES[name]
    op = factory()
    sample = tuple(shape[1:])
    M = _dense(op, sample, dtype)
    out_shape = tuple(op.forward(torch.zeros(1, *sample, dtype=dtype)).shape[1:])
    MH = _dense_adjoint(op, out_shape, dtype)
    torch.testing.assert_close(MH, M.conj().T, rtol=0, atol=1e-14)
    # and forward agrees with the dense matrix on a random batch
    x = _randn(*shape, seed=9, dtype=dtype)
    torch.testing.assert_close(
        op.forward(x).reshape(shape[0], -1), x.reshape(shape[0], -1) @ M.T, rtol=0, atol=1e-13
    )


def test_composed_matches_matrix_product():
    A, B = _randn(3, 5, seed=10), _randn(5, 4, seed=11)
    op = MatrixOperator(A) @ MatrixOperator(B)
    assert isinstance(op, Composed)
    x, y = _randn(6, 4, seed=12), _randn(6, 3, seed=13)
    torch.testing.assert_close(op(x), x @ (A @ B).T, rtol=0, atol=1e-13)
    torch.testing.assert_close(op.adjoint(y), y @ (A @ B), rtol=0, atol=1e-13)


class _ScaledAdjoint(MatrixOperator):
    def adjoint(self, y):
        return 1.01 * super().adjoint(y)


class _UnconjugatedAdjoint(MatrixOperator):
    def adjoint(self, y):
        return y @ self.A.to(y)  # transpose without conjugation: wrong for complex A


class _UnnormalisedBlockMean(BlockMean):
    def adjoint(self, y):
        return super().adjoint(y) * math.prod(self.factor)  # forgets the 1/n of the mean


@pytest.mark.parametrize(
    "op, shape, dtype",
    [
        (_ScaledAdjoint(_randn(3, 5, seed=14)), (4, 5), F64),
        (_UnconjugatedAdjoint(_randn(3, 5, seed=15, dtype=C128)), (4, 5), C128),
        (_UnnormalisedBlockMean(2), (2, 1, 4, 4), F64),
    ],
    ids=["adjoint-scaled-1.01", "complex-no-conj", "blockmean-unnormalised"],
)
def test_check_adjoint_rejects_a_wrong_adjoint(op, shape, dtype):
    # A 1 % error gives a relative error of ~1e-2 |cos(Ax, y)| ~ 1e-3 >> the default rtol 1e-5.
    with pytest.raises(AssertionError, match="fails the adjoint test"):
        check_adjoint(op, shape, dtype=dtype)


def test_check_adjoint_returns_error_below_tolerance_for_correct_operator():
    err = check_adjoint(Identity(), (2, 3))
    assert isinstance(err, float) and err == 0.0


def test_complex_matrix_on_real_input_keeps_the_imaginary_part():
    A = _randn(3, 5, seed=16, dtype=C128)
    x = _randn(2, 5, seed=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns "discards the imaginary part"
        out = MatrixOperator(A).forward(x)
    torch.testing.assert_close(out, x.to(C128) @ A.T, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# pseudo-inverse
# ---------------------------------------------------------------------------------------------


def test_identity_pinv():
    y = _randn(2, 5, seed=20)
    assert torch.equal(Identity().pinv(y), y)


def test_mask_pinv_is_exact_and_minimum_norm():
    op = Mask(MASK6)
    y = op(_randn(4, 6, seed=21))  # a measurement lies in the range of the mask
    x = op.pinv(y)
    assert torch.equal(op(x), y)  # 0/1 products are exact
    assert torch.equal(x * (1 - MASK6), torch.zeros_like(x))  # minimum norm: nothing unobserved
    torch.testing.assert_close(x, LinearOperator.pinv(op, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "op, shape",
    [
        (BlockMean(2), (2, 3, 8, 8)),
        (BlockMean((2, 3)), (2, 1, 4, 6)),
        (BlockMean((2, 1, 3), spatial_dims=3), (1, 2, 4, 3, 6)),
    ],
    ids=["2d", "2d-anisotropic", "3d"],
)
def test_blockmean_pinv(op, shape):
    coarse = op(torch.zeros(shape, dtype=F64)).shape
    y = _randn(*coarse, seed=22)
    x = op.pinv(y)
    torch.testing.assert_close(op(x), y, rtol=0, atol=1e-12)
    # equals the generic CG pseudo-inverse and the dense minimum-norm solution
    torch.testing.assert_close(x, LinearOperator.pinv(op, y, tol=1e-14), rtol=0, atol=1e-10)
    M = _dense(op, tuple(shape[1:]))
    dense = y.reshape(shape[0], -1) @ torch.linalg.pinv(M).T
    torch.testing.assert_close(x.reshape(shape[0], -1), dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, C128], ids=["real", "complex"])
def test_matrix_pinv_full_row_rank_matches_linalg_pinv(dtype):
    # Generic CG on A^H A (rank 3 of 5) from x0 = 0 stays in range(A^H): minimum-norm solution.
    A = _randn(3, 5, seed=23, dtype=dtype)
    op = MatrixOperator(A)
    y = _randn(4, 3, seed=24, dtype=dtype)
    x = op.pinv(y)
    ref = y @ torch.linalg.pinv(A).T
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(op(x), y, rtol=0, atol=1e-8)


def test_matrix_pinv_tall_is_least_squares():
    A = _randn(7, 4, seed=25)
    op = MatrixOperator(A)
    y = _randn(3, 7, seed=26)  # generically not in the range: no exact fit exists
    x = op.pinv(y)
    torch.testing.assert_close(x, y @ torch.linalg.pinv(A).T, rtol=0, atol=1e-8)
    assert (op(x) - y).abs().max() > 1e-2
    torch.testing.assert_close(op.adjoint(op(x) - y), torch.zeros_like(x), rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# proximal map of |A x - y|^2 / (2 s^2)
# ---------------------------------------------------------------------------------------------


def _dense_prox(op, z, y, rho, noise_std):
    """Per sample: solve (a A^H A + rho I) x = a A^H y + rho z with the dense matrix."""
    B, sample = z.shape[0], tuple(z.shape[1:])
    M = _dense(op, sample)
    n = M.shape[1]
    rho_b = torch.as_tensor(rho, dtype=F64).reshape(-1).expand(B)
    a = 1.0 / noise_std**2
    out = []
    for b in range(B):
        lhs = a * M.T @ M + rho_b[b] * torch.eye(n, dtype=F64)
        rhs = a * M.T @ y[b].reshape(-1) + rho_b[b] * z[b].reshape(-1)
        out.append(torch.linalg.solve(lhs, rhs))
    return torch.stack(out).reshape(z.shape)


PROX_CASES = {
    "identity": (Identity, (3, 5)),
    "mask": (lambda: Mask(MASK6), (3, 6)),
    "blockmean": (lambda: BlockMean((2, 3)), (3, 2, 4, 6)),
    "blockmean-3d": (lambda: BlockMean((2, 1, 2), spatial_dims=3), (2, 1, 2, 3, 4)),
    "matrix (generic only)": (lambda: MatrixOperator(_randn(3, 5, seed=30)), (3, 5)),
}


@pytest.mark.parametrize("rho_kind", ["scalar", "per-sample"])
@pytest.mark.parametrize("name", list(PROX_CASES))
def test_prox_l2_closed_form_equals_cg_and_normal_equations(name, rho_kind):
    factory, shape = PROX_CASES[name]
    op = factory()
    s = 0.4
    z = _randn(*shape, seed=31)
    y = _randn(*op(z).shape, seed=32)  # for the mask this includes junk at unobserved entries
    if rho_kind == "scalar":
        rho = 0.7
    else:  # the (B, 1, ...) layout ProximalDataStep passes
        rho = torch.linspace(0.05, 20.0, shape[0], dtype=F64).reshape(-1, *([1] * (len(shape) - 1)))
    closed = op.prox_l2(z, y, rho, noise_std=s)
    generic = LinearOperator.prox_l2(op, z, y, rho, noise_std=s, iters=200, tol=1e-14)
    dense = _dense_prox(op, z, y, rho, s)
    torch.testing.assert_close(closed, dense, rtol=0, atol=1e-10)
    torch.testing.assert_close(generic, dense, rtol=0, atol=1e-10)
    # The answer is not trivially z or the data fit: the check has power.
    assert (closed - z).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[0.0, 0.5, 1.0], [0.0, 2.0], [1.0, float("nan")], [-1.0, 1.0]])
def test_mask_rejects_non_binary_values(bad):
    with pytest.raises(ValueError, match="only 0 and 1"):
        Mask(torch.tensor(bad))


def test_mask_shape_mismatch_names_both_shapes():
    op = Mask(torch.ones(3))
    for fn in (op.forward, op.adjoint, op.pinv):
        with pytest.raises(ValueError, match=r"\(3,\).*\(2, 4\)"):
            fn(torch.ones(2, 4))


def test_blockmean_rejects_indivisible_shape():
    with pytest.raises(ValueError, match=r"not divisible.*\(3, 3\)"):
        BlockMean(3).forward(torch.ones(1, 1, 8, 9))
    with pytest.raises(ValueError, match="not divisible"):
        BlockMean((2, 4)).forward(torch.ones(1, 1, 8, 6))


def test_blockmean_rejects_bad_rank_and_factor():
    with pytest.raises(ValueError, match="expected"):
        BlockMean(2).forward(torch.ones(1, 8, 8))  # no channel dim
    with pytest.raises(ValueError, match="expected"):
        BlockMean(2).adjoint(torch.ones(1, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="positive integers"):
        BlockMean((2, 2, 2))  # three factors for two spatial dims
    with pytest.raises(ValueError, match="positive integers"):
        BlockMean(0)


def test_matrix_operator_rejects_wrong_dimensions():
    with pytest.raises(ValueError, match="2-D"):
        MatrixOperator(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="4 != matrix columns 5"):
        MatrixOperator(torch.ones(3, 5)).forward(torch.ones(2, 4))
