"""A user's perturbation screen (``source.kind: files`` with ``files.perturbation_key``) in the
pipeline's layout: control cells, training populations and the held-out cell type's truth.

The population model learns from sets of cells (PerturbDiff-style populations). A screen gives
cells, not sets: each (cell type, perturbation) of the training files is turned into
``train_populations`` populations of ``n_cells`` cells resampled with replacement (the
bootstrap, Efron 1979), and the held-out cell type's perturbed cells of the test files into
``test_draws`` such populations (the truth: the prediction is scored against the pooled cells,
the coverage against the spread of these resamples). Nothing is simulated: no oracle exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .io import dense, read, read_expression

__all__ = ["read_screen", "screen_data"]


def read_screen(paths: Sequence[Path], *, keys: Mapping[str, Any], opts: Mapping[str, Any]):
    """The cells of a screen's files: log-normalised ``X`` (:func:`.io.read_expression`),
    ``obs`` ``cell_type`` and ``perturbation`` (the control label replaced by ``"control"``).

    ``keys``: ``perturbation_key``, ``control_label``, ``cell_type_key``; ``opts``: the
    config's ``files`` block. Raises ``KeyError`` naming the file and the missing column,
    ``ValueError`` if the files' genes differ.
    """
    import anndata as ad

    parts = []
    for p in paths:
        cells = read_expression(
            read(p),
            what=str(p),
            use_raw=opts.get("use_raw", True),
            counts=opts.get("counts", "refuse"),
            target_sum=opts.get("target_sum", 1e4),
        )
        for k in (keys["perturbation_key"], keys["cell_type_key"]):
            if k not in cells.obs:
                raise KeyError(
                    f"{p}: no obs column {k!r} (files.perturbation_key / "
                    f"perturbation.cell_type_key; columns: {', '.join(map(str, cells.obs))})"
                )
        pert = cells.obs[keys["perturbation_key"]].astype(str).to_numpy()
        pert = np.where(pert == str(keys["control_label"]), "control", pert)
        obs = pd.DataFrame(
            {
                "cell_type": cells.obs[keys["cell_type_key"]].astype(str).to_numpy(),
                "perturbation": pert,
            },
            index=cells.obs_names.astype(str),
        )
        if parts and list(cells.var_names) != list(parts[0].var_names):
            raise ValueError(f"{p}: genes differ from {paths[0]}'s; files must share their genes")
        parts.append(AnnData(X=dense(cells.X).astype(np.float32), obs=obs, var=cells.var[[]]))
    out = ad.concat(parts) if len(parts) > 1 else parts[0]
    out.obs_names_make_unique()
    return out


def _bootstrap(
    pool: AnnData, n_pop: int, n_cells: int, rng: np.random.Generator, prefix: str
) -> AnnData:
    """``n_pop`` populations of ``n_cells`` cells resampled from each (cell type, perturbation)
    of ``pool``; ``obs``: ``cell_type``, ``perturbation``, ``condition``, ``population``."""
    xs, obs = [], []
    x = dense(pool.X)
    groups = pool.obs.groupby(["cell_type", "perturbation"], observed=True).indices
    for (t, q), idx in sorted(groups.items()):
        for k in range(n_pop):
            take = rng.choice(idx, size=n_cells, replace=True)
            xs.append(x[take])
            obs.append(
                pd.DataFrame(
                    {
                        "cell_type": t,
                        "perturbation": q,
                        "condition": "perturbed",
                        "population": f"{prefix}:{t}:{q}:{k}",
                    },
                    index=range(n_cells),
                )
            )
    o = pd.concat(obs, ignore_index=True)
    o.index = [f"{prefix}{i}" for i in range(len(o))]
    return AnnData(np.concatenate(xs).astype(np.float32), obs=o, var=pool.var[[]].copy())


def _check_split(train: AnnData, test: AnnData, held: str, n_perturbations: int) -> list[str]:
    """The perturbations, after refusing splits the held-out benchmark cannot use."""
    tr_pert = train.obs["perturbation"] != "control"
    held_tr = train.obs["cell_type"] == held
    if (tr_pert & held_tr).any():
        raise ValueError(
            f"perturbed cells of the held-out cell type {held!r} are in the train files: the "
            "model would see what it is scored on; move them to the test files"
        )
    if not ((~tr_pert) & held_tr).any():
        raise ValueError(
            f"no control cells of the held-out cell type {held!r} in the train files: the "
            "prediction starts from them (perturbation.held_out_cell_type)"
        )
    perts = sorted(set(train.obs["perturbation"][tr_pert]))
    truth = test[
        (test.obs["cell_type"] == held).values & (test.obs["perturbation"] != "control").values
    ]
    tested = sorted(set(truth.obs["perturbation"]))
    if tested != perts:
        raise ValueError(
            f"the test files' perturbations of {held!r} ({', '.join(tested) or 'none'}) must "
            f"be the training perturbations ({', '.join(perts)})"
        )
    if len(perts) != n_perturbations:
        raise ValueError(
            f"the screen has {len(perts)} perturbations ({', '.join(perts)}); set "
            f"perturbation.n_perturbations: {len(perts)}"
        )
    return perts


def screen_data(
    train: AnnData, test: AnnData, *, cfg: Mapping[str, Any]
) -> tuple[AnnData, AnnData, AnnData, list[str]]:
    """``(control, train populations, truth populations, perturbations)`` of a screen.

    ``train``/``test``: :func:`read_screen` of the train (and validation) and the test files;
    ``cfg``: the validated config (``perturbation``: ``held_out_cell_type``, ``n_cells``,
    ``train_populations``, ``test_draws``, ``n_perturbations``, ``min_cells``; ``seed``).
    Cell types with fewer than ``min_cells`` control cells are dropped.
    """
    c, seed = cfg["perturbation"], int(cfg["seed"])
    held = str(c["held_out_cell_type"])
    counts = train.obs["cell_type"][train.obs["perturbation"] == "control"].value_counts()
    keep = set(counts[counts >= c["min_cells"]].index) | {held}
    train = train[train.obs["cell_type"].isin(keep).values]
    perts = _check_split(train, test, held, c["n_perturbations"])
    is_ctrl = (train.obs["perturbation"] == "control").values
    control = train[is_ctrl].copy()
    control.obs["condition"] = "control"
    rng = np.random.default_rng(seed + 1)
    pops = _bootstrap(train[~is_ctrl], c["train_populations"], c["n_cells"], rng, "train")
    held_cells = (test.obs["cell_type"] == held).values & (
        test.obs["perturbation"] != "control"
    ).values
    truth = _bootstrap(
        test[held_cells], c["test_draws"], c["n_cells"], np.random.default_rng(seed + 2), "truth"
    )
    return control, pops, truth, perts
