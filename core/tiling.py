"""Tiled inference over 2-D fields larger than memory, with overlap blending.

A model that maps a window of input channels ``(C, th, tw)`` to output channels
``(*lead, th, tw)`` is run on overlapping tiles that cover a large field ``(C, H, W)``; the
tile outputs are blended with a smooth window (raised-cosine ramps over the overlap, a flat
top elsewhere, no taper at the field's borders) and divided by the summed weights, so no seams
appear. Where tiles sit on the regular stride the complementary ramps sum to exactly 1; the
last tile, shifted back to end at the border, overlaps more and the division normalises it. The output is produced one *block* at a time (blocks are the chunks of the
target, e.g. a zarr array): the input window a block needs is read once (lazily, e.g. from a
dask/xarray array: only the chunks it touches are loaded), every tile touching the block is
computed once and kept only until the last block it touches is written. Peak memory is
therefore about one block of input plus one row of tiles, independent of ``H`` and ``W``.

Randomness that must agree where tiles overlap (the initial noise of a diffusion sampler) is
drawn by :func:`positional_noise`: each pixel's value depends only on its global position and
the seed, never on which tile asks for it.

Nothing here knows a field: domains supply the model function, the source and the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["tile_starts", "blend_window", "positional_noise", "tiled_map"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least
    ``overlap`` pixels shared by neighbours; the last tile ends exactly at ``length``.

    Raises
    ------
    ValueError
        If ``tile > length``, ``overlap < 0`` or ``overlap >= tile``.
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(
            f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
        )
    if tile > length:
        raise ValueError(f"tile={tile} is larger than the field ({length} pixels)")
    stride = tile - overlap
    n = max(1, math.ceil((length - tile) / stride) + 1)
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


def _ramp(tile: int, overlap: int, margin: int, lo_edge: bool, hi_edge: bool) -> np.ndarray:
    """1-D window: zero on ``margin`` pixels, raised-cosine ramp, flat top; mirrored."""
    w = np.ones(tile, dtype=np.float64)
    ramp = overlap - 2 * margin
    if ramp > 0:
        t = (np.arange(ramp) + 0.5) / ramp
        up = np.sin(0.5 * np.pi * t) ** 2
    else:
        up = np.zeros(0)
    for side, edge in ((0, lo_edge), (1, hi_edge)):
        if edge:  # the field's border: nothing else covers these pixels, no taper
            continue
        prof = np.concatenate([np.zeros(margin), up])[: tile // 2]
        if side == 0:
            w[: len(prof)] = np.minimum(w[: len(prof)], prof)
        else:
            w[tile - len(prof) :] = np.minimum(w[tile - len(prof) :], prof[::-1])
    return w


def blend_window(
    shape: tuple[int, int],
    *,
    overlap: int,
    margin: int = 0,
    edges: tuple[bool, bool, bool, bool] = (False,) * 4,
) -> np.ndarray:
    """Blending weights of one tile: outer product of two 1-D windows.

    Parameters
    ----------
    shape
        Tile ``(th, tw)``.
    overlap
        Pixels shared with each neighbour; the weight ramps up over ``overlap - 2 margin``.
    margin
        Outer pixels given weight 0 (discarded): for a model with receptive radius
        ``<= margin`` the blended result equals the untiled one exactly.
    edges
        ``(top, bottom, left, right)``: sides lying on the field's border are not tapered.
    """
    if 2 * margin >= overlap and overlap > 0 and margin > 0:
        raise ValueError(f"margin={margin} leaves no blending ramp in overlap={overlap}")
    wy = _ramp(shape[0], overlap, margin, edges[0], edges[1])
    wx = _ramp(shape[1], overlap, margin, edges[2], edges[3])
    return np.outer(wy, wx)


def positional_noise(
    shape_lead: Sequence[int],
    rows: slice,
    cols: slice,
    *,
    seed: int,
    cell: int = 64,
    dtype=np.float32,
) -> np.ndarray:
    """Standard normal noise ``(*shape_lead, rows, cols)`` that depends only on global position.

    The plane is cut into ``cell x cell`` cells; the noise of a cell comes from its own
    counter-based stream (numpy ``Philox`` keyed by ``seed`` and the cell index), so any
    window of the plane, however it is tiled, sees the same values at the same pixels.

    Parameters
    ----------
    shape_lead
        Leading dimensions (e.g. ``(members, channels)``).
    rows, cols
        Global pixel ranges (``slice(start, stop)``, step 1).
    seed
        Non-negative integer.
    """
    r0, r1, c0, c1 = rows.start or 0, rows.stop, cols.start or 0, cols.stop
    if r1 is None or c1 is None or r1 < r0 or c1 < c0 or r0 < 0 or c0 < 0:
        raise ValueError(f"rows/cols must be bounded non-negative ranges, got {rows}, {cols}")
    lead = tuple(int(s) for s in shape_lead)
    out = np.empty((*lead, r1 - r0, c1 - c0), dtype=dtype)
    for ci in range(r0 // cell, (r1 - 1) // cell + 1 if r1 > r0 else r0 // cell):
        for cj in range(c0 // cell, (c1 - 1) // cell + 1 if c1 > c0 else c0 // cell):
            bits = np.random.Philox(key=int(seed), counter=[0, 0, int(ci), int(cj)])
            block = np.random.Generator(bits).standard_normal((*lead, cell, cell), dtype=dtype)
            a0, a1 = max(r0, ci * cell), min(r1, (ci + 1) * cell)
            b0, b1 = max(c0, cj * cell), min(c1, (cj + 1) * cell)
            out[..., a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = block[
                ..., a0 - ci * cell : a1 - ci * cell, b0 - cj * cell : b1 - cj * cell
            ]
    return out


def _blocks(h: int, w: int, bh: int, bw: int) -> Iterator[tuple[slice, slice]]:
    for i in range(0, h, bh):
        for j in range(0, w, bw):
            yield slice(i, min(i + bh, h)), slice(j, min(j + bw, w))


def tiled_map(
    fn: Callable[[np.ndarray, tuple[int, int]], np.ndarray],
    source: Any,
    target: Any,
    *,
    tile: int | tuple[int, int],
    overlap: int,
    margin: int = 0,
    block: tuple[int, int] | None = None,
    batch: int = 1,
    postprocess: Callable[[np.ndarray, tuple[slice, slice], np.ndarray], np.ndarray] | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Apply ``fn`` tile by tile over ``source`` and write the blended result into ``target``.

    Parameters
    ----------
    fn
        ``fn(x, origins) -> y``: ``x`` is a batch of input tiles ``(n, C, th, tw)`` (numpy
        float32), ``origins`` the ``(row, col)`` global offsets of each tile (a list); returns
        ``(n, *lead, th, tw)``. Use the origins to draw :func:`positional_noise`.
    source
        Input ``(C, H, W)``, anything sliceable as ``source[:, r0:r1, c0:c1]`` and convertible
        with ``np.asarray`` (numpy, dask, zarr arrays, xarray DataArrays: read lazily).
    target
        Output ``(*lead, H, W)`` supporting ``target[..., r0:r1, c0:c1] = values`` (numpy, zarr).
    tile
        Tile size; the field must be at least that large.
    overlap
        Pixels shared by neighbouring tiles.
    margin
        Outer tile pixels discarded (see :func:`blend_window`).
    block
        Output block written at once; default the target's ``chunks`` (trailing two) if it
        has them, else the whole field. Blocks aligned with the target's chunks make every
        write touch whole chunks.
    batch
        Tiles passed to ``fn`` per call.
    postprocess
        ``postprocess(values, (rows, cols), source_window) -> values`` applied to each
        blended block before it is written (e.g. a per-block constraint); ``source_window``
        is the input ``(C, bh, bw)`` of that block.
    progress
        Show a tqdm bar over blocks.

    Returns
    -------
    dict
        ``{"tiles": tiles computed, "blocks": blocks written}``; every tile is computed once.
    """
    shape = _shape(source)
    if len(shape) != 3:
        raise ValueError(f"source must be (C, H, W), got shape {shape}")
    _, h, w = shape
    tshape = tuple(int(s) for s in target.shape)
    if tshape[-2:] != (h, w):
        raise ValueError(f"target spatial shape {tshape[-2:]} != source spatial shape {(h, w)}")
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    rows, cols = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    bh, bw = _block_shape(target, block, h, w)
    tiling = _Tiling(h, w, th, tw, overlap, margin, lead=tshape[:-2], block=(bh, bw))
    cache: dict[tuple[int, int], np.ndarray] = {}
    n_tiles = n_blocks = 0
    from tqdm.auto import tqdm

    all_blocks = list(_blocks(h, w, bh, bw))
    for rs, cs in tqdm(all_blocks, disable=not progress, desc="tiles", unit="block"):
        need = [
            (r, c)
            for r in rows
            if r < rs.stop and r + th > rs.start
            for c in cols
            if c < cs.stop and c + tw > cs.start
        ]
        todo = [t for t in need if t not in cache]
        if todo:
            n_tiles += tiling.compute(fn, source, todo, batch, cache)
        out = tiling.blend(rs, cs, need, cache)
        if postprocess is not None:
            src = np.asarray(source[:, rs, cs], dtype=np.float32)
            out = np.asarray(postprocess(out, (rs, cs), src), dtype=np.float32)
        target[(Ellipsis, rs, cs)] = out
        n_blocks += 1
        tiling.free_written(rs, cs, cache)
    return {"tiles": n_tiles, "blocks": n_blocks}


def _shape(source: Any) -> tuple[int, ...]:
    if hasattr(source, "shape"):
        return tuple(int(s) for s in source.shape)
    return tuple(int(s) for s in np.shape(source))


def _block_shape(target: Any, block: tuple[int, int] | None, h: int, w: int) -> tuple[int, int]:
    """The output block: ``block``, else the target's (first) chunk, else the whole field."""
    if block is None:
        chunks = getattr(target, "chunks", None)
        if chunks:  # zarr: (..., bh, bw); dask: (..., (bh, bh, ...), (bw, ...)): the first
            block = tuple(int(c[0] if isinstance(c, tuple) else c) for c in chunks[-2:])
        else:
            block = (h, w)
    return int(block[0]), int(block[1])


class _Tiling:
    """The fixed geometry of one :func:`tiled_map` call: computes tiles and blends blocks."""

    def __init__(self, h, w, th, tw, overlap, margin, *, lead, block) -> None:
        self.h, self.w, self.th, self.tw, self.block = h, w, th, tw, block
        self.overlap, self.margin, self.lead = overlap, margin, lead
        self.windows: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

    def compute(self, fn, source, todo, batch: int, cache) -> int:
        """Run ``fn`` on the tiles ``todo`` (reading their input window once) into ``cache``;
        returns how many were computed."""
        th, tw = self.th, self.tw
        r_lo, r_hi = min(t[0] for t in todo), max(t[0] for t in todo) + th
        c_lo, c_hi = min(t[1] for t in todo), max(t[1] for t in todo) + tw
        win = np.asarray(source[:, r_lo:r_hi, c_lo:c_hi], dtype=np.float32)
        for k in range(0, len(todo), batch):
            part = todo[k : k + batch]
            x = np.stack(
                [win[:, r - r_lo : r - r_lo + th, c - c_lo : c - c_lo + tw] for r, c in part]
            )
            y = np.asarray(fn(x, part))
            if y.shape[0] != len(part) or y.shape[-2:] != (th, tw) or y.shape[1:-2] != self.lead:
                raise ValueError(
                    f"fn returned shape {y.shape}, expected {(len(part), *self.lead, th, tw)}"
                )
            for t, yt in zip(part, y, strict=True):
                cache[t] = yt
        return len(todo)

    def _window(self, r: int, c: int) -> np.ndarray:
        edges = (r == 0, r + self.th == self.h, c == 0, c + self.tw == self.w)
        if edges not in self.windows:
            self.windows[edges] = blend_window(
                (self.th, self.tw), overlap=self.overlap, margin=self.margin, edges=edges
            )
        return self.windows[edges]

    def blend(self, rs: slice, cs: slice, need, cache) -> np.ndarray:
        """The block ``(rows, cols)``: the tiles ``need`` weighted by their blend windows."""
        th, tw = self.th, self.tw
        acc = np.zeros((*self.lead, rs.stop - rs.start, cs.stop - cs.start), dtype=np.float64)
        wsum = np.zeros((rs.stop - rs.start, cs.stop - cs.start), dtype=np.float64)
        for r, c in need:
            wt = self._window(r, c)
            a0, a1 = max(r, rs.start), min(r + th, rs.stop)
            b0, b1 = max(c, cs.start), min(c + tw, cs.stop)
            sub = wt[a0 - r : a1 - r, b0 - c : b1 - c]
            acc[..., a0 - rs.start : a1 - rs.start, b0 - cs.start : b1 - cs.start] += (
                cache[(r, c)][..., a0 - r : a1 - r, b0 - c : b1 - c] * sub
            )
            wsum[a0 - rs.start : a1 - rs.start, b0 - cs.start : b1 - cs.start] += sub
        if (wsum <= 0).any():
            raise ValueError(
                f"tiling leaves pixels without weight (overlap={self.overlap}, "
                f"margin={self.margin}): increase overlap or reduce margin"
            )
        return (acc / wsum).astype(np.float32)

    def free_written(self, rs: slice, cs: slice, cache) -> None:
        """Drop the tiles whose last block (row-major) is the block ``(rs, cs)`` or earlier."""
        bh, bw = self.block
        nbw = math.ceil(self.w / bw)
        done = (rs.start // bh) * nbw + cs.start // bw
        for r0, c0 in list(cache):
            last_r, last_c = (r0 + self.th - 1) // bh, (c0 + self.tw - 1) // bw
            if last_r * nbw + last_c <= done:
                del cache[(r0, c0)]
