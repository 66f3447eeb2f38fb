"""The one training loop every domain uses: pass a dataset, a network and a loss; never subclass.

:func:`train` runs AdamW with linear LR warm-up, gradient clipping, a float32 EMA of the
parameters, bf16 autocast on CUDA, atomic checkpoints with bit-identical resume,
SIGTERM/SIGUSR1 -> checkpoint and exit non-zero, DDP when launched by ``torchrun``, a JSON-lines
metrics log and a progress bar.

Reproducibility rests on two shared, seeded streams (identical on every rank):

- **data order**: epoch permutations. The ``i``-th global sample of the run is
  ``perm_e[i % n]`` with ``e = i // n`` and ``perm_e`` a permutation drawn from a generator
  seeded by ``(config.seed, e)``. Step ``s`` (0-based) takes global samples
  ``s * B .. (s + 1) * B - 1`` (batches may straddle epochs), and each rank keeps its
  contiguous slice. The order is a pure function of the step, so it needs no saved state and
  does not depend on how many numbers ``loss_fn`` draws.
- **loss randomness** (noise, sigmas): a ``torch.Generator`` seeded with ``config.seed`` and
  handed to ``loss_fn`` wrapped in a :class:`~diffsci.core.rng.ShardedRNG`, which draws for
  the global batch and gives each rank its slice. Its state is checkpointed.

Randomness *inside* the network (dropout) uses torch's global RNG, which is not seeded here
(seed it before building the model); its state (and Python's and NumPy's) is checkpointed per
rank so resume stays bit-identical, but it differs between single-process and DDP runs.
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from .fileio import atomic_path
from .rng import ShardedRNG

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "load_checkpoint",
    "train",
    "training_log",
]

_FORMAT = "diffsci.training/1"
#: Config fields that must match the checkpoint for a reproducible continuation.
_STRICT_FIELDS = ("batch_size", "seed")
#: Config fields that may change on resume (with a warning): the run continues, differently.
_SOFT_FIELDS = ("lr", "weight_decay", "betas", "warmup_steps", "grad_clip", "ema_decay", "bf16")
EX_TEMPFAIL = 75


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not match the model / config it is loaded into."""


class TrainingInterrupted(SystemExit):
    """Raised after a SIGTERM/SIGUSR1 once the checkpoint is saved.

    A ``SystemExit`` with code 75 (``EX_TEMPFAIL``: "temporary failure, retry"), so an uncaught
    one ends the process non-zero and a workflow manager reruns the job, which resumes.
    """

    def __init__(self, message: str, *, step: int, signum: int | None = None) -> None:
        super().__init__(EX_TEMPFAIL)
        self.message, self.step, self.signum = message, step, signum

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainConfig:
    """Settings of :func:`train`.

    Parameters
    ----------
    steps
        Total optimiser steps of the run (a resumed run continues up to it).
    batch_size
        Global batch size, split evenly across DDP ranks (must be divisible by their number).
    lr, weight_decay, betas
        AdamW settings.
    warmup_steps
        Linear LR warm-up ``lr * min(1, (step + 1) / warmup_steps)``; constant afterwards.
    grad_clip
        Max global gradient norm; ``None`` disables clipping (the norm is still logged).
    ema_decay
        Decay of the EMA of the parameters (kept in float32, or float64 for float64 params);
        ``None`` disables it.
    bf16
        bf16 autocast of ``loss_fn``; ``None`` = on iff the device is CUDA. ``True`` on CPU uses
        CPU autocast (allowed; usually slower and less accurate than float32 there).
    seed
        Seed of the data order and of the generator handed to ``loss_fn``.
    ckpt_dir
        Where ``last.pt`` (and by default ``metrics.jsonl``) live; ``None``: no checkpoints.
    ckpt_every, log_every
        Checkpoint / log every so many steps (and always at the last step).
    progress
        tqdm progress bar on rank 0.
    """

    steps: int
    batch_size: int
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    bf16: bool | None = None
    seed: int = 0
    ckpt_dir: str | None = None
    ckpt_every: int = 1000
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.ckpt_dir is not None:
            self.ckpt_dir = os.fspath(self.ckpt_dir)
        checks = {
            "steps >= 0": self.steps >= 0,
            "batch_size >= 1": self.batch_size >= 1,
            "lr >= 0": self.lr >= 0,
            "warmup_steps >= 0": self.warmup_steps >= 0,
            "ckpt_every >= 1": self.ckpt_every >= 1,
            "log_every >= 1": self.log_every >= 1,
            "grad_clip > 0 or None": self.grad_clip is None or self.grad_clip > 0,
            "0 <= ema_decay < 1 or None": self.ema_decay is None or 0 <= self.ema_decay < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainConfig ({', '.join(bad)} required): {self}")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model
        The trained network (unwrapped from DDP), in its original train/eval mode.
    ema
        A copy of ``model`` holding the EMA weights, in eval mode (``None`` without EMA).
    step
        Steps completed.
    history
        Log records (the metrics-file lines), including those of earlier runs when resumed.
    """

    model: nn.Module
    ema: nn.Module | None
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Small helpers


def _base(model: nn.Module) -> nn.Module:
    """Strip DDP / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _fingerprint(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in _base(model).named_parameters()]


def _fingerprint_diff(saved, current) -> str:
    a = {n: tuple(s) for n, s in saved}
    b = {n: tuple(s) for n, s in current}
    parts = []
    if missing := [n for n in a if n not in b]:
        parts.append(f"parameters missing from the model: {_short(missing)}")
    if extra := [n for n in b if n not in a]:
        parts.append(f"parameters not in the checkpoint: {_short(extra)}")
    if shapes := [f"{n} {a[n]} vs {b[n]}" for n in a if n in b and a[n] != b[n]]:
        parts.append(f"shapes differ (checkpoint vs model): {_short(shapes)}")
    return "; ".join(parts) or "parameter order differs"


def _short(items: Sequence[str], k: int = 5) -> str:
    s = ", ".join(items[:k])
    return s + (f", ... ({len(items)} in all)" if len(items) > k else "")


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit seed from (seed, epoch) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class _EpochOrder:
    """Global sample indices of each step: concatenated per-epoch permutations (see module doc)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def global_indices(self, step: int) -> Tensor:
        """The ``batch_size`` global sample indices of (0-based) ``step``."""
        pos, end, parts = step * self.batch_size, (step + 1) * self.batch_size, []
        while pos < end:
            epoch, off = divmod(pos, self.n)
            take = min(self.n - off, end - pos)
            parts.append(self._perm(epoch)[off : off + take])
            pos += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _ema_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least single precision, keeping complex parameters complex (spectral weights)."""
    if dtype.is_complex:
        return torch.complex128 if dtype == torch.complex128 else torch.complex64
    return torch.float64 if dtype == torch.float64 else torch.float32


def _local_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} (global) is not divisible by the number of data-parallel "
            f"ranks ({world_size}); choose a multiple of {world_size}"
        )
    return batch_size // world_size


def _fetch(data: Dataset | Tensor, idx: Tensor) -> Any:
    if isinstance(data, Tensor):
        return data[idx.to(data.device)]
    return default_collate([data[i] for i in idx.tolist()])


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return type(x)({k: _to_device(v, device) for k, v in x.items()})
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_to_device(v, device) for v in x))
    if isinstance(x, list | tuple):
        return type(x)(_to_device(v, device) for v in x)
    return x


class _DDP(nn.parallel.DistributedDataParallel):
    """DDP that forwards unknown attributes (e.g. ``loss_weight``) to the wrapped module."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "module" in modules and name != "module":
                return getattr(modules["module"], name)
            raise


def _rng_state() -> dict[str, Any]:
    npst = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    st: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (npst[0], torch.from_numpy(np.asarray(npst[1], dtype=np.int64)), *npst[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    random.setstate(st["python"])
    name, keys, *rest = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, unpicklable: all "unreadable"
        raise CheckpointError(
            f"cannot read checkpoint {path} (corrupt or truncated?): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a diffsci training checkpoint ({_FORMAT})")
    return ckpt


def _check_model(path: Path, ckpt: Mapping[str, Any], model: nn.Module) -> None:
    if [(n, tuple(s)) for n, s in ckpt["fingerprint"]] != _fingerprint(model):
        raise CheckpointError(
            f"checkpoint {path} does not match the model (architecture fingerprint differs): "
            + _fingerprint_diff(ckpt["fingerprint"], _fingerprint(model))
        )


def _load_state(path: Path, model: nn.Module, state: Mapping[str, Tensor]) -> None:
    try:
        _base(model).load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from e


def _ema_state(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    state = dict(ckpt["model"])
    for k, v in ckpt["ema"].items():
        state[k] = v.to(state[k].dtype)
    return state


def load_checkpoint(path: str | os.PathLike, model: nn.Module, *, ema: bool = True) -> nn.Module:
    """Load a :func:`train` checkpoint's weights into ``model`` (for inference).

    Parameters
    ----------
    path
        A checkpoint file (``<ckpt_dir>/last.pt``) or a directory holding ``last.pt``.
    model
        A network of the same architecture; loaded in place and returned.
    ema
        Load the EMA weights (default) rather than the raw ones.

    Raises
    ------
    CheckpointError
        If the file is unreadable, the architecture differs, or ``ema`` is asked of a run
        trained without EMA.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    ckpt = _read_checkpoint(p)
    _check_model(p, ckpt, model)
    if ema and ckpt["ema"] is None:
        raise CheckpointError(
            f"checkpoint {p} has no EMA weights (trained with ema_decay=None); pass ema=False"
        )
    _load_state(p, model, _ema_state(ckpt) if ema else ckpt["model"])
    return model


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` files a killed writer left (up to a checkpoint's size each);
    a live writer's file is kept."""
    for tmp in ckpt_dir.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was written"
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror or e} ({kept}); free space in "
            f"{path.parent} (or set another ckpt_dir) and rerun: training resumes from it"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (POSIX); harmless where unsupported
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if isinstance(rec, dict) and rec.get("step", math.inf) <= upto:
                out.append(rec)
    return out


def training_log(ckpt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What a checkpoint folder says about the run behind it: the last logged step, its
    elapsed seconds and loss (from ``metrics.jsonl``, which survives resumes, so a run that
    resumed a finished checkpoint still reports the whole training) and the interruption and
    resume events (``events.jsonl``). ``None`` when nothing was logged."""
    ck = Path(ckpt_dir)
    rows = _read_metrics(ck / "metrics.jsonl", math.inf)
    if not rows:
        return None
    events = _read_metrics(ck / "events.jsonl", math.inf)
    last = rows[-1]
    return {
        "last_logged_step": last["step"],
        "train_seconds": last.get("elapsed"),
        "final_loss": last.get("loss"),
        "events": events,
    }


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _log_event(ckpt_dir: str | None, event: str, step: int, **extra: Any) -> None:
    """Append one line to ``<ckpt_dir>/events.jsonl``: the run's interruptions and resumes.

    It lives beside the checkpoints because a workflow manager may discard a failed job's log
    (Snakemake does, before the retry), while the story of a preempted run should survive.
    """
    if not ckpt_dir:
        return
    rec = {
        "event": event,
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **extra,
    }
    with open(Path(ckpt_dir) / "events.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


class _SignalFlag:
    """SIGTERM/SIGUSR1/SIGINT -> set a flag (handlers only installed from the main thread); a
    second SIGINT (an impatient Ctrl-C) interrupts at once as Python's default would."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _setup_distributed(device) -> tuple[int, int, bool, torch.device]:
    """(rank, world_size, created_group, device); inits the group when launched by torchrun."""
    created = False
    if dist.is_available() and not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            # Kept for the life of the process: destroying it after train() and initialising
            # it again on torchrun's store hung intermittently (seen in CI and in a clean-clone
            # run), so a later train() call in the same process reuses this group.
            atexit.register(_destroy_group)
            created = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return rank, world, created, device


# --------------------------------------------------------------------------------------------
# The loop


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any, ShardedRNG], Tensor | Mapping[str, Any]],
    data: Dataset | Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    metrics_path: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` by minimising ``loss_fn``.

    Parameters
    ----------
    model
        The network (moved to ``device``). Under DDP ``loss_fn`` receives it wrapped in
        ``DistributedDataParallel`` (unknown attributes fall through to the network); call
        its forward once per step and use every trainable parameter.
    loss_fn
        ``loss_fn(model, batch, rng)`` -> scalar loss, or a dict with key ``"loss"`` and
        extra scalars to log. ``batch`` is this rank's shard, on ``device``; ``rng`` a
        :class:`~diffsci.core.rng.ShardedRNG`: draw *all* randomness through it. The loss
        must be the mean over the shard (DDP averages gradients across equal shards).
    data
        Map-style dataset (items collated with ``default_collate``) or a Tensor whose first
        dim indexes samples. Sampled in seeded epoch permutations (module docstring).
    config
        :class:`TrainConfig`.
    device
        Default: ``cuda:LOCAL_RANK`` if CUDA is available, else CPU.
    resume
        Continue from ``<ckpt_dir>/last.pt`` if it exists (bit-identical continuation);
        ``False`` starts afresh and overwrites it. Returns at once if it already holds
        ``config.steps`` steps or more.
    metrics_path
        JSON-lines log (default ``<ckpt_dir>/metrics.jsonl``, none without ``ckpt_dir``):
        ``step, loss, lr, grad_norm, samples_per_s, elapsed`` and the extra scalars, each a
        mean over the steps since the previous line. Appended across resumes (lines past the
        checkpoint's step are dropped); truncated on a fresh start.
    settings
        The caller's settings that shape the trained weights besides ``config`` (e.g. a
        domain's model and data config), JSON-like. Saved in the checkpoint; resuming under
        different settings is a :class:`CheckpointError` naming the keys that differ (the
        architecture can be identical while, say, the noise schedule changed, and the
        continued run would silently mix the two).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingInterrupted
        After SIGTERM/SIGUSR1 (exit code 75), once every rank agreed and the checkpoint is saved.
    FloatingPointError
        On a non-finite loss or gradient norm (nothing is saved for that step).
    CheckpointError
        If ``last.pt`` is unreadable or does not match the model, the config's
        ``batch_size``/``seed``, the dataset's length or ``settings``.
    ValueError
        If ``batch_size`` does not split evenly across DDP ranks.
    """
    rank, world, _, device = _setup_distributed(device)
    run = _new_run(
        model,
        data,
        config,
        rank=rank,
        world=world,
        device=device,
        metrics_path=metrics_path,
        settings=_json_like(settings),
    )
    return _train(run, loss_fn, data, resume=resume)


def _json_like(obj: Any) -> Any:
    """``obj`` as JSON would round-trip it (tuples -> lists), so saved and current compare."""
    return None if obj is None else json.loads(json.dumps(obj, sort_keys=True, default=str))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _settings_diff(saved: Any, current: Any) -> list[str]:
    a, b = _flat(saved), _flat(current)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [
        f"{k}: checkpoint {a.get(k, '<absent>')!r} vs now {b.get(k, '<absent>')!r}" for k in keys
    ]


# --------------------------------------------------------------------------------------------
# The loop, in pieces: the run's state (_Run), resume (validate, then restore), DDP setup, one
# optimiser step, the log window, checkpoint writing and the exit on a signal.


@dataclass
class _Run:
    """The state one :func:`train` call shares between the pieces of its loop.

    ``step``, ``elapsed0`` (seconds of earlier runs), the log window (``window``: sums of the
    logged scalars, ``window_n``: steps in them), ``ema``, ``opt`` and ``gen`` are what a
    checkpoint saves besides the weights. ``window_steps``/``t_window`` (this process's steps
    and start of the window, for samples/s) and ``t_start`` are not saved.
    """

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    base: nn.Module
    was_training: bool
    named: list[tuple[str, nn.Parameter]]
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    ema: dict[str, Tensor] | None
    gen: torch.Generator
    n_data: int
    local_bs: int
    settings: Any
    ckpt_path: Path | None
    mpath: Path | None
    step: int = 0
    elapsed0: float = 0.0
    window: dict[str, float] = field(default_factory=dict)
    window_n: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    t_start: float = 0.0
    t_window: float = 0.0
    window_steps: int = 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    def result(self, ema: Mapping[str, Tensor] | None) -> TrainResult:
        return _result(self.base, self.was_training, ema, self.named, self.step, self.history)


def _data_len(data: Dataset | Tensor) -> int:
    try:
        n_data = data.shape[0] if isinstance(data, Tensor) else len(data)
    except TypeError as e:
        raise TypeError("data must be a Tensor or a map-style Dataset with __len__") from e
    if n_data < 1:
        raise ValueError("data is empty")
    return n_data


def _metrics_file(cfg: TrainConfig, metrics_path: str | os.PathLike | None) -> Path | None:
    if metrics_path:
        return Path(metrics_path)
    return Path(cfg.ckpt_dir) / "metrics.jsonl" if cfg.ckpt_dir else None


def _new_run(model, data, cfg: TrainConfig, *, rank, world, device, metrics_path, settings) -> _Run:
    """A fresh run: the model on ``device``, AdamW, the EMA copy and the seeded generator."""
    local_bs = _local_batch(cfg.batch_size, world)
    n_data = _data_len(data)
    base = _base(model).to(device)
    named = [(n, p) for n, p in base.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema: dict[str, Tensor] | None = None
    if cfg.ema_decay is not None:
        ema = {n: p.detach().to(_ema_dtype(p.dtype), copy=True) for n, p in named}
    return _Run(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        base=base,
        was_training=base.training,
        named=named,
        params=params,
        opt=opt,
        ema=ema,
        gen=torch.Generator().manual_seed(cfg.seed),
        n_data=n_data,
        local_bs=local_bs,
        settings=settings,
        ckpt_path=Path(cfg.ckpt_dir) / "last.pt" if cfg.ckpt_dir else None,
        mpath=_metrics_file(cfg, metrics_path),
    )


def _train(run: _Run, loss_fn, data, *, resume: bool) -> TrainResult:
    """Resume (or start afresh), then run the loop."""
    if run.ckpt_path is not None and run.rank == 0 and run.ckpt_path.parent.is_dir():
        _remove_stale_temporaries(run.ckpt_path.parent)
    if resume and run.ckpt_path is not None and run.ckpt_path.is_file():
        finished = _resume(run)
        if finished is not None:
            return finished
    elif run.mpath and run.rank == 0:
        _write_metrics(run.mpath, [])
    if run.step >= run.cfg.steps:
        return run.result(run.ema)
    return _loop(run, loss_fn, data)


# ---- resume


def _resume_mismatches(run: _Run, ckpt: Mapping[str, Any]) -> list[str]:
    """What differs from the checkpoint in ways that would not reproduce the run."""
    cfg, saved = run.cfg, ckpt["config"]
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs config {getattr(cfg, k)!r}"
        for k in _STRICT_FIELDS
        if saved.get(k) != getattr(cfg, k)
    ]
    if ckpt["n_data"] != run.n_data:
        diffs.append(f"dataset length: checkpoint {ckpt['n_data']} vs data {run.n_data}")
    if run.settings is not None:
        if ckpt.get("settings") is None:  # an older checkpoint: cannot be checked
            diffs.append("settings: the checkpoint records none (made before they were saved)")
        else:
            diffs += _settings_diff(ckpt["settings"], run.settings)
    if (ckpt["ema"] is None) != (run.ema is None):
        diffs.append(
            f"ema_decay: checkpoint {saved.get('ema_decay')!r} vs config {cfg.ema_decay!r}"
        )
    return diffs


def _validate_resume(run: _Run, ckpt: Mapping[str, Any]) -> None:
    """Refuse a checkpoint this run cannot continue reproducibly; warn of allowed changes."""
    path, cfg, saved = run.ckpt_path, run.cfg, ckpt["config"]
    _check_model(path, ckpt, run.base)
    diffs = _resume_mismatches(run, ckpt)
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was made with different settings, so continuing it would "
            f"not reproduce the run: {'; '.join(diffs)}. Use another ckpt_dir (or delete "
            f"{path.parent}), or resume=False, to start afresh."
        )
    soft = [
        f"{k} {saved.get(k)!r} -> {getattr(cfg, k)!r}"
        for k in _SOFT_FIELDS
        if k in saved and _norm(saved[k]) != _norm(getattr(cfg, k))
    ]
    if soft and run.rank == 0:
        warnings.warn(
            f"resuming {path} with changed settings ({', '.join(soft)}): "
            "the continuation will differ from an uninterrupted run",
            stacklevel=5,  # the caller of train() (-> _train -> _resume -> here)
        )


def _restore(run: _Run, ckpt: Mapping[str, Any]) -> None:
    """Everything but the weights: optimiser, EMA, generators, elapsed time, log window."""
    cfg = run.cfg
    run.opt.load_state_dict(ckpt["optimizer"])
    for g in run.opt.param_groups:  # the config's settings win over the saved ones
        g.update(betas=cfg.betas, weight_decay=cfg.weight_decay)
    if run.ema is not None:
        for n, t in ckpt["ema"].items():
            run.ema[n].copy_(t)
    run.gen.set_state(ckpt["generator"])
    states = ckpt["rng"]
    _set_rng_state(states[run.rank % len(states)])
    run.elapsed0 = float(ckpt.get("elapsed", 0.0))
    run.window = dict(ckpt["log_window"]["sums"])
    run.window_n = int(ckpt["log_window"]["n"])
    if run.mpath:
        run.history = _read_metrics(run.mpath, run.step)
        if run.rank == 0:
            _write_metrics(run.mpath, run.history)


def _resume(run: _Run) -> TrainResult | None:
    """Continue from ``last.pt``: the result at once if it holds ``cfg.steps`` steps already,
    else ``None`` with the whole state restored."""
    path, cfg = run.ckpt_path, run.cfg
    ckpt = _read_checkpoint(path)
    _validate_resume(run, ckpt)
    if int(ckpt["step"]) > cfg.steps:
        raise CheckpointError(
            f"checkpoint {path} holds {int(ckpt['step'])} steps, more than steps={cfg.steps}; "
            f"a shorter run cannot be recovered from it. Set steps: {int(ckpt['step'])} (or "
            f"more) to use it, or delete {path.parent} to train {cfg.steps} steps afresh."
        )
    _load_state(path, run.base, ckpt["model"])
    run.step = int(ckpt["step"])
    if run.rank == 0 and run.step < cfg.steps:  # the log and events.jsonl say a run was resumed
        print(
            f"resuming from checkpoint {path} at step {run.step} of {cfg.steps}",
            file=sys.stderr,
            flush=True,
        )
        _log_event(cfg.ckpt_dir, "resumed", run.step)
    if run.step >= cfg.steps:
        run.history = _read_metrics(run.mpath, run.step) if run.mpath else []
        return run.result(ckpt["ema"])
    _restore(run, ckpt)
    return None


# ---- DDP, the steps, the log window


def _setup_ddp(run: _Run) -> nn.Module:
    """The network ``loss_fn`` sees: DDP-wrapped across ranks (collectives then run on
    ``run.comm_device``: the GPU under NCCL, else the CPU)."""
    if not run.ddp:
        return run.base
    device = run.device
    net = _DDP(run.base, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.get_backend() == "nccl":
        run.comm_device = device
    return net


def _loop(run: _Run, loss_fn, data) -> TrainResult:
    cfg = run.cfg
    net = _setup_ddp(run)
    run.base.train()
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else run.device.type == "cuda"
    order = _EpochOrder(run.n_data, cfg.batch_size, cfg.seed)
    rng = ShardedRNG(run.gen, rank=run.rank, world_size=run.world)
    run.t_start = time.perf_counter()
    run.t_window = run.t_start
    run.window_steps = 0
    pbar = None
    if cfg.progress and run.rank == 0:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.steps, initial=run.step, desc="train", dynamic_ncols=True)
    mfile = open(run.mpath, "a") if (run.mpath and run.rank == 0) else None
    try:
        with _SignalFlag() as sigflag:
            while run.step < cfg.steps:
                lo, hi = run.rank * run.local_bs, (run.rank + 1) * run.local_bs
                batch = _to_device(_fetch(data, order.global_indices(run.step)[lo:hi]), run.device)
                lr, stop_any = _train_step(run, net, loss_fn, batch, rng, use_bf16, sigflag)
                if pbar is not None:
                    pbar.update(1)
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    _log_window(run, lr, mfile, pbar)
                saved_now = run.step % cfg.ckpt_every == 0 or run.step == cfg.steps
                if saved_now:
                    _save_checkpoint(run, run.step)
                if stop_any:
                    _interrupt(run, sigflag, saved_now)
    finally:
        if pbar is not None:
            pbar.close()
        if mfile is not None:
            mfile.close()
    return run.result(run.ema)


def _train_step(run: _Run, net, loss_fn, batch, rng, use_bf16: bool, sigflag) -> tuple[float, bool]:
    """One optimiser step on this rank's ``batch``, added to the log window.

    Returns the learning rate used and whether any rank has been signalled to stop.
    """
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = loss_fn(net, batch, rng)
    loss, extras = _split_loss(out, run.device)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = _grad_norm(run)
    vl = _rank_mean(run, loss, gn, extras, stop=0.0 if sigflag.signum is None else 1.0)
    _check_finite(vl[0], vl[1], run.step)
    lr = _lr_at(run.cfg, run.step)
    for g in run.opt.param_groups:
        g["lr"] = lr
    run.opt.step()
    _update_ema(run)
    run.step += 1
    run.window_steps += 1
    run.window_n += 1
    for k, v in zip(["loss", "grad_norm", *extras], vl[:-1], strict=True):
        run.window[k] = run.window.get(k, 0.0) + v
    return lr, vl[-1] > 0


def _grad_norm(run: _Run) -> Tensor:
    """The global gradient norm, clipping the gradients to ``cfg.grad_clip`` if set."""
    if run.cfg.grad_clip is not None:
        return nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip)
    return _total_norm([p.grad for p in run.params if p.grad is not None], run.device)


def _rank_mean(run: _Run, loss, gn, extras, *, stop: float) -> list[float]:
    """``[loss, grad_norm, *extras, stop]`` averaged over the ranks (``stop > 0``: some rank
    was signalled)."""
    device = run.device
    vals = torch.stack(
        [loss.detach().float(), gn.detach().float().to(device)]
        + [v.float() for v in extras.values()]
        + [torch.tensor(stop, device=device)]
    )
    if run.ddp:
        vals = vals.to(run.comm_device)
        dist.all_reduce(vals)
        vals = vals / run.world
    return vals.tolist()


def _check_finite(loss_v: float, gn_v: float, step: int) -> None:
    if not math.isfinite(loss_v) or not math.isfinite(gn_v):
        what = "loss" if not math.isfinite(loss_v) else "gradient norm"
        raise FloatingPointError(
            f"non-finite {what} at step {step + 1} (loss={loss_v}, "
            f"grad_norm={gn_v}); nothing was saved for this step"
        )


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def _update_ema(run: _Run) -> None:
    if run.ema is not None:
        ev = list(run.ema.values())
        torch._foreach_lerp_(
            ev,
            [p.detach().to(e.dtype) for p, e in zip(run.params, ev, strict=True)],
            1.0 - run.cfg.ema_decay,
        )


def _log_window(run: _Run, lr: float, mfile, pbar) -> None:
    """Close the log window: one record of its means, to the history and the metrics file."""
    now = time.perf_counter()
    rec = {"step": run.step}
    rec.update({k: v / run.window_n for k, v in run.window.items()})
    rec["lr"] = lr
    rec["samples_per_s"] = run.window_steps * run.cfg.batch_size / max(now - run.t_window, 1e-9)
    rec["elapsed"] = run.elapsed0 + now - run.t_start
    run.history.append(rec)
    if mfile is not None:
        mfile.write(json.dumps(rec) + "\n")
        mfile.flush()
    if pbar is not None:
        pbar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
    run.window, run.window_n, run.window_steps, run.t_window = {}, 0, 0, now


# ---- checkpoints and signals


def _save_checkpoint(run: _Run, at: int) -> None:
    """Write ``last.pt`` (rank 0) holding every rank's RNG state; under DDP every rank learns
    whether rank 0 succeeded (and raises if not)."""
    if run.ckpt_path is None:
        return
    states = _gather_rng_states(run)
    err: BaseException | None = None
    if run.rank == 0:
        obj = _checkpoint(run, at, states)
        try:
            _atomic_save(obj, run.ckpt_path)
        except BaseException as e:
            err = e
    if run.ddp:
        _agree_saved(run, err)
    if err is not None:
        raise err


def _gather_rng_states(run: _Run) -> list[Any]:
    """The global RNG states of every rank, in rank order."""
    if not run.ddp:
        return [_rng_state()]
    states: list[Any] = [None] * run.world
    dist.all_gather_object(states, _rng_state())
    return states


def _checkpoint(run: _Run, at: int, states: list[Any]) -> dict[str, Any]:
    """The contents of ``last.pt`` (format ``diffsci.training/1``)."""
    return {
        "format": _FORMAT,
        "step": at,
        "model": run.base.state_dict(),
        "ema": run.ema,
        "optimizer": run.opt.state_dict(),
        "generator": run.gen.get_state(),
        "rng": states,
        "config": asdict(run.cfg),
        "fingerprint": _fingerprint(run.base),
        "n_data": run.n_data,
        "settings": run.settings,
        "world_size": run.world,
        "elapsed": run.elapsed0 + time.perf_counter() - run.t_start,
        "log_window": {"n": run.window_n, "sums": dict(run.window)},
    }


def _agree_saved(run: _Run, err: BaseException | None) -> None:
    """A barrier that also tells the other ranks whether rank 0 succeeded."""
    flag = torch.tensor([0.0 if err is None else 1.0], device=run.comm_device)
    dist.all_reduce(flag)
    if err is None and flag.item() > 0:
        raise CheckpointError(f"rank 0 failed to write checkpoint {run.ckpt_path}")


def _interrupt(run: _Run, sigflag: _SignalFlag, saved_now: bool) -> NoReturn:
    """Some rank got SIGTERM/SIGUSR1: checkpoint (unless this step already did), record the
    event and raise :class:`TrainingInterrupted` (exit code 75)."""
    if not saved_now:
        _save_checkpoint(run, run.step)
    ckpt_path = run.ckpt_path
    where = f"checkpoint {ckpt_path}" if ckpt_path else "no checkpoint (ckpt_dir=None)"
    msg = f"training interrupted by a signal at step {run.step}; saved {where}"
    if run.rank == 0:
        print(msg, file=sys.stderr, flush=True)
        _log_event(
            run.cfg.ckpt_dir,
            "interrupted",
            run.step,
            signal=(signal.Signals(sigflag.signum).name if sigflag.signum else "on another rank"),
        )
    raise TrainingInterrupted(msg, step=run.step, signum=sigflag.signum)


def _total_norm(grads: list[Tensor], device: torch.device) -> Tensor:
    if not grads:
        return torch.zeros((), device=device)
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list | tuple) else v


def _split_loss(out: Any, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise KeyError("loss_fn returned a dict without the key 'loss'")
        extras = {
            k: torch.as_tensor(v, device=device).detach().reshape(())
            for k, v in sorted(out.items())
            if k != "loss"
        }
        out = out["loss"]
    else:
        extras = {}
    if not isinstance(out, Tensor) or out.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar Tensor (or a dict with one); got {out!r}")
    return out.reshape(()), extras


def _result(base, was_training, ema, named, step, history) -> TrainResult:
    base.train(was_training)
    ema_model = None
    if ema is not None:
        ema_model = copy.deepcopy(base).eval()
        emap = dict(ema_model.named_parameters())
        with torch.no_grad():
            for n, _ in named:
                emap[n].copy_(ema[n].to(emap[n].device, emap[n].dtype))
    return TrainResult(model=base, ema=ema_model, step=step, history=history)
