"""Post-training int8 quantization of a denoiser for CPU inference, calibrated across noise levels.

Two paths through torch's own quantization stack, both static (weights and activations int8):

``"pt2e"`` (the default when ``torchao`` is installed, extra ``int8``): PyTorch 2 export
quantization, the flow torch documents for x86 CPUs ("PyTorch 2 Export Quantization with X86
Backend through Inductor"). The denoiser's network (``denoiser.net``; the Karras
preconditioning stays in fp32) is captured with :func:`torch.export.export`, annotated by
torchao's ``X86InductorQuantizer``, calibrated, converted, and lowered by ``torch.compile``
with inductor's freezing, which fuses each int8 convolution with its neighbouring
quantize/dequantize and element-wise ops into oneDNN kernels. On CPUs without VNNI,
activations are quantized to 7 bits (:func:`has_vnni`): the int8 kernels' 16-bit pair sums
would saturate, and int8 is then hardly faster than fp32 (benchmarks/quantization.py). Needs a
C++ compiler at the first call of each input shape (tens of seconds per shape, then cached for
the process).

``"eager"``: eager-mode static quantization (``torch.ao.quantization.prepare`` / ``convert``,
fbgemm/x86 int8 kernels) on *islands*: every ``Conv{1,2,3}d`` and ``Linear`` is wrapped as
quantize -> int8 layer -> dequantize, while normalisation, activations and attention stay in
fp32. No compiler needed, but the fp32 ops between islands run on the int8 kernels'
channels-last outputs, which is slower (GroupNorm about 3x on the hyperspectral prior), so the
speed-up is smaller. torch 2.13 warns that this API will be removed (pytorch issue 184982).

Activation ranges differ across noise levels (Q-Diffusion, Li et al., ICCV 2023; PTQ4DM, Shang
et al., CVPR 2023), so the observers see the network at every level of the sampling schedule:
:func:`calibration_batches` noises clean data to each ``sigma`` of the schedule the model will
be sampled with (the forward process the sampler inverts) and :func:`quantize_int8` runs them
all through one set of observers (histogram observers and per-channel weights on the eager
path; torchao's x86 defaults on pt2e).

An int8 copy is for inference: an input that requires a gradient (a sampler that differentiates
the network, such as DPS guidance) is refused.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao import quantization as tq

__all__ = [
    "Int8Compiled",
    "Int8Island",
    "calibration_batches",
    "has_vnni",
    "have_pt2e",
    "quantize_int8",
]

_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: modules whose forward reads their linear layers' ``weight``: no int8 islands inside them
_READS_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class Int8Island(nn.Module):
    """``layer`` between a quantize and a dequantize stub: int8 inside, fp32 outside."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.quant, self.layer, self.dequant = tq.QuantStub(), layer, tq.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.layer(self.quant(x)))


def _wrap(module: nn.Module) -> int:
    if isinstance(module, _READS_WEIGHTS):
        return 0  # they read their layers' weights directly (torch's eager path skips them too)
    n = 0
    for name, child in module.named_children():
        if isinstance(child, _QUANTIZABLE):
            setattr(module, name, Int8Island(child))
            n += 1
        else:
            n += _wrap(child)
    return n


def calibration_batches(
    x0: Tensor, sigmas: Iterable[float], *, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x0 + sigma * noise, sigma)`` for each ``sigma > 0`` of a sampling schedule."""
    for s in sigmas:
        s = float(s)
        if s <= 0:
            continue
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        yield x0 + s * noise.to(x0.device), torch.full((len(x0),), s, dtype=x0.dtype)


def has_vnni() -> bool:
    """Whether the CPU has VNNI (``avx512_vnni`` or ``avx_vnni`` in ``/proc/cpuinfo``).

    Without it, oneDNN's u8 x s8 int8 kernels sum pairs of products in 16-bit registers
    (``vpmaddubsw``), which saturate for large activations; activations are then quantized to
    7 bits (``reduce_range``, as torchao's x86 quantizer recommends for CPUs without VNNI).
    Unknown (no ``/proc/cpuinfo``): False, the safe choice.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def have_pt2e() -> bool:
    """Whether torchao's export quantization (the ``"pt2e"`` path) is installed."""
    try:
        _pt2e_api()
    except ImportError:
        return False
    return True


def _pt2e_api():
    # torchao logs a warning per GPU-only extension it cannot load on a CPU build
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    finally:
        log.setLevel(level)
    return prepare_pt2e, convert_pt2e, xiq, allow_exported_model_train_eval


class Int8Compiled(nn.Module):
    """A converted pt2e graph, run through ``torch.compile`` with inductor's freezing (which
    folds the int8 weights into prepacked oneDNN constants); inference only. Keeps the plain
    attributes of the ``source`` network (its config, channel counts), which domain code reads;
    any other method of the source (an input check such as a set network's ``check_cond``) is
    served by the fp32 ``source``, which is kept for that: only ``forward`` runs in int8.
    """

    def __init__(self, graph: nn.Module, source: nn.Module | None = None) -> None:
        super().__init__()
        plain = (int, float, str, bool, tuple, list, dict, type(None))
        for k, v in vars(source or nn.Module()).items():
            if not k.startswith("_") and k != "training" and isinstance(v, plain):
                setattr(self, k, copy.deepcopy(v))
        self.__dict__["_source"] = source  # outside the module tree: not saved, not moved
        self.graph = graph
        # kept outside the module tree: the compiled wrapper shares graph's parameters.
        # dynamic=False: one specialised compile per input shape (a sampler keeps its shape);
        # inductor's dynamic-shape int8 convolution lowering mislays strides in torch 2.13
        self.__dict__["_compiled"] = torch.compile(graph, dynamic=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            source = self.__dict__.get("_source")
            method = getattr(type(source), name, None) if source is not None else None
            if callable(method) and not hasattr(nn.Module, name):
                return getattr(source, name)
            raise

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and any(
            isinstance(a, Tensor) and a.requires_grad for a in (*args, *kwargs.values())
        ):
            raise RuntimeError(
                "this int8 model is for inference only: its input requires a gradient, which a "
                "sampler that differentiates the network (e.g. DPS guidance) needs; use the "
                "fp32 model there"
            )
        import torch._inductor.config as inductor_config

        # the fused int8 kernels assume the memory layout they were compiled for
        args = tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)
        kwargs = {k: v.contiguous() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self._compiled(*args, **kwargs)


def _capture_inputs(
    q: nn.Module, target: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cond: Any
) -> list[tuple[tuple, dict]]:
    """Run the calibration batches through ``q``, recording what ``target`` receives."""
    seen: list[tuple[tuple, dict]] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))

    handle = target.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for x, sigma in batches:
            args = (x.float().cpu(), sigma.float().cpu())
            q(*args) if cond is None else q(*args, cond)
    finally:
        handle.remove()
    return seen


def _quantize_pt2e(
    q: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cond: Any, api: tuple
) -> nn.Module:
    prepare_pt2e, convert_pt2e, xiq, allow_train_eval = api
    target = q.net if isinstance(getattr(q, "net", None), nn.Module) else q
    if not any(isinstance(m, _QUANTIZABLE) for m in target.modules()):
        raise ValueError("the denoiser has no Conv/Linear layer to quantize")
    seen = _capture_inputs(q, target, batches, cond)
    if not seen:
        raise ValueError("no calibration batch (a schedule with no sigma > 0?)")
    args, kwargs = seen[0]
    # the batch size may change between calls (last tile batch, ensemble size)
    bound = inspect.signature(target.forward).bind(*args, **kwargs).arguments
    dyn = {k: _batch_dynamic(v) for k, v in bound.items()}
    graph = torch.export.export(target, args, kwargs, dynamic_shapes=dyn).module()
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=not has_vnni())
    )
    graph = prepare_pt2e(graph, quantizer)
    for a, k in seen:
        graph(*a, **k)
    # .eval() on the parent would otherwise raise for an exported graph
    compiled = Int8Compiled(allow_train_eval(convert_pt2e(graph)), target)
    if target is q:
        return compiled
    # set where the network lives (``denoiser.net`` may be a read-only view of a submodule)
    path = next(name for name, m in q.named_modules() if m is target)
    q.set_submodule(path, compiled)
    return q


def _batch_dynamic(v: Any) -> Any:
    """torch.export's dynamic-shape spec of one argument: the batch dimension of every tensor
    (in a dict of tensors too, a set network's condition) may change."""
    if isinstance(v, Tensor):
        return {0: torch.export.Dim.AUTO}
    if isinstance(v, dict):
        return {k: _batch_dynamic(x) for k, x in v.items()}
    return None


@torch.no_grad()
def quantize_int8(
    denoiser: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    cond: Any = None,
    backend: str = "x86",
    method: str = "auto",
) -> nn.Module:
    """An int8 copy of ``denoiser`` (``D(x, sigma[, cond])``), calibrated on ``batches``.

    Parameters
    ----------
    denoiser
        The fp32 model; left unchanged.
    batches
        ``(x, sigma)`` pairs covering the noise levels it will be sampled at
        (:func:`calibration_batches`).
    cond
        Passed to every calibration call when the denoiser is conditional.
    backend
        ``torch.backends.quantized`` engine of the eager path (``x86``/``fbgemm`` on
        Intel/AMD, ``qnnpack`` on ARM); the pt2e path targets x86.
    method
        ``"pt2e"`` (torchao export quantization lowered by inductor), ``"eager"`` (int8
        islands) or ``"auto"``: pt2e when torchao is installed, else eager.

    Returns
    -------
    nn.Module
        In eval mode, CPU only, inference only (the pt2e path refuses inputs that require a
        gradient; torch's int8 kernels have no backward on either path).

    Raises
    ------
    ValueError
        No conv/linear layer to quantize, no calibration batch, an unknown method or engine.
    ImportError
        ``method="pt2e"`` without torchao (``pip install 'diffsci[int8]'``).
    """
    if method not in ("auto", "pt2e", "eager"):
        raise ValueError(f"method must be 'auto', 'pt2e' or 'eager', got {method!r}")
    if method == "auto":
        method = "pt2e" if have_pt2e() else "eager"
    q = copy.deepcopy(denoiser).cpu().float().eval()
    if method == "pt2e":
        try:
            api = _pt2e_api()
        except ImportError as e:
            raise ImportError(
                "int8 method 'pt2e' needs torchao: pip install 'diffsci[int8]' (or method='eager')"
            ) from e
        return _quantize_pt2e(q, batches, cond, api).eval()
    return _quantize_eager(q, batches, cond, backend)


def _quantize_eager(
    q: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cond: Any, backend: str
) -> nn.Module:
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized engine {backend!r} not available here "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    torch.backends.quantized.engine = backend
    if _wrap(q) == 0:
        raise ValueError("the denoiser has no Conv/Linear layer to quantize")
    qconfig = tq.get_default_qconfig(backend)
    for m in q.modules():
        if isinstance(m, Int8Island):
            m.qconfig = qconfig
    tq.prepare(q, inplace=True)
    seen = 0
    for x, sigma in batches:
        args = (x.float().cpu(), sigma.float().cpu())
        q(*args) if cond is None else q(*args, cond)
        seen += 1
    if seen == 0:
        raise ValueError("no calibration batch (a schedule with no sigma > 0?)")
    tq.convert(q, inplace=True)
    return q.eval()
