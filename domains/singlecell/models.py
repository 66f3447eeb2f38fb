"""The two diffusion models of the domain, built on the core's denoisers and networks.

Population diffusion (PerturbDiff-style)
----------------------------------------
One sample is a whole population: a set of ``N`` cells in a PCA latent ``(N, d)``. Each
perturbed cell is written as a control cell (its *anchor*) plus a displacement, and the
diffused variable is the set of displacements ``Y = X - A``: the population is ``A + Y`` with
``A`` ``N`` control cells of the same cell type. Training data are unpaired, so the pairing is
made by optimal transport: each perturbed population is matched one-to-one to its anchors by
the minimum total squared distance (:func:`ot_pairing`; translation-invariant, so a shared
shift does not change the matching and cells pair by their baseline state). Sampling draws
anchors from the control cells and samples ``Y`` given them, so the identity (``Y = 0``) and
the mean shift (``Y`` = a constant) are easy for the network to represent, and a response that
depends on each cell's baseline state (visible in its anchor) is a per-token function.

:class:`PopulationDenoiser` writes the denoiser as ``D(Y, sigma) = m + K(Y - m, sigma)``: ``m``
is a per-perturbation *linear* response of each anchor (zero at initialisation, trained with
the rest), the first-order, per-cell generalisation of the mean shift; ``K`` is the core's
Karras-preconditioned :class:`PopulationNet` for the rest (the hidden factor, non-linear
gains, the spread). At large sigma ``D`` tends to the conditional mean, which ``m`` carries.
In pilots (3000 steps) the transformer alone shrank the held-out cell type's response
towards the training average (top-50-DE R^2 0.62); with ``m`` 0.76. A closed-form ridge
``m`` (``linear="lstsq"``) on the same features was worse (0.10): its weights on
``a - mean(control)`` extrapolate to a new control mean.

With ``mean_hidden > 0`` a second head denoises the *population mean* of ``Y - m``: the
Gaussian noise on the mean of ``N`` displacements has level ``sigma / sqrt(N)`` and is
independent of the noise on the deviations from it, so the mean gets its own
Karras-preconditioned MLP at that level (conditioned on the control and anchor summaries and
the perturbation) and ``K`` keeps only the deviations. A population-level hidden factor is a
shift of that mean; under the per-cell preconditioning it is decided at large sigma where the
skip path is close to zero. The spread of the sampled population means is decided at large
noise levels too, where the learned head adds little to its skip path (benchmark pilot: the
hidden-factor spread of training populations' means along the response is about 2 latent
units, the head's samples had about 1 with ``sigma_data`` 1 and 1.7 with 2), so the head has its
own ``mean_sigma_data``. With ``mean_train_sigma`` the head is trained by its own loss at its
own, independently drawn noise level (:meth:`PopulationDenoiser.mean_loss`; exact, since the
noise on the mean is independent of the noise on the deviations).

The network :class:`PopulationNet` is a transformer over three kinds of tokens: one summary
token (noise level + perturbation embedding + the control population's mean and spread), the
``M`` control cells (the condition: a set encoding the model can read for a cell type it never
saw perturbed) and the ``N`` noisy displacement tokens, each carrying its anchor. Every token
attends to every other, so a population-level hidden factor (a batch effect shared by all
cells of a population) can be represented: each sampled population is one draw of it.

Lineage diffusion (HDTree-style)
--------------------------------
HDTree (Zang et al. 2023) learns a hierarchical (tree-structured) codebook in the latent
space of a diffusion model; each cell is assigned to a codebook entry and the tree of entries
is the cell hierarchy. :class:`LineageDiffusion` keeps that structure with the diffusion model
as the decoder of the codes: a tree of ``sum_l b^l`` nodes, each node ``v`` with a learned
vector ``e_v``; a cell's latent is a node ``v`` and a position ``tau`` in ``[0, 1]`` along it,
embedded as ``code(v, tau) = [sum_{u on root..v} e_u, phi(tau)]`` (children share their
ancestors' vectors, which is what makes the codebook a tree). The denoiser
``D(x, sigma | code)`` is the core's Karras-preconditioned MLP. Assignment (the E-step, the
analogue of HDTree's nearest-codeword lookup) picks the ``(v, tau)`` on a grid with the lowest
EDM denoising loss, i.e. the highest diffusion (ELBO-style) likelihood, with common random
numbers across candidates. Initial latents come from :func:`tree_init` (bands of scanpy's DPT
pseudotime split top-down by k-means, the classical divisive hierarchical clustering). The
decoder is trained on them in the core's loop; with ``em_after`` set, every batch is re-assigned
by the E-step under the current model after that many steps (hard EM). The configs use one
EM round (``em_after: null``): in the tiny run, hard EM with a weakly trained decoder drifted
(pseudotime Spearman fell from 0.97 at initialisation to -0.2), so the latents are inferred
once, at inference, by the E-step of the trained decoder. Branch = node, pseudotime =
``(depth(v) + tau) / (max depth + 1)``, hierarchy = the codebook tree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser, as_sigma, edm_loss
from diffsci.core.networks import MLPDenoiser, SinusoidalEmbedding
from diffsci.core.schedules import LogNormalSigma

__all__ = [
    "PopulationNet",
    "PopulationDenoiser",
    "ot_pairing",
    "anchor_index",
    "TreeCodebook",
    "LineageDiffusion",
    "SingleCellModel",
    "tree_init",
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

    def __init__(self, dim: int, *, n_perturbations: int, width: int = 128, depth: int = 3,
                 heads: int = 4, embed_dim: int = 64) -> None:  # fmt: skip
        super().__init__()
        if width % heads:
            raise ValueError(f"heads={heads} must divide width={width}")
        self.dim, self.n_perturbations = int(dim), int(n_perturbations)
        self.noise = SinusoidalEmbedding(width, embed_dim=embed_dim)
        self.pert = nn.Embedding(n_perturbations, width)
        self.summary = nn.Sequential(nn.Linear(2 * dim, width), nn.SiLU(), nn.Linear(width, width))
        self.ctrl_in = nn.Linear(dim, width)
        self.x_in = nn.Linear(dim, width)
        self.anchor_in = nn.Sequential(nn.Linear(2 * dim, width), nn.SiLU(),
                                       nn.Linear(width, width))  # fmt: skip
        self.kind = nn.Parameter(torch.randn(2, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def check_cond(self, x: Tensor, cond: Any) -> None:
        """``ValueError`` unless ``cond`` fits ``x`` (keys, shapes, perturbation range)."""
        if not isinstance(cond, Mapping) or {"control", "anchor", "perturbation"} - set(cond):
            raise ValueError("PopulationNet needs cond={'control': (B,M,d), 'anchor': (B,N,d), "
                             "'perturbation': (B,)}")  # fmt: skip
        c, a, p = cond["control"], cond["anchor"], cond["perturbation"]
        if x.dim() != 3 or x.shape[2] != self.dim or c.shape[0] != x.shape[0] or a.shape != x.shape:
            raise ValueError(f"PopulationNet: x {tuple(x.shape)} / control {tuple(c.shape)} / "
                             f"anchor {tuple(a.shape)}")  # fmt: skip
        if p.min() < 0 or p.max() >= self.n_perturbations:
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

    def __init__(self, net: PopulationNet, *, sigma_data: float = 0.5, train_sigma: Any = None,
                 linear: str = "sgd", ridge: float = 1.0, mean_hidden: int = 0,
                 mean_depth: int = 3, mean_sigma_data: float | None = None,
                 mean_train_sigma: Any = None, mean_loss_weight: float = 1.0) -> None:  # fmt: skip
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

    def deviation_loss(self, x0: Tensor, rng: Any, *, cond: Mapping[str, Tensor]
                       ) -> tuple[Tensor, Tensor]:  # fmt: skip
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

    def mean_loss(self, x0: Tensor, rng: Any, *, cond: Mapping[str, Tensor],
                  noise: Tensor) -> Tensor:  # fmt: skip
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


def tree_init(x: np.ndarray, time: np.ndarray, parent: list[int], *, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Initial latents for :class:`LineageDiffusion`: depth bands of an initial pseudotime,
    split top-down by k-means (divisive hierarchical clustering).

    ``time`` (e.g. scanpy's DPT pseudotime) is rank-normalised to [0, 1]; depth ``l`` of a
    tree with ``L + 1`` levels holds the cells with rank time in ``[l/(L+1), (l+1)/(L+1))``;
    the deeper cells of each node's subtree are split among its children by k-means (sklearn)
    on the expression. Returns ``(node0, tau0)``, ``tau0`` the position within the node's band.
    """
    from scipy.stats import rankdata
    from sklearn.cluster import KMeans

    parent = list(parent)
    depth = _depths(parent)
    levels = max(depth) + 1
    t = (rankdata(np.asarray(time, np.float64)) - 1) / max(len(time) - 1, 1)
    lvl = np.minimum((t * levels).astype(int), levels - 1)
    node = np.zeros(len(x), dtype=int)
    children = {v: [c for c in range(len(parent)) if parent[c] == v] for v in range(len(parent))}

    def split(v: int, idx: np.ndarray) -> None:
        kids = children[v]
        deeper = idx[lvl[idx] > depth[v]]
        node[idx[lvl[idx] <= depth[v]]] = v
        if not kids or len(deeper) == 0:
            node[deeper] = v
            return
        k = min(len(kids), len(deeper))
        lab = KMeans(k, n_init=10, random_state=seed).fit_predict(x[deeper]) if k > 1 else (
            np.zeros(len(deeper), dtype=int))  # fmt: skip
        for j in range(k):
            split(kids[j], deeper[lab == j])

    split(0, np.arange(len(x)))
    tau = t * levels - np.array([depth[v] for v in node])
    return node, np.clip(tau, 0.0, 1.0)


def _depths(parent: list[int]) -> list[int]:
    out = []
    for v in range(len(parent)):
        k, a = 0, parent[v]
        while a >= 0:
            k, a = k + 1, parent[a]
        out.append(k)
    return out


class TreeCodebook(nn.Module):
    """A complete tree (``branching`` children per node, ``depth`` levels below the root) of
    learned vectors; ``code(v, tau)`` = sum of the vectors on the root..v path, plus ``tau``
    features ``[tau, sin(pi k tau), cos(pi k tau)]_{k=1..4}``."""

    n_tau_features = 9

    def __init__(self, *, depth: int = 2, branching: int = 2, dim: int = 32) -> None:
        super().__init__()
        parent = [-1]
        frontier = [0]
        for _ in range(depth):
            nxt = []
            for v in frontier:
                for _ in range(branching):
                    parent.append(v)
                    nxt.append(len(parent) - 1)
            frontier = nxt
        self.parent = parent
        self.depth = _depths(parent)
        k = len(parent)
        path = torch.zeros(k, k)
        for v in range(k):
            a = v
            while a >= 0:
                path[v, a] = 1.0
                a = parent[a]
        self.register_buffer("path", path)
        self.register_buffer("node_depth", torch.tensor(self.depth, dtype=torch.float32))
        self.vectors = nn.Parameter(torch.randn(k, dim) * 0.5)
        self.dim = dim

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def cond_dim(self) -> int:
        return self.dim + self.n_tau_features

    def code(self, node: Tensor, tau: Tensor) -> Tensor:
        v = self.path[node] @ self.vectors
        k = torch.arange(1, 5, device=tau.device, dtype=tau.dtype)
        a = math.pi * tau[:, None] * k
        return torch.cat([v, tau[:, None], a.sin(), a.cos()], -1)


class LineageDiffusion(nn.Module):
    """Diffusion model of cells conditioned on a tree codebook latent (module docstring)."""

    def __init__(self, n_genes: int, *, depth: int = 2, branching: int = 2, code_dim: int = 32,
                 hidden: int = 128, layers: int = 3, sigma_data: float = 0.5, tau_grid: int = 11,
                 em_sigmas: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8),
                 em_after: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.codebook = TreeCodebook(depth=depth, branching=branching, dim=code_dim)
        net = MLPDenoiser(n_genes, hidden=hidden, depth=layers, cond_dim=self.codebook.cond_dim)
        self.denoiser = KarrasDenoiser(net, sigma_data=sigma_data)
        self.n_genes, self.tau_grid = n_genes, int(tau_grid)
        self.em_after = None if em_after is None else int(em_after)
        self.register_buffer("em_sigmas", torch.tensor(em_sigmas, dtype=torch.float32))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def candidate_losses(self, x: Tensor, noise: Tensor, nodes: Tensor, taus: Tensor) -> Tensor:
        """Weighted EDM loss of every cell under every candidate latent ``(nodes[j], taus[j])``.

        ``noise`` is ``(n, S, genes)``, one standard normal draw per sigma in ``em_sigmas``,
        shared by all candidates (common random numbers). Returns ``(n, C)``.
        """
        n, s = x.shape[0], len(self.em_sigmas)
        cands = len(nodes)
        code = self.codebook.code(nodes, taus)  # (C, cdim)
        sig = self.em_sigmas.to(x)
        xn = x[:, None] + sig[None, :, None] * noise  # (n, S, g)
        xb = xn[:, None].expand(n, cands, s, -1).reshape(-1, self.n_genes)
        cb = code[None, :, None].expand(n, cands, s, -1).reshape(-1, code.shape[-1])
        sb = sig[None, None].expand(n, cands, s).reshape(-1)
        d = self.denoiser(xb, sb, cb).reshape(n, cands, s, -1)
        w = self.denoiser.loss_weight(sig)
        err = ((d - x[:, None, None]) ** 2).mean(-1) * w
        return err.mean(-1)

    def grid(self, tau_grid: int | None = None, device=None) -> tuple[Tensor, Tensor]:
        t = torch.linspace(0, 1, tau_grid or self.tau_grid, device=device)
        k = self.codebook.n_nodes
        nodes = torch.arange(k, device=device).repeat_interleave(len(t))
        return nodes, t.repeat(k)

    @torch.no_grad()
    def assign(self, x: Tensor, *, noise: Tensor, tau_grid: int | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """E-step: the ``(node, tau)`` of every cell with the lowest candidate loss, and that
        loss. ``noise`` as in :meth:`candidate_losses` (average several calls to reduce
        variance)."""
        nodes, taus = self.grid(tau_grid, device=x.device)
        losses = self.candidate_losses(x, noise, nodes, taus)
        best = losses.argmin(1)
        return nodes[best], taus[best], losses.gather(1, best[:, None])[:, 0]

    def pseudotime(self, node: Tensor, tau: Tensor) -> Tensor:
        """``(depth(node) + tau) / (max depth + 1)``."""
        d = self.codebook.node_depth[node]
        return (d + tau) / (self.codebook.node_depth.max() + 1)

    def loss(self, x: Tensor, node0: Tensor, tau0: Tensor, rng) -> Tensor:
        """EDM loss of the batch under its latents: the initial ones, or (after ``em_after``
        steps, if not None) the E-step's under the current model (hard EM)."""
        if self.em_after is not None and int(self.steps_seen) >= self.em_after:
            noise = rng.randn((x.shape[0], len(self.em_sigmas), self.n_genes), device=x.device)
            node, tau, _ = self.assign(x, noise=noise)
        else:
            node, tau = node0.long(), tau0.to(x.dtype)
        if self.training:
            self.steps_seen += 1
        return edm_loss(self.denoiser, x, rng, cond=self.codebook.code(node, tau))


class SingleCellModel(nn.Module):
    """Both models in one module for the core's training loop (one forward = the joint loss).

    ``forward(batch, rng)`` returns ``{"loss", "loss_perturbation", "loss_lineage"}``; the
    batch is what :class:`~diffsci.domains.singlecell.task.SingleCellTask.train_dataset`
    yields.
    """

    def __init__(self, perturbation: nn.Module, lineage: LineageDiffusion, *,
                 lineage_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.perturbation = perturbation
        self.lineage = lineage
        self.lineage_weight = float(lineage_weight)

    def forward(self, batch: Mapping[str, Tensor], rng: Any) -> dict[str, Tensor]:
        cond = {k: batch[k] for k in ("control", "anchor", "perturbation")}
        if self.training and hasattr(self.perturbation, "fit_linear"):
            self.perturbation.fit_linear(batch["population"], cond)
        pert, x0 = self.perturbation, batch["population"]
        own_mean = getattr(pert, "mean_train_sigma", None) is not None
        if own_mean:
            lp, noise = pert.deviation_loss(x0, rng, cond=cond)
        else:
            lp = edm_loss(pert, x0, rng, cond=cond)
        cells = batch["cells"].flatten(0, 1)
        ll = self.lineage.loss(cells, batch["node0"].flatten(), batch["tau0"].flatten(), rng)
        if own_mean:
            # drawn after the lineage loss: the lineage model sees the same random stream
            # as in the joint loss without the mean head's own noise level
            lp = lp + pert.mean_loss(x0, rng, cond=cond, noise=noise)
        return {"loss": lp + self.lineage_weight * ll, "loss_perturbation": lp.detach(),
                "loss_lineage": ll.detach()}  # fmt: skip
