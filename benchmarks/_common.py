"""Shared helpers for benchmark scripts: machine info and JSON results with provenance."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``), or None where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """Describe the machine a result was measured on (CPU model and VNNI: int8 CPU speed
    depends on them, see :mod:`diffsci.core.quantize`)."""
    import torch

    from diffsci.core.quantize import has_vnni

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_vnni": has_vnni(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def write_result(name: str, results: dict[str, Any], *, config: dict[str, Any], seed: int | None):
    """Write ``benchmarks/results/<name>.json`` with the command, seed, config and machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        # orig_argv keeps `-m benchmarks.x`; argv[0] would be the resolved file path.
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.orig_argv[1:]]),
        "seed": seed,
        "config": config,
        "machine": machine(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def kept_domains(path: Path, driven: list[str]) -> tuple[dict[str, Any], dict[str, bool]]:
    """For a rerun that drives only some domains: the ``results["domains"]`` entries and the
    ``results["bars"]`` of the earlier result at ``path`` that belong to the other domains
    (an entry's domain is the first word of its name, a bar's the part before its first
    ``_``), each entry stamped with the commit and date it was measured at."""
    if not path.is_file():
        return {}, {}
    prev = json.loads(path.read_text())
    res = prev.get("results", {})
    stamp = {"commit": prev.get("git_commit"), "date": prev.get("date")}
    entries = {
        k: {**v, "measured at": v.get("measured at") or stamp}
        for k, v in res.get("domains", {}).items()
        if k.split()[0] not in driven
    }
    bars = {k: v for k, v in res.get("bars", {}).items() if k.split("_")[0] not in driven}
    return entries, bars


def same_training(task, trained: dict[str, Any] | None, cfg: dict[str, Any]) -> bool:
    """Whether a model trained with config ``trained`` is the one ``cfg`` would train: the
    same task ``training_config_keys`` and ``train`` sections, the checkpoint and log intervals
    aside (they do not shape the weights: a resumed run is bit-identical)."""
    if trained is None:
        return False
    keys = (*task.training_config_keys, "train")

    def shaping(c: dict[str, Any]) -> dict[str, Any]:
        out = {k: c.get(k) for k in keys}
        if isinstance(out["train"], dict):
            out["train"] = {
                k: v for k, v in out["train"].items() if k not in ("ckpt_every", "log_every")
            }
        return out

    return shaping(trained) == shaping(cfg)


def run_stages(
    task,
    cfg: dict[str, Any],
    workdir: str | os.PathLike,
    *,
    reuse_model: bool = False,
    progress: bool = False,
    same: Callable[[dict[str, Any] | None, dict[str, Any]], bool] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run a task's prepare, train, baselines (when it has its own), infer and evaluate stages
    in ``workdir``.

    ``reuse_model`` skips train when ``model.pt`` exists and was trained with exactly this
    config's training sections (the task's ``training_config_keys`` and ``train``, as its
    provenance record says; otherwise it retrains, so a result never pairs a config with
    another config's model; sampling and evaluation settings may differ). ``same(trained,
    cfg)`` replaces that test where a benchmark knows more keys that do not shape training. prepare is seeded, so it is always rerun. Returns the
    metrics mapping evaluate wrote and the seconds of each stage.
    """
    from diffsci.core.modelfile import load_model_file
    from diffsci.core.stages import (
        has_baselines,
        run_baselines,
        run_evaluate,
        run_infer,
        run_prepare,
        run_train,
    )
    from diffsci.core.task import TaskPaths

    paths = TaskPaths(workdir)
    stages = [
        ("prepare", run_prepare),
        ("train", run_train),
        *([("baselines", run_baselines)] if has_baselines(task) else []),
        ("infer", run_infer),
        ("evaluate", run_evaluate),
    ]
    if reuse_model and paths.model.is_file():
        trained = load_model_file(paths.model).provenance.get("config")
        if (same or partial(same_training, task))(trained, cfg):
            stages.pop(1)
        else:
            # a fresh start: the checkpoint belongs to the other config (the train stage would
            # refuse to resume it)
            print(
                f"--reuse-model: {paths.model} was trained with another config; retraining "
                f"from scratch (removing {paths.checkpoints})"
            )
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
    times: dict[str, float] = {}
    for name, fn in stages:
        t0 = time.perf_counter()
        fn(task, cfg, paths, progress=progress)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"{Path(workdir).name}: {name} {times[name]} s", flush=True)
    return json.loads(paths.metrics.read_text()), times


def domain_parser(domain: str, *, reuse_model: bool = True):
    """The options every domain benchmark takes: ``--config`` (default
    ``benchmarks/configs/<domain>.yaml``), ``--steps``, ``--workdir`` and ``--reuse-model``."""
    import argparse

    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=f"{domain} quality benchmark")
    p.add_argument("--config", default=str(here / "configs" / f"{domain}.yaml"))
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--workdir", default=str(here / "work" / domain))
    if reuse_model:
        p.add_argument(
            "--reuse-model",
            action="store_true",
            help="skip train if model.pt exists and was trained with this config",
        )
    return p


def read_config(args, domain: str):
    """``(task, cfg)``: the YAML of ``args.config`` with ``--steps`` applied, validated."""
    import yaml

    from diffsci.core.stages import validate_config
    from diffsci.core.task import get_task

    task = get_task(domain)
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.steps:
        cfg["train"]["steps"] = args.steps
    validate_config(cfg, task.schema_path, source=args.config)
    return task, cfg
