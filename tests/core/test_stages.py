"""The generic stages' output handling: a failing stage leaves neither a half-built output nor
its temporary folder, and keeps the previous output."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffsci.core.fileio import atomic_dir
from diffsci.core.stages import run_prepare
from diffsci.core.task import TaskPaths


class _FailingTask:
    name = "failing"

    def prepare(self, cfg, data_dir: Path) -> None:
        (data_dir / "half.h5").write_text("partial")
        raise RuntimeError("simulator blew up")


def test_failed_prepare_keeps_old_output_and_leaves_no_partial(tmp_path):
    paths = TaskPaths(tmp_path)
    paths.data.mkdir()
    (paths.data / "old.h5").write_text("complete")
    with pytest.raises(RuntimeError, match="simulator blew up"):
        run_prepare(_FailingTask(), {"seed": 0}, paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert [p.name for p in paths.data.iterdir()] == ["old.h5"]


def test_atomic_dir_replaces_target_on_success(tmp_path):
    target = tmp_path / "predictions"
    target.mkdir()
    (target / "stale.h5").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.name == ".predictions.partial" and not any(tmp.iterdir())
        (tmp / "new.h5").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions"]


def test_a_key_given_twice_in_a_config_is_refused_naming_both_lines(tmp_path):
    """Issue 23, 4: PyYAML keeps the last of two equal keys without a word."""
    from diffsci.core.stages import load_config
    from diffsci.core.task import get_task

    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 0\ntrain:\n  steps: 10\n  batch_size: 2\n  steps: 30\n")
    with pytest.raises(
        ValueError, match=r"c.yaml: not valid YAML: key 'steps' given twice .lines 3 and 5"
    ):
        load_config(cfg, get_task("pde"))


def test_parse_overrides_reads_yaml_scalars_and_refuses_training_sections():
    from diffsci.core.stages import parse_overrides

    got = parse_overrides(["sampling.samples=16", "sampling.tile=null", "sampling.sampler=unipc"])
    assert got == {"samples": 16, "tile": None, "sampler": "unipc"}
    assert parse_overrides(None) == {}
    with pytest.raises(ValueError, match="only sampling"):
        parse_overrides(["model.channels=[8, 16]"])
    with pytest.raises(ValueError, match="expected sampling.<name>=<value>"):
        parse_overrides(["sampling.samples"])
