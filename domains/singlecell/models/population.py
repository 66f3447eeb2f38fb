"""Population diffusion (PerturbDiff-style): perturbed populations of a cell type from its
control cells.

One sample is a whole population: a set of ``N`` cells in a PCA latent ``(N, d)``
(:mod:`.latent`). Each perturbed cell is written as a control cell (its *anchor*) plus a
displacement, and the diffused variable is the set of displacements ``Y = X - A``: the
population is ``A + Y`` with ``A`` ``N`` control cells of the same cell type. Training data are
unpaired, so the pairing is made by optimal transport: each perturbed population is matched
one-to-one to its anchors by the minimum total squared distance (:func:`ot_pairing`;
translation-invariant, so a shared shift does not change the matching and cells pair by their
baseline state). Sampling draws anchors from the control cells and samples ``Y`` given them, so
the identity (``Y = 0``) and the mean shift (``Y`` = a constant) are easy for the network to
represent, and a response that depends on each cell's baseline state (visible in its anchor) is
a per-token function.

:class:`PopulationDenoiser` writes the denoiser as ``D(Y, sigma) = m + K(Y - m, sigma)``: ``m``
is a per-perturbation *linear* response of each anchor (zero at initialisation, trained with
the rest), the first-order, per-cell generalisation of the mean shift; ``K`` is the core's
Karras-preconditioned :class:`PopulationNet` for the rest (the hidden factor, non-linear
gains, the spread). At large sigma ``D`` tends to the conditional mean, which ``m`` carries.
In pilots the transformer alone shrank the held-out cell type's response towards the training
average and ``m`` corrected most of that; a closed-form ridge ``m`` (``linear="lstsq"``) on the
same features was worse, since its weights on ``a - mean(control)`` extrapolate to a new
control mean (the pilot numbers are in ``benchmarks/configs/singlecell.yaml``).

With ``mean_hidden > 0`` a second head denoises the *population mean* of ``Y - m``: the
Gaussian noise on the mean of ``N`` displacements has level ``sigma / sqrt(N)`` and is
independent of the noise on the deviations from it, so the mean gets its own
Karras-preconditioned MLP at that level (conditioned on the control and anchor summaries and
the perturbation) and ``K`` keeps only the deviations. A population-level hidden factor is a
shift of that mean; under the per-cell preconditioning it is decided at large sigma where the
skip path is close to zero. The spread of the sampled population means is decided at large
noise levels too, where the learned head adds little to its skip path, so the head has its own
``mean_sigma_data`` (its preconditioning scale sets that spread). With ``mean_train_sigma``
the head is trained by its own loss at its own, independently drawn noise level
(:meth:`PopulationDenoiser.mean_loss`; exact, since the noise on the mean is independent of
the noise on the deviations).

The network :class:`PopulationNet` is a transformer over three kinds of tokens: one summary
token (noise level + perturbation embedding + the control population's mean and spread), the
``M`` control cells (the condition: a set encoding the model can read for a cell type it never
saw perturbed) and the ``N`` noisy displacement tokens, each carrying its anchor. Every token
attends to every other, so a population-level hidden factor (a batch effect shared by all
cells of a population) can be represented: each sampled population is one draw of it.
The denoisers are EDM-preconditioned and trained with the EDM loss (Karras et al., NeurIPS
2022).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser, as_sigma, edm_loss
from diffsci.core.networks import MLPDenoiser, SinusoidalEmbedding
from diffsci.core.schedules import LogNormalSigma

from ..io import require_obs_value
from .latent import LATENT_KEY, basis, encode, genes_of, latent_info

__all__ = [
    "PopulationNet",
    "PopulationDenoiser",
    "ot_pairing",
    "anchor_index",
    "population_items",
    "predict_perturbation",
]


def ot_pairing(cells: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Optimal-transport pairing of a population with as many anchors (control cells).

    Returns ``perm`` such that ``cells[perm[j]]`` is paired with ``anchors[j]`` and the total
    squared euclidean distance ``sum_j |cells[perm[j]] - anchors[j]|^2`` is minimal (scipy's
    ``linear_sum_assignment``). The matching does not change when ``cells`` are translated.
    """
    from scipy.optimize import linear_sum_assignment

    cells, anchors = np.asarray(cells, np.float64), np.asarray(anchors, np.float64)
    if cells.ndim != 2 or cells.shape != anchors.shape:
        raise ValueError(f"ot_pairing needs two (n, d) arrays, got {cells.shape}, {anchors.shape}")
    cost = ((cells[:, None] - anchors[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(cells), dtype=int)
    perm[cols] = rows
    return perm


def anchor_index(n_control: int, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Which of a population's ``n_control`` condition cells serve as its ``n_cells`` anchors:
    all of them in order when the counts match (no draw), else a draw from ``rng`` (with
    replacement only when ``n_cells > n_control``). Training and sampling both use this."""
    if n_cells == n_control:
        return np.arange(n_cells)
    return rng.choice(n_control, n_cells, replace=n_cells > n_control)


class PopulationNet(nn.Module):
    """Transformer denoiser of a perturbed population's displacements from its anchors.

    ``net(x, noise_level, cond)`` with ``x`` ``(B, N, dim)`` (each perturbed cell minus its
    anchor), ``cond = {"control": (B, M, dim), "anchor": (B, N, dim), "perturbation": (B,)
    long}`` (module docstring); returns ``(B, N, dim)``. Equivariant to permutations of the
    (displacement, anchor) pairs, invariant to permutations of the control cells. The output
    layer is zero-initialised.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_perturbations: int,
        width: int = 128,
        depth: int = 3,
        heads: int = 4,
        embed_dim: int = 64,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads={heads} must divide width={width}")
        self.dim, self.n_perturbations = int(dim), int(n_perturbations)
        self.noise = SinusoidalEmbedding(width, embed_dim=embed_dim)
        self.pert = nn.Embedding(n_perturbations, width)
        self.summary = nn.Sequential(nn.Linear(2 * dim, width), nn.SiLU(), nn.Linear(width, width))
        self.ctrl_in = nn.Linear(dim, width)
        self.x_in = nn.Linear(dim, width)
        self.anchor_in = nn.Sequential(
            nn.Linear(2 * dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.kind = nn.Parameter(torch.randn(2, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def check_cond(self, x: Tensor, cond: Any) -> None:
        """``ValueError`` unless ``cond`` fits ``x`` (keys, shapes, perturbation range)."""
        if not isinstance(cond, Mapping) or {"control", "anchor", "perturbation"} - set(cond):
            raise ValueError(
                "PopulationNet needs cond={'control': (B,M,d), 'anchor': (B,N,d), "
                "'perturbation': (B,)}"
            )
        c, a, p = cond["control"], cond["anchor"], cond["perturbation"]
        if x.dim() != 3 or x.shape[2] != self.dim or c.shape[0] != x.shape[0] or a.shape != x.shape:
            raise ValueError(
                f"PopulationNet: x {tuple(x.shape)} / control {tuple(c.shape)} / "
                f"anchor {tuple(a.shape)}"
            )
        # a value check cannot be traced (torch.export of the int8 copy); the denoiser checks
        # the same condition eagerly before calling the exported network
        if not torch.compiler.is_exporting() and (p.min() < 0 or p.max() >= self.n_perturbations):
            raise ValueError(f"perturbation index out of range [0, {self.n_perturbations})")

    def forward(self, x: Tensor, noise_level: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        self.check_cond(x, cond)
        c, a, p = (
            cond["control"].to(x.dtype),
            cond["anchor"].to(x.dtype),
            cond["perturbation"].long(),
        )
        b = x.shape[0]
        nl = noise_level.reshape(-1).expand(b) if noise_level.numel() == 1 else noise_level
        mu = c.mean(1)
        emb = self.noise(nl) + self.pert(p) + self.summary(torch.cat([mu, c.std(1)], -1))
        ctrl = self.ctrl_in(c - mu[:, None]) + self.kind[0] + emb[:, None]
        anc = self.anchor_in(torch.cat([a, a - mu[:, None]], -1))
        h = self.x_in(x) + anc + self.kind[1] + emb[:, None]
        tokens = torch.cat([emb[:, None], ctrl, h], 1)
        out = self.encoder(tokens)[:, 1 + c.shape[1] :]
        return self.out(self.out_norm(out))


class PopulationDenoiser(nn.Module):
    """``D(x, sigma | cond) = m(cond) + K(x - m(cond), sigma | cond)`` (module docstring).

    ``K`` is :class:`~diffsci.core.denoisers.KarrasDenoiser` around ``net``; ``m`` the
    per-perturbation linear map ``[a, a - mean(control), 1] W_p`` of every anchor ``a``, zero
    at initialisation. ``linear="sgd"``: ``W`` is a parameter trained with the rest;
    ``"lstsq"``: ``W`` is the ridge least-squares fit (penalty ``ridge``) of the clean
    displacements on the anchor features over every training batch seen so far
    (:meth:`fit_linear`, kept in buffers, so it is checkpointed and resumed). ``loss_weight``,
    ``sigma_data`` and ``train_sigma`` are ``K``'s. ``mean_hidden > 0``: the population-mean
    head (width ``mean_hidden``, ``mean_depth`` blocks, preconditioned with
    ``mean_sigma_data``, default ``sigma_data``). ``mean_train_sigma`` (a sigma sampler, or
    ``None`` to train the head inside the EDM loss of :meth:`forward`): the head's own training
    noise levels for :meth:`mean_loss`, weighted by ``mean_loss_weight``.
    """

    def __init__(
        self,
        net: PopulationNet,
        *,
        sigma_data: float = 0.5,
        train_sigma: Any = None,
        linear: str = "sgd",
        ridge: float = 1.0,
        mean_hidden: int = 0,
        mean_depth: int = 3,
        mean_sigma_data: float | None = None,
        mean_train_sigma: Any = None,
        mean_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if linear not in ("sgd", "lstsq"):
            raise ValueError(f"linear must be 'sgd' or 'lstsq', got {linear!r}")
        if mean_train_sigma is not None and not mean_hidden:
            raise ValueError("mean_train_sigma needs a mean head (mean_hidden > 0)")
        self.mean_train_sigma = mean_train_sigma
        self.mean_loss_weight = float(mean_loss_weight)
        self.karras = KarrasDenoiser(net, sigma_data=sigma_data, train_sigma=train_sigma)
        self.linear, self.ridge = linear, float(ridge)
        d, k = net.dim, net.n_perturbations
        self.mean_head: KarrasDenoiser | None = None
        if mean_hidden:
            # the population mean of the displacements, denoised at its own noise level
            mlp = MLPDenoiser(d, hidden=int(mean_hidden), depth=int(mean_depth), cond_dim=3 * d + k)
            sd = sigma_data if mean_sigma_data is None else float(mean_sigma_data)
            self.mean_head = KarrasDenoiser(mlp, sigma_data=sd)
        f = 2 * d + 1
        if linear == "sgd":
            self.weight = nn.Parameter(torch.zeros(k, f, d))
        else:
            self.register_buffer("weight", torch.zeros(k, f, d))
            self.register_buffer("gram", torch.zeros(k, f, f, dtype=torch.float64))
            self.register_buffer("moment", torch.zeros(k, f, d, dtype=torch.float64))

    @property
    def net(self) -> PopulationNet:
        return self.karras.net

    @property
    def sigma_data(self) -> float:
        return self.karras.sigma_data

    @property
    def train_sigma(self) -> Any:
        return self.karras.train_sigma

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return self.karras.loss_weight(sigma)

    @staticmethod
    def features(cond: Mapping[str, Tensor]) -> Tensor:
        """``[a, a - mean(control), 1]`` of every anchor, ``(B, N, 2 dim + 1)``."""
        c, a = cond["control"], cond["anchor"]
        one = torch.ones_like(a[..., :1])
        return torch.cat([a, a - c.mean(1, keepdim=True), one], -1)

    def linear_response(self, cond: Mapping[str, Tensor]) -> Tensor:
        """``m``: the linear response of every anchor, ``(B, N, dim)``."""
        w = self.weight[cond["perturbation"].long()]
        return torch.einsum("bnf,bfd->bnd", self.features(cond).to(w.dtype), w)

    @torch.no_grad()
    def fit_linear(self, x0: Tensor, cond: Mapping[str, Tensor]) -> None:
        """Add a batch of clean displacements ``x0`` to the least-squares fit of ``m`` and
        solve it again (``linear="lstsq"``; no-op for ``"sgd"``)."""
        if self.linear != "lstsq":
            return
        self.net.check_cond(x0, cond)
        feats = self.features(cond).double()
        p = cond["perturbation"].long()
        for k in p.unique().tolist():
            f = feats[p == k].flatten(0, 1)
            self.gram[k] += f.T @ f
            self.moment[k] += f.T @ x0[p == k].flatten(0, 1).double()
            eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device) * self.ridge
            eye[-1, -1] = 0.0  # no penalty on the intercept
            self.weight[k] = torch.linalg.solve(self.gram[k] + eye, self.moment[k]).to(self.weight)

    def mean_cond(self, cond: Mapping[str, Tensor]) -> Tensor:
        """The mean head's condition: ``[mean(control), std(control), mean(anchors),
        one-hot perturbation]``, ``(B, 3 dim + n_perturbations)``."""
        c, a = cond["control"], cond["anchor"]
        p = torch.nn.functional.one_hot(cond["perturbation"].long(), self.net.n_perturbations)
        return torch.cat([c.mean(1), c.std(1), a.mean(1), p.to(a.dtype)], -1)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Mapping[str, Tensor]) -> Tensor:
        self.net.check_cond(x, cond)
        m = self.linear_response(cond).to(x.dtype)
        r = x - m
        out = self.karras(r, sigma, cond)
        if self.mean_head is None:
            return m + out
        # Gaussian noise splits into independent parts: the population mean of r carries noise
        # sigma / sqrt(N), the deviations from it sigma. The transformer denoises the
        # deviations; the mean head the mean, preconditioned for its own noise level (at the
        # large sigma where a population-level factor is decided, its skip path keeps the
        # signal that the per-cell preconditioning scales away).
        n = x.shape[1]
        sig = as_sigma(sigma, x)
        mean = self.mean_head(r.mean(1), sig / math.sqrt(n), self.mean_cond(cond).to(x.dtype))
        return m + out - out.mean(1, keepdim=True) + mean[:, None]

    def deviation_loss(
        self, x0: Tensor, rng: Any, *, cond: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """EDM loss of the deviations from the population mean only (``mean_train_sigma`` set).

        Draws ``sigma ~ train_sigma`` and the noise exactly as
        :func:`~diffsci.core.denoisers.edm_loss` does; the error of :meth:`forward` minus its
        population mean is weighted by ``loss_weight(sigma)``. Returns ``(loss, noise)``; the
        noise feeds :meth:`mean_loss`.
        """
        if self.mean_head is None:
            raise ValueError("deviation_loss needs a mean head (mean_hidden > 0)")
        sampler = self.train_sigma or LogNormalSigma()  # edm_loss's default
        sigma = sampler(x0.shape[0], rng, device=x0.device).to(x0.dtype)
        noise = rng.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        x = x0 + sigma[:, None, None] * noise
        m = self.linear_response(cond).to(x0.dtype)
        err = m + self.karras(x - m, sigma, cond) - x0
        err = err - err.mean(1, keepdim=True)
        per_sample = (err**2).flatten(1).mean(1)
        return (self.loss_weight(sigma) * per_sample).mean(), noise

    def mean_loss(
        self, x0: Tensor, rng: Any, *, cond: Mapping[str, Tensor], noise: Tensor
    ) -> Tensor:
        """EDM loss of the mean head at its own noise level ``s ~ mean_train_sigma``.

        The Gaussian noise on the population mean is independent of the noise on the
        deviations, so the mean head can be trained at a level drawn independently of the
        transformer's (exact): its input is the clean mean of ``x0 - m`` plus ``s`` times the
        standard normal ``sqrt(N) mean(noise)`` (the part of :meth:`deviation_loss`'s noise that
        the deviations do not see); weight ``mean_loss_weight * loss_weight_mean(s)``. Draws
        only ``s`` from ``rng``.
        """
        if self.mean_head is None or self.mean_train_sigma is None:
            raise ValueError("mean_loss needs a mean head and mean_train_sigma")
        n = x0.shape[1]
        sig = self.mean_train_sigma(x0.shape[0], rng, device=x0.device).to(x0.dtype)
        eps = noise.mean(1) * math.sqrt(n)
        target = (x0 - self.linear_response(cond).to(x0.dtype)).mean(1)
        pred = self.mean_head(target + sig[:, None] * eps, sig, self.mean_cond(cond).to(x0.dtype))
        per_sample = ((pred - target) ** 2).mean(1)
        return self.mean_loss_weight * (self.mean_head.loss_weight(sig) * per_sample).mean()

    def loss(self, x0: Tensor, rng: Any, *, cond: Mapping[str, Tensor]) -> Tensor:
        """The training loss: :func:`~diffsci.core.denoisers.edm_loss` of :meth:`forward`, or,
        with ``mean_train_sigma``, :meth:`deviation_loss` + :meth:`mean_loss`."""
        if self.mean_train_sigma is None:
            return edm_loss(self, x0, rng, cond=cond)
        dev, noise = self.deviation_loss(x0, rng, cond=cond)
        return dev + self.mean_loss(x0, rng, cond=cond, noise=noise)


def population_items(
    z_control: np.ndarray,
    control_types: np.ndarray,
    z_pert: np.ndarray,
    pert_types: np.ndarray,
    populations: np.ndarray,
    pert_index: Sequence[int],
    *,
    n_control: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training items of the population model from unpaired control and perturbed cells.

    For every perturbed population (``populations`` labels its cells, all of one perturbation):
    a condition of ``n_control`` control cells drawn (with replacement) with the population's
    cell-type composition; ``N`` anchors (:func:`anchor_index`) paired with the perturbed
    cells by :func:`ot_pairing`; the target is the displacements ``cells[perm] - anchors``.

    Parameters
    ----------
    z_control, control_types
        Latent coordinates ``(n, d)`` and cell types of the control cells.
    z_pert, pert_types, populations, pert_index
        Latent coordinates, cell types, population labels and perturbation indices of the
        perturbed cells.
    n_control
        Control cells in each condition.
    seed
        Seed of the draws of the conditions and anchors.

    Returns
    -------
    displacements, control, anchors, perturbation
        ``(P, N, d)``, ``(P, M, d)``, ``(P, N, d)`` and ``(P,)``, one row per population.
    """
    rng = np.random.default_rng(seed)
    pops, ctrls, anchors, pidx = [], [], [], []
    labels = np.asarray(populations)
    for pid in pd.unique(labels):
        m = labels == pid
        cs = _condition(z_control, control_types, np.asarray(pert_types)[m], n_control, rng)
        cells = z_pert[m]
        anc = cs[anchor_index(n_control, len(cells), rng)]
        perm = ot_pairing(cells, anc)
        pops.append(cells[perm] - anc)
        ctrls.append(cs)
        anchors.append(anc)
        pidx.append(pert_index[int(np.flatnonzero(m)[0])])
    return np.stack(pops), np.stack(ctrls), np.stack(anchors), np.asarray(pidx)


def _condition(
    z_control: np.ndarray,
    control_types: np.ndarray,
    types: np.ndarray,
    n_control: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n_control`` control cells (with replacement) with the cell-type composition of
    ``types`` (rounded counts, the remainder on the most frequent type)."""
    tt, cnt = np.unique(types, return_counts=True)
    k = np.round(cnt / cnt.sum() * n_control).astype(int)
    k[np.argmax(k)] += n_control - k.sum()
    draws = [
        z_control[control_types == t][rng.choice(int((control_types == t).sum()), n)]
        for t, n in zip(tt, k, strict=True)
    ]
    return np.concatenate(draws)


def _population_denoiser(model: nn.Module) -> nn.Module:
    return getattr(model, "perturbation", model)


def predict_perturbation(
    adata: AnnData,
    model: nn.Module,
    *,
    perturbation: str,
    cell_type: str,
    cell_type_key: str = "cell_type",
    reference: AnnData | None = None,
    key: str = LATENT_KEY,
    n_samples: int = 8,
    n_cells: int = 64,
    n_control: int = 64,
    steps: int = 30,
    sampler: str = "heun",
    start_sigma: float | None = None,
    start: str = "zero",
    sigma_max: float = 80.0,
    clip: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AnnData:
    """Sample ``n_samples`` perturbed populations of ``cell_type`` under ``perturbation``.

    For every sample, ``n_control`` control cells of that cell type are drawn (with
    replacement) from ``adata`` as the condition and ``n_cells`` anchors among them (the
    condition itself when ``n_cells == n_control``); the model samples each anchor's
    displacement, and a predicted cell is its anchor's expression plus the displacement decoded
    to genes (linear in the latent basis), so expression outside the latent comes from real
    control cells. The input is not modified.

    Parameters
    ----------
    adata
        Control cells (log-normalised expression, ``obs[cell_type_key]``).
    model
        A :class:`PopulationDenoiser` (or a model holding one as ``.perturbation``).
    perturbation, cell_type
        What to predict; ``perturbation`` must be in the latent's vocabulary.
    reference, key
        The AnnData holding the latent basis and the perturbation vocabulary under ``key``
        (default ``adata`` itself).
    n_samples, n_cells, n_control
        Populations to sample, cells per population, control cells per condition.
    steps, sampler, sigma_max
        The Karras schedule (``steps`` levels from ``sigma_max``) and the sampler.
    start_sigma
        SDEdit-style warm start (:func:`diffsci.core.posterior.start_from`) from the centre
        below noised to ``start_sigma``; ``None`` samples from pure noise.
    start
        The centre of the initial noise: ``"zero"`` (zero displacement) or ``"linear"`` (the
        denoiser's linear response ``m`` of every anchor, which it tends to at large sigma).
    clip
        Clip the predicted log-expression at 0, the floor of the data. Off by default: the
        pairing of anchors and perturbed cells is not exact per gene, so clipping biased the
        predicted means of repressed genes in a pilot.
    seed, device, progress
        Seed of the condition draws and of the sampler's noise; where to sample.

    Returns
    -------
    AnnData
        The predicted cells (genes of the latent), ``obs`` ``sample`` (population id),
        ``condition="predicted"``, ``cell_type``, ``perturbation``; ``obsm["X_latent"]``.
    """
    reference = adata if reference is None else reference
    perts = list(map(str, latent_info(reference, key)["perturbations"]))
    if perturbation not in perts:
        raise KeyError(
            f"unknown perturbation {perturbation!r}; the model knows: {', '.join(perts)}"
        )
    require_obs_value(adata, cell_type_key, cell_type, what="control adata")
    ctrl = adata[adata.obs[cell_type_key].astype(str).values == str(cell_type)]
    zc = encode(ctrl, reference, key=key, what="control adata")
    pcs, _, scale, genes = basis(reference, key)
    xc = genes_of(ctrl, genes, "control adata").astype(np.float64)
    gen = np.random.default_rng(seed)
    take = np.stack([gen.choice(len(zc), n_control) for _ in range(n_samples)])
    pick = np.stack([anchor_index(n_control, n_cells, gen) for _ in range(n_samples)])
    anchor_idx = np.take_along_axis(take, pick, 1)
    den = _checked_denoiser(model, start, device)
    cond = {
        "control": torch.as_tensor(zc[take], dtype=torch.float32, device=device),
        "anchor": torch.as_tensor(zc[anchor_idx], dtype=torch.float32, device=device),
        "perturbation": torch.full((n_samples,), perts.index(perturbation), device=device),
    }
    disp = _sample_displacements(
        den,
        cond,
        (n_samples, n_cells, zc.shape[1]),
        steps=steps,
        sampler=sampler,
        sigma_max=sigma_max,
        start=start,
        start_sigma=start_sigma,
        seed=seed,
        device=device,
        progress=progress,
    )
    d = disp.cpu().double().numpy().reshape(-1, zc.shape[1])
    z = zc[anchor_idx.reshape(-1)] + d
    x = xc[anchor_idx.reshape(-1)] + d * scale @ pcs.T
    if clip:
        x = np.maximum(x, 0.0)
    out = _predicted(x, z, genes, n_samples, n_cells, str(cell_type), perturbation)
    out.uns["predict_perturbation"] = {
        "perturbation": perturbation,
        "cell_type": str(cell_type),
        "n_samples": n_samples,
        "n_cells": n_cells,
        "steps": steps,
        "sampler": sampler,
        "seed": seed,
        "start_sigma": start_sigma,
        "start": start,
        "sigma_max": float(sigma_max),
        "clip": clip,
    }
    return out


def _checked_denoiser(model: nn.Module, start: str, device: str | torch.device) -> nn.Module:
    """The population denoiser of ``model`` on ``device`` in eval mode; ``ValueError`` for an
    unknown ``start`` or a linear start without a linear response."""
    if start not in ("zero", "linear"):
        raise ValueError(f"start must be 'zero' or 'linear', got {start!r}")
    den = _population_denoiser(model).to(device).eval()
    if start == "linear" and not hasattr(den, "linear_response"):
        raise ValueError(
            "start='linear' needs a denoiser with a linear_response (PopulationDenoiser)"
        )
    return den


@torch.no_grad()
def _sample_displacements(
    den: nn.Module,
    cond: Mapping[str, Tensor],
    shape: tuple[int, int, int],
    *,
    steps: int,
    sampler: str,
    sigma_max: float,
    start: str,
    start_sigma: float | None,
    seed: int,
    device: str | torch.device,
    progress: bool,
) -> Tensor:
    """Displacements ``shape`` from pure noise (:func:`diffsci.core.samplers.sample`) or from
    a warm start (:func:`diffsci.core.posterior.start_from`), noise from a generator seeded
    with ``seed``."""
    from diffsci.core.samplers import sample
    from diffsci.core.schedules import karras

    g = torch.Generator().manual_seed(seed)
    sigmas = karras(steps, sigma_max=float(sigma_max))
    if start_sigma is None and start == "zero":
        return sample(
            den,
            shape,
            sigmas,
            sampler=sampler,
            cond=cond,
            generator=g,
            device=device,
            progress=progress,
        )
    from diffsci.core.posterior import start_from

    x0 = torch.zeros(shape, dtype=torch.float32, device=device)
    if start == "linear":
        x0 = den.linear_response(cond).to(torch.float32)
    sigma_start = float(sigmas[0]) if start_sigma is None else float(start_sigma)
    return start_from(
        den, x0, sigmas, sigma_start=sigma_start, sampler=sampler, cond=cond, generator=g
    )


def _predicted(
    x: np.ndarray,
    z: np.ndarray,
    genes: list[str],
    n_samples: int,
    n_cells: int,
    cell_type: str,
    perturbation: str,
) -> AnnData:
    """The predicted cells as an AnnData (``obs`` ``sample`` / ``condition`` / ``cell_type`` /
    ``perturbation``, latent coordinates in ``obsm["X_latent"]``)."""
    obs = pd.DataFrame(
        {
            "sample": np.repeat([f"sample{k}" for k in range(n_samples)], n_cells),
            "condition": "predicted",
            "cell_type": cell_type,
            "perturbation": perturbation,
        }
    )
    obs.index = [f"pred{i}" for i in range(len(obs))]
    out = AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    out.obsm["X_latent"] = z.astype(np.float32)
    return out
