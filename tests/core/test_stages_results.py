"""The evaluate and report stages: evaluate's documented result, refusals when an input stage has
not run, and the report's CSV tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from diffsci.core.stages import run_evaluate, run_report
from diffsci.core.task import DomainTask, EvalResult, TaskPaths


class _Task(DomainTask):
    name = "fake"
    packages = ("numpy",)

    def __init__(self, result) -> None:
        self.result = result

    def evaluate(self, cfg, paths: TaskPaths, fig_dir: Path):
        (fig_dir / "a.png").write_bytes(b"png")
        return self.result


def _paths(tmp_path: Path) -> TaskPaths:
    """A work folder as prepare and infer leave it (infer lists what it wrote)."""
    paths = TaskPaths(tmp_path)
    paths.data.mkdir()
    paths.predictions.mkdir()
    (paths.predictions / "pred.h5").write_bytes(b"h5")
    (paths.predictions / "provenance.json").write_text(json.dumps({"files": ["pred.h5"]}))
    return paths


RESULT = EvalResult(
    tables={
        "Forecast, nx=32": {"model": {"nRMSE": 0.1, "note": "x"}, "persistence": {"nRMSE": 0.5}}
    },
    lower_is_better=["nRMSE"],
    figures=["figures/a.png"],
    summary={"cases": 4, "ratio": 0.2},
)


def test_evaluate_writes_the_result_with_provenance(tmp_path):
    paths = _paths(tmp_path)
    run_evaluate(_Task(RESULT), {"seed": 3}, paths)
    m = json.loads(paths.metrics.read_text())
    assert m["tables"] == RESULT.tables and m["lower_is_better"] == ["nRMSE"]
    assert m["domain"] == "fake" and m["provenance"]["seed"] == 3
    assert "numpy" in m["provenance"]["versions"]  # the task's packages are recorded
    assert (paths.figures / "a.png").is_file()


def test_evaluate_refuses_a_plain_dict(tmp_path):
    paths = _paths(tmp_path)
    with pytest.raises(TypeError, match="must return an EvalResult"):
        run_evaluate(_Task(RESULT.to_json()), {"seed": 0}, paths)
    assert not paths.metrics.exists()


def test_evaluate_without_predictions_names_the_missing_stage(tmp_path):
    paths = TaskPaths(tmp_path)
    paths.data.mkdir()
    with pytest.raises(FileNotFoundError, match="run the infer stage"):
        run_evaluate(_Task(RESULT), {"seed": 0}, paths)
    assert not paths.metrics.exists()


def test_evaluate_refuses_predictions_that_lost_a_file(tmp_path):
    """Issue 23, 2: a missing prediction file was skipped without a word."""
    paths = _paths(tmp_path)
    (paths.predictions / "pred.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the files the infer stage wrote are gone "):
        run_evaluate(_Task(RESULT), {"seed": 0}, paths)
    (paths.predictions / "provenance.json").unlink()
    with pytest.raises(FileNotFoundError, match="provenance.json: missing or unreadable"):
        run_evaluate(_Task(RESULT), {"seed": 0}, paths)
    assert not paths.metrics.exists()


def test_evaluate_requires_the_baselines_of_a_task_that_has_them(tmp_path):
    class _WithBaselines(_Task):
        def baselines(self, cfg, data_dir, out_dir, rt):
            pass

    paths = _paths(tmp_path)
    with pytest.raises(FileNotFoundError, match="baselines: missing .rerun the baselines stage"):
        run_evaluate(_WithBaselines(RESULT), {"seed": 0}, paths)
    assert not paths.metrics.exists()


def test_eval_result_rejects_a_malformed_table():
    with pytest.raises(TypeError, match="must map method"):
        EvalResult(tables={"t": {"model": 0.3}})


def test_report_writes_one_csv_per_table_and_the_summary(tmp_path):
    paths = _paths(tmp_path)
    run_evaluate(_Task(RESULT), {"seed": 0}, paths)
    run_report(_Task(RESULT), {"seed": 0}, paths)
    files = sorted(p.name for p in paths.tables.iterdir())
    assert files == ["00_forecast_nx_32.csv", "summary.csv"]
    rows = list(csv.reader(open(paths.tables / "00_forecast_nx_32.csv")))
    assert rows == [["method", "nRMSE", "note"], ["model", "0.1", "x"], ["persistence", "0.5", ""]]
    summary = list(csv.reader(open(paths.tables / "summary.csv")))
    assert summary == [["quantity", "value"], ["cases", "4"], ["ratio", "0.2"]]


def test_report_without_metrics_names_the_missing_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the evaluate stage"):
        run_report(_Task(RESULT), {"seed": 0}, TaskPaths(tmp_path))
