"""diffsci.domains.precipitation: x8 precipitation downscaling ensembles.

Submodules (the roles every domain shares, plus what is this field's own):
:mod:`.simulate` (intermittent log-normal fields from power-law Gaussian random fields,
orography invariant, block-mean coarse inputs), :mod:`.operators` (the coarse-graining
forward model, block means, with its registry for the adjoint test), :mod:`.io` (CorrDiff's
xarray schema in netCDF/zarr, lazy dask reads, validation of variables/grids/units/values,
atomic writes, statistics JSON, the predictions Dataset), :mod:`.models` (regression UNet,
residual conditional diffusion model, ensemble sampling, the ``log1p`` + standardisation
codec), :mod:`.losses` (EDM + WassDiff's sliced-Wasserstein regulariser), :mod:`.downscale`
(tiled ensemble downscaling in memory or store to store, mass constraint, command line),
:mod:`.baselines` (bilinear, bicubic, regression), :mod:`.metrics` (CRPS, MAE/RMSE/bias,
CSI, FSS, EMD, 99.9th-percentile error, radial PSD, spread-skill, rank histogram, the metric
table) and :mod:`.plots`. Their public names are re-exported here lazily.
"""

from __future__ import annotations

from diffsci.core.lazy import lazy_exports

_EXPORTS = {
    # simulate
    "gaussian_random_field": "simulate",
    "orography": "simulate",
    "precipitation_from_grf": "simulate",
    "make_dataset": "simulate",
    "make_split": "simulate",
    # operators
    "block_mean": "operators",
    "upsample_nearest": "operators",
    "coarse_graining": "operators",
    # io
    "build_dataset": "io",
    "open_dataset": "io",
    "validate_dataset": "io",
    "check_values": "io",
    "write_dataset": "io",
    "atomic_zarr": "io",
    "compute_stats": "io",
    "write_stats": "io",
    "read_stats": "io",
    "predictions_dataset": "io",
    # models / losses
    "Normaliser": "models",
    "RegressionUNet": "models",
    "DownscalingModel": "models",
    "sample_ensemble": "models",
    "sw_regulariser": "losses",
    "downscaling_loss": "losses",
    # downscale
    "enforce_mass": "downscale",
    "downscale_arrays": "downscale",
    "downscale_store": "downscale",
    "load_trained": "downscale",
    # baselines
    "interpolate": "baselines",
    "regression_mean": "baselines",
    # metrics
    "crps": "metrics",
    "csi": "metrics",
    "fss": "metrics",
    "pixel_emd": "metrics",
    "percentile_error": "metrics",
    "radial_psd": "metrics",
    "psd_dex_error": "metrics",
    "spread_skill": "metrics",
    "rank_histogram": "metrics",
    "evaluate_fields": "metrics",
    # plots
    "plot_psd": "plots",
    "plot_rank_histogram": "plots",
    "plot_fields": "plots",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
