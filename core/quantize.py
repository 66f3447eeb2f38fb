"""Post-training int8 quantization of a denoiser for CPU inference, calibrated across noise levels.

torch's FX graph mode cannot trace the core UNet (its forward branches on tensor values) and
torch 2.13 no longer ships the pt2e flow, so this uses torch's eager-mode static quantization
(``torch.ao.quantization.prepare`` / ``convert``, fbgemm/x86 int8 kernels) on *islands*: every
``Conv{1,2,3}d`` and ``Linear`` is wrapped as quantize -> int8 layer -> dequantize, while
normalisation, activations, attention arithmetic and the Karras preconditioning stay in fp32.
The convolutions hold most of a UNet's FLOPs, so most of the speed comes with them, and the
fp32 parts keep what int8 handles worst (GroupNorm statistics, softmax).

Activation ranges differ across noise levels (Q-Diffusion, Li et al., ICCV 2023; PTQ4DM, Shang
et al., CVPR 2023), so the observers see the network at every level of the sampling schedule:
:func:`calibration_batches` noises clean data to each ``sigma`` of the schedule the model will
be sampled with (the forward process the sampler inverts) and :func:`quantize_int8` runs them
all through one set of observers (histogram observers, per-channel weights).

torch 2.13 warns that its quantized-tensor API will be removed in a later release (pytorch
issue 184982); the replacement is torchao's pt2e flow, which this module should move to then.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao import quantization as tq

__all__ = ["Int8Island", "calibration_batches", "quantize_int8"]

_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class Int8Island(nn.Module):
    """``layer`` between a quantize and a dequantize stub: int8 inside, fp32 outside."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.quant, self.layer, self.dequant = tq.QuantStub(), layer, tq.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.layer(self.quant(x)))


def _wrap(module: nn.Module) -> int:
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


@torch.no_grad()
def quantize_int8(
    denoiser: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    cond: Any = None,
    backend: str = "x86",
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
        ``torch.backends.quantized`` engine (``x86``/``fbgemm`` on Intel/AMD, ``qnnpack`` on ARM).

    Returns
    -------
    nn.Module
        In eval mode, CPU only (torch's int8 kernels).

    Raises
    ------
    ValueError
        No conv/linear layer to quantize, or no calibration batch.
    """
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized engine {backend!r} not available here "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    torch.backends.quantized.engine = backend
    q = copy.deepcopy(denoiser).cpu().float().eval()
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
