"""Lineage diffusion (HDTree-style): branches, pseudotime and a hierarchy of cells.

HDTree (Zang et al. 2023) learns a hierarchical (tree-structured) codebook in the latent space
of a diffusion model; each cell is assigned to a codebook entry and the tree of entries is the
cell hierarchy. :class:`LineageDiffusion` keeps that structure with the diffusion model as the
decoder of the codes: a tree of ``sum_l b^l`` nodes, each node ``v`` with a learned vector
``e_v``; a cell's latent is a node ``v`` and a position ``tau`` in ``[0, 1]`` along it, embedded
as ``code(v, tau) = [sum_{u on root..v} e_u, phi(tau)]`` (children share their ancestors'
vectors, which is what makes the codebook a tree). The denoiser ``D(x, sigma | code)`` is the
core's Karras-preconditioned MLP. Assignment (the E-step, the analogue of HDTree's
nearest-codeword lookup) picks the ``(v, tau)`` on a grid with the lowest EDM denoising loss,
i.e. the highest diffusion (ELBO-style) likelihood, with common random numbers across
candidates. Initial latents come from :func:`tree_init` (bands of scanpy's DPT pseudotime split
top-down by k-means, the classical divisive hierarchical clustering). The decoder is trained on
them in the core's loop; with ``em_after`` set, every batch is re-assigned by the E-step under
the current model after that many steps (hard EM). The configs use one EM round (``em_after:
null``): in the tiny run, hard EM with a weakly trained decoder drifted (the pseudotime lost its
correlation with the true time), so the latents are inferred once, at inference, by the E-step
of the trained decoder (:func:`lineage`). Branch = node, pseudotime = ``(depth(v) + tau) / (max
depth + 1)``, hierarchy = the codebook tree.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser, edm_loss
from diffsci.core.modelcard import Incompatible
from diffsci.core.networks import MLPDenoiser

from ..io import check_finite, dense
from .genes import GeneCodec

__all__ = ["TreeCodebook", "LineageDiffusion", "tree_init", "lineage_items", "lineage"]


def tree_init(
    x: np.ndarray, time: np.ndarray, parent: list[int], *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
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
        lab = (
            KMeans(k, n_init=10, random_state=seed).fit_predict(x[deeper])
            if k > 1
            else (np.zeros(len(deeper), dtype=int))
        )
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

    def __init__(
        self,
        n_genes: int,
        *,
        depth: int = 2,
        branching: int = 2,
        code_dim: int = 32,
        hidden: int = 128,
        layers: int = 3,
        sigma_data: float = 0.5,
        tau_grid: int = 11,
        em_sigmas: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8),
        em_after: int | None = None,
    ) -> None:
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
    def assign(
        self, x: Tensor, *, noise: Tensor, tau_grid: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
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


def lineage_items(
    x: np.ndarray,
    time: np.ndarray,
    parent: list[int],
    *,
    n_items: int,
    per_item: int,
    seed: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training items of :class:`LineageDiffusion`: ``n_items`` groups of ``per_item`` cells
    with their initial latents.

    Parameters
    ----------
    x
        Expression ``(n, genes)``.
    time
        An initial pseudotime of every cell (e.g. scanpy's DPT), for :func:`tree_init`.
    parent
        The codebook tree (:attr:`TreeCodebook.parent`).
    n_items, per_item
        Items and cells per item; the cells cycle through one permutation of all cells.
    seed
        :func:`tree_init`'s k-means seed.
    rng
        Draws the permutation.

    Returns
    -------
    cells, node0, tau0
        ``(n_items, per_item, genes)``, ``(n_items, per_item)`` and ``(n_items, per_item)``.
    """
    node0, tau0 = tree_init(x, time, parent, seed=seed)
    cell_idx = (np.arange(n_items * per_item) % len(x)).reshape(n_items, per_item)
    cell_idx = rng.permutation(len(x))[cell_idx]
    return x[cell_idx], node0[cell_idx], tau0[cell_idx]


def lineage(
    adata: AnnData,
    model: nn.Module,
    *,
    key_added: str = "lineage",
    tau_grid: int = 41,
    n_noise: int = 8,
    seed: int = 0,
    batch: int = 128,
    copy: bool = False,
    codec: GeneCodec | None = None,
) -> AnnData | None:
    """Branch, pseudotime and hierarchy of every cell from the tree-codebook diffusion model.

    The E-step of :class:`LineageDiffusion` on a ``tau_grid`` grid, with the candidate losses
    averaged over ``n_noise`` common noise draws; ``tau`` is refined below the grid spacing by
    the vertex of the parabola through the best grid point and its two neighbours.

    Parameters
    ----------
    adata
        Cells with the model's genes in ``X``.
    model
        A :class:`LineageDiffusion` (or a model holding one as ``.lineage``).
    key_added
        Writes ``.obs[f"{key_added}_branch"]`` (node name: ``"root"``, ``"0"``, ``"01"``...),
        ``.obs[f"{key_added}_pseudotime"]`` (0..1), ``.obsm[f"X_{key_added}"]`` (the code
        vectors) and ``.uns[key_added]`` (``nodes``, ``parent``, ``depth``, ``node_of_cell``,
        ``tau``).
    tau_grid, n_noise, seed, batch
        Grid size, noise draws (from a generator seeded with ``seed``), cells per batch.
    copy
        Return a modified copy instead of writing into ``adata``.
    codec
        The gene codec of a model trained on a user's files (:class:`.genes.GeneCodec`, from
        its model card: ``GeneCodec.from_card(read_card("model.pt"))``): ``adata``'s genes are
        selected by name and encoded. ``None``: ``X`` is the model's input as it is.

    Returns
    -------
    AnnData or None
        The copy if ``copy``, else ``None``.
    """
    lin = getattr(model, "lineage", model)
    check_finite(adata)
    x = torch.as_tensor(_inputs(adata, lin, codec), dtype=torch.float32)
    adata = adata.copy() if copy else adata
    lin = lin.eval()
    g = torch.Generator().manual_seed(seed)
    nodes, taus = lin.grid(tau_grid)
    node = torch.empty(len(x), dtype=torch.long)
    tau = torch.empty(len(x))
    step = 1.0 / (tau_grid - 1)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        tot = 0
        for _ in range(n_noise):
            noise = torch.randn((len(xb), len(lin.em_sigmas), lin.n_genes), generator=g)
            tot = tot + lin.candidate_losses(xb, noise, nodes, taus)
        best = tot.argmin(1)
        node[i : i + batch] = nodes[best]
        shift = _subgrid_shift(tot, best, tau_grid)
        tau[i : i + batch] = (taus[best] + shift * step).clamp(0, 1)
    _write_lineage(adata, lin, node, tau, key_added)
    return adata if copy else None


def _inputs(adata: AnnData, lin: LineageDiffusion, codec: GeneCodec | None) -> np.ndarray:
    """The model's input of every cell: ``codec``'s encoding, or ``X`` if it has the model's
    width; else :class:`~diffsci.core.modelcard.Incompatible` with the way forward."""
    if codec is not None:
        return codec.encode(adata, what="adata")
    if adata.n_vars != lin.n_genes:
        raise Incompatible(
            f"adata has {adata.n_vars} genes, the lineage model {lin.n_genes} inputs: "
            "a model trained on your files (source.kind: files) encodes genes by name, so pass "
            "codec=GeneCodec.from_card(read_card(model_path)); a model trained on the demo "
            "data serves krumsiek11's genes only (select them, or retrain on your data)"
        )
    return dense(adata.X)


def _subgrid_shift(tot: Tensor, best: Tensor, per: int) -> Tensor:
    """Offset (in grid steps, within +-0.5) of the vertex of the parabola through the best
    grid point of every cell and its two neighbours along tau (0 at the ends of a node's grid
    or where the parabola is not convex)."""
    j = best % per
    inner = (j > 0) & (j < per - 1)
    lo = tot.gather(1, (best - inner.long())[:, None])[:, 0]
    hi = tot.gather(1, (best + inner.long())[:, None])[:, 0]
    mid = tot.gather(1, best[:, None])[:, 0]
    curv = lo - 2 * mid + hi
    shift = torch.where(
        inner & (curv > 0), 0.5 * (lo - hi) / curv.clamp_min(1e-12), torch.zeros_like(mid)
    )
    return shift.clamp(-0.5, 0.5)


def _write_lineage(
    adata: AnnData, lin: LineageDiffusion, node: Tensor, tau: Tensor, key_added: str
) -> None:
    """Store the assignment ``(node, tau)`` of every cell in ``adata`` (see :func:`lineage`)."""
    parent = lin.codebook.parent
    names = _node_names(parent)
    with torch.no_grad():
        code = lin.codebook.code(node, tau)
        pt = lin.pseudotime(node, tau)
    adata.obs[f"{key_added}_branch"] = pd.Categorical(
        [names[v] for v in node.tolist()], categories=names
    )
    adata.obs[f"{key_added}_pseudotime"] = pt.numpy().astype(np.float64)
    adata.obsm[f"X_{key_added}"] = code.numpy()
    adata.uns[key_added] = {
        "nodes": np.asarray(names, dtype=str),
        "parent": np.asarray(parent, dtype=int),
        "depth": np.asarray(lin.codebook.depth, dtype=int),
        "node_of_cell": node.numpy().astype(int),
        "tau": tau.numpy().astype(np.float64),
    }


def _node_names(parent: list[int]) -> list[str]:
    """``"root"`` and, below it, each node's parent's name plus its index among the siblings
    (the root's children are ``"0"``, ``"1"``...)."""
    names = ["root"]
    count: dict[int, int] = {}
    for v in range(1, len(parent)):
        p = parent[v]
        k = count.get(p, 0)
        count[p] = k + 1
        names.append(("" if p == 0 else names[p]) + str(k))
    return names
