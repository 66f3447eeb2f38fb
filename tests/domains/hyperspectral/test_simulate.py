"""The scene generator and the QRNN3D noise protocol, checked against the protocol's numbers
(seeded and statistical; tolerances a wrong implementation fails)."""

from __future__ import annotations

import numpy as np
import pytest

from diffsci.domains.hyperspectral import simulate as sim

WL31 = np.linspace(400, 700, 31)


@pytest.fixture(scope="module")
def clean():
    return sim.make_scenes(1, 80, WL31, seed=3)[0]


def test_scenes_any_band_count_in_unit_range_and_reproducible():
    for wl in (WL31, np.linspace(400, 2500, 224)):
        x = sim.make_scenes(2, 24, wl, seed=0)
        assert x.shape == (2, wl.size, 24, 24) and x.dtype == np.float32
        assert x.min() == 0 and x.max() == 1  # QRNN3D's minmax_normalize per cube
        np.testing.assert_array_equal(x, sim.make_scenes(2, 24, wl, seed=0))
        sv = np.linalg.svd(x[0].reshape(wl.size, -1), compute_uv=False)
        # near low-rank, but not exactly (texture, variability, illumination)
        assert sv[8] / sv[0] > 1e-4 and sv[2] / sv[0] < 0.2


def test_endmember_shapes_are_physical():
    wl = np.linspace(400, 2500, 211)
    lib = sim.endmember_library(wl)
    at = lambda s, nm: s[np.argmin(np.abs(wl - nm))]  # noqa: E731
    veg = lib["vegetation"]
    assert at(veg, 800) > 4 * at(veg, 670)  # red edge
    assert at(veg, 550) > at(veg, 480) and at(veg, 550) > at(veg, 670)  # green peak
    assert at(veg, 1450) < 0.8 * at(veg, 1250)  # leaf water
    assert at(lib["water"], 1000) < 0.01 < at(lib["water"], 480)
    assert at(lib["soil"], 1600) > at(lib["soil"], 450)
    assert at(lib["soil"], 2200) < at(lib["soil"], 2100)  # clay absorption


@pytest.mark.parametrize("level", [30, 50, 70])
def test_iid_gaussian(clean, level):
    y, c = sim.add_noise(clean, f"gaussian{level}", np.random.default_rng(0))
    assert np.allclose(c.sigma, level / 255)
    assert abs((y - clean).std() / (level / 255) - 1) < 0.01


def test_blind_sigma_is_uniform_10_70():
    sig = np.array(
        [
            sim.add_noise(np.zeros((2, 4, 4)), "blind", np.random.default_rng(s))[1].sigma[0]
            for s in range(400)
        ]
    )
    s255 = sig * 255
    assert s255.min() >= 10 and s255.max() <= 70
    assert abs(s255.mean() - 40) < 2.5 and abs(s255.std() - 60 / np.sqrt(12)) < 2
    assert (
        len(np.unique(np.round(s255, 6))) > 300
    )  # continuous, not the training set's {10,30,50,70}


def test_noniid_per_band_sigma_from_the_set(clean):
    y, c = sim.add_noise(clean, "noniid", np.random.default_rng(1))
    assert set(np.round(c.sigma * 255).astype(int)) <= {10, 30, 50, 70}
    assert len(set(np.round(c.sigma * 255).astype(int))) >= 3
    np.testing.assert_allclose((y - clean).std(axis=(1, 2)), c.sigma, rtol=0.05)


def test_stripes_columns_and_shift(clean):
    b, h, w = clean.shape
    shifts, counts = [], []
    for s in range(20):
        y, c = sim.add_noise(clean, "stripe", np.random.default_rng(s))
        assert len(c.stripe_bands) == b // 3 == 10
        resid = y - clean
        for band in range(b):
            dev = resid[band] - resid[band].mean(0, keepdims=True)  # column-constant part removed
            col = resid[band].mean(0)
            striped = np.abs(col) > 4 * c.sigma[band] / np.sqrt(h) + 1e-3
            if band not in c.stripe_bands:
                assert striped.sum() <= 2
                continue
            counts.append(striped.sum())
            shifts += list(col[striped])
            assert dev.std() < 1.05 * c.sigma[band]  # a stripe is constant along its column
    counts, shifts = np.array(counts), -np.array(shifts)
    # randint(floor(0.05 W), floor(0.15 W)) columns (W = 80: 4..11); tiny shifts hide a few
    assert counts.max() <= 11 and np.median(counts) >= 5
    tol = 0.25 + 4 * (70 / 255) / np.sqrt(h)  # + 4 std of a column mean of the Gaussian noise
    assert shifts.min() >= -tol and shifts.max() <= tol
    assert shifts.min() < -0.2 and shifts.max() > 0.2 and abs(shifts.mean()) < 0.03


def test_add_stripe_exact_on_a_noiseless_cube():
    """QRNN3D's _AddNoiseStripe on zeros: randint(floor(0.05 W), floor(0.15 W)) columns per
    band, each shifted by a constant -U(-0.25, 0.25) over all rows."""
    counts, shifts = [], []
    for s in range(50):
        x = np.zeros((3, 7, 100))
        sim.add_stripe(x, [0, 2], np.random.default_rng(s))
        assert not x[1].any()
        for b in (0, 2):
            assert (x[b] == x[b][:1]).all()  # constant along the column
            cols = np.flatnonzero(x[b][0])
            counts.append(cols.size)
            shifts += list(-x[b][0, cols])
    assert min(counts) == 5 and max(counts) == 14  # randint(5, 15)
    shifts = np.array(shifts)
    assert shifts.min() >= -0.25 and shifts.max() <= 0.25
    assert abs(shifts.mean()) < 0.02 and abs(shifts.std() - 0.5 / np.sqrt(12)) < 0.01


def test_deadlines(clean):
    b, h, w = clean.shape
    counts = []
    for s in range(20):
        y, c = sim.add_noise(clean, "deadline", np.random.default_rng(s))
        for band in range(b):
            dead = (y[band] == 0).all(0)
            assert (band in c.deadline_bands) == bool(dead.any())
            if dead.any():
                counts.append(dead.sum())
    assert min(counts) == 4 and max(counts) == 11  # randint(ceil(4.0), ceil(12.0)) = 4..11


def test_impulse_ratios_and_salt_pepper(clean):
    fractions = []
    for s in range(10):
        y, c = sim.add_noise(clean, "impulse", np.random.default_rng(s))
        assert set(c.impulse_amounts) <= {0.1, 0.3, 0.5, 0.7}
        for band, p in zip(c.impulse_bands, c.impulse_amounts, strict=True):
            salt, pepper = (y[band] == 1).mean(), (y[band] == 0).mean()
            assert abs(salt + pepper - p) < 0.02 and abs(salt - pepper) < 0.03
            fractions.append(p)
        others = np.setdiff1d(np.arange(31), c.impulse_bands)
        assert ((y[others] == 1) | (y[others] == 0)).mean() < 1e-4
    assert len(set(fractions)) == 4


def test_mixture_uses_disjoint_thirds(clean):
    y, c = sim.add_noise(clean, "mixture", np.random.default_rng(5))
    s, d, i = map(set, (c.stripe_bands, c.deadline_bands, c.impulse_bands))
    assert len(s) == len(d) == len(i) == 10 and not (s & d or s & i or d & i)
    assert all((y[b] == 0).all(0).any() for b in d)


def test_dead_pixels_and_dropped_bands(clean):
    y, c = sim.add_noise(clean, "deadpixels", np.random.default_rng(0), dead_pixel_fraction=0.02)
    assert (y[:, c.dead_pixels] == 0).all() and abs(c.dead_pixels.mean() - 0.02) < 0.01
    y, c = sim.add_noise(clean, "dropped", np.random.default_rng(0))
    assert len(c.dropped_bands) == 3 and (y[c.dropped_bands] == 0).all()


def test_input_is_not_modified_and_unknown_case(clean):
    before = clean.copy()
    sim.add_noise(clean, "mixture", np.random.default_rng(0))
    np.testing.assert_array_equal(clean, before)
    with pytest.raises(ValueError, match="unknown noise case 'gaussian40'"):
        sim.add_noise(clean, "gaussian40", np.random.default_rng(0))
