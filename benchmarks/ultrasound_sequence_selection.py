"""Choose the ultrasound benchmark's SeqDiff warm-start settings on a validation sequence.

Why: the sequence bar of ``benchmarks/ultrasound.py`` asks the warm starts (each frame after
the first starts from the previous frame's posterior mean noised to ``sequence.warm_sigma``,
runs ``warm_steps`` steps down to ``warm_sigma_min``, and averages ``warm_samples`` samples,
in antithetic pairs with ``antithetic``) to use >= 10x fewer network
evaluations per frame than dehazing every frame from noise, at equal B-mode PSNR (warm - cold
>= -0.3 dB). The from-noise reference is the config's ``sampling`` (Euler 15 steps x 16
samples since ``benchmarks/ultrasound_sampler_selection.py``), and the warm-start settings
(sigma 0.2, 1 step, 2 samples) were never chosen against it. So they are chosen here, on a
validation sequence only.

What: the trained priors of the bar run (``benchmarks/work/ultrasound_bars/model.pt``, loaded
as the task's infer stage loads them) dehaze a validation moving phantom made exactly as
:func:`diffsci.domains.ultrasound.data.prepare_simulated` makes the held-out sequence (one
phantom, :func:`~diffsci.domains.ultrasound.simulate.moving_phantoms` over
``sequence.frames`` frames, the same haze, probe and beamformer, written to and read back from
zea files) but from the unused seed ``seed + 40_000`` (training uses ``seed`` .. ``seed + 12``
and ``seed + 1``, the test frames ``seed + 10_000``, the held-out sequence ``seed + 20_000`` ..
``seed + 20_012``, the sampler selection's frames ``seed + 30_000`` .. ``seed + 30_004``;
this sequence uses ``seed + 40_000`` .. ``seed + 40_012``). As the infer stage does
(``UltrasoundTask._infer_sequence``), every frame is dehazed from noise once with the config's
``sampling`` (the reference), then every warm-start candidate of :func:`candidates` (third
round, see ``ROUNDS``) runs
:func:`~diffsci.domains.ultrasound.dehaze.dehaze_frames` with ``sequence=True`` (frame 0 from
noise, as in the bar), all with the infer stage's sampling seed. Scores are the sequence
table's (the task's ``_table``: B-mode PSNR at the configured dynamic range, network
evaluations per frame as ``dehaze_frames`` counts them, frame 0 included).

Pick rule (fixed before the results): among candidates with validation NFE ratio
(from noise / warm) >= 10, the largest warm B-mode PSNR; within 0.05 dB of it, the fewest
network evaluations per frame.

Run (after ``python -m benchmarks.ultrasound`` trained the priors)::

    OMP_NUM_THREADS=1 python -m benchmarks.ultrasound_sequence_selection

Writes ``benchmarks/results/ultrasound_sequence_selection.json``.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_result
from benchmarks.ultrasound_sampler_selection import (
    GCNR,
    HAZY,
    KS,
    PSNR,
    selection_args,
    trained_bar_model,
)
from diffsci.domains.ultrasound import data, io, models
from diffsci.domains.ultrasound.dehaze import SamplingOptions, dehaze_frames
from diffsci.domains.ultrasound.simulate import moving_phantoms
from diffsci.domains.ultrasound.task import _clean_env, _table

#: offset of the validation sequence's seed from ``cfg["seed"]`` (unused by prepare and by
#: the sampler selection's ``seed + 30_000``)
VALIDATION_SEED = 40_000
#: earlier rounds on this validation sequence, each extending the last one's grid:
ROUNDS = (
    "1: samples {2, 4, 8} x sigma {0.1, 0.2, 0.3} x steps {1, 2}; best sigma 0.3 on the edge",
    "2: samples {4, 8, 9} x sigma {0.2, 0.3, 0.45, 0.6, 0.8} x steps {1, 2}; best 8 x 1 step "
    "at sigma 0.3, -0.57 dB (9 samples is the most one step per sample allows under the ratio: "
    "(240 + 15 x 9) / 16 = 23.4 NFE, 10.2x). Its 2-step candidates spent the second step at "
    "sampling.sigma_min (0.005), a near-copy of the first step's output",
    "3: the warm schedule's lowest level (warm_sigma_min) and antithetic pairs of start noise, "
    "at the sample x step budgets under the ratio",
)
#: (warm_samples, warm_steps): 8 or 9 network evaluations per warm frame
BUDGETS = ((8, 1), (4, 2), (3, 3))
WARM_SIGMAS = (0.3, 0.5, 0.7)
WARM_SIGMA_MINS = (0.1, 0.2)
NFE = "network evaluations per frame"
COLD = "joint diffusion, every frame from noise"
COLD_ANTI = "joint diffusion, every frame from noise, antithetic pairs"
MIN_RATIO = 10.0
KEYS = ("warm_samples", "warm_sigma", "warm_steps", "warm_sigma_min", "antithetic")


def validation_sequence(
    cfg: dict[str, Any], seed: int, scale: float
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """A hazy moving-phantom sequence and its truth, made as prepare makes the held-out one.

    Parameters
    ----------
    cfg
        The benchmark config (schema defaults filled); ``cfg["sequence"]["frames"]`` frames.
    seed
        Seed of the phantom and the haze (prepare uses ``cfg["seed"] + 20_000``).
    scale
        The trained model's normalisation (IQ / scale = model units).

    Returns
    -------
    y, hazy_env, clean_env, rois
        The hazy frames in model units ``(T, 2, nz, nx)``, the hazy and clean envelopes
        ``(T, nz, nx)`` and each frame's cyst and point-target ROIs.
    """
    probe, scan, grid = data.setup(cfg)
    fnum, n = cfg["acquisition"]["f_number"], int(cfg["sequence"]["frames"])
    base = data._phantoms(cfg, probe, grid, 1, seed)[0]
    seq = moving_phantoms(base, n, period=max(n, 4))
    frames = data._simulate(cfg, probe, scan, grid, seq, seed)
    with tempfile.TemporaryDirectory() as tmp:
        data._write_pair(Path(tmp), "validation", frames, scan, grid, fnum)
        y_iq = data.beamform(io.read_zea(Path(tmp) / "validation_hazy.hdf5"), grid, fnum)
        clean = _clean_env(Path(tmp) / "validation_clean.hdf5")
    return models.iq_to_channels(y_iq, scale), y_iq.abs().numpy(), clean, data._rois(seq)


def pick(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pick rule: NFE ratio (from noise / warm) >= 10, then the largest warm PSNR; within
    0.05 dB of it, the fewest network evaluations per frame.

    Parameters
    ----------
    rows
        Candidates with ``"nfe ratio"``, ``PSNR`` and ``"nfe per frame"`` entries.

    Returns
    -------
    dict or None
        The chosen row; None when no candidate reaches the ratio.
    """
    ok = [r for r in rows if r["nfe ratio"] >= MIN_RATIO]
    if not ok:
        return None
    top = max(r[PSNR] for r in ok)
    return min((r for r in ok if r[PSNR] >= top - 0.05), key=lambda r: r["nfe per frame"])


def candidates() -> list[dict[str, Any]]:
    """The third round's warm-start settings (``warm_sigma_min`` only where a step uses it)."""
    out = []
    for anti, (n, steps), sigma in itertools.product((False, True), BUDGETS, WARM_SIGMAS):
        lows = WARM_SIGMA_MINS if steps > 1 else (None,)
        for low in lows:
            out.append(
                {
                    "warm_samples": n,
                    "warm_sigma": sigma,
                    "warm_steps": steps,
                    "warm_sigma_min": low,
                    "antithetic": anti,
                }
            )
    return out


def _name(c: dict[str, Any]) -> str:
    low = "" if c["warm_sigma_min"] is None else f" to {c['warm_sigma_min']:g}"
    anti = ", antithetic" if c["antithetic"] else ""
    return (
        f"warm sigma {c['warm_sigma']:g}{low}, {c['warm_steps']} step(s) x "
        f"{c['warm_samples']} samples{anti}"
    )


def main(argv: list[str] | None = None) -> None:
    a = selection_args(argv, __doc__.splitlines()[0], frames=None)
    cfg, model, meta, grid = trained_bar_model(a.config, a.workdir)
    dr = cfg["metrics"]["dynamic_range"]
    seed = int(cfg["seed"])
    t0 = time.perf_counter()
    y, hazy, clean, rois = validation_sequence(cfg, seed + VALIDATION_SEED, meta["scale"])
    print(f"validation sequence: {y.shape[0]} frames in {time.perf_counter() - t0:.1f} s")
    base = SamplingOptions.from_config(cfg)
    env: dict[str, np.ndarray] = {HAZY: hazy}
    cost: dict[str, dict[str, float]] = {}
    spec: dict[str, dict[str, Any]] = {}
    # antithetic pairs also for the reference: how much of a warm candidate's gain the
    # variance reduction alone would give the frames from noise
    runs: list[tuple[str, SamplingOptions, bool]] = [
        (COLD, base, False),
        (COLD_ANTI, replace(base, antithetic=True), False),
    ]
    for c in candidates():
        name = _name(c)
        spec[name] = c
        opt = base.with_sequence(c)
        runs.append((name, opt, True))
    for name, opt, seq in runs:
        # the infer stage's sampling seed (cfg seed + 1), as _infer_sequence runs it
        x, _, info = dehaze_frames(model, y, opt, seed=seed + 1, sequence=seq)
        env[name] = models.channels_to_iq(x, meta["scale"]).abs().numpy()
        cost[name] = {NFE: info["nfe_per_frame"], "seconds per frame": info["seconds_per_frame"]}
        print(
            f"{name}: {info['nfe_per_frame']:.3f} NFE, {info['seconds_per_frame']:.2f} s per frame",
            flush=True,
        )
    table = _table(env, cost, clean, rois, grid, dr)
    cold = table[COLD]
    rows = [
        {
            **spec[name],
            "nfe per frame": table[name][NFE],
            "nfe ratio": cold[NFE] / table[name][NFE],
            PSNR: table[name][PSNR],
            "psnr warm - cold (dB)": table[name][PSNR] - cold[PSNR],
            KS: table[name][KS],
            GCNR: table[name][GCNR],
            "seconds per frame": table[name]["seconds per frame"],
        }
        for name in spec
    ]
    print(f"from noise: PSNR {cold[PSNR]:.2f} dB, {cold[NFE]:.1f} NFE per frame")
    for r in rows:
        print(
            f"{_name(r)}: PSNR {r[PSNR]:.2f} ({r['psnr warm - cold (dB)']:+.2f}) NFE {r['nfe per frame']:.2f} "
            f"ratio {r['nfe ratio']:.1f} KS {r[KS]:.3f} gCNR {r[GCNR]:.3f}",
            flush=True,
        )
    best = pick(rows)
    print(f"hazy PSNR {table[HAZY][PSNR]:.2f}; pick: {best}")
    write_result(
        "ultrasound_sequence_selection",
        {
            "rule": "among warm-start candidates with validation NFE ratio (every frame from "
            "noise / warm) >= 10, the largest mean B-mode PSNR; within 0.05 dB of it, the "
            "fewest network evaluations per frame",
            "validation": {
                "frames": int(y.shape[0]),
                "seed": seed + VALIDATION_SEED,
                "made as": "prepare_simulated's held-out moving sequence (seed + 20_000), "
                "another seed",
                "hazy": {k: table[HAZY][k] for k in (PSNR, KS, GCNR)},
                "from noise": {k: cold[k] for k in (PSNR, KS, GCNR, NFE, "seconds per frame")},
                "from noise, antithetic pairs": {
                    k: table[COLD_ANTI][k] for k in (PSNR, KS, GCNR, NFE, "seconds per frame")
                },
            },
            "sampling seed": seed + 1,
            "candidates": rows,
            "best": None if best is None else {k: best[k] for k in KEYS},
            "best_scores": best,
            "notes": [
                "network evaluations per frame as dehaze_frames counts them (calls of the joint "
                "denoiser per tile position, all samples, frame 0 from noise included), as in "
                "the benchmark's sequence table",
                "seconds are wall-clock, one torch thread, while another process shared the "
                "machine's cores: compare them within this file only",
                "the held-out sequence was not used",
            ],
            "table": table,
        },
        config={
            "config": str(a.config),
            "model": str(Path(a.workdir) / "model.pt"),
            "sampling": cfg["sampling"],
            "sequence frames": cfg["sequence"]["frames"],
            "grid": {
                "(warm_samples, warm_steps)": [list(b) for b in BUDGETS],
                "warm_sigma": list(WARM_SIGMAS),
                "warm_sigma_min (steps > 1)": list(WARM_SIGMA_MINS),
                "antithetic": [False, True],
            },
            "rounds": list(ROUNDS),
        },
        seed=seed,
    )


if __name__ == "__main__":
    main()
