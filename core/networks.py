"""Denoising networks: a MONAI UNet wrapper for grids, an MLP for vectors, a transformer for sets.

Every network follows the core calling convention ``net(x, noise_level, cond=None) -> Tensor``:

- ``x`` is ``(B, C, *spatial)`` (grids), ``(B, D)`` (vectors) or ``(B, N, D)`` (sets);
- ``noise_level`` is a float tensor of shape ``(B,)`` (a scalar is broadcast): ``c_noise =
  ln(sigma)/4`` (roughly ``[-3, 2]``) under Karras/EDM preconditioning, or the timestep ``t`` in
  ``[0, 1000)`` for DDPM-style adapters;
- the output has the shape of ``x`` with ``out_channels`` channels (the feature size for
  vectors and sets);
- ``cond`` is ``None``, a tensor, or a dict (keys per network, unknown keys are an error).

Noise-level embedding
---------------------
All three networks embed the noise level with the DDPM sinusoidal embedding (MONAI's
``get_timestep_embedding``: ``cos/sin(s * freq_k)``, ``freq_k = 10000**(-k/half)``, frequencies
from 1 down to 1e-4), applied to ``noise_level * noise_level_scale``. The embedding was designed
for integer timesteps spanning ``[0, 1000)``; fed ``c_noise`` in ``[-3, 3]`` unscaled, most
channels are constant (11 of 16 frequencies for a 32-wide embedding move by less than 0.5 rad
over the whole range) and noise levels 0.25 apart are barely distinguishable. The default
``noise_level_scale = 250`` maps ``[-3, 3]`` onto ``[-750, 750]``, a span comparable to the
DDPM range. Use ``noise_level_scale=1.0`` for networks driven by DDPM timesteps.

Conditioning and classifier-free guidance
-----------------------------------------
A tensor ``cond`` of an integer dtype is read as class labels ``(B,)``; a floating tensor is
the image to concatenate (:class:`UNet`) or the conditioning vector (:class:`MLPDenoiser`,
:class:`SetTransformerDenoiser`). Class-conditional networks embed ``num_classes + 1`` classes;
the extra index ``net.null_class == num_classes`` is the "no class" label used for condition
dropout and classifier-free guidance, and is used when no labels are given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "UNet",
    "unet_from_config",
    "MLPDenoiser",
    "SetTransformerDenoiser",
    "SinusoidalEmbedding",
    "count_parameters",
    "DEFAULT_NOISE_LEVEL_SCALE",
]

DEFAULT_NOISE_LEVEL_SCALE = 250.0
"""Multiplier applied to ``noise_level`` before the sinusoidal embedding (see module docs)."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters of ``module``.

    Parameters
    ----------
    module
        Any module.
    trainable_only
        Count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _noise_batch(noise_level: Tensor | float, x: Tensor) -> Tensor:
    """Return ``noise_level`` as a float ``(B,)`` tensor on ``x``'s device."""
    nl = torch.as_tensor(noise_level, device=x.device)
    if not nl.is_floating_point():
        nl = nl.float()
    if nl.dim() == 0:
        nl = nl.expand(x.shape[0])
    if nl.shape != (x.shape[0],):
        raise ValueError(
            f"noise_level must be a scalar or have shape (batch,)=({x.shape[0]},), "
            f"got {tuple(nl.shape)}"
        )
    return nl


def _sinusoidal(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """DDPM sinusoidal embedding ``[cos(t f), sin(t f)]``, identical to MONAI's."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """Noise-level embedding: sinusoidal features of ``scale * noise_level`` then a SiLU MLP.

    Parameters
    ----------
    out_dim
        Output width.
    embed_dim
        Number of sinusoidal features.
    scale
        Multiplier applied to the noise level first (see module docs).
    """

    def __init__(
        self, out_dim: int, *, embed_dim: int = 64, scale: float = DEFAULT_NOISE_LEVEL_SCALE
    ) -> None:
        super().__init__()
        self.embed_dim, self.scale = int(embed_dim), float(scale)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, noise_level: Tensor) -> Tensor:
        return self.mlp(_sinusoidal(noise_level * self.scale, self.embed_dim))


def _split_cond(cond: Any, *, float_key: str, known: Sequence[str], name: str) -> dict[str, Tensor]:
    """Normalise ``cond`` to a dict: integer tensors are class labels, float ones ``float_key``."""
    if cond is None:
        return {}
    if isinstance(cond, Tensor):
        key = float_key if cond.is_floating_point() else "class_labels"
        return {key: cond}
    if isinstance(cond, Mapping):
        bad = sorted(set(cond) - set(known))
        if bad:
            raise ValueError(f"{name}: unknown cond keys {bad}; known keys are {list(known)}")
        return {k: v for k, v in cond.items() if v is not None}
    raise TypeError(f"{name}: cond must be None, a Tensor or a dict, got {type(cond).__name__}")


class _CondEmbedding(nn.Module):
    """Sum of the noise-level, conditioning-vector and class embeddings (width ``width``)."""

    def __init__(
        self,
        width: int,
        *,
        embed_dim: int,
        cond_dim: int,
        num_classes: int | None,
        noise_level_scale: float,
        name: str,
    ) -> None:
        super().__init__()
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        self.name, self.cond_dim, self.num_classes = name, int(cond_dim), num_classes
        self.noise = SinusoidalEmbedding(width, embed_dim=embed_dim, scale=noise_level_scale)
        self.vector = (
            nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
            if cond_dim
            else None
        )
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes is not None else None

    def forward(self, noise_level: Tensor, c: Mapping[str, Tensor], batch: int) -> Tensor:
        emb = self.noise(noise_level)
        vec = c.get("vector")
        if self.vector is not None:
            if vec is None:
                raise ValueError(f"{self.name} was built with cond_dim={self.cond_dim}: pass cond")
            if vec.shape != (batch, self.cond_dim):
                raise ValueError(
                    f"{self.name}: cond vector must have shape ({batch}, {self.cond_dim}), "
                    f"got {tuple(vec.shape)}"
                )
            emb = emb + self.vector(vec.to(emb.dtype))
        elif vec is not None:
            raise ValueError(f"{self.name} was built with cond_dim=0 but a cond vector was given")
        labels = c.get("class_labels")
        if self.classes is not None:
            if labels is None:
                labels = torch.full((batch,), self.num_classes, device=emb.device)
            _check_labels(labels, batch, self.name)
            emb = emb + self.classes(labels.long())
        elif labels is not None:
            raise ValueError(f"{self.name} was built without num_classes but class labels given")
        return emb


def _check_labels(labels: Tensor, batch: int, name: str) -> None:
    if labels.is_floating_point() or labels.shape != (batch,):
        raise ValueError(
            f"{name}: class_labels must be an integer tensor of shape ({batch},), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """MONAI ``DiffusionModelUNet`` (2-D / 3-D) behind the core calling convention.

    Parameters
    ----------
    spatial_dims
        2 or 3. (MONAI's UNet fails in 1-D: treat 1-D fields over time as 2-D grids.)
    in_channels, out_channels
        Channels of ``x`` and of the output (conditioning channels not included).
    channels
        Width of each level; spatial sizes must be divisible by ``2**(len(channels)-1)``.
    attention_levels
        Self-attention (cross-attention with ``cross_attention_dim``) per level; the middle
        block always has attention.
    num_res_blocks
        Residual blocks per level.
    num_head_channels
        Channels per attention head, capped at each level's width (must divide it).
    cond_channels
        Channels of an image condition concatenated to ``x`` (``cond`` tensor or ``"concat"``).
    num_classes
        Class-conditional with ``num_classes`` classes plus the null class
        :attr:`null_class` ``= num_classes`` (used when no labels are given).
    cross_attention_dim
        Feature size of a ``"context"`` sequence ``(B, L, cross_attention_dim)``.
    noise_level_scale
        Multiplier of ``noise_level`` before MONAI's sinusoidal timestep embedding: the default
        250 suits ``c_noise = ln(sigma)/4``; use 1.0 for DDPM timesteps in ``[0, 1000)``.
    norm_num_groups
        GroupNorm groups, must divide every entry of ``channels``; default
        ``gcd(32, *channels)``.
    resblock_updown
        Residual blocks for down/up-sampling instead of strided convolutions / interpolation.
    use_flash_attention
        Use ``scaled_dot_product_attention`` in MONAI's attention blocks.

    Notes
    -----
    ``cond`` is ``None``; a float tensor ``(B, cond_channels, *spatial)`` (concatenated); an
    integer tensor ``(B,)`` of class labels; or a dict with optional keys ``"concat"``,
    ``"class_labels"`` and ``"context"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 1,
        num_head_channels: int = 32,
        cond_channels: int = 0,
        num_classes: int | None = None,
        cross_attention_dim: int | None = None,
        noise_level_scale: float = DEFAULT_NOISE_LEVEL_SCALE,
        norm_num_groups: int | None = None,
        resblock_updown: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims == 1:
            raise ValueError(
                "UNet supports spatial_dims 2 and 3 only (MONAI's DiffusionModelUNet fails in "
                "1-D); treat 1-D fields over time as 2-D (time x space) grids"
            )
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNet supports spatial_dims 2 and 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        attention_levels = tuple(bool(a) for a in attention_levels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints: {channels}")
        if len(attention_levels) != len(channels):
            raise ValueError(
                f"attention_levels {attention_levels} must have one entry per level of "
                f"channels {channels}"
            )
        if in_channels < 1 or out_channels < 1 or cond_channels < 0:
            raise ValueError("in_channels, out_channels must be >= 1 and cond_channels >= 0")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if norm_num_groups is None:
            norm_num_groups = math.gcd(32, *channels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide channels {channels}")
        # Attention (and the always-present middle attention): heads of num_head_channels,
        # capped at the level's width.
        head_ch = tuple(min(int(num_head_channels), c) for c in channels)
        for c, h, a in zip(channels, head_ch, attention_levels[:-1] + (True,), strict=True):
            if a and c % h:
                raise ValueError(
                    f"num_head_channels={num_head_channels} must divide the width {c} of every "
                    "level with attention (and the last level, whose middle block attends)"
                )
        from monai.networks.nets import DiffusionModelUNet

        self.spatial_dims, self.in_channels, self.out_channels = (
            spatial_dims,
            in_channels,
            out_channels,
        )
        self.cond_channels, self.num_classes = int(cond_channels), num_classes
        self.cross_attention_dim = cross_attention_dim
        self.noise_level_scale = float(noise_level_scale)
        self.factor = 2 ** (len(channels) - 1)
        self._config: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=list(channels),
            attention_levels=list(attention_levels),
            num_res_blocks=num_res_blocks
            if isinstance(num_res_blocks, int)
            else list(num_res_blocks),
            num_head_channels=int(num_head_channels),
            cond_channels=int(cond_channels),
            num_classes=num_classes,
            cross_attention_dim=cross_attention_dim,
            noise_level_scale=self.noise_level_scale,
            norm_num_groups=int(norm_num_groups),
            resblock_updown=bool(resblock_updown),
            use_flash_attention=bool(use_flash_attention),
        )
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels + cond_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            resblock_updown=resblock_updown,
            num_head_channels=head_ch,
            with_conditioning=cross_attention_dim is not None,
            cross_attention_dim=cross_attention_dim,
            num_class_embeds=None if num_classes is None else num_classes + 1,
            use_flash_attention=use_flash_attention,
        )

    @property
    def null_class(self) -> int | None:
        """Index of the "no class" label (``num_classes``), or None if not class-conditional."""
        return self.num_classes

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a plain (JSON/YAML-friendly) dict; see :func:`unet_from_config`."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None) -> Tensor:
        """Return the network output, shape ``(B, out_channels, *spatial)``."""
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects x of shape (B, {self.in_channels}, "
                f"{', '.join(['S'] * self.spatial_dims)}), got {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(s % self.factor for s in spatial):
            raise ValueError(
                f"UNet: spatial shape {spatial} (x of shape {tuple(x.shape)}) must be divisible "
                f"by 2**(len(channels)-1) = {self.factor}; pad or crop the input"
            )
        batch = x.shape[0]
        t = _noise_batch(noise_level, x) * self.noise_level_scale
        c = _split_cond(
            cond, float_key="concat", known=("concat", "class_labels", "context"), name="UNet"
        )
        img = c.get("concat")
        if self.cond_channels:
            want = (batch, self.cond_channels, *spatial)
            if img is None:
                raise ValueError(
                    f"UNet was built with cond_channels={self.cond_channels}: pass cond"
                )
            if tuple(img.shape) != want:
                raise ValueError(
                    f"UNet: concat condition must have shape {want}, got {tuple(img.shape)}"
                )
            x = torch.cat([x, img.to(x.dtype)], dim=1)
        elif img is not None:
            raise ValueError("UNet was built with cond_channels=0 but an image condition was given")
        labels = c.get("class_labels")
        if self.num_classes is not None:
            if labels is None:
                labels = torch.full((batch,), self.num_classes, device=x.device, dtype=torch.long)
            _check_labels(labels, batch, "UNet")
            labels = labels.long()
        elif labels is not None:
            raise ValueError("UNet was built without num_classes but class labels were given")
        ctx = c.get("context")
        if self.cross_attention_dim is not None:
            if (
                ctx is None
                or ctx.dim() != 3
                or ctx.shape[0] != batch
                or ctx.shape[2] != self.cross_attention_dim
            ):
                got = None if ctx is None else tuple(ctx.shape)
                raise ValueError(
                    f"UNet was built with cross_attention_dim={self.cross_attention_dim}: "
                    f"cond['context'] must have shape ({batch}, L, {self.cross_attention_dim}), "
                    f"got {got}"
                )
            ctx = ctx.to(x.dtype)
        elif ctx is not None:
            raise ValueError("UNet was built without cross_attention_dim but a context was given")
        return self.unet(x, t, context=ctx, class_labels=labels)


_UNET_KEYS = (
    "spatial_dims",
    "in_channels",
    "out_channels",
    "channels",
    "attention_levels",
    "num_res_blocks",
    "num_head_channels",
    "cond_channels",
    "num_classes",
    "cross_attention_dim",
    "noise_level_scale",
    "norm_num_groups",
    "resblock_updown",
    "use_flash_attention",
)


def unet_from_config(config: Mapping[str, Any]) -> UNet:
    """Build a :class:`UNet` from a plain dict whose keys are its constructor arguments.

    ``spatial_dims``, ``in_channels`` and ``out_channels`` are required; unknown keys are an
    error. ``UNet(...).config`` round-trips.
    """
    bad = sorted(set(config) - set(_UNET_KEYS))
    if bad:
        raise ValueError(f"unknown UNet config keys {bad}; known keys are {list(_UNET_KEYS)}")
    missing = [k for k in ("spatial_dims", "in_channels", "out_channels") if k not in config]
    if missing:
        raise ValueError(f"UNet config is missing required keys {missing}")
    kw = dict(config)
    for k in ("channels", "attention_levels", "num_res_blocks"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    return UNet(kw.pop("spatial_dims"), kw.pop("in_channels"), kw.pop("out_channels"), **kw)


# --------------------------------------------------------------------------------------------
# MLP for vectors
# --------------------------------------------------------------------------------------------


class _FiLMBlock(nn.Module):
    """Pre-norm residual block ``h + W2 drop(silu(W1 silu(FiLM(norm(h), emb))))``."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        y = self.norm(h) * (1 + scale) + shift
        y = self.fc1(self.act(y))
        return h + self.fc2(self.drop(self.act(y)))


class MLPDenoiser(nn.Module):
    """Residual MLP for vectors ``(B, dim)`` with FiLM conditioning on the noise level.

    Parameters
    ----------
    dim
        Feature size of ``x`` and of the output.
    hidden
        Width of the residual stream.
    depth
        Number of residual blocks.
    cond_dim
        Size of a conditioning vector ``(B, cond_dim)`` (``cond`` float tensor or ``"vector"``).
    num_classes
        Class-conditional, plus the null class :attr:`null_class` ``= num_classes``.
    embed_dim
        Number of sinusoidal noise-level features.
    dropout
        Dropout inside the residual blocks.
    noise_level_scale
        Multiplier of ``noise_level`` before the embedding (see module docs).

    Notes
    -----
    ``cond`` is ``None``, a float ``(B, cond_dim)`` tensor, an integer ``(B,)`` tensor of class
    labels, or a dict with optional keys ``"vector"`` and ``"class_labels"``. The output layer is
    zero-initialised, so the network starts as ``F = 0``.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 256,
        depth: int = 4,
        cond_dim: int = 0,
        num_classes: int | None = None,
        embed_dim: int = 64,
        dropout: float = 0.0,
        noise_level_scale: float = DEFAULT_NOISE_LEVEL_SCALE,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be >= 1, got {dim}, {hidden}, {depth}")
        self.dim, self.num_classes = int(dim), num_classes
        self.embed = _CondEmbedding(
            hidden,
            embed_dim=embed_dim,
            cond_dim=cond_dim,
            num_classes=num_classes,
            noise_level_scale=noise_level_scale,
            name="MLPDenoiser",
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_FiLMBlock(hidden, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_class(self) -> int | None:
        """Index of the "no class" label (``num_classes``), or None if not class-conditional."""
        return self.num_classes

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None) -> Tensor:
        """Return ``(B, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"MLPDenoiser expects x of shape (B, {self.dim}), got {tuple(x.shape)}"
            )
        c = _split_cond(
            cond, float_key="vector", known=("vector", "class_labels"), name="MLPDenoiser"
        )
        emb = nn.functional.silu(self.embed(_noise_batch(noise_level, x), c, x.shape[0]))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))


# --------------------------------------------------------------------------------------------
# Transformer for sets
# --------------------------------------------------------------------------------------------


class SetTransformerDenoiser(nn.Module):
    """Permutation-equivariant transformer for sets ``(B, N, dim)``.

    The noise level, conditioning vector and class are embedded into one width-``width``
    vector that is both added to every element and prepended as an extra token (so even a
    fully padded set attends to something). No positional encoding: permuting the elements
    permutes the output.

    Parameters
    ----------
    dim
        Feature size of each set element (and of the output).
    width
        Transformer width.
    depth
        Number of ``nn.TransformerEncoderLayer`` (pre-norm, GELU, feed-forward ``4 width``).
    heads
        Attention heads (must divide ``width``).
    cond_dim
        Size of a conditioning vector ``(B, cond_dim)``.
    num_classes
        Class-conditional, plus the null class :attr:`null_class` ``= num_classes``.
    embed_dim
        Number of sinusoidal noise-level features.
    dropout
        Dropout inside the transformer layers.
    noise_level_scale
        Multiplier of ``noise_level`` before the embedding (see module docs).

    Notes
    -----
    ``cond`` is ``None``, a float ``(B, cond_dim)`` tensor, an integer ``(B,)`` tensor of class
    labels, or a dict with optional keys ``"vector"``, ``"class_labels"`` and ``"mask"``: a
    ``(B, N)`` bool tensor, True for valid elements. Padded elements are ignored by attention and
    their outputs are zero. The output layer is zero-initialised.
    """

    def __init__(
        self,
        dim: int,
        *,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        cond_dim: int = 0,
        num_classes: int | None = None,
        embed_dim: int = 64,
        dropout: float = 0.0,
        noise_level_scale: float = DEFAULT_NOISE_LEVEL_SCALE,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads={heads} must divide width={width}")
        if dim < 1 or depth < 1:
            raise ValueError(f"dim and depth must be >= 1, got {dim}, {depth}")
        self.dim, self.num_classes = int(dim), num_classes
        self.embed = _CondEmbedding(
            width,
            embed_dim=embed_dim,
            cond_dim=cond_dim,
            num_classes=num_classes,
            noise_level_scale=noise_level_scale,
            name="SetTransformerDenoiser",
        )
        self.inp = nn.Linear(dim, width)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=4 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_class(self) -> int | None:
        """Index of the "no class" label (``num_classes``), or None if not class-conditional."""
        return self.num_classes

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None) -> Tensor:
        """Return ``(B, N, dim)``; zero at padded elements."""
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise ValueError(
                f"SetTransformerDenoiser expects x of shape (B, N, {self.dim}), got {tuple(x.shape)}"
            )
        batch, n = x.shape[:2]
        c = _split_cond(
            cond,
            float_key="vector",
            known=("vector", "class_labels", "mask"),
            name="SetTransformerDenoiser",
        )
        mask = c.pop("mask", None)
        if mask is not None and (mask.dtype != torch.bool or mask.shape != (batch, n)):
            raise ValueError(
                f"SetTransformerDenoiser: mask must be a bool tensor of shape ({batch}, {n}), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        emb = self.embed(_noise_batch(noise_level, x), c, batch)
        if mask is not None:  # padded entries may hold anything, NaN included
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = self.inp(x) + emb[:, None, :]
        h = torch.cat([emb[:, None, :], h], dim=1)
        pad = None
        if mask is not None:
            pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        h = self.encoder(h, src_key_padding_mask=pad)[:, 1:]
        out = self.out(self.out_norm(h))
        if mask is not None:
            out = torch.where(
                mask[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device)
            )
        return out
