"""PDE metrics against independent numpy loops, and sanity cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsci.domains.pde.metrics import PDEBENCH_BANDS, ensemble_scores, frmse_bands, nrmse


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------------------- nRMSE


def _nrmse_loop(p: np.ndarray, t: np.ndarray, per_frame: bool) -> np.ndarray:
    b, nt = t.shape[:2]
    if not per_frame:
        return np.mean([np.linalg.norm(p[i] - t[i]) / np.linalg.norm(t[i]) for i in range(b)])
    out = np.zeros(nt)
    for j in range(nt):
        out[j] = np.mean(
            [np.linalg.norm(p[i, j] - t[i, j]) / np.linalg.norm(t[i, j]) for i in range(b)]
        )
    return out


@pytest.mark.parametrize("shape", [(3, 5, 16), (2, 4, 8, 6)])
def test_nrmse_matches_numpy_loop(shape):
    t, p = _rand(*shape), _rand(*shape, seed=1)
    got = nrmse(torch.from_numpy(p), torch.from_numpy(t))
    assert got.shape == ()
    np.testing.assert_allclose(got.item(), _nrmse_loop(p, t, False), rtol=1e-12)
    frames = nrmse(torch.from_numpy(p), torch.from_numpy(t), per_frame=True)
    assert frames.shape == (shape[1],)
    np.testing.assert_allclose(frames.numpy(), _nrmse_loop(p, t, True), rtol=1e-12)


def test_nrmse_sanity_and_scaling():
    t = torch.from_numpy(_rand(4, 6, 32))
    assert nrmse(t, t) == 0
    assert torch.equal(nrmse(t, t, per_frame=True), torch.zeros(6, dtype=t.dtype))
    torch.testing.assert_close(nrmse(1.1 * t, t), torch.tensor(0.1, dtype=t.dtype))
    p = t + 0.3 * torch.from_numpy(_rand(4, 6, 32, seed=2))
    torch.testing.assert_close(nrmse(7 * p, 7 * t), nrmse(p, t))  # scale invariant
    # mixed precision and numpy input
    assert nrmse(p.float(), t.numpy()).dtype == torch.float64


def test_nrmse_zero_norm_raises_clear_error():
    t = torch.from_numpy(_rand(3, 4, 8))
    t[1] = 0
    with pytest.raises(ValueError, match=r"\|\|true\|\| = 0.*\[\[1\]\]"):
        nrmse(torch.ones_like(t), t)
    t = torch.from_numpy(_rand(3, 4, 8))
    t[2, 0] = 0  # one zero frame: fine space-time, undefined per frame
    nrmse(torch.ones_like(t), t)
    with pytest.raises(ValueError, match=r"\(sample, frame\).*\[\[2, 0\]\]"):
        nrmse(torch.ones_like(t), t, per_frame=True)


def test_nrmse_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        nrmse(torch.zeros(2, 3, 4), torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match=r"\(B, nt, nx\)"):
        nrmse(torch.zeros(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        nrmse(torch.full((1, 2, 4), math.nan), torch.ones(1, 2, 4))


# ------------------------------------------------------------------------------ fRMSE bands


def _frmse_loop(p: np.ndarray, t: np.ndarray, bands) -> dict[str, float]:
    """Direct transcription of the documented definition, mode by mode."""
    err = p - t
    b, nt = err.shape[:2]
    if err.ndim == 3:
        nx = err.shape[2]
        kmax = nx // 2
        e = np.zeros((nt, kmax + 1))
        for j in range(nt):
            for k in range(kmax + 1):
                acc = 0.0
                for i in range(b):
                    acc += abs(np.fft.rfft(err[i, j])[k]) ** 2
                e[j, k] = math.sqrt(acc / b) / nx
    else:
        nx, ny = err.shape[2:]
        kmax = min(nx, ny) // 2
        e = np.zeros((nt, kmax + 1))
        for j in range(nt):
            shells = np.zeros((b, kmax + 1))
            for i in range(b):
                f = np.fft.fft2(err[i, j])
                for ix in range(nx):
                    for iy in range(ny):
                        kx = ix if ix < (nx + 1) // 2 else ix - nx
                        ky = iy if iy < (ny + 1) // 2 else iy - ny
                        s = math.floor(math.sqrt(kx * kx + ky * ky))
                        if s <= kmax:
                            shells[i, s] += abs(f[ix, iy]) ** 2
            e[j] = np.sqrt(shells.mean(axis=0)) / (nx * ny)
    out = {}
    for name, (lo, hi) in zip(("low", "mid", "high"), bands, strict=True):
        hi = kmax + 1 if hi is None else min(hi, kmax + 1)
        out[name] = float(np.mean([np.mean(e[j, lo:hi]) for j in range(nt)]))
    return out


@pytest.mark.parametrize("shape", [(3, 4, 40), (2, 3, 41), (2, 3, 28, 30), (1, 2, 27, 30)])
def test_frmse_bands_match_numpy_loop(shape):
    t, p = _rand(*shape), _rand(*shape, seed=1)
    got = frmse_bands(torch.from_numpy(p), torch.from_numpy(t))
    ref = _frmse_loop(p, t, PDEBENCH_BANDS)
    assert set(got) == {"low", "mid", "high"}
    for k in ref:
        np.testing.assert_allclose(got[k].item(), ref[k], rtol=1e-12)
    custom = ((0, 2), (2, 7), (7, 9))
    got = frmse_bands(torch.from_numpy(p), torch.from_numpy(t), bands=custom)
    ref = _frmse_loop(p, t, custom)
    for k in ref:
        np.testing.assert_allclose(got[k].item(), ref[k], rtol=1e-12)


def test_frmse_single_mode_value_and_band_placement():
    nx, amp = 64, 0.7
    x = np.arange(nx) / nx
    t = _rand(2, 3, nx)
    for k, band in ((2, "low"), (8, "mid"), (20, "high")):
        p = t + amp * np.sin(2 * np.pi * k * x)
        got = frmse_bands(torch.from_numpy(p), torch.from_numpy(t))
        # |rfft| of amp sin at index k is amp nx / 2, so e_k = amp / 2, averaged over the band
        lo, hi = dict(zip(("low", "mid", "high"), PDEBENCH_BANDS, strict=True))[band]
        width = (nx // 2 + 1 if hi is None else hi) - lo
        np.testing.assert_allclose(got[band].item(), amp / 2 / width, rtol=1e-12)
        for other in {"low", "mid", "high"} - {band}:
            assert got[other].item() < 1e-15


def test_frmse_pure_high_frequency_error_lands_only_in_high_band_2d():
    nx = ny = 32
    x = np.arange(nx) / nx
    t = _rand(2, 3, nx, ny)
    err = np.cos(2 * np.pi * (13 * x[:, None] + 5 * x[None, :]))  # |k| = 13.9
    got = frmse_bands(torch.from_numpy(t + err), torch.from_numpy(t))
    assert got["high"] > 1e-3 and got["low"] < 1e-15 and got["mid"] < 1e-15


def test_frmse_2d_sees_modes_with_kx_ky_negative():
    # PDEBench's quadrant-only sum misses sin 2 pi (x - y); the full plane does not.
    n = 16
    x = np.arange(n) / n
    t = _rand(1, 2, n, n)
    p = t + np.sin(2 * np.pi * (x[:, None] - x[None, :]))
    got = frmse_bands(torch.from_numpy(p), torch.from_numpy(t))
    assert got["low"] > 1e-3


def test_frmse_sanity_scaling_and_empty_band():
    t = torch.from_numpy(_rand(3, 4, 16))
    p = t + torch.from_numpy(_rand(3, 4, 16, seed=3))
    zero = frmse_bands(t, t)
    assert all(v.item() == 0 for k, v in zero.items() if k != "high")
    got, scaled = frmse_bands(p, t), frmse_bands(3 * p, 3 * t)
    for k in ("low", "mid"):
        torch.testing.assert_close(scaled[k], 3 * got[k])
    assert math.isnan(got["high"].item())  # nx = 16 has wavenumbers 0..8 only
    named = frmse_bands(p, t, bands={"all": (0, None)})
    assert set(named) == {"all"}


def test_frmse_bad_bands_raise():
    t = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="three"):
        frmse_bands(t, t, bands=((0, 4),))
    with pytest.raises(ValueError, match="hi must be"):
        frmse_bands(t, t, bands=((0, 4), (4, 4), (5, None)))


# -------------------------------------------------------------------------- ensemble scores


def test_ensemble_scores_match_numpy_loops():
    m, b, nt, nx = 5, 3, 4, 8
    truth = _rand(b, nt, nx)
    ens = truth + 0.5 * _rand(m, b, nt, nx, seed=1) + 0.2
    got = ensemble_scores(torch.from_numpy(ens), torch.from_numpy(truth))
    assert set(got) == {"crps", "spread_skill", "nrmse_mean"}
    crps, var, sq = [], [], []
    for idx in np.ndindex(b, nt, nx):
        xs, y = ens[(slice(None), *idx)], truth[idx]
        pair = sum(abs(a - c) for a in xs for c in xs)
        crps.append(np.mean(np.abs(xs - y)) - pair / (2 * m * m))
        var.append(np.var(xs, ddof=1))
        sq.append((xs.mean() - y) ** 2)
    np.testing.assert_allclose(got["crps"].item(), np.mean(crps), rtol=1e-12)
    ssr = math.sqrt((m + 1) / m) * math.sqrt(np.mean(var)) / math.sqrt(np.mean(sq))
    np.testing.assert_allclose(got["spread_skill"].item(), ssr, rtol=1e-12)
    np.testing.assert_allclose(
        got["nrmse_mean"].item(), _nrmse_loop(ens.mean(0), truth, False), rtol=1e-12
    )
    fair = ensemble_scores(torch.from_numpy(ens), torch.from_numpy(truth), fair=True)
    assert fair["crps"] < got["crps"]


def test_ensemble_scores_single_member_and_bad_shapes():
    truth = torch.from_numpy(_rand(2, 3, 8))
    member = truth + 0.1
    got = ensemble_scores(member[None], truth)
    torch.testing.assert_close(got["crps"], torch.tensor(0.1, dtype=truth.dtype))  # = MAE
    assert math.isnan(got["spread_skill"].item())
    with pytest.raises(ValueError, match=r"\(M, 2, 3, 8\)"):
        ensemble_scores(member, truth)
