"""A scientist's own lineage-tracing files: trained on through the workflow, applied to a held-out
file through ``diffsci apply``, and every mismatch of issue 19 refused or warned clearly.

The files are written here in the field's own layout with anndata and scipy (not the project's
writer): ``.h5ad`` with integer counts in ``.X``, time points in ``obs["day"]`` (``d2``...), a
cell state in ``obs["state"]`` and clonal barcodes in ``obsm["X_clone"]`` (cells x clones, as
CoSpar's datasets ship them), and a 10x mtx directory (matrix.mtx.gz, features.tsv.gz,
barcodes.tsv.gz).
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
import yaml
from anndata import AnnData
from workflow_env import BIN, ENV, SNAKEMAKE

from diffsci.core.modelcard import Incompatible, read_card
from diffsci.core.modelfile import load_model_file, save_model_file
from diffsci.core.stages import validate_config
from diffsci.core.task import get_task
from diffsci.domains.singlecell import baselines, io, metrics, models, simulate, tl

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "tests" / "domains" / "singlecell" / "tiny.yaml"
GENES = [f"Gene{i:02d}" for i in range(40)]
DAYS = (2, 4, 6)


def lineage_tracing(n_clones: int, *, seed: int, prefix: str) -> AnnData:
    """Counts of a two-fate differentiation with clones followed over three days: genes 0-9
    fall with time (progenitor), 10-19 rise on fate A, 20-29 on fate B, 30-39 stay."""
    rng = np.random.default_rng(seed)
    rows, day, state, clone = [], [], [], []
    for c in range(n_clones):
        fate = "A" if c % 2 == 0 else "B"
        for d in DAYS:
            for _ in range(2):
                t = (d - 2) / 4 + rng.normal(0, 0.05)
                mu = np.full(40, 1.0)
                mu[:10] = 4.0 * (1 - t) + 0.5
                mu[10:20] += 4.0 * t * (fate == "A")
                mu[20:30] += 4.0 * t * (fate == "B")
                rows.append(rng.poisson(mu * rng.uniform(0.7, 1.3)))
                day.append(f"d{d}")
                state.append("progenitor" if d == 2 else fate)
                clone.append(c)
    n = len(rows)
    a = AnnData(
        X=sp.csr_matrix(np.asarray(rows, np.float32)),
        obs=pd.DataFrame(
            {"day": pd.Categorical(day), "state": pd.Categorical(state)},
            index=[f"{prefix}_cell{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=GENES),
    )
    a.obsm["X_clone"] = sp.csr_matrix((np.ones(n), (np.arange(n), clone)), shape=(n, n_clones))
    return a


def write_mtx(a: AnnData, folder: Path) -> Path:
    """A 10x Cell Ranger v3 mtx folder (genes x cells matrix, features, barcodes; gzipped)."""
    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.csr_matrix(a.X).T.astype(np.int64))
    feats = "".join(f"ENSG{i:05d}\t{g}\tGene Expression\n" for i, g in enumerate(a.var_names))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(feats.encode()))
    bars = "".join(f"{b}\n" for b in a.obs_names)
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(bars.encode()))
    return folder / "matrix.mtx.gz"


def write_10x_h5(a: AnnData, path: Path) -> Path:
    """A 10x Cell Ranger v3 HDF5 matrix (``/matrix``: CSC genes x cells as ``data``,
    ``indices``, ``indptr``, ``shape``, ``barcodes`` and ``features/{id,name,feature_type,
    genome}``), written with h5py."""
    import h5py

    m = sp.csr_matrix(a.X).astype(np.int32)  # cells x genes CSR == genes x cells CSC
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        g["shape"] = np.array([a.n_vars, a.n_obs], np.int32)
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(a.n_vars)], dtype="S")
        feats["name"] = np.array(a.var_names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * a.n_vars, dtype="S")
    return path


def _snakemake(
    root: Path, config: Path, target: str = "singlecell", *more_config: str
) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(root), "--cores", "1"]
    cmd += [target, "--config", f"singlecell_config={config}", "domains=[singlecell]"]
    cmd += list(more_config)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)


def _diffsci(*args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "diffsci"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


def _files_config(tmp: Path, **files) -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["source"] = {
        "kind": "files",
        "train": [str(tmp / "train.h5ad")],
        "test": [str(tmp / "test.h5ad")],
    }
    cfg["files"] = {"counts": "normalise", "time_key": "day", "fate_key": "state"}
    cfg["files"].update(lineage_pcs=6, **files)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny pipeline through Snakemake on the user's files (train / test .h5ad)."""
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed (pip install -e '.[workflow]')")
    tmp = tmp_path_factory.mktemp("sc_files")
    lineage_tracing(12, seed=0, prefix="tr").write_h5ad(tmp / "train.h5ad")
    lineage_tracing(6, seed=1, prefix="te").write_h5ad(tmp / "test.h5ad")
    lineage_tracing(4, seed=2, prefix="new").write_h5ad(tmp / "new.h5ad")
    config = tmp / "mine.yaml"
    config.write_text(yaml.safe_dump(_files_config(tmp)))
    r = _snakemake(tmp, config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, tmp / "results" / "singlecell"


def test_pipeline_trains_on_the_users_files_and_scores_their_test_split(trained):
    _, work = trained
    card = json.loads((work / "model_card.json").read_text())
    lin = card["serves"]["lineage"]
    assert card["data"]["source"] == "files" and lin["genes"] == GENES
    assert lin["inputs"] == "pca" and lin["n_inputs"] == 6 and lin["time_key"] == "day"
    assert len(card["normalisation"]["lineage"]["components"]) == len(GENES)
    m = json.loads((work / "metrics.json").read_text())
    table = m["tables"]["Lineage, your test cells (time points, fates and clones they carry)"]
    row = table[metrics.LINEAGE_MODEL]
    assert {"NMI vs fate", "pseudotime Spearman vs time points", "clonal coherence"} <= set(row)
    assert "pseudotime Spearman vs time points" in table[metrics.DPT]
    assert any(t.startswith("Clone coupling") for t in m["tables"])
    test = anndata.read_h5ad(work / "predictions" / "lineage.h5ad")
    assert test.n_obs == 36 and test.obsm["X_clone"].shape == (36, 6)
    assert test.obs_names[int(test.uns["iroot"])].startswith("te_")
    assert test.obs["time_point"].iloc[int(test.uns["iroot"])] == 2  # earliest day


def test_apply_runs_the_model_on_a_held_out_file(trained):
    tmp, work = trained
    out = tmp / "applied"
    r = _diffsci(
        "apply",
        "--domain",
        "singlecell",
        "--model",
        str(work / "model.pt"),
        "--input",
        str(tmp / "new.h5ad"),
        "--output",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a = anndata.read_h5ad(out / "new.h5ad")  # opens with anndata
    assert a.n_obs == 24 and list(a.var_names) == GENES
    assert {"lineage_branch", "lineage_pseudotime", "dpt_pseudotime", "leiden"} <= set(a.obs)
    assert a.obsm["X_clone"].shape == (24, 4) and a.obsm["X_lineage_input"].shape == (24, 6)
    assert "counts normalised" in a.uns["expression"]["normalisation"]
    assert "clonal coherence" in a.uns["lineage_metrics"][metrics.LINEAGE_MODEL]
    assert json.loads((out / "provenance.json").read_text())["apply"]["inputs"]


def test_the_apply_rule_runs_the_model_on_a_10x_h5_file(trained):
    tmp, work = trained
    a = lineage_tracing(2, seed=4, prefix="tenx")
    h5 = write_10x_h5(a, tmp / "tenx.h5")
    r = _snakemake(tmp, tmp / "mine.yaml", "results/singlecell/applied", f"singlecell_apply=[{h5}]")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (tmp / "logs" / "singlecell" / "apply.log").read_text()
    assert "tenx.h5: no obs column 'day' (files.time_key" in log  # a warning: not used
    assert "DPT and PAGA are skipped" in log  # no root in a bare 10x file
    out = anndata.read_h5ad(tmp / "results" / "singlecell" / "applied" / "tenx.h5ad")
    assert out.n_obs == a.n_obs and "lineage_pseudotime" in out.obs
    assert "dpt_pseudotime" not in out.obs


def test_apply_refuses_missing_genes_naming_them_and_the_fix(trained):
    tmp, work = trained
    a = lineage_tracing(2, seed=3, prefix="few")
    a[:, GENES[3:]].copy().write_h5ad(tmp / "few_genes.h5ad")
    r = _diffsci(
        "apply",
        "--domain",
        "singlecell",
        "--model",
        str(work / "model.pt"),
        "--input",
        str(tmp / "few_genes.h5ad"),
        "--output",
        str(tmp / "few_out"),
    )
    assert r.returncode != 0 and "few_genes.h5ad: genes differ" in r.stderr
    assert "missing 3: Gene00, Gene01, Gene02" in r.stderr and "adata[:, genes]" in r.stderr
    assert not (tmp / "few_out").exists()


def test_apply_refuses_a_model_without_a_card(trained):
    tmp, work = trained
    saved = load_model_file(work / "model.pt")
    del saved.meta["card"]
    (tmp / "old").mkdir()
    save_model_file(tmp / "old" / "model.pt", saved.state_dict, **saved.meta)
    r = _diffsci(
        "apply",
        "--domain",
        "singlecell",
        "--model",
        str(tmp / "old" / "model.pt"),
        "--input",
        str(tmp / "new.h5ad"),
        "--output",
        str(tmp / "old_out"),
    )
    assert r.returncode != 0 and "no model card" in r.stderr


def test_tl_lineage_encodes_the_users_genes_by_name(trained):
    tmp, work = trained
    card = read_card(work / "model.pt")
    task = get_task("singlecell")
    cfg = card["config"]
    model = task.build_model(cfg)
    model.load_state_dict(load_model_file(work / "model.pt").state_dict)
    cells = io.read_expression(anndata.read_h5ad(tmp / "new.h5ad"), what="new", counts="normalise")
    with pytest.raises(Incompatible, match="40 genes, the lineage model 6 inputs.*codec="):
        tl.lineage(cells, model)
    codec = models.GeneCodec.from_card(card)
    shuffled = cells[:, GENES[::-1]].copy()
    a = tl.lineage(cells, model, codec=codec, tau_grid=5, n_noise=1, copy=True)
    b = tl.lineage(shuffled, model, codec=codec, tau_grid=5, n_noise=1, copy=True)
    assert (a.obs["lineage_pseudotime"].values == b.obs["lineage_pseudotime"].values).all()


def test_infer_warns_when_inputs_lie_outside_the_training_range(trained, tmp_path):
    _, work = trained
    task = get_task("singlecell")
    card = json.loads((work / "model_card.json").read_text())
    cfg = card["config"]
    z = anndata.read_h5ad(work / "data" / "lineage_test.h5ad")
    z.X = z.X * 10
    z.write_h5ad(tmp_path / "lineage_test.h5ad")
    with pytest.warns(UserWarning, match="outside the training range.*by"):
        task.check_inputs(cfg, card, tmp_path)


# ------------------------------------------------------------------ mismatches without training


def test_dpt_without_a_root_is_refused_clearly_and_roots_come_from_keys():
    a = AnnData(np.random.default_rng(0).random((30, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="files.root .*files.root_key .*files.time_key"):
        baselines.lineage_baselines(a.copy())
    with pytest.raises(ValueError, match="DPT needs one"):
        baselines.find_root(a)
    a.obs_names = [f"c{i}" for i in range(30)]
    assert baselines.find_root(a, root="c7") == 7
    a.obs["start"] = np.arange(30) >= 28
    assert baselines.find_root(a, root="absent", root_key="start") in (28, 29)
    time = np.where(np.arange(30) < 10, 5.0, 9.0)
    assert baselines.find_root(a, time=time) < 10
    a.uns["iroot"] = baselines.find_root(a, time=time)
    baselines.lineage_baselines(a, n_neighbors=5)
    assert a.obs["dpt_pseudotime"].iloc[a.uns["iroot"]] == 0


def test_counts_in_raw_are_refused_or_normalised_explicitly(tmp_path):
    a = lineage_tracing(3, seed=0, prefix="r")
    a.obs["bulk_labels"] = np.where(np.arange(a.n_obs) % 2, "T", "B")
    a.raw = a.copy()  # .raw holding counts, not log-normalised expression
    a.write_h5ad(tmp_path / "counts_raw.h5ad")
    with pytest.raises(ValueError, match=r"counts_raw.h5ad: .raw.X holds integer counts.*files"):
        simulate.load_pbmc(str(tmp_path / "counts_raw.h5ad"), min_cells=4)
    p = simulate.load_pbmc(str(tmp_path / "counts_raw.h5ad"), min_cells=4, counts="normalise")
    assert not io.is_counts(p.X) and np.isclose(np.expm1(p.X).sum(1), 1e4, rtol=1e-3).all()
    with pytest.raises(ValueError, match="files.counts: normalise"):
        io.read_cells([tmp_path / "counts_raw.h5ad"])


def test_10x_mtx_folder_is_read_by_its_matrix_file(tmp_path):
    a = lineage_tracing(2, seed=0, prefix="x")
    cells = io.read_cells([write_mtx(a, tmp_path / "mtx")], counts="normalise")
    assert list(cells.var_names) == GENES and cells.n_obs == a.n_obs
    assert "X_clone" not in cells.obsm


def test_10x_h5_counts_are_read_and_normalised(tmp_path):
    a = lineage_tracing(2, seed=0, prefix="h")
    with pytest.raises(ValueError, match=r"tenx.h5: .X holds integer counts"):
        io.read_cells([write_10x_h5(a, tmp_path / "tenx.h5")])
    cells = io.read_cells([tmp_path / "tenx.h5"], counts="normalise")
    assert list(cells.var_names) == GENES and list(cells.obs_names) == list(a.obs_names)
    assert np.allclose(np.expm1(io.dense(cells.X)).sum(1), 1e4, rtol=1e-3)


def test_clonal_barcodes_and_time_points_are_validated(tmp_path):
    a = lineage_tracing(2, seed=0, prefix="c")
    bad = a.copy()
    bad.obsm["X_clone"] = -bad.obsm["X_clone"]
    bad.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(ValueError, match=r"neg.h5ad: obsm\['X_clone'\] must hold non-negative"):
        io.read_cells([tmp_path / "neg.h5ad"], counts="normalise")
    with pytest.raises(KeyError, match="no obs column 'time'"):
        io.time_points(a, "time", what="f")
    a.obs["when"] = ["early", "late"] * (a.n_obs // 2)
    with pytest.raises(ValueError, match="not time points"):
        io.time_points(a, "when", what="f")
    assert io.time_points(a, "day", what="f").tolist()[:3] == [2.0, 2.0, 4.0]
    a.write_h5ad(tmp_path / "one.h5ad")
    b = lineage_tracing(3, seed=0, prefix="d")
    b.write_h5ad(tmp_path / "two.h5ad")
    with pytest.raises(ValueError, match="different numbers of clones"):
        io.read_cells([tmp_path / "one.h5ad", tmp_path / "two.h5ad"], counts="normalise")
    cells = io.read_cells([tmp_path / "one.h5ad"], counts="normalise", time_key="day")
    assert cells.obsm["X_clone"].shape == (12, 2) and "time_point" in cells.obs
    # a clone whose cells share one branch is coherent; shuffled labels are less so
    lab = np.repeat(["x", "y"], 6)
    clones = sp.csr_matrix((np.ones(12), (np.arange(12), np.repeat([0, 1], 6))), shape=(12, 2))
    assert metrics.clonal_coherence(clones, lab) == 1.0
    names, m = metrics.clone_coupling(clones, lab)
    assert names == ["x", "y"] and m[0, 1] < 0 < m[0, 0]


def perturbation_screen(types: list[str], *, seed: int, prefix: str, n: int = 12) -> AnnData:
    """Counts of a CRISPR-style screen: ``obs["guide"]`` (``NTC`` controls, ``KO_A`` induces
    genes 15-19 more strongly in later cell types, ``KO_B`` silences genes 20-24) and
    ``obs["celltype"]``."""
    rng = np.random.default_rng(seed)
    rows, ct, guide = [], [], []
    for ti, t in enumerate(types):
        for q in ("NTC", "KO_A", "KO_B"):
            for _ in range(n):
                mu = np.full(30, 2.0)
                mu[ti * 5 : (ti + 1) * 5] += 3
                mu[15:20] += 3 * (1 + 0.3 * ti) * (q == "KO_A")
                mu[20:25] = 0.2 if q == "KO_B" else mu[20:25]
                rows.append(rng.poisson(mu))
                ct.append(t)
                guide.append(q)
    return AnnData(
        sp.csr_matrix(np.asarray(rows, np.float32)),
        obs=pd.DataFrame(
            {"celltype": ct, "guide": guide}, index=[f"{prefix}{i}" for i in range(len(rows))]
        ),
        var=pd.DataFrame(index=[f"G{i}" for i in range(30)]),
    )


def _screen_config(tmp: Path, **perturbation) -> dict:
    cfg = _files_config(tmp, perturbation_key="guide", control_label="NTC")
    for k in ("time_key", "fate_key"):
        cfg["files"].pop(k)
    cfg["perturbation"].update(
        cell_type_key="celltype", held_out_cell_type="NK", min_cells=4, **perturbation
    )
    validate_config(cfg, get_task("singlecell").schema_path)
    return cfg


def test_a_users_perturbation_screen_becomes_the_training_and_held_out_data(tmp_path):
    train = perturbation_screen(["T", "B", "NK"], seed=0, prefix="tr")
    held = ((train.obs["celltype"] == "NK") & (train.obs["guide"] != "NTC")).to_numpy()
    train[~held].copy().write_h5ad(tmp_path / "train.h5ad")
    perturbation_screen(["NK"], seed=1, prefix="te").write_h5ad(tmp_path / "test.h5ad")
    task = get_task("singlecell")
    data = tmp_path / "data"
    data.mkdir()
    task.prepare(_screen_config(tmp_path), data)
    control = anndata.read_h5ad(data / "control.h5ad")
    assert set(control.obs["cell_type"]) == {"T", "B", "NK"}
    assert set(control.obs["perturbation"]) == {"control"} and control.n_obs == 36
    assert list(control.uns[models.LATENT_KEY]["perturbations"]) == ["KO_A", "KO_B"]
    pops = anndata.read_h5ad(data / "train_perturbed.h5ad")
    assert set(pops.obs["cell_type"]) == {"T", "B"}  # the held-out cell type never perturbed
    assert pops.obs["population"].nunique() == 2 * 2 * 2  # types x perturbations x populations
    truth = anndata.read_h5ad(data / "truth.h5ad")
    assert set(truth.obs["cell_type"]) == {"NK"} and truth.obs["population"].nunique() == 2 * 4
    assert not (data / "simulator.json").exists()  # no oracle for a real screen
    assert (data / "krumsiek11.h5ad").is_file()  # the lineage model stays on the demo


def test_a_screen_that_would_leak_or_mismatch_is_refused(tmp_path):
    train = perturbation_screen(["T", "B", "NK"], seed=0, prefix="tr")
    train.write_h5ad(tmp_path / "train.h5ad")  # NK's perturbed cells too
    perturbation_screen(["NK"], seed=1, prefix="te").write_h5ad(tmp_path / "test.h5ad")
    task = get_task("singlecell")
    with pytest.raises(ValueError, match="held-out cell type 'NK' are in the train files"):
        task.prepare(_screen_config(tmp_path), tmp_path)
    held = ((train.obs["celltype"] == "NK") & (train.obs["guide"] != "NTC")).to_numpy()
    train[~held].copy().write_h5ad(tmp_path / "train.h5ad")
    with pytest.raises(ValueError, match="set perturbation.n_perturbations: 2"):
        task.prepare(_screen_config(tmp_path, n_perturbations=3), tmp_path)
    bad = _screen_config(tmp_path)
    bad["perturbation"]["cell_type_key"] = "cluster"
    with pytest.raises(KeyError, match="train.h5ad: no obs column 'cluster'"):
        task.prepare(bad, tmp_path)


def test_gene_codec_refuses_too_many_components():
    a = AnnData(np.random.default_rng(0).random((5, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="lower files.lineage_pcs"):
        models.GeneCodec.fit(a, 4, target_sd=0.4, what="mine.h5ad")
