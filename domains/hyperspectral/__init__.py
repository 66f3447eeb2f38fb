"""diffsci.domains.hyperspectral: restoration of hyperspectral cubes of any band count.

Submodules (the roles every domain shares, plus what is this field's own):
:mod:`.io` (cubes as xarray ``(band, y, x)`` with ``wavelength`` in nm; ENVI through SPy,
MATLAB .mat v5/v7.3, netCDF, zarr; checks of declared bands and wavelengths and of dead bands;
atomic writers), :mod:`.simulate` (linear-mixing scenes of physically shaped spectra and the
QRNN3D noise protocol), :mod:`.subspace` (per-band noise estimation, the robust spectral
subspace with stripes, dead lines, impulse, dead pixels and dropped bands masked, MNF axes),
:mod:`.operators` (subspace synthesis, cube masks, the component weighting of the posterior's
data term; ``OPERATORS``), :mod:`.models` (the 2-D diffusion prior over subspace coefficient
images, posterior restoration through ``diffsci.core.posterior.reconstruct``, tiled
restoration), :mod:`.baselines` (per-band Gaussian, SVD truncation, FastHyDe-like and
LRTV-like subspace + TV), :mod:`.metrics` (MPSNR, MSSIM and its legacy ICVL value, SAM,
ERGAS, per-band PSNR, stripe residual), :mod:`.plots` and :mod:`.task`.
"""
