"""The core's own demo: learn a 2-D Gaussian mixture, sample it, and compare with the truth.

The data have an exact denoiser (:mod:`diffsci.core.analytic`), so the demo reports how far
the *learned* model's samples are from the truth next to the floor set by finite samples and
the sampler itself (the exact denoiser run through the same sampler).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .analytic import GaussianMixture
from .denoisers import KarrasDenoiser, edm_loss
from .metrics import energy_distance
from .networks import MLPDenoiser
from .provenance import provenance, write_json_atomic
from .samplers import sample
from .schedules import karras
from .training import TrainConfig, train

__all__ = ["DemoConfig", "ring_mixture", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of the 2-D mixture demo (the defaults are sized for a CPU)."""

    n_train: int = 20000
    n_eval: int = 4000
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    hidden: int = 128
    depth: int = 4
    sampler: str = "dpmpp_2m"
    sample_steps: int = 20
    seed: int = 0


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """``k`` isotropic Gaussians evenly spaced on a circle."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    covs = (std**2 * torch.eye(2, dtype=torch.float64)).expand(k, 2, 2).clone()
    return GaussianMixture(torch.ones(k), means, covs)


def run_demo(
    out_dir: str | os.PathLike, config: DemoConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Train, sample, evaluate and plot; writes ``samples.h5``, ``metrics.json``,
    ``demo.png`` and ``provenance.json`` into ``out_dir``. Returns the metrics."""
    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gm = ring_mixture()
    g = torch.Generator().manual_seed(cfg.seed)
    data = gm.sample(cfg.n_train, generator=g).float()
    sigma_data = float(data.std())

    model = KarrasDenoiser(
        MLPDenoiser(2, hidden=cfg.hidden, depth=cfg.depth), sigma_data=sigma_data
    )
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        ema_decay=0.995,
        warmup_steps=100,
        progress=progress,
        log_every=max(1, cfg.steps // 50),
    )
    result = train(
        model,
        lambda m, batch, rng: edm_loss(m, batch, rng),
        data,
        tcfg,
        metrics_path=str(out / "train_metrics.jsonl"),
    )
    net = (result.ema or result.model).eval()

    sig = karras(cfg.sample_steps, 0.002, 80.0)
    gs = torch.Generator().manual_seed(cfg.seed + 1)
    learned = sample(net, (cfg.n_eval, 2), sig, sampler=cfg.sampler, generator=gs)
    gs = torch.Generator().manual_seed(cfg.seed + 1)
    exact = sample(
        gm.denoiser(), (cfg.n_eval, 2), sig, sampler=cfg.sampler, generator=gs, dtype=torch.float64
    )
    truth = gm.sample(cfg.n_eval, generator=torch.Generator().manual_seed(cfg.seed + 2))
    truth2 = gm.sample(cfg.n_eval, generator=torch.Generator().manual_seed(cfg.seed + 3))
    metrics = {
        "energy_distance_learned": float(energy_distance(learned.double(), truth)),
        "energy_distance_exact_denoiser": float(energy_distance(exact, truth)),
        "energy_distance_null": float(energy_distance(truth2, truth)),
        "sampler": cfg.sampler,
        "nfe": cfg.sample_steps,
        "final_loss": result.history[-1]["loss"] if result.history else None,
    }

    tmp = out / ".samples.h5.tmp"
    with h5py.File(tmp, "w") as f:
        for name, arr in (("learned", learned), ("exact_denoiser", exact), ("truth", truth)):
            f.create_dataset(name, data=arr.numpy().astype(np.float32))
        f.attrs["sampler"], f.attrs["nfe"] = cfg.sampler, cfg.sample_steps
    os.replace(tmp, out / "samples.h5")
    _plot(out / "demo.png", truth, exact, learned, result.history, metrics)
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(out / "provenance.json", provenance(config=asdict(cfg), seed=cfg.seed))
    return metrics


def _plot(path: Path, truth, exact, learned, history, metrics) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend to choose

    fig = Figure(figsize=(16, 4))
    ax = fig.subplots(1, 4)
    for a, pts, title in zip(
        ax[:3],
        (truth, exact, learned),
        (
            "truth",
            f"exact denoiser ({metrics['sampler']}, {metrics['nfe']} NFE)",
            f"learned model (E-dist {metrics['energy_distance_learned']:.4f})",
        ),
        strict=True,
    ):
        a.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        a.set_title(title)
        a.set_aspect("equal")
        a.set_xlim(-3, 3)
        a.set_ylim(-3, 3)
    if history:
        ax[3].semilogy([h["step"] for h in history], [h["loss"] for h in history])
    ax[3].set_xlabel("step")
    ax[3].set_title("training loss (EDM-weighted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
