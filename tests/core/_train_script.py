"""A tiny training run for the subprocess tests of :mod:`diffsci.core.training`.

Run directly (single process) or under ``torchrun`` (DDP, gloo). Rank 0 writes the final
parameters, EMA weights and history to ``--out``. ``--sleep`` slows each step (signal test);
``--then`` makes a second ``train()`` call with a fresh model that resumes to that many steps.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from diffsci.core.training import TrainConfig, TrainResult, train


def make_loss(sleep: float = 0.0):
    def loss_fn(model, x0, rng):
        if sleep:
            time.sleep(sleep)
        sigma = rng.rand((x0.shape[0], 1)) * 2 + 0.1
        noise = rng.randn(x0.shape)
        x = x0 + sigma * noise
        d = model(torch.cat([x, sigma.log()], 1))
        return {"loss": ((d - x0) ** 2).mean(), "sigma_mean": sigma.mean()}

    return loss_fn


def run(steps: int, *, ckpt_dir: str | None = None, sleep: float = 0.0) -> TrainResult:
    """One ``train()`` call on a freshly built model (same initial weights every time)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.SiLU(), nn.Linear(16, 4))
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(123))
    cfg = TrainConfig(
        steps=steps,
        batch_size=8,
        lr=1e-2,
        warmup_steps=3,
        ema_decay=0.9,
        ckpt_dir=ckpt_dir,
        ckpt_every=5,
        log_every=1,
        progress=False,
    )
    return train(model, make_loss(sleep), data, cfg, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--then", type=int, default=None)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = run(a.steps, ckpt_dir=a.ckpt_dir, sleep=a.sleep)
    if a.then is not None:
        res = run(a.then, ckpt_dir=a.ckpt_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        out = {"model": res.model.state_dict(), "ema": res.ema.state_dict(), "step": res.step}
        torch.save({**out, "history": res.history}, a.out)
    print("DONE", res.step, flush=True)


if __name__ == "__main__":
    main()
