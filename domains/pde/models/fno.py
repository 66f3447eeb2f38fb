"""Fourier Neural Operator (Li et al. 2021, "Fourier neural operator for parametric PDEs").

Written here because ``neuraloperator`` is not a dependency. The PDE task uses :class:`FNO2d`
as its space-time baseline: the initial state broadcast over time ``(B, 1, nt, nx)`` is mapped
to the whole trajectory ``(B, 1, nt, nx)`` in one pass.

The layers follow the paper's reference ``FNO2d``: lifting ``P`` (pointwise), ``depth``
Fourier layers ``v -> GELU(K v + W v)`` (spectral convolution ``K`` plus a 1x1 convolution
``W``; no GELU after the last), projection ``Q`` (two pointwise layers with a GELU between).
The input is concatenated with two coordinate channels ``linspace(0, 1, n)`` along each grid
axis. The parameters do not depend on the grid, so one network runs at any resolution;
whether its predictions *transfer* across resolutions is another matter (zero-shot
super-resolution of FNO is known to fail for non-smooth solutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffsci.core.networks import count_parameters

__all__ = ["FNO2d", "FNODenoiserNet", "SpectralConv2d", "count_parameters"]


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class SpectralConv2d(nn.Module):
    """Spectral convolution: multiply the lowest Fourier modes by learned complex weights.

    ``rfft2`` over the last two axes; the modes ``k1 in [0, modes1)`` and
    ``k1 in [-modes1, 0)`` of axis -2 (both signs) times ``k2 in [0, modes2)`` of the
    half-spectrum of axis -1 are multiplied by separate ``(in, out, modes1, modes2)`` complex
    weight blocks; all other modes are zeroed, then ``irfft2`` back to the input grid.
    Weights are initialised as in the paper, ``scale * (U[0,1) + i U[0,1))`` with
    ``scale = 1 / (in_channels * out_channels)``. They are stored as real tensors
    ``(in, out, modes1, modes2, 2)`` (real and imaginary parts) and viewed as complex in
    :meth:`forward`: float-only machinery (EMA copies cast to float32, ``.half()``,
    ``.double()``, optimiser state) then handles them like any other parameter instead of
    silently dropping imaginary parts. :func:`count_parameters` counts two reals per complex
    weight, as Li et al.'s ``count_params`` does.

    On grids too small for the requested modes (``H < 2 modes1`` or ``W // 2 + 1 < modes2``)
    only the modes the grid holds are used (the leading block of the weights), so the layer
    never folds the two ``k1`` blocks onto each other.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    modes1, modes2
        Number of retained modes along axis -2 (per sign) and axis -1.
    """

    def __init__(self, in_channels: int, out_channels: int, modes1: int, modes2: int) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.modes1 = _positive_int("modes1", modes1)
        self.modes2 = _positive_int("modes2", modes2)
        scale = 1.0 / (in_channels * out_channels)
        shape = (in_channels, out_channels, modes1, modes2)
        self.weights1 = nn.Parameter(scale * torch.rand(*shape, 2))
        self.weights2 = nn.Parameter(scale * torch.rand(*shape, 2))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, modes1={self.modes1}, modes2={self.modes2}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SpectralConv2d expects (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m1, m2 = min(self.modes1, h // 2), min(self.modes2, w // 2 + 1)
        out_dtype = x.dtype
        # FFTs in float32 at least: half-precision FFTs need power-of-two sizes on CUDA.
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            x_ft = torch.fft.rfft2(x)
            out_ft = x_ft.new_zeros(x.shape[0], self.out_channels, h, w // 2 + 1)
            rdt = x.dtype  # float32 or float64
            w1 = torch.view_as_complex(self.weights1.to(rdt))[:, :, :m1, :m2]
            w2 = torch.view_as_complex(self.weights2.to(rdt))[:, :, :m1, :m2]
            out_ft[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m1, :m2], w1)
            out_ft[:, :, h - m1 :, :m2] = torch.einsum(
                "bixy,ioxy->boxy", x_ft[:, :, h - m1 :, :m2], w2
            )
            y = torch.fft.irfft2(out_ft, s=(h, w))
        return y.to(out_dtype)


class FNO2d(nn.Module):
    """Two-dimensional Fourier Neural Operator ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input and output fields (the two coordinate channels are added
        internally).
    modes
        Fourier modes kept along axis -2 (per sign) and axis -1 in every layer.
    width
        Channels of the hidden representation.
    depth
        Number of Fourier layers.
    padding
        Zeros appended after the end of axis -2 and axis -1 (an int for both, or a pair) after
        lifting and cropped before projection, as the paper does for non-periodic axes (e.g.
        time). ``0`` treats both axes as periodic.
    projection_width
        Hidden channels of the projection ``Q`` (128 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        modes: tuple[int, int] = (12, 12),
        width: int = 32,
        depth: int = 4,
        padding: int | tuple[int, int] = 0,
        projection_width: int = 128,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        modes = tuple(modes)
        if len(modes) != 2:
            raise ValueError(f"modes must be a pair (modes1, modes2), got {modes!r}")
        self.modes = (_positive_int("modes[0]", modes[0]), _positive_int("modes[1]", modes[1]))
        self.width = _positive_int("width", width)
        self.depth = _positive_int("depth", depth)
        pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
        if len(pad) != 2 or any(isinstance(p, bool) or int(p) != p or p < 0 for p in pad):
            raise ValueError(f"padding must be an integer >= 0 or a pair of them, got {padding!r}")
        self.padding = (int(pad[0]), int(pad[1]))
        projection_width = _positive_int("projection_width", projection_width)

        self.lift = nn.Conv2d(in_channels + 2, width, 1)
        self.spectral = nn.ModuleList(
            SpectralConv2d(width, width, *self.modes) for _ in range(depth)
        )
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(depth))
        self.project = nn.Sequential(
            nn.Conv2d(width, projection_width, 1),
            nn.GELU(),
            nn.Conv2d(projection_width, out_channels, 1),
        )

    @staticmethod
    def grid(x: Tensor) -> Tensor:
        """Coordinate channels ``(B, 2, H, W)``: ``linspace(0, 1)`` along axis -2, then -1."""
        b, _, h, w = x.shape
        gy = torch.linspace(0.0, 1.0, h, device=x.device, dtype=x.dtype)
        gx = torch.linspace(0.0, 1.0, w, device=x.device, dtype=x.dtype)
        g = torch.stack(torch.meshgrid(gy, gx, indexing="ij"))
        return g.expand(b, 2, h, w)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"FNO2d expects (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        v = self.lift(torch.cat([x, self.grid(x)], dim=1))
        p1, p2 = self.padding
        if p1 or p2:
            v = F.pad(v, (0, p2, 0, p1))
        for i, (k, wconv) in enumerate(zip(self.spectral, self.pointwise, strict=True)):
            v = k(v) + wconv(v)
            if i < self.depth - 1:
                v = F.gelu(v)
        v = v[..., :h, :w]
        return self.project(v)


class FNODenoiserNet(nn.Module):
    """A noise-conditioned FNO: the core's network convention ``net(x, noise_level, cond)``.

    The :class:`FNO2d` layers, with the noisy field ``x`` and an image condition ``cond``
    concatenated at the input, and each Fourier layer modulated by the noise level (FiLM:
    ``v * (1 + a) + b`` with ``(a, b)`` from a sinusoidal embedding and an MLP, as diffusion
    UNets condition their residual blocks). Like :class:`FNO2d` its parameters do not depend
    on the grid, so the same denoiser runs at any resolution; used with
    :class:`~diffsci.core.denoisers.KarrasDenoiser` it is a diffusion model whose backbone
    matches the FNO baseline, so a comparison isolates diffusion training and sampling from
    the architecture.

    Parameters
    ----------
    in_channels, out_channels
        Channels of ``x`` and of the output.
    cond_channels
        Channels of ``cond`` (``0``: unconditional; ``cond`` must then be ``None``).
    modes, width, depth, padding, projection_width
        As :class:`FNO2d`.
    embed_dim
        Width of the noise-level embedding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        cond_channels: int = 0,
        modes: tuple[int, int] = (12, 12),
        width: int = 32,
        depth: int = 4,
        padding: int | tuple[int, int] = 0,
        projection_width: int = 128,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        from diffsci.core.networks import SinusoidalEmbedding

        self.cond_channels = int(cond_channels)
        self.fno = FNO2d(
            in_channels + self.cond_channels,
            out_channels,
            modes=modes,
            width=width,
            depth=depth,
            padding=padding,
            projection_width=projection_width,
        )
        self.embed = SinusoidalEmbedding(embed_dim)
        self.film = nn.Linear(embed_dim, 2 * width * depth)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, noise_level: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels or cond.shape[2:] != x.shape[2:]:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"cond must be (B, {self.cond_channels}, {', '.join(map(str, x.shape[2:]))}), "
                    f"got {got}"
                )
            x = torch.cat([x, cond.to(x)], dim=1)
        elif cond is not None:
            raise ValueError(
                "this FNODenoiserNet is unconditional (cond_channels=0): cond must be None"
            )
        f = self.fno
        noise_level = torch.as_tensor(noise_level, device=x.device, dtype=x.dtype).reshape(-1)
        emb = F.silu(self.embed(noise_level.expand(x.shape[0])))
        mod = self.film(emb).reshape(x.shape[0], f.depth, 2, f.width, 1, 1)
        h, w = x.shape[-2:]
        v = f.lift(torch.cat([x, f.grid(x)], dim=1))
        p1, p2 = f.padding
        if p1 or p2:
            v = F.pad(v, (0, p2, 0, p1))
        for i, (k, wconv) in enumerate(zip(f.spectral, f.pointwise, strict=True)):
            v = k(v) + wconv(v)
            v = v * (1 + mod[:, i, 0]) + mod[:, i, 1]
            if i < f.depth - 1:
                v = F.gelu(v)
        return f.project(v[..., :h, :w])
