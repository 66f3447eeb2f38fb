"""PDE baselines trained here: a space-time FNO (same data, same number of steps as the
diffusion model, through the core's training loop). Persistence needs no training and is
computed in the evaluate stage.

Command line (used by ``workflows/rules/pde.smk``)::

    python -m diffsci.domains.pde.baselines --config CONFIG --workdir WORKDIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.stages import load_config
from diffsci.core.task import TaskPaths
from diffsci.core.training import TrainConfig, train

from .fno import FNO2d
from .io import read_pdebench, write_pdebench
from .task import PDETask, _files

__all__ = ["build_fno", "train_fno", "main"]


def build_fno(cfg: Mapping[str, Any]) -> nn.Module:
    f = cfg["fno"]
    return FNO2d(
        1,
        1,
        modes=tuple(f["modes"]),
        width=f["width"],
        depth=f["depth"],
        padding=(f.get("time_padding", 8), 0),
    )


class _FNOData(torch.utils.data.Dataset):
    """Chunks of one grid: ``{"u0": (chunk, 1, nt, nx) broadcast IC, "u": (chunk, 1, nt, nx)}``."""

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


def _loss(model: nn.Module, batch: Mapping[str, Tensor], rng) -> Tensor:
    pred = model(batch["u0"].flatten(0, 1))
    return ((pred - batch["u"].flatten(0, 1)) ** 2).mean()


def train_fno(cfg: Mapping[str, Any], paths: TaskPaths, *, progress: bool = True) -> None:
    """Train the FNO on the diffusion model's training data and steps; write test predictions
    to ``<workdir>/baselines/fno_nx*.h5``."""
    d = cfg["data"]
    scale = PDETask._scale(paths.data)
    files = _files(paths.data, "train")
    trajs = [torch.from_numpy(read_pdebench(files[g]).u).float() for g in d["train_nx"]]
    torch.manual_seed(int(cfg["seed"]))
    model = build_fno(cfg)
    t = cfg["train"]
    tcfg = TrainConfig(steps=t["steps"], batch_size=t["batch_size"], lr=cfg["fno"]["lr"],
                       warmup_steps=t["warmup_steps"], ema_decay=None, seed=int(cfg["seed"]),
                       ckpt_dir=str(paths.root / "checkpoints_fno"), ckpt_every=t["ckpt_every"],
                       progress=progress)  # fmt: skip
    res = train(model, _loss, _FNOData(trajs, cfg["train_chunk"], scale), tcfg)
    net = res.model.eval()
    out = paths.root / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    for nx, path in _files(paths.data, "test").items():
        data = read_pdebench(path)
        u = torch.from_numpy(data.u).float()[:, None] / scale
        with torch.no_grad():
            pred = net(u[:, :, :1].expand_as(u).contiguous())[:, 0] * scale
        write_pdebench(out / f"fno_nx{nx}.h5", pred.numpy(), x=data.x, t=data.t,
                       attrs={"method": "fno"})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffsci.domains.pde.baselines")
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, PDETask())
        train_fno(cfg, TaskPaths(a.workdir), progress=not a.quiet)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"pde baselines: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
