"""GPU performance: training throughput and sampling latency, fp32 eager vs the fast path.

For the denoisers each domain trains (built through the domain task, ``task.build_model(cfg)``,
from the domain's workflow config), two modes are measured in the same run:

``fp32_eager``
    float32, eager PyTorch, the network as the task builds it. PyTorch's default float32
    settings apply (``torch.get_float32_matmul_precision()``, cuDNN's TF32 switch; both are
    recorded in the JSON).
``fast``
    bf16 autocast + ``channels_last`` (model and 4-D inputs) + ``torch.compile`` (static shapes)
    + scaled-dot-product ("flash") attention in MONAI's attention blocks. MONAI's UNet always
    has an attention block in its middle block, so attention is present even when
    ``model.attention_levels`` are all false; the FNO backbone has none.

Measured per domain and mode (weights identical across modes, from the same seed):

- training throughput, samples/s: a full step (:func:`~diffsci.core.denoisers.edm_loss`,
  backward, ``AdamW.step``) on the config's per-process batch; median over repeats of ``iters``
  steps, modes interleaved within each repeat, warm-up steps excluded, ``cuda.synchronize``
  around every timed block. The first call (which includes compilation) is timed separately.
  The noise and training sigmas are drawn on the device (the training loop's ``ShardedRNG``
  draws on the host and copies; that cost is not part of this benchmark);
- sampling latency, seconds: one :func:`~diffsci.core.samplers.sample_dpmpp_2m` call over
  ``karras(sampling.steps, sigma_min, sigma_max)`` for the batch the domain's inference uses;
  median over repeats;
- on CUDA, ``peak_memory_gib``: ``max_memory_allocated`` during a mode's first training step
  and first sampling call (the other mode's model and optimizer state stay resident);
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on one forward+backward (training)
  and one forward (per network evaluation) of the eager fp32 model; it counts matmuls,
  convolutions and attention, not elementwise work (nor FFTs). Achieved TFLOP/s =
  ``flops * rate / 1e12``, reported against the device's dense peak (bf16 for ``fast``, fp32
  for ``fp32_eager``) from a small table keyed on ``torch.cuda.get_device_name()``; ``None``
  on CPU or unknown GPUs.

Target (the HPC issue): ``fast`` training throughput >= 2x ``fp32_eager`` on GPU; the ``bars``
dict records it per domain. On CPU the ratio is recorded but the bar does not apply (bf16 is
usually slower than fp32 on CPUs without AMX): the CPU run exists so the benchmark never rots.

Run on a GPU node (``*_gpu.yaml`` configs, writes ``results/gpu_perf_cuda.json``)::

    python -m benchmarks.gpu_perf --device cuda

On CPU (tiny ``<domain>.yaml`` configs, small batches, writes ``results/gpu_perf_cpu.json``)::

    OMP_NUM_THREADS=1 python -m benchmarks.gpu_perf --device cpu --no-compile

``--domains pde_fno`` benchmarks the PDE task with ``model.backbone = fno``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from benchmarks._common import write_result
from diffsci.core.denoisers import edm_loss
from diffsci.core.samplers import nfe, sample_dpmpp_2m
from diffsci.core.schedules import karras
from diffsci.core.stages import validate_config
from diffsci.core.task import get_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflows" / "config"
DOMAINS = ("medical", "pde", "pde_fno")
DEFAULT_DOMAINS = ("medical", "pde")
MODES = ("fp32_eager", "fast")
TARGET_SPEEDUP = 2.0
CPU_BAR = "not applicable on CPU"

#: Dense (no sparsity) peak TFLOP/s per GPU: bf16 tensor cores and fp32 (non-tensor-core).
#: Matched in order against ``torch.cuda.get_device_name()``, so the PCIe H100 comes first.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp32": 67.0}),  # same compute as H100 SXM
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
)

#: Workload caps applied on CPU unless given on the command line (the tiny configs' batches
#: and step counts would take minutes on a laptop core).
CPU_DEFAULTS = {"train_batch": 8, "sample_batch": 4, "sample_steps": 8}


# --------------------------------------------------------------------------------------------
# configs and workloads
# --------------------------------------------------------------------------------------------


def peak_tflops(device_name: str | None) -> dict[str, float] | None:
    """Dense peak TFLOP/s (``{"bf16": ..., "fp32": ...}``) of a known GPU, else ``None``.

    Parameters
    ----------
    device_name
        ``torch.cuda.get_device_name()``, or ``None`` for the CPU.
    """
    if not device_name:
        return None
    for key, peak in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return dict(peak)
    return None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update (``over`` wins), returning ``base``."""
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def load_config(
    domain: str,
    device_kind: str,
    *,
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The validated (defaults filled) workflow config of ``domain`` for a device kind.

    Parameters
    ----------
    domain
        ``"medical"``, ``"pde"`` or ``"pde_fno"`` (the PDE config with ``model.backbone=fno``).
    device_kind
        ``"cuda"`` reads ``workflows/config/<task>_gpu.yaml``, anything else ``<task>.yaml``.
    path
        Another config file.
    overrides
        Nested values merged into the config before validation.
    """
    task_name = "pde" if domain == "pde_fno" else domain
    if path is None:
        suffix = "_gpu" if device_kind == "cuda" else ""
        path = CONFIGS / f"{task_name}{suffix}.yaml"
    cfg = yaml.safe_load(Path(path).read_text())
    if domain == "pde_fno":
        cfg.setdefault("model", {})["backbone"] = "fno"
    _merge(cfg, overrides or {})
    validate_config(cfg, get_task(task_name).schema_path, source=str(path))
    return cfg


@dataclass
class Workload:
    """Shapes and sizes of one domain's training step and sampling call.

    Attributes
    ----------
    domain, config
        Domain key and the config file it came from.
    x_shape
        Per-sample shape ``(C, H, W)`` of the denoised field in training (sampling:
        ``sample_shape``).
    cond_channels
        Channels of the concatenated image condition (0: unconditional).
    train_batch, sample_batch, sample_steps
        Samples per training step (per process), samples per sampling call, sampler steps.
    sigma_min, sigma_max, lr
        Sampling schedule ends and AdamW learning rate.
    """

    domain: str
    config: str
    x_shape: tuple[int, ...]
    sample_shape: tuple[int, ...]
    cond_channels: int
    train_batch: int
    sample_batch: int
    sample_steps: int
    sigma_min: float
    sigma_max: float
    lr: float
    description: str


def make_workload(
    domain: str,
    cfg: Mapping[str, Any],
    *,
    config: str = "",
    train_batch: int | None = None,
    sample_batch: int | None = None,
    sample_steps: int | None = None,
) -> Workload:
    """The training and sampling workload of ``domain`` under ``cfg`` (optional overrides).

    Medical: ``(1, size, size)`` images, ``train.batch_size`` per step, ``sampling.batch``
    slices per sampling call. PDE: ``4**level`` wavelet channels on the
    ``(nt / 2**level, nx / 2**level)`` grid with a condition of the same shape,
    ``train_chunk * train.batch_size`` trajectories per step on the largest training grid,
    ``sampling.batch * sampling.members`` trajectories per sampling call (one forecast batch)
    on the largest evaluation grid.
    """
    s, t = cfg["sampling"], cfg["train"]
    if domain == "medical":
        n = cfg["data"]["size"]
        x_shape = sample_shape = (1, n, n)
        cond, tb, sb = 0, t["batch_size"], s["batch"]
        desc = f"medical prior: 1x{n}x{n} images, UNet {cfg['model']['channels']}"
    elif domain in ("pde", "pde_fno"):
        m, d = cfg["model"], cfg["data"]
        lv, ch = m["level"], 4 ** m["level"]
        nt = d["nt"] // 2**lv
        x_shape = (ch, nt, max(d["train_nx"]) // 2**lv)
        sample_shape = (ch, nt, max(d["eval_nx"]) // 2**lv)
        cond, tb, sb = ch, cfg["train_chunk"] * t["batch_size"], s["batch"] * s["members"]
        if m["backbone"] == "fno":
            net = f"FNO modes {m['modes']} width {m['width']} depth {m['depth']}"
        else:
            net = f"UNet {m['channels']}"
        desc = f"pde wavelet level {lv}: {ch} channels + {ch}-channel concat condition, {net}"
    else:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    return Workload(
        domain=domain,
        config=config,
        x_shape=tuple(x_shape),
        sample_shape=tuple(sample_shape),
        cond_channels=cond,
        train_batch=int(train_batch or tb),
        sample_batch=int(sample_batch or sb),
        sample_steps=int(sample_steps or s["steps"]),
        sigma_min=float(s["sigma_min"]),
        sigma_max=float(s["sigma_max"]),
        lr=float(t["lr"]),
        description=desc,
    )


# --------------------------------------------------------------------------------------------
# models and modes
# --------------------------------------------------------------------------------------------


class DeviceRNG:
    """The ``randn``/``rand`` interface :func:`edm_loss` needs, drawing on the device.

    Parameters
    ----------
    generator
        A generator on the device the draws are made on.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def randn(self, shape, *, device=None, dtype=torch.float32) -> Tensor:
        """Standard normal draw of ``shape``."""
        out = torch.randn(
            tuple(shape), generator=self.generator, device=self.generator.device, dtype=dtype
        )
        return out.to(device) if device is not None else out

    def rand(self, shape, *, device=None, dtype=torch.float32) -> Tensor:
        """Uniform ``[0, 1)`` draw of ``shape``."""
        out = torch.rand(
            tuple(shape), generator=self.generator, device=self.generator.device, dtype=dtype
        )
        return out.to(device) if device is not None else out


def build_model(domain: str, cfg: Mapping[str, Any], *, seed: int) -> nn.Module:
    """The domain's denoiser from its task, with seeded (reproducible) initial weights."""
    torch.manual_seed(seed)
    return get_task("pde" if domain == "pde_fno" else domain).build_model(cfg)


def attention_info(model: nn.Module) -> dict[str, Any]:
    """Whether ``model`` has attention blocks (MONAI's ``use_flash_attention`` switch)."""
    blocks = [
        m for m in model.modules() if hasattr(m, "use_flash_attention") and hasattr(m, "scale")
    ]
    net = getattr(model, "net", None)
    levels = getattr(net, "config", {}).get("attention_levels") if net is not None else None
    return {
        "present": bool(blocks),
        "blocks": len(blocks),
        "attention_levels": levels,
        "note": "MONAI's UNet middle block always attends" if levels is not None else None,
    }


def enable_flash_attention(model: nn.Module) -> int:
    """Switch MONAI attention blocks to ``scaled_dot_product_attention``; return their count.

    The domain tasks build the UNet without ``use_flash_attention``; the switch only selects
    the attention kernel in ``forward`` (same parameters), so it is flipped after building.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "use_flash_attention") and hasattr(m, "scale"):  # SABlock, CrossAttention
            if getattr(m, "save_attn", False) or getattr(m, "rel_positional_embedding", None):
                continue
            m.use_flash_attention = True
            n += 1
    return n


def to_channels_last(model: nn.Module) -> int:
    """Store every 4-D parameter and buffer of ``model`` channels-last; return their count.

    ``Module.to(memory_format=...)`` rejects models holding other ranks of 4+ dimensions (the
    FNO's 5-D spectral weights), so 4-D tensors are converted one by one.
    """
    n = 0
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
                n += 1
    return n


@dataclass
class Prepared:
    """A model ready to time in one mode."""

    model: nn.Module
    call: nn.Module | Callable[..., Tensor]
    opt: torch.optim.Optimizer
    autocast: Callable[[], contextlib.AbstractContextManager]
    memory_format: torch.memory_format
    flash_blocks: int


def prepare(
    model: nn.Module,
    mode: str,
    device: torch.device,
    *,
    lr: float,
    compile: bool,
    compile_mode: str | None,
) -> Prepared:
    """Move ``model`` to ``device`` and set it up for ``mode`` (see the module docs)."""
    model = model.to(device).train()
    fast = mode == "fast"
    flash = enable_flash_attention(model) if fast else 0
    fmt = torch.channels_last if fast else torch.contiguous_format
    if fast:
        to_channels_last(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    call: Any = model
    if fast and compile:
        call = torch.compile(model, dynamic=False, mode=compile_mode)

    def autocast() -> contextlib.AbstractContextManager:
        if fast:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return Prepared(model, call, opt, autocast, fmt, flash)


def _inputs(
    w: Workload,
    shape: tuple[int, ...],
    batch: int,
    device: torch.device,
    fmt: torch.memory_format,
    seed: int,
) -> tuple[Tensor, Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = (0.5 * torch.randn(batch, *shape, generator=g)).to(device)
    cond = None
    if w.cond_channels:
        cond = (0.5 * torch.randn(batch, w.cond_channels, *shape[1:], generator=g)).to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=fmt)
        cond = cond.contiguous(memory_format=fmt) if cond is not None else None
    return x, cond


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def count_flops(model: nn.Module, w: Workload, device: torch.device, seed: int) -> dict[str, int]:
    """FLOPs of one training forward+backward and of one sampling network evaluation.

    Counted by :class:`~torch.utils.flop_counter.FlopCounterMode` on the eager fp32 ``model``
    (matmuls, convolutions, attention; not elementwise work).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x0, cond = _inputs(w, w.x_shape, w.train_batch, device, torch.contiguous_format, seed)
    rng = DeviceRNG(torch.Generator(device).manual_seed(seed))
    with FlopCounterMode(display=False) as fc:
        edm_loss(model, x0, rng, cond=cond).backward()
    train = int(fc.get_total_flops())
    model.zero_grad(set_to_none=True)
    xs, cs = _inputs(w, w.sample_shape, w.sample_batch, device, torch.contiguous_format, seed)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(xs, torch.ones(w.sample_batch, device=device), cs)
    return {"train_step": train, "sampling_nfe": int(fc.get_total_flops())}


# --------------------------------------------------------------------------------------------
# one domain
# --------------------------------------------------------------------------------------------


def bench_domain(
    w: Workload,
    cfg: Mapping[str, Any],
    device: torch.device,
    *,
    modes=MODES,
    compile=True,
    compile_mode: str | None = None,
    warmup: int = 2,
    iters: int = 5,
    repeats: int = 3,
    sample_repeats: int = 3,
    seed: int = 0,
    peak: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Training throughput and sampling latency of one domain in each mode.

    Parameters
    ----------
    w, cfg
        The workload and the validated config it came from.
    device
        Where to run.
    modes
        Subset of :data:`MODES`.
    compile, compile_mode
        ``torch.compile`` the ``fast`` model (mode passed to ``torch.compile``).
    warmup
        Training steps before timing (>= 1; the first, compile included, is timed apart).
    iters, repeats
        Training steps per timed block and the number of blocks (median reported).
    sample_repeats
        Timed sampling calls after one warm-up call (median reported).
    seed
        Weights, inputs and noise.
    peak
        Device peak TFLOP/s (:func:`peak_tflops`) or ``None``.
    log
        Progress printer.
    """
    warmup = max(1, int(warmup))
    eager = build_model(w.domain, cfg, seed=seed).to(device).train()
    attn = attention_info(eager)
    flops = count_flops(eager, w, device, seed)
    n_nfe = nfe("dpmpp_2m", w.sample_steps)
    sigmas = karras(w.sample_steps, w.sigma_min, w.sigma_max)

    out: dict[str, Any] = {
        "workload": asdict(w),
        "attention": attn,
        "flops": flops,
        "sampler": "dpmpp_2m",
        "nfe": n_nfe,
        "modes": {},
    }
    preps: dict[str, Prepared] = {}
    steps: dict[str, Callable[[], None]] = {}
    samplers: dict[str, Callable[[], Tensor]] = {}
    for mode in modes:
        model = eager if mode == "fp32_eager" else build_model(w.domain, cfg, seed=seed)
        res: dict[str, Any] = out["modes"].setdefault(mode, {})
        try:
            p = prepare(
                model,
                mode,
                device,
                lr=w.lr,
                compile=compile and mode == "fast",
                compile_mode=compile_mode,
            )
            x0, cond = _inputs(w, w.x_shape, w.train_batch, device, p.memory_format, seed + 1)
            xs, cs = _inputs(w, w.sample_shape, w.sample_batch, device, p.memory_format, seed + 2)
            rng = DeviceRNG(torch.Generator(device).manual_seed(seed + 3))

            def step(p=p, x0=x0, cond=cond, rng=rng) -> None:
                p.opt.zero_grad(set_to_none=True)
                with p.autocast():
                    loss = edm_loss(p.call, x0, rng, cond=cond)
                loss.backward()
                p.opt.step()

            def draw(p=p, xs=xs, cs=cs) -> Tensor:
                g = torch.Generator(device).manual_seed(seed + 4)
                x = torch.randn(xs.shape, generator=g, device=device) * float(sigmas[0])
                x = x.contiguous(memory_format=p.memory_format) if x.dim() == 4 else x
                with torch.no_grad(), p.autocast():
                    return sample_dpmpp_2m(p.call, x, sigmas, cond=cs, generator=g)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            res["compiled"] = bool(compile and mode == "fast")
            res["flash_attention_blocks"] = p.flash_blocks
            res["train_first_call_s"] = _timed(step, device)
            for _ in range(warmup - 1):
                step()
            res["sample_first_call_s"] = _timed(draw, device)
            if device.type == "cuda":
                res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            preps[mode], steps[mode], samplers[mode] = p, step, draw
            log(
                f"  {w.domain:8s} {mode:10s} first train step {res['train_first_call_s']:.2f}s, "
                f"first sampling call {res['sample_first_call_s']:.2f}s"
            )
        except Exception as e:  # a GPU node should still report the other modes
            res["error"] = f"{type(e).__name__}: {e}"
            log(f"  {w.domain:8s} {mode:10s} FAILED: {res['error']}")

    train_runs: dict[str, list[float]] = {m: [] for m in steps}
    sample_runs: dict[str, list[float]] = {m: [] for m in samplers}
    for _ in range(repeats):  # modes interleaved inside every repeat
        for mode, step in steps.items():
            dt = _timed(lambda step=step: [step() for _ in range(iters)], device)
            train_runs[mode].append(iters * w.train_batch / dt)
    for _ in range(sample_repeats):
        for mode, draw in samplers.items():
            sample_runs[mode].append(_timed(draw, device))

    for mode in steps:
        res = out["modes"][mode]
        sps = statistics.median(train_runs[mode])
        lat = statistics.median(sample_runs[mode])
        step_s = w.train_batch / sps
        res.update(
            {
                "samples_per_s": sps,
                "train_step_s": step_s,
                "train_runs_samples_per_s": train_runs[mode],
                "train_compile_s": max(0.0, res["train_first_call_s"] - step_s),
                "sampling_latency_s": lat,
                "sampling_runs_s": sample_runs[mode],
                "sampling_compile_s": max(0.0, res["sample_first_call_s"] - lat),
                "train_tflops": flops["train_step"] / step_s / 1e12,
                "sampling_tflops": flops["sampling_nfe"] * n_nfe / lat / 1e12,
            }
        )
        pk = None if peak is None else peak["bf16" if mode == "fast" else "fp32"]
        res["peak_tflops"] = pk
        res["train_utilisation"] = None if pk is None else res["train_tflops"] / pk
        res["sampling_utilisation"] = None if pk is None else res["sampling_tflops"] / pk
        log(
            f"  {w.domain:8s} {mode:10s} {sps:9.1f} samples/s  sampling {lat:.3f}s  "
            f"train {res['train_tflops']:.3g} TFLOP/s"
        )

    ok = all(m in steps for m in MODES)
    fp, fa = out["modes"].get("fp32_eager", {}), out["modes"].get("fast", {})
    out["speedup"] = {
        "train": fa["samples_per_s"] / fp["samples_per_s"] if ok else None,
        "sampling": fp["sampling_latency_s"] / fa["sampling_latency_s"] if ok else None,
    }
    return out


# --------------------------------------------------------------------------------------------
# all domains
# --------------------------------------------------------------------------------------------


def float32_settings() -> dict[str, Any]:
    """PyTorch's float32 precision switches (TF32 on GPU) in effect."""
    out: dict[str, Any] = {"matmul_precision": torch.get_float32_matmul_precision()}
    with contextlib.suppress(Exception):
        out["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    with contextlib.suppress(Exception):
        out["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def run_benchmark(
    domains=DEFAULT_DOMAINS,
    device: str | torch.device = "cpu",
    *,
    modes=MODES,
    compile: bool = True,
    compile_mode: str | None = None,
    warmup: int = 2,
    iters: int = 5,
    repeats: int = 3,
    sample_repeats: int = 3,
    train_batch: int | None = None,
    sample_batch: int | None = None,
    sample_steps: int | None = None,
    configs: Mapping[str, str | Path] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark every domain in ``domains`` on ``device``; the JSON ``results`` payload.

    Parameters
    ----------
    domains
        Keys of :data:`DOMAINS`.
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    modes, compile, compile_mode, warmup, iters, repeats, sample_repeats, seed, log
        As :func:`bench_domain`.
    train_batch, sample_batch, sample_steps
        Override the configs' batch sizes and sampler steps (all domains).
    configs
        Config file per domain (default: ``workflows/config/<task>[_gpu].yaml``).
    overrides
        Nested config values per domain, merged before validation.

    Returns
    -------
    dict
        ``device``, ``device_kind``, ``peak_tflops``, ``float32``, ``domains`` (per domain:
        workload, attention, flops, per-mode results, ``speedup``), ``bars`` and
        ``target_speedup``.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_tflops(name) if dev.type == "cuda" else None
    if dev.type == "cpu":
        peak_note = "no peak table for CPUs: TFLOP/s reported, utilisation None"
    elif peak is None:
        peak_note = f"{name!r} is not in the peak table: utilisation None"
    else:
        peak_note = "dense peak: bf16 tensor cores for 'fast', fp32 (non-tensor) for 'fp32_eager'"
    results: dict[str, Any] = {
        "device": name,
        "device_kind": dev.type,
        "peak_tflops": peak,
        "peak_note": peak_note,
        "float32": float32_settings(),
        "target_speedup": TARGET_SPEEDUP,
        "domains": {},
    }
    for d in domains:
        path = (configs or {}).get(d)
        cfg = load_config(d, dev.type, path=path, overrides=(overrides or {}).get(d))
        task_name = "pde" if d == "pde_fno" else d
        src = str(
            path or f"workflows/config/{task_name}{'_gpu' if dev.type == 'cuda' else ''}.yaml"
        )
        w = make_workload(
            d,
            cfg,
            config=src,
            train_batch=train_batch,
            sample_batch=sample_batch,
            sample_steps=sample_steps,
        )
        log(
            f"{d}: {w.description}; train batch {w.train_batch} x {w.x_shape}, sampling batch "
            f"{w.sample_batch} x {w.sample_shape}, {w.sample_steps} steps"
        )
        results["domains"][d] = bench_domain(
            w,
            cfg,
            dev,
            modes=modes,
            compile=compile,
            compile_mode=compile_mode,
            warmup=warmup,
            iters=iters,
            repeats=repeats,
            sample_repeats=sample_repeats,
            seed=seed,
            peak=peak,
            log=log,
        )
    bars: dict[str, Any] = {}
    for d, r in results["domains"].items():
        ratio = r["speedup"]["train"]
        if dev.type != "cuda":
            bars[d] = CPU_BAR
        else:
            bars[d] = ratio is not None and ratio >= TARGET_SPEEDUP
    results["bars"] = bars
    results["speedups"] = {d: r["speedup"] for d, r in results["domains"].items()}
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), choices=DOMAINS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--no-compile", action="store_true", help="fast mode without torch.compile")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    p.add_argument("--warmup", type=int, default=None, help="training warm-up steps")
    p.add_argument("--iters", type=int, default=None, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--sample-repeats", type=int, default=None)
    p.add_argument("--train-batch", type=int, default=None, help="default: the config's")
    p.add_argument("--sample-batch", type=int, default=None, help="default: the config's")
    p.add_argument("--sample-steps", type=int, default=None, help="default: the config's")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="DOMAIN=FILE",
        help="config file of a domain (repeatable)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="result name (default gpu_perf_<device kind>)")
    p.add_argument("--note", default=None, help="free text stored in the JSON config")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning (both modes)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    cpu = dev.type == "cpu"
    defaults = CPU_DEFAULTS if cpu else {}
    tb = a.train_batch or defaults.get("train_batch")
    sb = a.sample_batch or defaults.get("sample_batch")
    ss = a.sample_steps or defaults.get("sample_steps")
    warmup = a.warmup if a.warmup is not None else (2 if cpu else 5)
    iters = a.iters if a.iters is not None else (3 if cpu else 20)
    repeats = a.repeats if a.repeats is not None else (3 if cpu else 5)
    srep = a.sample_repeats if a.sample_repeats is not None else 3
    configs = dict(c.split("=", 1) for c in a.config)
    results = run_benchmark(
        a.domains,
        dev,
        modes=tuple(a.modes),
        compile=not a.no_compile,
        compile_mode=a.compile_mode,
        warmup=warmup,
        iters=iters,
        repeats=repeats,
        sample_repeats=srep,
        train_batch=tb,
        sample_batch=sb,
        sample_steps=ss,
        configs=configs,
        seed=a.seed,
    )
    for d, s in results["speedups"].items():
        tr, sa = s["train"], s["sampling"]
        print(
            f"{d}: fast/fp32 training {tr if tr is None else f'{tr:.2f}x'}, sampling "
            f"{sa if sa is None else f'{sa:.2f}x'}; bar >= {TARGET_SPEEDUP}x: "
            f"{results['bars'][d]}"
        )
    config = {
        "device": str(dev),
        "domains": a.domains,
        "modes": a.modes,
        "compile": not a.no_compile,
        "compile_mode": a.compile_mode,
        "warmup": warmup,
        "iters": iters,
        "repeats": repeats,
        "sample_repeats": srep,
        "train_batch": tb,
        "sample_batch": sb,
        "sample_steps": ss,
        "configs": configs or "workflows/config/<task>" + ("_gpu" if not cpu else "") + ".yaml",
        "threads": torch.get_num_threads(),
        "sampler": "dpmpp_2m (karras schedule)",
        "optimizer": "torch.optim.AdamW (default foreach/fused choice), lr from config",
        "rng": "noise and training sigmas drawn on the device (DeviceRNG)",
        "fast": "bf16 autocast + channels_last + torch.compile(dynamic=False) + SDPA attention",
        "note": a.note,
        "cudnn_benchmark": bool(a.cudnn_benchmark),
    }
    write_result(a.name or f"gpu_perf_{dev.type}", results, config=config, seed=a.seed)


if __name__ == "__main__":
    main()
