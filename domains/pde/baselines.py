"""Baselines of the PDE task.

- :func:`persistence`: the initial state held for every frame (no training).
- :func:`interpolate_observations`: data assimilation by interpolating the sensors (no
  training).
- The FNO (Li et al. 2021): a space-time :class:`~diffsci.domains.pde.models.fno.FNO2d` of
  comparable size, trained on the diffusion model's training data for the same number of steps
  through the core's training loop (:func:`train_fno`); it maps the initial state broadcast
  over time to the whole trajectory in one pass (:func:`predict_fno`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.training import TrainConfig, train

from .models.fno import FNO2d

__all__ = [
    "FNOChunks",
    "build_fno",
    "fno_loss",
    "interpolate_observations",
    "persistence",
    "predict_fno",
    "train_fno",
]


def persistence(true: Tensor) -> Tensor:
    """Trajectories ``(B, nt, nx)`` -> their first frame repeated over time."""
    return true[:, :1].expand_as(true)


def interpolate_observations(obs: Tensor, mask: Tensor) -> Tensor:
    """Periodic linear interpolation of the sensors in space, linear in time between observed
    frames (constant after the last one). ``obs (B, nt, nx)`` (zero off the sensors), ``mask``
    the 0/1 sensor mask ``(1, nt, nx)``."""
    B, nt, nx = obs.shape
    m = mask.reshape(nt, nx) > 0
    frames = np.nonzero(m.any(1).numpy())[0]
    cols = np.nonzero(m[frames[0]].numpy())[0]
    x = np.arange(nx)
    o = obs.numpy()
    space = np.stack(
        [[np.interp(x, cols, o[b, f, cols], period=nx) for f in frames] for b in range(B)]
    )
    out = np.empty((B, nt, nx), dtype=np.float32)
    for b in range(B):
        for j in range(nx):
            out[b, :, j] = np.interp(np.arange(nt), frames, space[b, :, j])
    return torch.from_numpy(out)


def build_fno(cfg: Mapping[str, Any]) -> nn.Module:
    """The FNO baseline of the config's ``fno`` section: one input and one output channel."""
    f = cfg["fno"]
    return FNO2d(
        1,
        1,
        modes=tuple(f["modes"]),
        width=f["width"],
        depth=f["depth"],
        padding=(f.get("time_padding", 8), 0),
    )


class FNOChunks(torch.utils.data.Dataset):
    """Chunks of ``chunk`` trajectories of one grid, divided by ``scale``: items are
    ``{"u0": (chunk, 1, nt, nx) initial state broadcast over time, "u": (chunk, 1, nt, nx)}``."""

    def __init__(self, trajs: list[Tensor], chunk: int, scale: float) -> None:
        self.items = []
        for u in trajs:
            u = u / scale
            for i in range(0, len(u) - chunk + 1, chunk):
                blk = u[i : i + chunk, None]
                self.items.append((blk[:, :, :1].expand_as(blk).contiguous(), blk))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"u0": self.items[i][0], "u": self.items[i][1]}


def fno_loss(model: nn.Module, batch: Mapping[str, Tensor], rng: Any) -> Tensor:
    """Mean squared error of the predicted trajectories (``rng`` unused)."""
    pred = model(batch["u0"].flatten(0, 1))
    return ((pred - batch["u"].flatten(0, 1)) ** 2).mean()


def train_fno(
    cfg: Mapping[str, Any],
    trajs: list[Tensor],
    scale: float,
    *,
    ckpt_dir: str | Path,
    device: torch.device | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train :func:`build_fno` on the training trajectories ``trajs`` (one tensor per grid) with
    the diffusion model's steps, batch size, warm-up and checkpoint interval, the learning rate
    ``fno.lr`` and no EMA; resumable from ``ckpt_dir``. Returns the network in eval mode."""
    torch.manual_seed(int(cfg["seed"]))
    model = build_fno(cfg)
    t = cfg["train"]
    tcfg = TrainConfig(
        steps=t["steps"],
        batch_size=t["batch_size"],
        lr=cfg["fno"]["lr"],
        warmup_steps=t["warmup_steps"],
        ema_decay=None,
        seed=int(cfg["seed"]),
        ckpt_dir=str(ckpt_dir),
        ckpt_every=t["ckpt_every"],
        progress=progress,
    )
    data = FNOChunks(trajs, cfg["train_chunk"], scale)
    return train(model, fno_loss, data, tcfg, device=device).model.eval()


@torch.no_grad()
def predict_fno(net: nn.Module, u: Tensor, scale: float) -> np.ndarray:
    """The FNO's trajectories ``(N, nt, nx)`` from the first frames of ``u (N, nt, nx)``."""
    dev = next(net.parameters()).device
    v = u[:, None] / scale
    pred = net(v[:, :, :1].expand_as(v).contiguous().to(dev))[:, 0] * scale
    return pred.cpu().numpy()
