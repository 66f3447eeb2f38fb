"""Model-space transforms: WassDiff's ``log(1 + x)`` for precipitation, then standardisation
with the statistics JSON (:func:`.io.compute_stats`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["forward_transform", "inverse_transform", "Normaliser"]


def forward_transform(x, kind: str):
    """``log1p`` (precipitation) or identity, for numpy arrays or tensors."""
    if kind == "log1p":
        return torch.log1p(x) if isinstance(x, torch.Tensor) else np.log1p(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown transform {kind!r} (use 'log1p' or 'none')")


def inverse_transform(z, kind: str):
    """Inverse of :func:`forward_transform`; ``expm1`` clamped at 0 (no negative rain)."""
    if kind == "log1p":
        if isinstance(z, torch.Tensor):
            return torch.expm1(z).clamp_min(0)
        return np.maximum(np.expm1(z), 0)
    if kind == "none":
        return z
    raise ValueError(f"unknown transform {kind!r} (use 'log1p' or 'none')")


class Normaliser:
    """Maps physical fields to the model's standardised space and back.

    Parameters
    ----------
    stats
        The statistics mapping (``{"input": {name: {mean, std, transform}}, ...}``).
    input_variables, invariant_variables
        Order of the conditioning channels (the dataset's ``input_variable`` and
        ``invariant_variable`` coordinates).
    """

    def __init__(self, stats: Mapping[str, Any], input_variables: Sequence[str],
                 invariant_variables: Sequence[str] = ()) -> None:  # fmt: skip
        self.stats = stats
        self.input_variables = list(input_variables)
        self.invariant_variables = list(invariant_variables)
        for group, names in (("input", self.input_variables),
                             ("invariant", self.invariant_variables)):  # fmt: skip
            for n in names:
                if n not in stats.get(group, {}):
                    raise KeyError(f"statistics have no entry {group}.{n}")
        if "tp" not in stats.get("output", {}):
            raise KeyError("statistics have no entry output.tp")

    @property
    def cond_channels(self) -> int:
        return len(self.input_variables) + len(self.invariant_variables)

    @staticmethod
    def _apply(x: torch.Tensor, s: Mapping[str, Any]) -> torch.Tensor:
        return (forward_transform(x, s["transform"]) - s["mean"]) / s["std"]

    def encode_condition(
        self, inputs: torch.Tensor, invariant: torch.Tensor | None
    ) -> torch.Tensor:
        """``inputs (B, C_in, H, W)`` and ``invariant (C_inv, H, W)`` (or per case
        ``(B, C_inv, H, W)``) -> ``(B, C_cond, H, W)``."""
        chans = [self._apply(inputs[:, i], self.stats["input"][n])
                 for i, n in enumerate(self.input_variables)]  # fmt: skip
        if self.invariant_variables:
            if invariant is None:
                raise ValueError("this model needs the invariant fields "
                                 f"{self.invariant_variables}")  # fmt: skip
            inv = invariant if invariant.dim() == 4 else invariant.unsqueeze(0)
            for i, n in enumerate(self.invariant_variables):
                chans.append(self._apply(inv[:, i], self.stats["invariant"][n]).expand_as(chans[0]))
        return torch.stack(chans, dim=1).float()

    def encode_target(self, tp: torch.Tensor) -> torch.Tensor:
        """Precipitation (mm h-1) -> standardised ``log1p`` space."""
        return self._apply(tp, self.stats["output"]["tp"]).float()

    def decode_target(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised ``log1p`` space -> precipitation (mm h-1), non-negative."""
        s = self.stats["output"]["tp"]
        return inverse_transform(z * s["std"] + s["mean"], s["transform"])
