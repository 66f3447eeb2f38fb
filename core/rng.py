"""Random streams that give the same draws on one process and on N data-parallel ranks.

Training must be reproducible (bit-identical resume) and data-parallel training must match
single-process training with the global batch. Both follow if every random draw of a step is
made for the *global* batch from a generator whose state is shared by all ranks, and each rank
keeps its own slice. Drawing the few extra numbers is cheap next to a network evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ShardedRNG:
    """A ``torch.Generator`` shared by all ranks that hands each rank its slice of a global draw.

    Parameters
    ----------
    generator
        CPU generator; its state must be identical on every rank.
    rank, world_size
        This process's data-parallel rank and the number of ranks.
    """

    def __init__(self, generator: torch.Generator, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.generator = generator
        self.rank = rank
        self.world_size = world_size

    def _draw(self, fn, shape: Sequence[int], device, dtype, **kw) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if not shape:
            raise ValueError("shape must have a leading batch dimension")
        full = (shape[0] * self.world_size, *shape[1:])
        out = fn(full, generator=self.generator, dtype=dtype, **kw)
        out = out[self.rank * shape[0] : (self.rank + 1) * shape[0]]
        return out.to(device) if device is not None else out

    def randn(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draw of the local ``shape`` (leading dim = local batch)."""
        return self._draw(torch.randn, shape, device, dtype)

    def rand(self, shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draw of the local ``shape``."""
        return self._draw(torch.rand, shape, device, dtype)

    def randint(self, high: int, shape: Sequence[int], *, device=None) -> torch.Tensor:
        """Integers in [0, high) of the local ``shape``."""
        return self._draw(lambda s, **kw: torch.randint(high, s, **kw), shape, device, torch.long)
