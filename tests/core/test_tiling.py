"""Tiled inference: tiled == untiled for pointwise and local models, no seams, every tile
computed once, consistent positional noise, bounded memory with a lazy source and zarr target."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import correlate

from diffsci.core.tiling import blend_window, positional_noise, tile_starts, tiled_map


def test_tile_starts_cover_and_end_at_border():
    s = tile_starts(100, 32, 8)
    assert s[0] == 0 and s[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in zip(s, s[1:], strict=False))
    assert tile_starts(32, 32, 8) == [0]
    with pytest.raises(ValueError, match="larger than the field"):
        tile_starts(16, 32, 8)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(64, 16, 16)


@pytest.mark.parametrize("length,tile,overlap,margin", [(80, 32, 8, 0), (104, 32, 8, 2)])
def test_blend_windows_sum_to_one_on_a_regular_stride(length, tile, overlap, margin):
    # tiles on the regular stride (length = tile + k (tile - overlap)): complementary ramps
    starts = tile_starts(length, tile, overlap)
    assert all(b - a == tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    total = np.zeros((length, length))
    for r in starts:
        for c in starts:
            edges = (r == 0, r + tile == length, c == 0, c + tile == length)
            total[r : r + tile, c : c + tile] += blend_window(
                (tile, tile), overlap=overlap, margin=margin, edges=edges
            )
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_blend_window_shape_and_shifted_last_tile():
    # the last tile shifted back to the border overlaps more: weights still positive everywhere
    h = 90
    starts = tile_starts(h, 32, 12)
    total = np.zeros(h)
    for s in starts:
        w = blend_window((32, 32), overlap=12, edges=(s == 0, s + 32 == h, True, True))[:, 0]
        total[s : s + 32] += w
    assert (total > 0).all() and total.max() > 1
    w = blend_window((32, 32), overlap=12)
    assert w.max() == 1.0 and w[0, 0] < 0.05 and w[16, 16] == 1.0


def _local_model(kernel):
    def fn(x, origins):
        return np.stack([correlate(t[0], kernel, mode="constant")[None] for t in x])

    return fn


def test_pointwise_model_tiled_equals_untiled():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((2, 70, 83)).astype(np.float32)

    def fn(x, origins):
        return (np.tanh(x[:, :1]) * x[:, 1:2] ** 2)[:, None, 0]  # (n, 1, th, tw) -> lead (1,)

    out = np.zeros((1, 70, 83), np.float32)
    info = tiled_map(fn, src, out, tile=24, overlap=8, block=(32, 40), batch=3)
    want = np.tanh(src[:1]) * src[1:2] ** 2
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    n_tiles = len(tile_starts(70, 24, 8)) * len(tile_starts(83, 24, 8))
    assert info["tiles"] == n_tiles  # every tile computed exactly once across blocks


def test_local_model_exact_with_margin_and_seams_without():
    rng = np.random.default_rng(1)
    src = rng.standard_normal((1, 64, 64)).astype(np.float32)
    k = rng.standard_normal((5, 5)).astype(np.float32)  # receptive radius 2
    want = correlate(src[0], k, mode="constant")
    out = np.zeros((1, 64, 64), np.float32)
    tiled_map(_local_model(k), src, out, tile=20, overlap=10, margin=2, block=(16, 16))
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-4)
    # without the margin the tiles' zero padding leaks in: the error is visible but small,
    # smooth blending keeps it far below the hard-stitching (no blending) error
    out2 = np.zeros((1, 64, 64), np.float32)
    tiled_map(_local_model(k), src, out2, tile=20, overlap=10, margin=0)
    err_blend = np.abs(out2[0] - want).max()
    assert err_blend > 1e-3
    hard = np.zeros((64, 64), np.float32)
    for r in tile_starts(64, 20, 10):
        for c in tile_starts(64, 20, 10):
            hard[r : r + 20, c : c + 20] = correlate(
                src[0, r : r + 20, c : c + 20], k, mode="constant"
            )
    assert np.abs(hard - want).max() > 1.5 * err_blend


def test_positional_noise_independent_of_window():
    full = positional_noise((2,), slice(0, 130), slice(0, 100), seed=7, cell=32)
    part = positional_noise((2,), slice(40, 97), slice(13, 88), seed=7, cell=32)
    np.testing.assert_array_equal(full[:, 40:97, 13:88], part)
    other = positional_noise((2,), slice(0, 130), slice(0, 100), seed=8, cell=32)
    assert not np.allclose(full, other)
    assert abs(full.mean()) < 0.02 and abs(full.std() - 1) < 0.02
    # neighbouring cells are not copies of each other
    assert not np.allclose(full[:, :32, :32], full[:, :32, 32:64])


def test_noisy_model_is_seamless_with_positional_noise():
    # model adds position-consistent noise: blending identical values leaves it unchanged
    src = np.zeros((1, 96, 96), np.float32)

    def fn(x, origins):
        return np.stack(
            [positional_noise((1,), slice(r, r + 32), slice(c, c + 32), seed=3) for r, c in origins]
        )

    out = np.zeros((1, 96, 96), np.float32)
    tiled_map(fn, src, out, tile=32, overlap=12, batch=4)
    np.testing.assert_allclose(
        out, positional_noise((1,), slice(0, 96), slice(0, 96), seed=3), atol=1e-6
    )


def test_lazy_dask_source_and_zarr_target_block_by_block(tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    src = da.random.RandomState(0).standard_normal((1, 256, 256), chunks=(1, 64, 64))
    src = src.astype(np.float32)
    target = zarr.create_array(
        str(tmp_path / "o.zarr"), shape=(1, 256, 256), chunks=(1, 64, 64), dtype="float32"
    )
    calls = []

    def fn(x, origins):
        calls.append(len(origins))
        return x * 2

    seen = []

    def post(v, where, s):
        seen.append(where)
        return v

    tiled_map(fn, src, target, tile=32, overlap=8, postprocess=post)
    np.testing.assert_allclose(target[...], 2 * src.compute(), rtol=1e-6)
    assert len(seen) == 16 and all(r.stop - r.start == 64 for r, _ in seen)


def test_bad_fn_output_and_shapes():
    src = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(ValueError, match="fn returned shape"):
        tiled_map(lambda x, o: x[:, :, :8], src, np.zeros((1, 32, 32)), tile=16, overlap=4)
    with pytest.raises(ValueError, match="target spatial shape"):
        tiled_map(lambda x, o: x, src, np.zeros((1, 30, 32)), tile=16, overlap=4)
    with pytest.raises(ValueError, match="margin=4 leaves no blending ramp"):
        tiled_map(lambda x, o: x, src, np.zeros((1, 32, 32)), tile=16, overlap=2, margin=4)


def test_default_block_from_zarr_and_dask_style_chunks():
    class Target(np.ndarray):
        pass

    src = np.random.default_rng(0).standard_normal((1, 64, 64)).astype(np.float32)
    for chunks in [(32, 16), ((32, 32), (16, 16, 16, 16))]:  # zarr-style, dask-style
        out = np.zeros((64, 64), np.float32).view(Target)
        out.chunks = chunks
        info = tiled_map(lambda x, o: x[:, 0], src, out, tile=32, overlap=8)
        assert info["blocks"] == 2 * 4
        np.testing.assert_allclose(out, src[0], rtol=1e-6)
