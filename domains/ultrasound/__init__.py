"""diffsci.domains.ultrasound: plane-wave ultrasound, delay-and-sum, diffusion dehazing.

Modules, by role: :mod:`.io` (zea HDF5, both layouts, and PICMUS HDF5 onto one
:class:`~.io.Acquisition`), :mod:`.simulate` (linear-array point-scatterer simulator,
speckle phantoms with cysts, moving sequences, reverberation haze), :mod:`.operators`
(IQ demodulation and delay-and-sum as linear operators, envelope, log compression, mu-law,
scan conversion; the ``OPERATORS`` registry), :mod:`.metrics` (gCNR, the three CNR
conventions, contrast ratio, KS, B-mode PSNR, FWHM), :mod:`.baselines` (no processing, Lee
filter, Wiener split, SVD clutter filter), :mod:`.models` (the tissue and haze priors),
:mod:`.dehaze` (joint posterior sampling, tiled; SeqDiff warm starts; single-prior DPS),
:mod:`.data` (the task's data folder: simulated or user acquisitions as zea files, training
patches), :mod:`.plots` and :mod:`.task` (glue).
"""
