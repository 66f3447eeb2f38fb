"""Linear forward operators ``y = A x`` for inverse problems, with adjoints.

Field operators (MRI Fourier sampling, Radon, ultrasound) live in their domains and implement
the same :class:`LinearOperator` interface; :func:`check_adjoint` is the test every operator
must pass: ``<A x, y> == <x, A^H y>`` to floating-point accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LinearOperator",
    "Identity",
    "Mask",
    "BlockMean",
    "MatrixOperator",
    "Composed",
    "check_adjoint",
    "OperatorCase",
]


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """Real inner product ``Re <a, b>`` over all elements (complex-safe)."""
    return (a.conj() * b).real.sum() if a.is_complex() or b.is_complex() else (a * b).sum()


class LinearOperator:
    """A linear map with its adjoint. Subclasses implement ``forward`` and ``adjoint``.

    ``pinv`` (the pseudo-inverse) and ``prox_l2`` (the proximal map of
    ``|A x - y|^2 / (2 s^2)``) have generic conjugate-gradient fallbacks; operators with cheap
    closed forms override them.
    """

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def __matmul__(self, other: LinearOperator) -> Composed:
        return Composed(self, other)

    def normal(self, x: Tensor) -> Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def pinv(self, y: Tensor, *, iters: int = 50, tol: float = 1e-10) -> Tensor:
        """Minimum-norm least-squares solution ``A^+ y`` (CG on the normal equations)."""
        return _cg(self.normal, self.adjoint(y), iters=iters, tol=tol)

    def prox_l2(
        self,
        z: Tensor,
        y: Tensor,
        rho: float | Tensor,
        *,
        noise_std: float = 1.0,
        iters: int = 50,
        tol: float = 1e-10,
    ) -> Tensor:
        """``argmin_x |A x - y|^2 / (2 s^2) + rho/2 |x - z|^2`` (CG on the normal equations)."""
        a = 1.0 / noise_std**2
        rhs = a * self.adjoint(y) + rho * z
        return _cg(lambda v: a * self.normal(v) + rho * v, rhs, x0=z, iters=iters, tol=tol)


def _cg(op, b: Tensor, *, x0: Tensor | None = None, iters: int = 50, tol: float = 1e-10) -> Tensor:
    """Conjugate gradients for a Hermitian positive semi-definite ``op``; batched as one system."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - op(x)
    p = r.clone()
    rs = _inner(r, r)
    b2 = _inner(b, b).clamp_min(1e-30)
    for _ in range(iters):
        if float(rs / b2) < tol**2:
            break
        ap = op(p)
        alpha = rs / _inner(p, ap).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _inner(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


class Identity(LinearOperator):
    """``A = I`` (denoising)."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def pinv(self, y: Tensor, **_) -> Tensor:
        return y

    def prox_l2(self, z, y, rho, *, noise_std=1.0, **_):
        a = 1.0 / noise_std**2
        return (a * y + rho * z) / (a + rho)


class Mask(LinearOperator):
    """Elementwise 0/1 sampling mask (inpainting, k-space undersampling after a transform).

    The measurement keeps the input's shape with zeros where unobserved; the operator is
    self-adjoint and idempotent, so ``pinv`` and ``prox_l2`` are closed-form.
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 and 1")
        self.mask = mask

    def _m(self, x: Tensor) -> Tensor:
        try:
            torch.broadcast_shapes(self.mask.shape, x.shape)
        except RuntimeError as e:
            raise ValueError(
                f"mask shape {tuple(self.mask.shape)} does not broadcast to input {tuple(x.shape)}"
            ) from e
        return self.mask.to(device=x.device, dtype=x.real.dtype if x.is_complex() else x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._m(x)

    adjoint = forward

    def pinv(self, y: Tensor, **_) -> Tensor:
        return y * self._m(y)

    def prox_l2(self, z, y, rho, *, noise_std=1.0, **_):
        m = self._m(z)
        a = 1.0 / noise_std**2
        return m * (a * y + rho * z) / (a + rho) + (1 - m) * z


class BlockMean(LinearOperator):
    """Average over non-overlapping ``factor``-sized blocks of the trailing spatial dims.

    ``x`` has shape ``(B, C, *spatial)`` with 1, 2 or 3 spatial dims divisible by ``factor``.
    The adjoint spreads each coarse value uniformly, divided by the block size.
    """

    def __init__(self, factor: int | Sequence[int], *, spatial_dims: int = 2) -> None:
        f = (factor,) * spatial_dims if isinstance(factor, int) else tuple(factor)
        if len(f) != spatial_dims or any(int(v) < 1 for v in f):
            raise ValueError(f"factor must be {spatial_dims} positive integers, got {factor}")
        self.factor, self.spatial_dims = tuple(int(v) for v in f), spatial_dims
        self._pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial_dims]

    def _check(self, x: Tensor, fine: bool) -> None:
        sp = x.shape[-self.spatial_dims :]
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected (B, C, *{self.spatial_dims} spatial dims), got {tuple(x.shape)}"
            )
        if fine and any(s % f for s, f in zip(sp, self.factor, strict=True)):
            raise ValueError(f"spatial shape {tuple(sp)} not divisible by factor {self.factor}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x, True)
        return self._pool(x, self.factor, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check(y, False)
        n = 1
        for d, f in enumerate(self.factor):
            y = y.repeat_interleave(f, dim=2 + d)
            n *= f
        return y / n

    def pinv(self, y: Tensor, **_) -> Tensor:
        # A A^T = I / n, so A^+ = A^T (A A^T)^-1 = n A^T: nearest-neighbour upsampling.
        n = 1
        for f in self.factor:
            n *= f
        return self.adjoint(y) * n

    def prox_l2(self, z, y, rho, *, noise_std=1.0, **_):
        # Normal matrix A^T A = P / n with P the block-average projector (eigenvalues 1/n, 0).
        a = 1.0 / noise_std**2
        n = 1
        for f in self.factor:
            n *= f
        rhs = a * self.adjoint(y) + rho * z
        blk = self.adjoint(self.forward(rhs)) * n  # P rhs
        return (rhs - blk) / rho + blk / (a / n + rho)


class MatrixOperator(LinearOperator):
    """A dense matrix acting on the last dimension: ``y = x @ A^T``."""

    def __init__(self, matrix: Tensor) -> None:
        self.A = torch.as_tensor(matrix)
        if self.A.dim() != 2:
            raise ValueError(f"matrix must be 2-D, got shape {tuple(self.A.shape)}")

    def _cast(self, v: Tensor) -> tuple[Tensor, Tensor]:
        A = self.A.to(v.device)
        if A.is_complex() and not v.is_complex():
            v = v.to(v.dtype.to_complex())
        return v, A.to(v.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.A.shape[1]:
            raise ValueError(f"input last dim {x.shape[-1]} != matrix columns {self.A.shape[1]}")
        x, A = self._cast(x)
        return x @ A.T

    def adjoint(self, y: Tensor) -> Tensor:
        if y.shape[-1] != self.A.shape[0]:
            raise ValueError(
                f"adjoint input last dim {y.shape[-1]} != matrix rows {self.A.shape[0]}"
            )
        y, A = self._cast(y)
        return y @ A.conj()


class Composed(LinearOperator):
    """``A = outer ∘ inner``; the adjoint is ``inner^H ∘ outer^H``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        self.outer, self.inner = outer, inner

    def forward(self, x: Tensor) -> Tensor:
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y: Tensor) -> Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


def check_adjoint(
    op: LinearOperator,
    x_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
) -> float:
    """Dot-product test ``|<A x, y> - <x, A^H y>| / (|A x| |y|)``; raises if above ``rtol``.

    Returns the relative error.
    """
    g = generator or torch.Generator().manual_seed(0)
    x = torch.randn(tuple(x_shape), generator=g, dtype=torch.float64).to(dtype)
    if dtype.is_complex:
        x = x + 1j * torch.randn(tuple(x_shape), generator=g, dtype=torch.float64).to(dtype)
    ax = op.forward(x)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64).to(ax.dtype)
    if ax.is_complex():
        y = y + 1j * torch.randn(ax.shape, generator=g, dtype=torch.float64).to(ax.dtype)
    lhs = _inner(ax, y)
    rhs = _inner(x, op.adjoint(y))
    err = float((lhs - rhs).abs() / (ax.norm() * y.norm()).clamp_min(1e-30))
    if err > rtol:
        raise AssertionError(
            f"{type(op).__name__} fails the adjoint test: relative error {err:.3e}"
        )
    return err


class OperatorCase(NamedTuple):
    """One entry of a domain's operator registry (``OPERATORS`` in its ``operators`` module):
    an instance of the operator and the input on which the shared contract test runs
    :func:`check_adjoint` (deepinv keeps such a registry of its physics for the same test)."""

    op: LinearOperator
    x_shape: tuple[int, ...]
    dtype: torch.dtype = torch.float64
    rtol: float = 1e-5
