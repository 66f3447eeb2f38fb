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
from typing import Any

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
    return {"last_logged_step": last["step"], "train_seconds": last.get("elapsed"),
            "final_loss": last.get("loss"), "events": events}  # fmt: skip


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
    rec = {"event": event, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"), **extra}  # fmt: skip
    with open(Path(ckpt_dir) / "events.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


class _SignalFlag:
    """SIGTERM/SIGUSR1 -> set a flag (handlers only installed from the main thread)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGTERM", "SIGUSR1"):
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
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
    cfg = config
    rank, world, _, device = _setup_distributed(device)
    return _train(
        model, loss_fn, data, cfg, rank=rank, world=world, device=device,
        resume=resume, metrics_path=metrics_path, settings=_json_like(settings),
    )  # fmt: skip


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
    return [f"{k}: checkpoint {a.get(k, '<absent>')!r} vs now {b.get(k, '<absent>')!r}"
            for k in keys]  # fmt: skip


def _train(model, loss_fn, data, cfg: TrainConfig, *, rank, world, device, resume, metrics_path,
           settings=None):  # fmt: skip
    ddp = world > 1
    local_bs = _local_batch(cfg.batch_size, world)
    try:
        n_data = data.shape[0] if isinstance(data, Tensor) else len(data)
    except TypeError as e:
        raise TypeError("data must be a Tensor or a map-style Dataset with __len__") from e
    if n_data < 1:
        raise ValueError("data is empty")

    base = _base(model).to(device)
    was_training = base.training
    ckpt_path = Path(cfg.ckpt_dir) / "last.pt" if cfg.ckpt_dir else None
    mpath = Path(metrics_path) if metrics_path else (
        Path(cfg.ckpt_dir) / "metrics.jsonl" if cfg.ckpt_dir else None
    )  # fmt: skip

    named = [(n, p) for n, p in base.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema: dict[str, Tensor] | None = None
    if cfg.ema_decay is not None:
        ema = {n: p.detach().to(_ema_dtype(p.dtype), copy=True) for n, p in named}
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed0 = 0, 0.0
    window: dict[str, float] = {}
    window_n = 0
    history: list[dict[str, Any]] = []

    # ---- resume
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = _read_checkpoint(ckpt_path)
        _check_model(ckpt_path, ckpt, base)
        saved = ckpt["config"]
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {getattr(cfg, k)!r}"
                 for k in _STRICT_FIELDS if saved.get(k) != getattr(cfg, k)]  # fmt: skip
        if ckpt["n_data"] != n_data:
            diffs.append(f"dataset length: checkpoint {ckpt['n_data']} vs data {n_data}")
        if settings is not None:
            if ckpt.get("settings") is None:  # an older checkpoint: cannot be checked
                diffs.append("settings: the checkpoint records none (made before they were saved)")
            else:
                diffs += _settings_diff(ckpt["settings"], settings)
        if (ckpt["ema"] is None) != (ema is None):
            diffs.append(
                f"ema_decay: checkpoint {saved.get('ema_decay')!r} vs config {cfg.ema_decay!r}"
            )
        if diffs:
            raise CheckpointError(
                f"checkpoint {ckpt_path} was made with different settings, so continuing it would "
                f"not reproduce the run: {'; '.join(diffs)}. Use another ckpt_dir (or delete "
                f"{ckpt_path.parent}), or resume=False, to start afresh."
            )
        soft = [f"{k} {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in _SOFT_FIELDS
                if k in saved and _norm(saved[k]) != _norm(getattr(cfg, k))]  # fmt: skip
        if soft and rank == 0:
            warnings.warn(
                f"resuming {ckpt_path} with changed settings ({', '.join(soft)}): "
                "the continuation will differ from an uninterrupted run",
                stacklevel=3,
            )
        _load_state(ckpt_path, base, ckpt["model"])
        step = int(ckpt["step"])
        if rank == 0 and step < cfg.steps:  # the log and events.jsonl say a run was resumed
            print(f"resuming from checkpoint {ckpt_path} at step {step} of {cfg.steps}",
                  file=sys.stderr, flush=True)  # fmt: skip
            _log_event(cfg.ckpt_dir, "resumed", step)
        if step >= cfg.steps:
            history = _read_metrics(mpath, step) if mpath else []
            return _result(base, was_training, ckpt["ema"], named, step, history)
        opt.load_state_dict(ckpt["optimizer"])
        for g in opt.param_groups:  # the config's settings win over the saved ones
            g.update(betas=cfg.betas, weight_decay=cfg.weight_decay)
        if ema is not None:
            for n, t in ckpt["ema"].items():
                ema[n].copy_(t)
        gen.set_state(ckpt["generator"])
        states = ckpt["rng"]
        _set_rng_state(states[rank % len(states)])
        elapsed0 = float(ckpt.get("elapsed", 0.0))
        window = dict(ckpt["log_window"]["sums"])
        window_n = int(ckpt["log_window"]["n"])
        if mpath:
            history = _read_metrics(mpath, step)
            if rank == 0:
                _write_metrics(mpath, history)
        del ckpt
    elif mpath and rank == 0:
        _write_metrics(mpath, [])
    if step >= cfg.steps:
        return _result(base, was_training, ema, named, step, history)

    # ---- setup
    net = _DDP(base, device_ids=[device.index] if device.type == "cuda" else None) if ddp else base
    base.train()
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    order = _EpochOrder(n_data, cfg.batch_size, cfg.seed)
    rng = ShardedRNG(gen, rank=rank, world_size=world)
    comm_device = device if (ddp and dist.get_backend() == "nccl") else torch.device("cpu")
    t_start = time.perf_counter()
    t_window = t_start
    window_steps = 0  # steps in the window of *this* process (for samples/s)

    def save(at: int) -> None:
        if ckpt_path is None:
            return
        states = [None] * world
        if ddp:
            dist.all_gather_object(states, _rng_state())
        else:
            states = [_rng_state()]
        err: BaseException | None = None
        if rank == 0:
            obj = {
                "format": _FORMAT,
                "step": at,
                "model": base.state_dict(),
                "ema": ema,
                "optimizer": opt.state_dict(),
                "generator": gen.get_state(),
                "rng": states,
                "config": asdict(cfg),
                "fingerprint": _fingerprint(base),
                "n_data": n_data,
                "settings": settings,
                "world_size": world,
                "elapsed": elapsed0 + time.perf_counter() - t_start,
                "log_window": {"n": window_n, "sums": dict(window)},
            }
            try:
                _atomic_save(obj, ckpt_path)
            except BaseException as e:
                err = e
        if ddp:  # a barrier that also tells the other ranks whether rank 0 succeeded
            flag = torch.tensor([0.0 if err is None else 1.0], device=comm_device)
            dist.all_reduce(flag)
            if err is None and flag.item() > 0:
                raise CheckpointError(f"rank 0 failed to write checkpoint {ckpt_path}")
        if err is not None:
            raise err

    pbar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)
    mfile = open(mpath, "a") if (mpath and rank == 0) else None
    try:
        with _SignalFlag() as sigflag:
            while step < cfg.steps:
                idx = order.global_indices(step)[rank * local_bs : (rank + 1) * local_bs]
                batch = _to_device(_fetch(data, idx), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = loss_fn(net, batch, rng)
                loss, extras = _split_loss(out, device)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    gn = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                else:
                    gn = _total_norm([p.grad for p in params if p.grad is not None], device)
                stop = 0.0 if sigflag.signum is None else 1.0
                vals = torch.stack(
                    [loss.detach().float(), gn.detach().float().to(device)]
                    + [v.float() for v in extras.values()]
                    + [torch.tensor(stop, device=device)]
                )
                if ddp:
                    vals = vals.to(comm_device)
                    dist.all_reduce(vals)
                    vals = vals / world
                vl = vals.tolist()
                loss_v, gn_v, stop_any = vl[0], vl[1], vl[-1] > 0
                if not math.isfinite(loss_v) or not math.isfinite(gn_v):
                    what = "loss" if not math.isfinite(loss_v) else "gradient norm"
                    raise FloatingPointError(
                        f"non-finite {what} at step {step + 1} (loss={loss_v}, "
                        f"grad_norm={gn_v}); nothing was saved for this step"
                    )
                lr = (
                    cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
                )
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.step()
                if ema is not None:
                    ev = list(ema.values())
                    torch._foreach_lerp_(ev, [p.detach().to(e.dtype) for p, e in zip(params, ev, strict=True)],
                                         1.0 - cfg.ema_decay)  # fmt: skip
                step += 1
                window_steps += 1
                window_n += 1
                for k, v in zip(["loss", "grad_norm", *extras], vl[:-1], strict=True):
                    window[k] = window.get(k, 0.0) + v
                if pbar is not None:
                    pbar.update(1)

                if step % cfg.log_every == 0 or step == cfg.steps:
                    now = time.perf_counter()
                    rec = {"step": step}
                    rec.update({k: v / window_n for k, v in window.items()})
                    rec["lr"] = lr
                    rec["samples_per_s"] = window_steps * cfg.batch_size / max(now - t_window, 1e-9)
                    rec["elapsed"] = elapsed0 + now - t_start
                    history.append(rec)
                    if mfile is not None:
                        mfile.write(json.dumps(rec) + "\n")
                        mfile.flush()
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
                    window, window_n, window_steps, t_window = {}, 0, 0, now

                saved_now = False
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    save(step)
                    saved_now = True
                if stop_any:
                    if not saved_now:
                        save(step)
                    where = (
                        f"checkpoint {ckpt_path}" if ckpt_path else "no checkpoint (ckpt_dir=None)"
                    )
                    msg = f"training interrupted by a signal at step {step}; saved {where}"
                    if rank == 0:
                        print(msg, file=sys.stderr, flush=True)
                        _log_event(cfg.ckpt_dir, "interrupted", step,
                                   signal=(signal.Signals(sigflag.signum).name
                                           if sigflag.signum else "on another rank"))  # fmt: skip
                    raise TrainingInterrupted(msg, step=step, signum=sigflag.signum)
    finally:
        if pbar is not None:
            pbar.close()
        if mfile is not None:
            mfile.close()
    return _result(base, was_training, ema, named, step, history)


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
