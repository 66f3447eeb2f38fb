"""The PDE tiny pipeline through a real single-node SLURM and the slurm workflow profile.

Needs root: the module fixture installs slurm-wlm/munge if missing and starts munged, slurmctld
and slurmd with scripts/slurm/start_local_slurm.sh, and stops exactly those daemons at the end.
Run with `make test-slurm` (these tests are deselected by default: marker `slurm`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).resolve().parents[1] / "domains" / "pde" / "tiny.yaml"
PROFILE = ROOT / "workflows" / "profiles" / "slurm" / "config.yaml"
START = ROOT / "scripts" / "slurm" / "start_local_slurm.sh"
STOP = ROOT / "scripts" / "slurm" / "stop_local_slurm.sh"
CANNOT_RUN = 3  # start_local_slurm.sh: not root, or slurm-wlm/munge cannot be installed
_BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
ENV = {**os.environ, "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM; its daemons (by pid) are stopped at teardown."""
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed")
    if os.geteuid() != 0:
        pytest.skip("slurm tests need root (they install and start a local SLURM)")
    pidfile = tmp_path_factory.mktemp("slurm") / "pids"
    env = {**ENV, "SLURM_PIDFILE": str(pidfile)}
    r = subprocess.run(["bash", str(START)], capture_output=True, text=True, env=env, timeout=900)
    if r.returncode == CANNOT_RUN:
        pytest.skip(f"cannot run SLURM here: {r.stderr.strip()}")
    if r.returncode != 0:
        subprocess.run(["bash", str(STOP)], env=env, timeout=120)
        pytest.fail(f"start_local_slurm.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    try:
        yield pidfile
    finally:
        subprocess.run(["bash", str(STOP)], env=env, timeout=120)


def _test_profile(folder: Path) -> Path:
    """The slurm profile with tiny resources a 2-CPU node without GPUs can satisfy. Written as
    a workflow profile: it takes precedence over --profile, so an overlay there cannot
    override it, and profiles replace whole top-level keys (set-resources) anyway."""
    prof = yaml.safe_load(PROFILE.read_text())
    gpu_keys = {"gpu", "gpu_model", "cpus_per_gpu", "tasks_per_gpu"}
    # runtime above the profile's --signal=USR1@600 lead, which would otherwise fire at once
    tiny = {"mem_mb": 1000, "runtime": "20*attempt", "cpus_per_task": 1}
    prof["set-resources"] = {
        rule: {**{k: v for k, v in res.items() if k not in gpu_keys}, **tiny}
        for rule, res in prof["set-resources"].items()
    }
    prof["default-resources"] = {**prof["default-resources"], "mem_mb": 500, "runtime": 10}
    prof["slurm-keep-successful-logs"] = True
    prof["latency-wait"] = 10
    prof["slurm-init-seconds-before-status-checks"] = 3  # default 40 s: tiny jobs take seconds
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(prof))
    return folder


def test_pde_pipeline_through_slurm(slurm, tmp_path):
    profile = _test_profile(tmp_path / "profile")
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--workflow-profile",
            str(profile),
            "--verbose",
            "pde",
            "--config",
            f"pde_config={TINY}",
            "domains=[pde]",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1200,
        env=ENV,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    # Every job went through sbatch: one SLURM job id per rule that ran.
    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(ids) >= 6, out[-3000:]
    slurm_logs = list((work / "logs" / "slurm").rglob("*.log"))
    assert {p.stem for p in slurm_logs} >= set(ids), (ids, slurm_logs)
    assert any("rule_train" in str(p) for p in slurm_logs)
    # The train job was submitted with the profile's --signal request (the sbatch call is
    # logged with --verbose).
    calls = [ln for ln in out.splitlines() if "sbatch call:" in ln and "rule_train" in ln]
    assert calls and all("--signal=USR1@600" in c for c in calls), calls
    res = work / "results" / "pde"
    metrics = json.loads((res / "metrics.json").read_text())
    table = metrics["tables"]["Burgers forecast, nx=32"]
    assert {"persistence", "fno", "diffusion (ens. mean)"} <= set(table)
    numbers = [v for row in table.values() for v in _numbers(row)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert metrics["provenance"]["config"]["train"]["steps"] == 30
    assert (res / "model.pt").is_file() and (res / "checkpoints" / "last.pt").is_file()
    assert list((res / "tables").glob("*.csv"))
    for log in ("prepare", "train", "baselines", "infer", "evaluate", "report"):
        assert (work / "logs" / "pde" / f"{log}.log").is_file()


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def _running_jobs() -> list[str]:
    r = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, timeout=30
    )
    return r.stdout.split()


def test_train_preempted_by_usr1_resumes_through_slurm(slurm, tmp_path):
    """What the profile's `--signal=USR1@600` does before a time limit, sent by hand mid-run:
    training checkpoints at a step boundary and exits non-zero, the job fails, Snakemake's
    retry submits a new SLURM job that resumes from that checkpoint and finishes."""
    steps = 1500
    cfg = yaml.safe_load(TINY.read_text())
    # No periodic checkpoint before the end: the only mid-run checkpoint is the signal's.
    cfg["train"].update(steps=steps, ckpt_every=100_000, log_every=10)
    cfg_path = tmp_path / "pde_long.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    profile = _test_profile(tmp_path / "profile")
    work = tmp_path / "work"
    work.mkdir()
    metrics = work / "results" / "pde" / "checkpoints" / "metrics.jsonl"
    proc = subprocess.Popen(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--workflow-profile",
            str(profile),
            "results/pde/model.pt",
            "--config",
            f"pde_config={cfg_path}",
            "domains=[pde]",
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 600
        signalled = None
        while time.monotonic() < deadline and proc.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            jobs = _running_jobs()
            if len(lines) >= 5 and len(jobs) == 1:  # train is the only job running by now
                subprocess.run(["scancel", "--signal=USR1", jobs[0]], check=True, timeout=30)
                signalled = jobs[0]
                break
            time.sleep(1)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert signalled is not None, "the train job was never seen running with progress"
    assert proc.returncode == 0, out[-6000:]
    # The retry ran as a new SLURM job and resumed where the signal stopped the first one.
    log = (work / "logs" / "pde" / "train.log").read_text()
    retry = re.search(r"== train started .* \(SLURM job (\d+)\)", log)
    assert retry and retry.group(1) != signalled, log[-3000:]
    resume = re.search(rf"resuming from checkpoint \S+ at step (\d+) of {steps}", log)
    assert resume, log[-3000:]
    # The signalled job's inner snakemake survived the signal (it ignores SIGUSR1) and failed
    # the job because training exited 75, instead of dying of the signal itself.
    first = (work / "logs" / "slurm" / "rule_train" / "pde" / f"{signalled}.log").read_text()
    assert "Error in rule train" in first and "User defined signal 1" not in first, first[-3000:]
    events = [json.loads(ln) for ln in (metrics.parent / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["interrupted", "resumed"], events
    assert events[0]["signal"] == "SIGUSR1" and events[0]["slurm_job_id"] == signalled
    assert events[1]["slurm_job_id"] == retry.group(1)
    assert 0 < events[0]["step"] == events[1]["step"] == int(resume.group(1)) < steps
    import torch

    ckpt = torch.load(work / "results" / "pde" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == steps
    assert (work / "results" / "pde" / "model.pt").is_file()
