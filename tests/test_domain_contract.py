"""The domain contract, checked for every registered domain: a new domain gets all of this by
registering its entry point.

- the entry point loads and implements :class:`diffsci.core.task.Task`;
- every ``workflows/config/<d>*.yaml`` and ``benchmarks/configs/<d>*.yaml`` validates;
- every operator in the domain's ``operators.OPERATORS`` registry passes ``check_adjoint``;
- the tiny pipeline (``tests/domains/<d>/tiny.yaml``) runs through the Snakemake workflow,
  ``evaluate`` returns the documented :class:`~diffsci.core.task.EvalResult`, ``report`` writes
  its tables, and ``snakemake --report`` holds every figure and table of the domain;
- ``workflows/notebooks/<d>.ipynb`` executes headless against that run's outputs.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from workflow_env import ENV, SNAKEMAKE

from diffsci.core.operators import check_adjoint
from diffsci.core.stages import load_config
from diffsci.core.task import EvalResult, Task, domain_module, get_task, list_tasks

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = list_tasks()


def _configs() -> list[tuple[str, Path]]:
    out = []
    for folder in (ROOT / "workflows" / "config", ROOT / "benchmarks" / "configs"):
        for path in sorted(folder.glob("*.yaml")):
            owner = [d for d in DOMAINS if path.stem == d or path.stem.startswith(f"{d}_")]
            out.append((owner[0] if owner else "", path))
    return out


def _operators() -> list[tuple[str, str]]:
    out = []
    for d in DOMAINS:
        name = f"{domain_module(d)}.operators"
        if importlib.util.find_spec(name) is not None:
            out += [(d, op) for op in importlib.import_module(name).OPERATORS]
    return out


@pytest.mark.parametrize("domain", DOMAINS)
def test_entry_point_loads_a_task(domain):
    task = get_task(domain)
    assert isinstance(task, Task)
    assert task.name == domain
    assert Path(task.schema_path).is_file()
    for dist in task.packages:  # what provenance records must be installed
        md.version(dist)


@pytest.mark.parametrize("domain,path", _configs(), ids=lambda v: getattr(v, "name", v))
def test_every_config_validates(domain, path):
    assert domain, f"{path}: no registered domain owns this config (name it <domain>[_*].yaml)"
    cfg = load_config(path, get_task(domain))
    assert {"seed", "device", "train"} <= set(cfg)


@pytest.mark.parametrize("domain,name", _operators())
def test_operator_is_adjoint(domain, name):
    mod = importlib.import_module(f"{domain_module(domain)}.operators")
    case = mod.OPERATORS[name]()
    assert check_adjoint(case.op, case.x_shape, dtype=case.dtype, rtol=case.rtol) <= case.rtol


def _snakemake(root: Path, domain: str, *args: str) -> None:
    tiny = ROOT / "tests" / "domains" / domain / "tiny.yaml"
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(root), "--cores", "1"]
    cmd += [domain, "--config", f"{domain}_config={tiny}", f"domains=[{domain}]", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module", params=DOMAINS)
def tiny_run(request, tmp_path_factory):
    """The domain's tiny chain through the workflow, then Snakemake's report of it."""
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed (pip install -e '.[workflow]')")
    domain, root = request.param, tmp_path_factory.mktemp(request.param)
    _snakemake(root, domain)
    _snakemake(root, domain, "--report", "report.html")
    return domain, root / "results" / domain


def test_evaluate_returns_the_documented_result(tiny_run):
    domain, work = tiny_run
    m = json.loads((work / "metrics.json").read_text())
    assert m["domain"] == domain and m["provenance"]["config"]
    res = EvalResult(**{k: m[k] for k in ("tables", "lower_is_better", "figures", "summary")})
    assert res.tables and all(rows for rows in res.tables.values())
    metrics = {k for rows in res.tables.values() for row in rows.values() for k in row}
    assert set(res.lower_is_better) <= metrics, set(res.lower_is_better) - metrics
    assert res.figures and all((work / f).is_file() for f in res.figures)
    tables = sorted(p.name for p in (work / "tables").glob("*.csv"))
    assert len(tables) == len(res.tables) + 1 and "summary.csv" in tables


def test_snakemake_report_holds_every_figure_and_table(tiny_run):
    domain, work = tiny_run
    html = (work.parents[1] / "report.html").read_text()
    names = [Path(f).name for f in json.loads((work / "metrics.json").read_text())["figures"]]
    names += [p.name for p in (work / "tables").glob("*.csv")]
    missing = [n for n in names if n not in html]
    assert names and not missing, missing


def test_notebook_executes(tiny_run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    domain, work = tiny_run
    path = ROOT / "workflows" / "notebooks" / f"{domain}.ipynb"
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("DIFFSCI_WORKDIR", str(work))  # the notebooks read their run from it
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
