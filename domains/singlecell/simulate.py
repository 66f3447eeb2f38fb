"""Offline benchmark data with known ground truth: a perturbation simulator on scanpy's bundled
``pbmc68k_reduced`` and the ``krumsiek11`` myeloid lineage.

Perturbation model (per perturbation ``p``, cell ``i``, population hidden factor ``h``)
-----------------------------------------------------------------------------------------
Expression is the log-normalised ``.raw`` of ``pbmc68k_reduced`` (700 cells, 765 genes).
A perturbation is a gene program:

- *induced* genes ``U_p``: ``x_ig += h * g_i * a * w_g`` (``a`` = effect size, ``w_g`` in
  [0.5, 1.5]); the gain ``g_i = 0.5 + sigmoid(s * z_i)`` depends on the cell's baseline state:
  ``z_i`` is the standardised mean expression of the program's *responder* genes ``R_p``
  (cell-type markers), so the size of the response depends on the cell type through
  something visible in control cells (biologically: response depends on the baseline
  program);
- *repressed* genes ``D_p``: ``x_ig *= 1 - min(0.95, h * f_g)`` (``f_g`` in [0.3, 0.7]), a
  knock-down proportional to baseline expression;
- noise ``N(0, noise^2)`` on the program's genes, then clipping at 0 (log expression);
- ``h ~ LogNormal(0, hidden_sd^2)`` is drawn once per *population* (a hidden batch factor):
  every cell of a population shares it, it is never observable, and the truth of a held-out
  (cell type, perturbation) pair is a distribution over ``h``.

Populations are drawn by resampling (with replacement) the cells of one cell type from a pool
disjoint from the control pool (each cell type's cells are split in two halves): control and
perturbed populations are never paired cells.

Lineage data
------------
``krumsiek11`` (Krumsiek et al. 2011, scanpy's bundled simulation): 640 cells, 11 genes, four
simulated trajectories of 160 time-ordered cells (80 progenitor, then 80 of a fate Mo, Ery, Mk,
Neu). The ground truth is the fate label and the position in the trajectory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .io import dense

__all__ = [
    "Program",
    "PerturbationSimulator",
    "PerturbationData",
    "load_pbmc",
    "split_pools",
    "simulate_populations",
    "perturbation_data",
    "oracle_populations",
    "load_krumsiek11",
]


@dataclass
class Program:
    """One perturbation's gene program (gene names, per-gene effects, responder genes)."""

    name: str
    up: list[str]
    up_weight: list[float]
    down: list[str]
    down_frac: list[float]
    responders: list[str]
    resp_mean: float
    resp_std: float


@dataclass
class PerturbationSimulator:
    """Applies gene-program perturbations to log-normalised expression (module docstring)."""

    genes: list[str]
    programs: dict[str, Program]
    effect_size: float = 1.5
    gain_slope: float = 1.5
    hidden_sd: float = 0.3
    noise: float = 0.1
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {g: i for i, g in enumerate(self.genes)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_adata(
        cls,
        adata: AnnData,
        *,
        n_perturbations: int = 3,
        n_up: int = 40,
        n_down: int = 30,
        n_responders: int = 10,
        cell_type_key: str = "cell_type",
        seed: int = 0,
        **kwargs: Any,
    ) -> PerturbationSimulator:
        """Draw ``n_perturbations`` disjoint programs from the genes of ``adata``.

        Induced genes come from the lower half of mean expression (so induction is visible),
        repressed genes from the 150 most expressed, responders from the 60 genes whose mean
        differs most between cell types (so the gain varies by cell type).

        Parameters
        ----------
        adata
            Log-normalised expression with cell types in ``obs[cell_type_key]``.
        n_perturbations, n_up, n_down, n_responders
            Programs, and induced, repressed and responder genes per program.
        seed
            Seed of the gene and weight draws.
        **kwargs
            The simulator's other fields (``effect_size``, ``gain_slope``, ``hidden_sd``,
            ``noise``).
        """
        rng = np.random.default_rng(seed)
        x = dense(adata.X)
        genes = list(map(str, adata.var_names))
        mean = x.mean(0)
        order = np.argsort(mean)
        low = list(order[: len(order) // 2])
        high = list(order[::-1][:150])
        types = adata.obs[cell_type_key].astype(str).values
        tmeans = np.stack([x[types == t].mean(0) for t in np.unique(types)])
        markers = list(np.argsort(tmeans.var(0))[::-1][:60])
        used: set[int] = set()
        programs = {}
        for k in range(n_perturbations):

            def pick(pool, n):
                cand = [g for g in pool if g not in used]
                if len(cand) < n:
                    raise ValueError(f"not enough genes for {n_perturbations} programs")
                out = list(rng.choice(cand, size=n, replace=False))
                used.update(out)
                return out

            resp = pick(markers, n_responders)
            up, down = pick(low, n_up), pick(high, n_down)
            r = x[:, resp].mean(1)
            name = f"P{k + 1}"
            programs[name] = Program(
                name=name,
                up=[genes[i] for i in up],
                up_weight=rng.uniform(0.5, 1.5, n_up).round(4).tolist(),
                down=[genes[i] for i in down],
                down_frac=rng.uniform(0.3, 0.7, n_down).round(4).tolist(),
                responders=[genes[i] for i in resp],
                resp_mean=float(r.mean()),
                resp_std=float(r.std() + 1e-8),
            )
        return cls(genes=genes, programs=programs, **kwargs)

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k != "_index"}
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> PerturbationSimulator:
        d = json.loads(text)
        d["programs"] = {k: Program(**v) for k, v in d["programs"].items()}
        return cls(**d)

    # ------------------------------------------------------------------ simulation
    def _idx(self, names: list[str]) -> np.ndarray:
        return np.array([self._index[g] for g in names], dtype=int)

    def program(self, perturbation: str) -> Program:
        if perturbation not in self.programs:
            raise KeyError(
                f"unknown perturbation {perturbation!r}; known: {', '.join(self.programs)}"
            )
        return self.programs[perturbation]

    def gain(self, x: np.ndarray, perturbation: str) -> np.ndarray:
        """Per-cell response gain ``0.5 + sigmoid(s z)`` from the responder genes, ``(n,)``."""
        p = self.program(perturbation)
        z = (x[:, self._idx(p.responders)].mean(1) - p.resp_mean) / p.resp_std
        return 0.5 + 1.0 / (1.0 + np.exp(-self.gain_slope * z))

    def draw_hidden(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray | float:
        """Hidden batch factor(s) ``h ~ LogNormal(0, hidden_sd^2)``."""
        return rng.lognormal(0.0, self.hidden_sd, size=n)

    def apply(
        self, x: np.ndarray, perturbation: str, *, hidden: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Perturbed copy of ``x`` (cells x genes, log-normalised) with hidden factor ``hidden``."""
        p = self.program(perturbation)
        x = np.array(x, dtype=np.float64, copy=True)
        up, down = self._idx(p.up), self._idx(p.down)
        g = self.gain(x, perturbation)
        x[:, up] += hidden * g[:, None] * self.effect_size * np.asarray(p.up_weight)[None]
        x[:, down] *= 1.0 - np.minimum(0.95, hidden * np.asarray(p.down_frac))[None]
        cols = np.concatenate([up, down])
        x[:, cols] += rng.normal(0.0, self.noise, (x.shape[0], len(cols)))
        return np.maximum(x, 0.0)


# ---------------------------------------------------------------------- data sets
def load_pbmc(
    path: str | None = None,
    *,
    min_cells: int = 30,
    cell_type_key: str = "bulk_labels",
    counts: str = "refuse",
    target_sum: float = 1e4,
) -> AnnData:
    """Log-normalised expression with a cell type per cell, as a dense AnnData.

    Parameters
    ----------
    path
        ``None``: scanpy's bundled ``pbmc68k_reduced``, its ``.raw`` (765 genes). Else an
        ``.h5ad`` whose ``.raw`` holds log-normalised expression (as pbmc68k_reduced), or 10x
        counts (``.h5`` / mtx directory, then normalised to 1e4 per cell and ``log1p``-ed with
        scanpy). The file is only read.
    min_cells
        Cell types with fewer cells are dropped (too few to split into control and perturbed
        pools).
    cell_type_key
        The ``obs`` column with the cell types; copied to ``obs["cell_type"]``.
    counts, target_sum
        An ``.h5ad`` whose ``.raw`` holds integer counts instead (:func:`.io.is_counts`), or
        non-negative values above :data:`.io.LOG_MAX` (counts never ``log1p``-ed), is refused
        (``"refuse"``, naming the file and the fix) or normalised to ``target_sum`` per cell
        and ``log1p``-ed (``"normalise"``).
    """
    import scanpy as sc

    from .io import check_finite, is_counts, read, read_expression, require_raw, unlogged_max

    if path is None:
        src = sc.datasets.pbmc68k_reduced()
        what = "scanpy's pbmc68k_reduced"
    else:
        src = read(path)
        what = str(path)
    if path is None or str(path).endswith(".h5ad"):
        raw = require_raw(src, what=what)
        if is_counts(raw.X) or unlogged_max(raw.X) is not None:
            raw = read_expression(src, what=what, counts=counts, target_sum=target_sum)
    else:
        raw = src.copy()
        sc.pp.normalize_total(raw, target_sum=1e4)
        sc.pp.log1p(raw)
    check_finite(raw, what=what)
    if cell_type_key not in src.obs:
        raise KeyError(f"{what}: no obs column {cell_type_key!r} with cell types")
    ad = AnnData(
        X=dense(raw.X).astype(np.float32),
        obs=pd.DataFrame(
            {"cell_type": src.obs[cell_type_key].astype(str).values},
            index=[f"cell{i}" for i in range(src.n_obs)],
        ),
        var=pd.DataFrame(index=list(map(str, raw.var_names))),
    )
    counts = ad.obs["cell_type"].value_counts()
    keep = counts[counts >= min_cells].index
    return ad[ad.obs["cell_type"].isin(keep)].copy()


def split_pools(adata: AnnData, *, seed: int = 0) -> tuple[AnnData, AnnData]:
    """Split every cell type's cells in two halves: the control pool and the perturbed pool."""
    rng = np.random.default_rng(seed)
    ctrl, pert = [], []
    for t in sorted(adata.obs["cell_type"].unique()):
        idx = np.flatnonzero(adata.obs["cell_type"].values == t)
        idx = rng.permutation(idx)
        half = len(idx) // 2
        ctrl += list(idx[:half])
        pert += list(idx[half:])
    c = adata[np.sort(ctrl)].copy()
    p = adata[np.sort(pert)].copy()
    c.obs["condition"] = "control"
    c.obs["perturbation"] = "control"
    return c, p


def simulate_populations(
    sim: PerturbationSimulator,
    pool: AnnData,
    *,
    cell_type: str | Sequence[str],
    perturbation: str,
    n_populations: int,
    n_cells: int,
    rng: np.random.Generator,
    prefix: str = "pop",
    mixture: bool = False,
) -> AnnData:
    """``n_populations`` perturbed populations of ``n_cells`` cells of ``cell_type``.

    Each population resamples the pool's cells of that type (with replacement), draws its own
    hidden factor and applies the perturbation.

    Parameters
    ----------
    sim, perturbation
        The simulator and the program to apply.
    pool
        The cells to resample (``obs["cell_type"]``).
    cell_type
        One cell type, or several with ``mixture=True``: each population then mixes them with
        proportions drawn from a flat Dirichlet (training augmentation: cell compositions
        between the cell types, each cell responding by its own state).
    n_populations, n_cells
        Populations and cells per population.
    rng
        Every draw (hidden factors, proportions, cells, noise), in that order per population.
    prefix
        Start of the population ids and cell names.

    Returns
    -------
    AnnData
        ``obs`` holds each cell's ``cell_type``, ``perturbation``, ``condition``,
        ``population`` and the ground-truth ``hidden_factor``.
    """
    types = [cell_type] if isinstance(cell_type, str) else list(cell_type)
    idx = {t: np.flatnonzero(pool.obs["cell_type"].values == t) for t in types}
    for t, i in idx.items():
        if len(i) == 0:
            raise KeyError(f"no cells of cell type {t!r} in the pool")
    sim.program(perturbation)
    xs, obs = [], []
    x_pool = dense(pool.X)
    for k in range(n_populations):
        h = float(sim.draw_hidden(rng))
        w = rng.dirichlet(np.ones(len(types))) if mixture else np.eye(len(types))[0]
        counts = rng.multinomial(n_cells, w)
        take = np.concatenate(
            [rng.choice(idx[t], size=c, replace=True) for t, c in zip(types, counts, strict=True)]
        )
        xs.append(sim.apply(x_pool[take], perturbation, hidden=h, rng=rng))
        name = "+".join(t for t, c in zip(types, counts, strict=True) if c) if mixture else types[0]
        pid = f"{prefix}:{name}:{perturbation}:{k}"
        obs.append(
            pd.DataFrame(
                {
                    "cell_type": pool.obs["cell_type"].values[take],
                    "perturbation": perturbation,
                    "condition": "perturbed",
                    "population": pid,
                    "hidden_factor": h,
                },
                index=range(n_cells),
            )
        )
    o = pd.concat(obs, ignore_index=True)
    o.index = [f"{prefix}{i}" for i in range(len(o))]
    return AnnData(
        X=np.concatenate(xs).astype(np.float32),
        obs=o,
        var=pd.DataFrame(index=pool.var_names.copy()),
    )


@dataclass
class PerturbationData:
    """The perturbation benchmark's data (:func:`perturbation_data`)."""

    #: the ground-truth gene programs
    simulator: PerturbationSimulator
    #: half of every cell type's cells, unperturbed (``obs["condition"] = "control"``)
    control: AnnData
    #: perturbed populations of every cell type but the held-out one (and mixtures)
    train: AnnData
    #: perturbed populations of the held-out cell type (hidden-factor draws)
    truth: AnnData


def perturbation_data(
    adata: AnnData,
    *,
    held_out: str,
    seed: int,
    n_perturbations: int,
    n_up: int,
    n_down: int,
    n_responders: int,
    effect_size: float,
    hidden_sd: float,
    noise: float,
    train_populations: int,
    mixture_populations: int,
    test_draws: int,
    n_cells: int,
) -> PerturbationData:
    """The held-out cell type benchmark: programs, control pool, training and test populations.

    Draws the programs (:meth:`PerturbationSimulator.from_adata`), splits every cell type's
    cells into a control and a perturbed pool (:func:`split_pools`) and simulates, on the
    perturbed pool, ``train_populations`` populations per (training cell type, perturbation),
    ``mixture_populations`` per perturbation mixing the training cell types (augmentation: the
    condition -> response map is then learnt between cell types) and ``test_draws``
    hidden-factor draws per perturbation of the held-out cell type (the truth).

    Parameters
    ----------
    adata
        Log-normalised expression with ``obs["cell_type"]`` (:func:`load_pbmc`).
    held_out
        The cell type never seen perturbed.
    seed
        Seeds the programs and the pools (``seed``), the training populations (``seed + 1``)
        and the truth of the ``k``-th perturbation (``seed + 2 + k``).
    n_perturbations, n_up, n_down, n_responders, effect_size, hidden_sd, noise
        The simulator's settings.
    train_populations, mixture_populations, test_draws, n_cells
        Populations to simulate and cells per population.
    """
    import anndata as ad

    sim = PerturbationSimulator.from_adata(
        adata,
        n_perturbations=n_perturbations,
        n_up=n_up,
        n_down=n_down,
        n_responders=n_responders,
        seed=seed,
        effect_size=effect_size,
        hidden_sd=hidden_sd,
        noise=noise,
    )
    control, pool = split_pools(adata, seed=seed)
    rng = np.random.default_rng(seed + 1)
    types = sorted(set(adata.obs["cell_type"]) - {held_out})
    kw = {"n_cells": n_cells, "rng": rng}
    train = [
        simulate_populations(
            sim,
            pool,
            cell_type=t,
            perturbation=q,
            n_populations=train_populations,
            prefix="train",
            **kw,
        )
        for t in types
        for q in sim.programs
    ]
    if mixture_populations:
        train += [
            simulate_populations(
                sim,
                pool,
                cell_type=types,
                perturbation=q,
                n_populations=mixture_populations,
                prefix="mix",
                mixture=True,
                **kw,
            )
            for q in sim.programs
        ]
    truth = [
        simulate_populations(
            sim,
            pool,
            cell_type=held_out,
            perturbation=q,
            n_populations=test_draws,
            n_cells=n_cells,
            rng=np.random.default_rng(seed + 2 + k),
            prefix="truth",
        )
        for k, q in enumerate(sim.programs)
    ]
    return PerturbationData(
        simulator=sim,
        control=control,
        train=ad.concat(train, index_unique="-"),
        truth=ad.concat(truth, index_unique="-"),
    )


def oracle_populations(
    sim: PerturbationSimulator,
    control: AnnData,
    *,
    cell_type: str,
    perturbation: str,
    n_populations: int,
    n_cells: int,
    seed: int,
) -> AnnData:
    """The simulator's own ground truth applied to ``cell_type``'s *control* cells.

    Not a method (it knows the gene program, the gains and the hidden-factor distribution):
    the ceiling of any prediction made from the control pool, which holds other cells of the
    cell type than the perturbed pool the truth was simulated on. ``n_populations``
    populations as :func:`simulate_populations` draws them (cells resampled with replacement,
    a fresh hidden factor each, from a generator seeded with ``seed``), ``obs["sample"]``
    naming the population and ``obs["condition"] = "oracle"``.
    """
    pop = simulate_populations(
        sim,
        control,
        cell_type=cell_type,
        perturbation=perturbation,
        n_populations=n_populations,
        n_cells=n_cells,
        rng=np.random.default_rng(seed),
        prefix="oracle",
    )
    pop.obs["sample"] = pop.obs["population"].values
    pop.obs["condition"] = "oracle"
    return pop


def load_krumsiek11() -> AnnData:
    """scanpy's ``krumsiek11`` with ground truth.

    ``obs``: ``fate`` (the bundled ``cell_type``: progenitor, Mo, Ery, Mk, Neu),
    ``trajectory`` (the fate its trajectory ends in), ``true_time`` (position within the
    trajectory, 0..1); ``uns["iroot"]`` (the stem cell DPT starts from).
    """
    import scanpy as sc

    src = sc.datasets.krumsiek11()
    n = src.n_obs
    length = 160
    if n % length:
        raise ValueError(f"krumsiek11 has {n} cells, expected trajectories of {length}")
    pos = np.arange(n) % length
    traj_id = np.arange(n) // length
    fate = src.obs["cell_type"].astype(str).values
    ends = [fate[(k + 1) * length - 1] for k in range(n // length)]
    ad = AnnData(
        X=dense(src.X).astype(np.float32),
        obs=pd.DataFrame(
            {
                "fate": pd.Categorical(fate),
                "trajectory": pd.Categorical([ends[k] for k in traj_id]),
                "true_time": pos / (length - 1),
            },
            index=[f"cell{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=list(map(str, src.var_names))),
    )
    ad.uns["iroot"] = int(src.uns["iroot"])
    return ad
