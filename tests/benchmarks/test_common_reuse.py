"""benchmarks._common.same_training: which trained model --reuse-model may reuse."""

from __future__ import annotations

from benchmarks._common import same_training
from diffsci.core.task import get_task


def test_same_training_ignores_sampling_but_not_training_sections():
    task = get_task("hyperspectral")
    cfg = {"seed": 0, "data": {"n": 1}, "model": {"k": 4}, "train": {"steps": 5}, "sampling": {}}
    assert same_training(task, {**cfg, "sampling": {"steps": 3}}, cfg)
    assert not same_training(task, {**cfg, "train": {"steps": 6}}, cfg)
    assert not same_training(task, {**cfg, "seed": 1}, cfg)
    assert not same_training(task, None, cfg)


def test_same_training_ignores_checkpoint_and_log_intervals():
    task = get_task("hyperspectral")
    cfg = {"seed": 0, "data": {}, "model": {}, "train": {"steps": 5, "ckpt_every": 5}}
    assert same_training(task, {**cfg, "train": {"steps": 5, "ckpt_every": 1, "log_every": 2}}, cfg)
    assert not same_training(task, {**cfg, "train": {"steps": 6, "ckpt_every": 5}}, cfg)
