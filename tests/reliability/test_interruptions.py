"""No lost run (issue 23): training SIGKILLed at random moments, one of them inside a checkpoint
write, resumes to weights bit-identical to an uninterrupted run; a Snakemake run interrupted by
SIGINT, or by SIGKILL of its whole process group, recovers with identical outputs.

The kill moments come from a seeded generator, so a failure reproduces. To be sure one kill
lands inside a checkpoint write (which takes milliseconds), the training process is started
through a wrapper whose ``os.fsync`` first sleeps: the temporary checkpoint then exists for half
a second and the test kills the process as soon as it appears.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from diffsci.core.modelfile import load_model_file
from tests.workflow_env import ENV, SNAKEMAKE

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "domains" / "pde" / "tiny.yaml"
STEPS = 24
SLOW_FSYNC = (
    "import os, sys, time\n"
    "_fsync = os.fsync\n"
    "def fsync(fd):\n"
    "    time.sleep(0.5)\n"
    "    _fsync(fd)\n"
    "os.fsync = fsync\n"
    "from diffsci.core.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_FSYNC, *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train(cfg: Path, work: Path) -> subprocess.Popen:
    return _cli("train", "--domain", "pde", "--config", str(cfg), "--workdir", str(work), "--quiet")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"].update(steps=STEPS, ckpt_every=3, log_every=3)
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = _cli("prepare", "--domain", "pde", "--config", str(path), "--workdir", str(root / "w"))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return path, root / "w" / "data"


def _copy(data: Path, work: Path) -> Path:
    work.mkdir()
    shutil.copytree(data, work / "data")
    return work


def _wait_for(cond, p: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None, f"training ended before the kill: {p.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the kill moment"
        time.sleep(0.005)


def _step(work: Path) -> int:
    last = work / "checkpoints" / "last.pt"
    return torch.load(last, weights_only=True)["step"] if last.is_file() else 0


def _kill(p: subprocess.Popen, sig: int = signal.SIGKILL) -> tuple[int, str]:
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


def test_sigkill_at_random_moments_resumes_bit_identically(prepared, tmp_path):
    cfg, data = prepared
    ref, run = _copy(data, tmp_path / "ref"), _copy(data, tmp_path / "run")
    p_ref = _train(cfg, ref)
    rng = random.Random(23)
    temporaries = lambda: list((run / "checkpoints").glob(".last.pt.tmp-*"))  # noqa: E731
    kills = []
    for how in ("random", "random", "in a checkpoint write"):
        p = _train(cfg, run)
        if how == "random":  # after some steps, at a random point between checkpoints
            target = _step(run) + 3
            _wait_for(lambda t=target: _step(run) >= t, p)
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            _wait_for(lambda: bool(temporaries()), p)
        assert _kill(p)[0] == -signal.SIGKILL
        kills.append((how, _step(run)))
        assert not (run / "model.pt").exists()  # no output that looks complete
        assert _step(run) < STEPS
    assert temporaries(), "the kill inside a checkpoint write left its temporary file"
    p = _train(cfg, run)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert not temporaries(), "the resume removes it"
    assert "resuming from checkpoint" in err
    _, err = p_ref.communicate(timeout=300)
    assert p_ref.returncode == 0, err
    a = load_model_file(ref / "model.pt").state_dict
    b = load_model_file(run / "model.pt").state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed run differs (kills: {kills})"
    steps = [json.loads(ln)["step"] for ln in (run / "checkpoints" / "metrics.jsonl").open()]
    assert steps == list(range(3, STEPS + 1, 3)), "the log holds each window exactly once"


def test_sigint_on_the_cli_checkpoints_and_exits_75(prepared, tmp_path):
    cfg, data = prepared
    run = _copy(data, tmp_path / "run")
    p = _train(cfg, run)
    _wait_for(lambda: _step(run) >= 3, p)
    rc, err = _kill(p, signal.SIGINT)
    assert rc == 75, err
    assert "training interrupted by a signal" in err and "Traceback" not in err
    assert 3 <= _step(run) < STEPS and not (run / "model.pt").exists()


def test_a_second_trainer_on_the_same_work_folder_is_refused(prepared, tmp_path):
    """Issue 23, 3: two trainers on one folder both exited 0 and the last writer won."""
    cfg, data = prepared
    run = _copy(data, tmp_path / "run")
    first = _train(cfg, run)
    _wait_for(lambda: _step(run) >= 3, first)
    second = _train(cfg, run)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert f"the train stage is already running here (pid {first.pid} on" in err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    steps = [json.loads(ln)["step"] for ln in (run / "checkpoints" / "metrics.jsonl").open()]
    assert steps == list(range(3, STEPS + 1, 3)), "one run's log, not two interleaved"


def test_retraining_on_changed_data_is_refused_not_silently_reused(prepared, tmp_path):
    """Issue 23, 1: data overwritten in data/ (same shapes) after training; the finished
    checkpoint was returned as the "retrained" model."""
    cfg, data = prepared
    run = _copy(data, tmp_path / "run")
    p = _train(cfg, run)
    assert p.communicate(timeout=300) and p.returncode == 0
    model = (run / "model.pt").read_bytes()
    import h5py

    train_file = next((run / "data").glob("train_*.h5"))
    with h5py.File(train_file, "r+") as f:  # other trajectories, same shape
        key = "tensor" if "tensor" in f else next(iter(f))
        f[key][...] = f[key][...][::-1]
    p = _train(cfg, run)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert "data_fingerprint: checkpoint" in err and f"delete {run / 'checkpoints'}" in err
    assert (run / "model.pt").read_bytes() == model  # nothing half-written
    shutil.rmtree(run / "checkpoints")
    p = _train(cfg, run)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert (run / "model.pt").read_bytes() != model


# ---- Snakemake: the whole chain, interrupted


def _snakemake(root: Path, *args: str, **kw) -> subprocess.Popen:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(root), "--cores", "1"]
    cmd += ["pde", "--config", f"pde_config={TINY}", "domains=[pde]", *args]
    return subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def _finish(root: Path, *args: str) -> str:
    p = _snakemake(root, *args)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    return out


def _outputs(root: Path) -> dict[str, object]:
    """What a run produced, without the records that name times and hosts."""
    work = root / "results" / "pde"
    m = json.loads((work / "metrics.json").read_text())
    w = load_model_file(work / "model.pt").state_dict
    return {"tables": m["tables"], "weights": {k: v.tolist() for k, v in w.items()}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed")
    root = tmp_path_factory.mktemp("smk_ref")
    _finish(root)
    return _outputs(root)


def _interrupt_in_train(root: Path, kill) -> None:
    p = _snakemake(root, start_new_session=True)
    last = root / "results" / "pde" / "checkpoints" / "last.pt"
    _wait_for(last.is_file, p, timeout=600)
    kill(p)
    p.communicate(timeout=300)
    assert not (root / "results" / "pde" / "metrics.json").exists()


def test_snakemake_sigint_recovers_with_identical_outputs(reference, tmp_path):
    # Ctrl-C in a terminal: SIGINT to the whole foreground process group (Snakemake and its
    # train job), which checkpoints and exits 75 while Snakemake stops scheduling
    _interrupt_in_train(tmp_path, lambda p: os.killpg(p.pid, signal.SIGINT))
    _finish(tmp_path, "--rerun-incomplete")  # as the local profile sets it
    assert _outputs(tmp_path) == reference


def test_snakemake_sigkill_of_the_group_recovers_with_identical_outputs(reference, tmp_path):
    _interrupt_in_train(tmp_path, lambda p: os.killpg(p.pid, signal.SIGKILL))
    _finish(tmp_path, "--unlock")  # what Snakemake's message after a SIGKILL says to do
    _finish(tmp_path, "--rerun-incomplete")
    log = (tmp_path / "logs").rglob("*train*")
    assert any("resuming from checkpoint" in f.read_text() for f in log if f.is_file())
    assert _outputs(tmp_path) == reference
