"""An operator whose pseudo-inverse is a fixed number of conjugate-gradient iterations."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffsci.core.operators import LinearOperator

__all__ = ["CGPinv"]


class CGPinv(LinearOperator):
    """``op`` with ``pinv`` = CG on the normal equations for a fixed number of iterations.

    For forward models without a closed-form pseudo-inverse (CT's Radon transform), so that
    hard data consistency costs the same at every reverse step.

    Parameters
    ----------
    op
        The wrapped operator (forward and adjoint are its own).
    iters
        CG iterations of ``pinv`` (tolerance ``1e-7``).
    """

    def __init__(self, op: LinearOperator, iters: int = 30) -> None:
        self.op, self.iters = op, int(iters)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y)

    def pinv(self, y: Tensor, **_: Any) -> Tensor:
        return LinearOperator.pinv(self, y, iters=self.iters, tol=1e-7)
