"""Choose, on validation frames, whether the ultrasound quarter-NFE run draws its samples in
antithetic pairs.

Why: :mod:`benchmarks.quarter_nfe` runs ultrasound at 1/4 of its evaluations by averaging 4
posterior samples per frame instead of 16 (Euler, 15 steps). Fewer samples leave more Monte
Carlo error in the frame's mean; antithetic pairs (``sampling.antithetic``: start noise ``z``
and ``-z``) cancel its part that is linear in the start noise. Whether that pays is decided
here, on the sampler selection's validation frames (seed + 30 000, never the held-out test
frames), not on the quarter run itself.

What: the bar run's trained priors dehaze the validation frames with the benchmark config's
sampling at 16 samples (the full run), 4 samples and 4 samples in antithetic pairs, with the
infer stage's sampling seed; scores are the task's table (B-mode PSNR at the configured dynamic
range, KS, gCNR). Rule (fixed before the run): antithetic pairs are used at 4 samples if their
B-mode PSNR is higher by more than 0.05 dB.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.ultrasound_antithetic_selection`` (about 2
minutes; writes ``results/ultrasound_antithetic_selection.json``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks._common import write_result
from benchmarks.ultrasound_sampler_selection import (
    GCNR,
    HAZY,
    KS,
    PSNR,
    VALIDATION_SEED,
    selection_args,
    trained_bar_model,
    validation_frames,
)
from diffsci.domains.ultrasound import models
from diffsci.domains.ultrasound.dehaze import SamplingOptions, dehaze_frames
from diffsci.domains.ultrasound.task import _table

MARGIN_DB = 0.05


def main(argv: list[str] | None = None) -> None:
    a = selection_args(argv, __doc__.splitlines()[0])
    cfg, model, meta, grid = trained_bar_model(a.config, a.workdir)
    seed = int(cfg["seed"])
    y, hazy, clean, rois = validation_frames(cfg, a.frames, seed + VALIDATION_SEED, meta["scale"])
    base = SamplingOptions.from_config(cfg)
    runs = {
        f"{base.samples} samples (full run)": base,
        "4 samples": replace(base, samples=4),
        "4 samples, antithetic pairs": replace(base, samples=4, antithetic=True),
    }
    env: dict[str, np.ndarray] = {HAZY: hazy}
    for name, opt in runs.items():
        x, _, _ = dehaze_frames(model, y, opt, seed=seed + 1)  # the infer stage's seed
        env[name] = models.channels_to_iq(x, meta["scale"]).abs().numpy()
        print(name, flush=True)
    table = _table(env, {}, clean, rois, grid, cfg["metrics"]["dynamic_range"])
    rows: dict[str, Any] = {k: {m: table[k][m] for m in (PSNR, KS, GCNR)} for k in env}
    gain = table["4 samples, antithetic pairs"][PSNR] - table["4 samples"][PSNR]
    use = gain > MARGIN_DB
    print({k: round(v[PSNR], 3) for k, v in rows.items()}, "use antithetic:", use)
    write_result(
        "ultrasound_antithetic_selection",
        {
            "rule": f"antithetic pairs at 4 samples if their B-mode PSNR is higher by more than "
            f"{MARGIN_DB} dB on the validation frames",
            "validation": {"frames": a.frames, "seed": seed + VALIDATION_SEED},
            "table": rows,
            "antithetic_gain_db": gain,
            "use_antithetic_at_4_samples": use,
            "notes": ["the held-out test frames were not used"],
        },
        config={"config": str(a.config), "sampling": cfg["sampling"], "frames": a.frames},
        seed=seed,
    )


if __name__ == "__main__":
    main()
