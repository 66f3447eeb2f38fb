"""Tools, scanpy style: AnnData in, AnnData out, keyword-only options, ``key_added``, ``copy``.

- :func:`fit_latent` / :func:`encode` / :func:`decode`: the PCA latent the population model
  works in (scanpy's ``pp.pca``; basis in ``.varm``, mean and scale in ``.uns``).
- :func:`predict_perturbation`: sampled perturbed populations of one (cell type,
  perturbation) from that cell type's control cells (a new AnnData of predicted cells);
  :func:`identity_baseline`, :func:`mean_shift_baseline`: the baselines always reported.
- :func:`lineage`: branch, pseudotime and hierarchy of every cell from the tree-codebook
  diffusion model (``.obs``, ``.obsm``, ``.uns``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from .io import check_finite, dense, require_obs_value
from .models import anchor_index

__all__ = [
    "fit_latent",
    "encode",
    "decode",
    "predict_perturbation",
    "identity_baseline",
    "mean_shift_baseline",
    "lineage",
]


def _latent(adata: AnnData, key: str) -> dict[str, Any]:
    if key not in adata.uns or f"{key}_PCs" not in adata.varm:
        raise KeyError(f"adata has no latent {key!r} (.uns[{key!r}] and .varm['{key}_PCs']): "
                       "run tl.fit_latent first")  # fmt: skip
    return adata.uns[key]


def fit_latent(adata: AnnData, *, n_comps: int = 30, key_added: str = "perturbation_latent",
               perturbations: list[str] | None = None, copy: bool = False) -> AnnData | None:  # fmt: skip
    """Fit the PCA latent on ``adata.X`` (log-normalised) with ``scanpy.pp.pca``.

    Writes ``.varm[f"{key_added}_PCs"]`` (genes x n_comps), ``.obsm[f"X_{key_added}"]``
    (scaled coordinates) and ``.uns[key_added]`` = ``{"mean", "scale", "genes",
    "perturbations"}``; ``scale`` is the root mean variance of the PCA coordinates.
    """
    import scanpy as sc

    check_finite(adata)
    adata = adata.copy() if copy else adata
    tmp = AnnData(dense(adata.X).astype(np.float32))
    sc.pp.pca(tmp, n_comps=n_comps, zero_center=True, random_state=0)
    pcs = np.asarray(tmp.varm["PCs"], np.float64)
    mean = dense(adata.X).mean(0)
    z = (dense(adata.X) - mean) @ pcs
    scale = float(np.sqrt((z**2).mean()))
    adata.varm[f"{key_added}_PCs"] = pcs
    adata.obsm[f"X_{key_added}"] = z / scale
    adata.uns[key_added] = {"mean": mean, "scale": scale,
                            "genes": np.asarray(adata.var_names, dtype=str),
                            "perturbations": np.asarray(perturbations or [], dtype=str)}  # fmt: skip
    return adata if copy else None


def _basis(reference: AnnData, key: str) -> tuple[np.ndarray, np.ndarray, float, list[str]]:
    info = _latent(reference, key)
    return (np.asarray(reference.varm[f"{key}_PCs"], np.float64),
            np.asarray(info["mean"], np.float64), float(info["scale"]),
            list(map(str, info["genes"])))  # fmt: skip


def _genes_of(adata: AnnData, genes: list[str], what: str) -> np.ndarray:
    """``adata.X`` restricted to ``genes`` in that order; ``KeyError`` naming absent genes."""
    have = {g: i for i, g in enumerate(map(str, adata.var_names))}
    missing = [g for g in genes if g not in have]
    if missing:
        raise KeyError(f"{what}: {len(missing)} genes of the model absent, e.g. "
                       f"{', '.join(missing[:5])}")  # fmt: skip
    return dense(adata.X)[:, [have[g] for g in genes]]


def encode(adata: AnnData, reference: AnnData, *, key: str = "perturbation_latent",
           what: str = "adata") -> np.ndarray:  # fmt: skip
    """Scaled latent coordinates of ``adata``'s cells in ``reference``'s latent basis."""
    pcs, mean, scale, genes = _basis(reference, key)
    check_finite(adata, what=what)
    return (_genes_of(adata, genes, what) - mean) @ pcs / scale


def decode(z: np.ndarray, reference: AnnData, *, key: str = "perturbation_latent",
           residual: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Gene expression from scaled latent coordinates (plus a per-gene ``residual``)."""
    pcs, mean, scale, _ = _basis(reference, key)
    x = np.asarray(z, np.float64) * scale @ pcs.T + mean
    return x + residual if residual is not None else x


def _population_denoiser(model: nn.Module) -> nn.Module:
    return getattr(model, "perturbation", model)


def predict_perturbation(adata: AnnData, model: nn.Module, *, perturbation: str,
                         cell_type: str, cell_type_key: str = "cell_type",
                         reference: AnnData | None = None, key: str = "perturbation_latent",
                         n_samples: int = 8, n_cells: int = 64, n_control: int = 64,
                         steps: int = 30, sampler: str = "heun",
                         start_sigma: float | None = None, start: str = "zero",
                         sigma_max: float = 80.0, clip: bool = False, seed: int = 0,
                         device: str | torch.device = "cpu", progress: bool = False
                         ) -> AnnData:  # fmt: skip
    """Sample ``n_samples`` perturbed populations of ``cell_type`` under ``perturbation``.

    For every sample, ``n_control`` control cells of that cell type are drawn (with
    replacement) from ``adata`` as the condition and ``n_cells`` anchors among them (the
    condition itself when ``n_cells == n_control``); the model samples each anchor's
    displacement (:mod:`.models`), and a predicted cell is its anchor's expression plus the
    displacement decoded to genes (linear in the latent basis), so expression outside the
    latent comes from real control cells. ``clip``: clip the predicted log-expression at 0, the
    floor of the data (off by default: the pairing of anchors and perturbed cells is not exact
    per gene, so clipping biased the predicted means of repressed genes in a pilot, by about
    half of their repression). ``reference`` holds the latent basis and the perturbation vocabulary
    (default ``adata`` itself). ``start_sigma``: SDEdit-style warm start
    (:func:`diffsci.core.posterior.start_from`) from zero displacement (the anchors
    themselves) noised to ``start_sigma``; ``None`` samples from pure noise. ``start``: the
    centre of the initial noise, ``"zero"`` (zero displacement) or ``"linear"`` (the
    denoiser's linear response ``m`` of every anchor, :class:`.models.PopulationDenoiser`,
    which the denoiser tends to at large sigma). ``sigma_max``: the largest noise level of the
    Karras schedule.

    Returns a new AnnData (genes of the latent) with ``obs`` ``sample`` (population id),
    ``condition="predicted"``, ``cell_type``, ``perturbation`` and ``obsm["X_latent"]``; the
    input is not modified.
    """
    from diffsci.core.samplers import sample
    from diffsci.core.schedules import karras

    reference = adata if reference is None else reference
    info = _latent(reference, key)
    perts = list(map(str, info["perturbations"]))
    if perturbation not in perts:
        raise KeyError(
            f"unknown perturbation {perturbation!r}; the model knows: {', '.join(perts)}"
        )
    require_obs_value(adata, cell_type_key, cell_type, what="control adata")
    ctrl = adata[adata.obs[cell_type_key].astype(str).values == str(cell_type)]
    zc = encode(ctrl, reference, key=key, what="control adata")
    pcs, mean, scale, genes = _basis(reference, key)
    xc = _genes_of(ctrl, genes, "control adata").astype(np.float64)
    gen = np.random.default_rng(seed)
    take = np.stack([gen.choice(len(zc), n_control) for _ in range(n_samples)])
    pick = np.stack([anchor_index(n_control, n_cells, gen) for _ in range(n_samples)])
    anchor_idx = np.take_along_axis(take, pick, 1)
    if start not in ("zero", "linear"):
        raise ValueError(f"start must be 'zero' or 'linear', got {start!r}")
    den = _population_denoiser(model).to(device).eval()
    if start == "linear" and not hasattr(den, "linear_response"):
        raise ValueError(
            "start='linear' needs a denoiser with a linear_response (PopulationDenoiser)"
        )
    g = torch.Generator().manual_seed(seed)
    cond = {"control": torch.as_tensor(zc[take], dtype=torch.float32, device=device),
            "anchor": torch.as_tensor(zc[anchor_idx], dtype=torch.float32, device=device),
            "perturbation": torch.full((n_samples,), perts.index(perturbation), device=device)}  # fmt: skip
    shape = (n_samples, n_cells, zc.shape[1])
    sigmas = karras(steps, sigma_max=float(sigma_max))
    with torch.no_grad():
        if start_sigma is None and start == "zero":
            disp = sample(den, shape, sigmas, sampler=sampler, cond=cond, generator=g,
                          device=device, progress=progress)  # fmt: skip
        else:
            from diffsci.core.posterior import start_from

            x0 = torch.zeros(shape, dtype=torch.float32, device=device)
            if start == "linear":
                x0 = den.linear_response(cond).to(torch.float32)
            sigma_start = float(sigmas[0]) if start_sigma is None else float(start_sigma)
            disp = start_from(den, x0, sigmas, sigma_start=sigma_start, sampler=sampler,
                              cond=cond, generator=g)  # fmt: skip
    d = disp.cpu().double().numpy().reshape(-1, zc.shape[1])
    z = zc[anchor_idx.reshape(-1)] + d
    x = xc[anchor_idx.reshape(-1)] + d * scale @ pcs.T
    if clip:
        x = np.maximum(x, 0.0)
    obs = pd.DataFrame({"sample": np.repeat([f"sample{k}" for k in range(n_samples)], n_cells),
                        "condition": "predicted", "cell_type": str(cell_type),
                        "perturbation": perturbation})  # fmt: skip
    obs.index = [f"pred{i}" for i in range(len(obs))]
    out = AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    out.obsm["X_latent"] = z.astype(np.float32)
    out.uns["predict_perturbation"] = {"perturbation": perturbation, "cell_type": str(cell_type),
                                       "n_samples": n_samples, "n_cells": n_cells,
                                       "steps": steps, "sampler": sampler, "seed": seed,
                                       "start_sigma": start_sigma, "start": start,
                                       "sigma_max": float(sigma_max), "clip": clip}  # fmt: skip
    return out


def identity_baseline(adata: AnnData, *, cell_type: str, perturbation: str,
                      cell_type_key: str = "cell_type") -> AnnData:  # fmt: skip
    """The control cells of ``cell_type`` as the prediction of the perturbed population."""
    require_obs_value(adata, cell_type_key, cell_type, what="control adata")
    out = adata[adata.obs[cell_type_key].astype(str).values == str(cell_type)].copy()
    out.obs = pd.DataFrame({"condition": "identity", "cell_type": str(cell_type),
                            "perturbation": perturbation}, index=out.obs_names)  # fmt: skip
    return out


def mean_shift_baseline(adata: AnnData, perturbed: AnnData, *, cell_type: str,
                        perturbation: str, cell_type_key: str = "cell_type",
                        perturbation_key: str = "perturbation") -> AnnData:  # fmt: skip
    """Control cells of ``cell_type`` plus the mean perturbation shift of the other cell types.

    The shift of a cell type is ``mean(perturbed) - mean(control)`` per gene; the baseline adds
    the unweighted average of the shifts of every cell type in ``perturbed`` (other than
    ``cell_type``) that has both control and perturbed cells.
    """
    require_obs_value(perturbed, perturbation_key, perturbation, what="perturbed adata")
    if list(adata.var_names) != list(perturbed.var_names):
        raise ValueError("control and perturbed adata must have the same genes")
    pt = perturbed[perturbed.obs[perturbation_key].astype(str).values == perturbation]
    ctype = adata.obs[cell_type_key].astype(str).values
    shifts = []
    for t in sorted(set(pt.obs[cell_type_key].astype(str)) - {str(cell_type)}):
        if (ctype == t).any():
            xp = dense(pt[pt.obs[cell_type_key].astype(str).values == t].X).mean(0)
            shifts.append(xp - dense(adata.X[ctype == t]).mean(0))
    if not shifts:
        raise ValueError(f"no other cell type has control and {perturbation!r} cells")
    out = identity_baseline(adata, cell_type=cell_type, perturbation=perturbation,
                            cell_type_key=cell_type_key)  # fmt: skip
    out.X = (dense(out.X) + np.mean(shifts, 0)).astype(np.float32)
    out.obs["condition"] = "mean-shift"
    return out


def lineage(adata: AnnData, model: nn.Module, *, key_added: str = "lineage", tau_grid: int = 41,
            n_noise: int = 8, seed: int = 0, batch: int = 128, copy: bool = False
            ) -> AnnData | None:  # fmt: skip
    """Branch, pseudotime and hierarchy of every cell from the tree-codebook diffusion model.

    The E-step of :class:`~diffsci.domains.singlecell.models.LineageDiffusion` on a
    ``tau_grid`` grid, with the candidate losses averaged over ``n_noise`` common noise draws;
    ``tau`` is refined below the grid spacing by the vertex of the parabola through the best
    grid point and its two neighbours.
    Writes ``.obs[f"{key_added}_branch"]`` (node name: ``"root"``, ``"0"``, ``"01"``...),
    ``.obs[f"{key_added}_pseudotime"]`` (0..1), ``.obsm[f"X_{key_added}"]`` (the code
    vectors) and ``.uns[key_added]`` (``nodes``, ``parent``, ``depth``, ``node_of_cell``).
    """
    lin = getattr(model, "lineage", model)
    check_finite(adata)
    x = torch.as_tensor(dense(adata.X), dtype=torch.float32)
    if x.shape[1] != lin.n_genes:
        raise ValueError(f"adata has {x.shape[1]} genes, the lineage model {lin.n_genes}")
    adata = adata.copy() if copy else adata
    lin = lin.eval()
    g = torch.Generator().manual_seed(seed)
    nodes, taus = lin.grid(tau_grid)
    node = torch.empty(len(x), dtype=torch.long)
    tau = torch.empty(len(x))
    per = tau_grid
    step = 1.0 / (per - 1)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        tot = 0
        for _ in range(n_noise):
            noise = torch.randn((len(xb), len(lin.em_sigmas), lin.n_genes), generator=g)
            tot = tot + lin.candidate_losses(xb, noise, nodes, taus)
        best = tot.argmin(1)
        # sub-grid tau: vertex of the parabola through the best grid point and its neighbours
        j = best % per
        inner = (j > 0) & (j < per - 1)
        lo = tot.gather(1, (best - inner.long())[:, None])[:, 0]
        hi = tot.gather(1, (best + inner.long())[:, None])[:, 0]
        mid = tot.gather(1, best[:, None])[:, 0]
        curv = lo - 2 * mid + hi
        shift = torch.where(inner & (curv > 0), 0.5 * (lo - hi) / curv.clamp_min(1e-12),
                            torch.zeros_like(mid)).clamp(-0.5, 0.5)  # fmt: skip
        node[i : i + batch] = nodes[best]
        tau[i : i + batch] = (taus[best] + shift * step).clamp(0, 1)
    parent = lin.codebook.parent
    names = _node_names(parent)
    with torch.no_grad():
        code = lin.codebook.code(node, tau)
        pt = lin.pseudotime(node, tau)
    adata.obs[f"{key_added}_branch"] = pd.Categorical([names[v] for v in node.tolist()],
                                                      categories=names)  # fmt: skip
    adata.obs[f"{key_added}_pseudotime"] = pt.numpy().astype(np.float64)
    adata.obsm[f"X_{key_added}"] = code.numpy()
    adata.uns[key_added] = {"nodes": np.asarray(names, dtype=str),
                            "parent": np.asarray(parent, dtype=int),
                            "depth": np.asarray(lin.codebook.depth, dtype=int),
                            "node_of_cell": node.numpy().astype(int),
                            "tau": tau.numpy().astype(np.float64)}  # fmt: skip
    return adata if copy else None


def _node_names(parent: list[int]) -> list[str]:
    names = ["root"]
    count: dict[int, int] = {}
    for v in range(1, len(parent)):
        p = parent[v]
        k = count.get(p, 0)
        count[p] = k + 1
        names.append(("" if p == 0 else names[p]) + str(k))
    return names
