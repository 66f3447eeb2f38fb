"""Sampler convergence: distance to the truth against the number of network evaluations.

Every sampler in :data:`~diffsci.core.samplers.SAMPLERS` draws from the 1-D and 8-D Gaussian
mixtures of :mod:`diffsci.core.analytic` with their *exact* denoiser, so the only error is
the sampler's discretisation (plus finite-sample noise). For target NFEs 5, 10, 20, 50, 200
the step count is the one whose NFE (:func:`~diffsci.core.samplers.nfe`; heun uses
``2 * steps - 1``) is closest to the target (ties to the smaller); the actual NFE is recorded.

Distances: the V-statistic energy distance to an independent exact sample of the same size
(1-D and 8-D) and, in 1-D, the KS statistic against the exact mixture CDF. The *null level*
(the same distances for fresh exact samples) is the floor no sampler can go below at this n.

Chains start from the exact noisy marginal at ``sigma_max`` (``x0 + sigma_max z``), so the
prior mismatch of the usual ``sigma_max z`` start is not mixed into the sampler's error; its
size is reported separately (``prior_mismatch``: dpmpp_2m at 200 steps from ``sigma_max z``).

The exact denoiser is :meth:`GaussianMixture.denoise` evaluated through one eigendecomposition
per component (the samplers call it with one sigma per batch); it is checked against
``GaussianMixture.denoise`` to 1e-12 at start-up.

Run: ``python -m benchmarks.sampler_convergence`` (writes ``results/sampler_convergence.json``
and ``results/sampler_convergence.png``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from benchmarks._common import RESULTS, write_result
from diffsci.core.analytic import GaussianMixture
from diffsci.core.metrics import energy_distance
from diffsci.core.samplers import SAMPLERS, nfe
from diffsci.core.schedules import karras

TARGET_NFE = (5, 10, 20, 50, 200)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
NULL_REPS = 5


class FastExact:
    """Exact GMM posterior mean for a batch sharing one sigma (eigendecomposition per component)."""

    def __init__(self, gm: GaussianMixture) -> None:
        self.gm = gm
        self.lam, self.U = torch.linalg.eigh(gm.covs)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if not bool((sigma == sigma[0]).all()):
            return self.gm.denoise(x, sigma)
        xf = x.to(torch.float64)
        y = torch.einsum("bkd,kde->bke", xf[:, None, :] - self.gm.means, self.U)
        v = self.lam + float(sigma[0]) ** 2
        logr = -0.5 * (y * y / v).sum(-1) - 0.5 * v.log().sum(-1) + self.gm.weights.log()
        post = self.gm.means + torch.einsum("bke,kde->bkd", y * self.lam / v, self.U)
        return (torch.softmax(logr, 1)[..., None] * post).sum(1).to(x.dtype)


def steps_for(name: str, target: int) -> int:
    """Step count whose NFE is closest to ``target`` (ties to the smaller NFE)."""
    return min(range(1, target + 2), key=lambda s: (abs(nfe(name, s) - target), nfe(name, s)))


def _pair_sum_1d(z: Tensor) -> float:
    """``sum_{i<j} |z_i - z_j|`` in O(n log n)."""
    zs = z.sort().values
    k = torch.arange(1, len(zs) + 1, dtype=zs.dtype)
    return float(((2 * k - len(zs) - 1) * zs).sum())


def _mean_dist(a: Tensor, b: Tensor, chunk: int = 2000) -> float:
    """Mean Euclidean distance over all pairs, in row chunks (bounded memory)."""
    total = 0.0
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i : i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += float(d.sum())
    return total / (len(a) * len(b))


class EnergyDistance:
    """V-statistic energy distance to a fixed reference sample (its self-term computed once).

    Same value as :func:`diffsci.core.metrics.energy_distance`; 1-D uses the sorted pair-sum
    identity, d > 1 chunked pairwise distances.
    """

    def __init__(self, ref: Tensor) -> None:
        self.ref = ref.to(torch.float64)
        m = len(ref)
        if ref.shape[1] == 1:
            self.s_ref = _pair_sum_1d(self.ref[:, 0])
            self.yy = 2 * self.s_ref / m**2
        else:
            self.yy = _mean_dist(self.ref, self.ref)

    def __call__(self, x: Tensor) -> float:
        x = x.to(torch.float64)
        n, m = len(x), len(self.ref)
        if x.shape[1] == 1:
            sx = _pair_sum_1d(x[:, 0])
            cross = _pair_sum_1d(torch.cat([x[:, 0], self.ref[:, 0]])) - sx - self.s_ref
            return 2 * cross / (n * m) - 2 * sx / n**2 - self.yy
        return 2 * _mean_dist(x, self.ref) - _mean_dist(x, x) - self.yy


def mixture_cdf(gm: GaussianMixture):
    w, mu = gm.weights.numpy(), gm.means[:, 0].numpy()
    sd = gm.covs[:, 0, 0].sqrt().numpy()
    return lambda x: (w * stats.norm.cdf((np.asarray(x)[:, None] - mu) / sd)).sum(1)


def _self_check(gms: dict[str, GaussianMixture]) -> None:
    """The fast denoiser and distance equal the library's (guards the benchmark itself)."""
    for gm in gms.values():
        g = torch.Generator().manual_seed(123)
        x = gm.sample(300, generator=g) + torch.randn(300, gm.dim, generator=g, dtype=torch.float64)
        for s in (0.002, 1.0, 80.0):
            sig = torch.full((300,), s, dtype=torch.float64)
            err = (FastExact(gm)(x, sig) - gm.denoise(x, sig)).abs().max().item()
            assert err < 1e-12, err
        y = gm.sample(400, generator=g)
        ed = EnergyDistance(y)(x)
        assert abs(ed - energy_distance(x, y).item()) < 1e-9, ed


def run(n: int, seed: int) -> dict[str, Any]:
    gms = {"1d": GaussianMixture.example_1d(), "8d": GaussianMixture.example_8d()}
    _self_check(gms)
    out: dict[str, Any] = {"null": {}, "runs": [], "prior_mismatch": {}}
    for key, gm in gms.items():
        den = FastExact(gm)
        ref = gm.sample(n, generator=torch.Generator().manual_seed(seed + 10_000))
        ed = EnergyDistance(ref)
        cdf = mixture_cdf(gm) if gm.dim == 1 else None

        def metrics(x: Tensor, ed=ed, cdf=cdf) -> dict[str, float]:
            m = {"energy_distance": ed(x)}
            if cdf is not None:
                m["ks"] = float(stats.kstest(x[:, 0].numpy(), cdf).statistic)
            return m

        nulls = [
            metrics(gm.sample(n, generator=torch.Generator().manual_seed(seed + 20_000 + r)))
            for r in range(NULL_REPS)
        ]
        out["null"][key] = {
            f"{k}_{stat}": float(fn([v[k] for v in nulls]))
            for k in nulls[0]
            for stat, fn in (("median", np.median), ("max", np.max))
        }
        print(f"[{key}] null: {out['null'][key]}", flush=True)
        for name, fn in SAMPLERS.items():
            for target in TARGET_NFE:
                steps = steps_for(name, target)
                g = torch.Generator().manual_seed(seed)
                x0 = gm.sample(n, generator=g)
                x = x0 + SIGMA_MAX * torch.randn(x0.shape, generator=g, dtype=torch.float64)
                t0 = time.perf_counter()
                y = fn(den, x, karras(steps, SIGMA_MIN, SIGMA_MAX), generator=g)
                row = {
                    "dim": gm.dim,
                    "sampler": name,
                    "target_nfe": target,
                    "steps": steps,
                    "nfe": nfe(name, steps),
                    "seconds": time.perf_counter() - t0,
                    **metrics(y),
                }
                out["runs"].append(row)
                print(
                    f"[{key}] {name:16s} nfe={row['nfe']:4d} "
                    + " ".join(f"{k}={row[k]:.5f}" for k in ("energy_distance", "ks") if k in row),
                    flush=True,
                )
        g = torch.Generator().manual_seed(seed)
        y = SAMPLERS["dpmpp_2m"](
            den,
            SIGMA_MAX * torch.randn(n, gm.dim, generator=g, dtype=torch.float64),
            karras(200, SIGMA_MIN, SIGMA_MAX),
        )
        out["prior_mismatch"][key] = {"sampler": "dpmpp_2m", "steps": 200, **metrics(y)}
    return out


def plot(results: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("1d", "energy_distance", "1-D energy distance"),
        ("1d", "ks", "1-D KS statistic"),
        ("8d", "energy_distance", "8-D energy distance"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, metric, title) in zip(axes, panels, strict=True):
        dim = int(key[0])
        for j, name in enumerate(SAMPLERS):
            rows = [r for r in results["runs"] if r["dim"] == dim and r["sampler"] == name]
            style = "x--" if name == "ddim" else "os^vDP"[j % 6] + "-"  # ddim(eta=0) == euler
            ax.loglog(
                [r["nfe"] for r in rows],
                [max(r[metric], 1e-7) for r in rows],
                style,
                label=name,
                ms=6,
                mfc="none",
            )
        floor = results["null"][key][f"{metric}_median"]
        ax.axhline(floor, color="gray", ls="--", label="null (exact sample), median")
        ax.set(title=title, xlabel="NFE (network evaluations)", ylabel=metric)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="samples per run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    results = run(args.n, args.seed)
    config = {
        "n": args.n,
        "target_nfe": list(TARGET_NFE),
        "schedule": "karras",
        "sigma_min": SIGMA_MIN,
        "sigma_max": SIGMA_MAX,
        "rho": 7.0,
        "start": "x0 + sigma_max * z (exact marginal)",
        "null_reps": NULL_REPS,
        "dtype": "float64",
        "samplers": list(SAMPLERS),
    }
    write_result("sampler_convergence", results, config=config, seed=args.seed)
    plot(results, RESULTS / "sampler_convergence.png")
    print(f"\n{'dim':>3} {'sampler':16s} {'nfe':>4} {'energy_dist':>12} {'ks':>8}")
    for r in results["runs"]:
        ks = f"{r['ks']:8.4f}" if "ks" in r else " " * 8
        print(f"{r['dim']:>3} {r['sampler']:16s} {r['nfe']:>4} {r['energy_distance']:12.6f} {ks}")


if __name__ == "__main__":
    main()
