"""Medical quality bar: MRI 8x and CT 8 views with a 2-D diffusion prior vs the baselines.

Runs the generic stages (the same code as the Snakemake rules) on held-out slices (phantoms
of a fresh seed plus pydicom's CT_small and MR_small) and checks, on medians over slices:
MRI diffusion PSNR >= zero-filled + 8 dB and >= POCS-TV + 1 dB; CT diffusion >= FBP + 10 dB
and >= TV-iterative; the measured k-space residual after hard data consistency <= 1e-5.

Usage: ``python -m benchmarks.medical [--config benchmarks/configs/medical.yaml] [--steps N]
[--reuse-model]``. Writes ``benchmarks/results/medical.json``; work files go to
``benchmarks/work/medical`` (ignored).
"""

from __future__ import annotations

import json

from benchmarks._common import domain_parser, read_config, run_stages, write_result


def main() -> None:
    a = domain_parser("medical").parse_args()
    task, cfg = read_config(a, "medical")
    metrics, times = run_stages(task, cfg, a.workdir, reuse_model=a.reuse_model, progress=True)
    tables = metrics["tables"]
    key = "PSNR median (dB)"
    mri = next(v for k, v in tables.items() if k.startswith("MRI"))
    ctt = next(v for k, v in tables.items() if k.startswith("CT"))
    d_mri, d_ct = mri["diffusion (posterior mean)"], ctt["diffusion (posterior mean)"]
    bars = {
        "mri_ge_zero_filled_plus_8dB": d_mri[key] >= mri["zero-filled"][key] + 8,
        "mri_ge_pocs_tv_plus_1dB": d_mri[key] >= mri["POCS-TV"][key] + 1,
        # against the stronger of raw and clipped FBP
        "ct_ge_fbp_plus_10dB": d_ct[key]
        >= max(ctt["FBP"][key], ctt["FBP (clipped to [0, 1])"][key]) + 10,
        "ct_ge_tv_iterative": d_ct[key] >= ctt["TV-iterative"][key],
        "mri_kspace_residual_le_1e-5": d_mri["kspace_residual_max"] <= 1e-5,
    }
    vol = next((v for k, v in tables.items() if k.startswith("MRI 3-D volume")), None)
    if vol is not None:  # not a bar of the issue: the 3-D-from-2-D prior's gain, recorded
        results_volume = {
            "slice_axis_tv_minus_slicewise_dB": vol["diffusion + slice-axis TV"][key]
            - vol["diffusion 2-D slice-wise"][key],
            "slice_axis_tv_minus_pocs_tv_2d_dB": vol["diffusion + slice-axis TV"][key]
            - vol["POCS-TV"][key],
        }
    else:
        results_volume = None
    results = {
        "volume_3d": results_volume,
        "tables": tables,
        "margins_dB": {
            "mri_vs_zero_filled": d_mri[key] - mri["zero-filled"][key],
            "mri_vs_pocs_tv": d_mri[key] - mri["POCS-TV"][key],
            "ct_vs_fbp": d_ct[key] - ctt["FBP"][key],
            "ct_vs_fbp_clipped": d_ct[key] - ctt["FBP (clipped to [0, 1])"][key],
            "ct_vs_tv_iterative": d_ct[key] - ctt["TV-iterative"][key],
        },
        "bars": bars,
        "all_bars_met": all(bars.values()),
        "seconds": times,
    }
    write_result("medical", results, config=cfg, seed=cfg["seed"])
    print(json.dumps({"margins_dB": results["margins_dB"], "bars": bars}, indent=1))


if __name__ == "__main__":
    main()
