"""int8 post-training quantization of a denoiser, calibrated across noise levels."""

from __future__ import annotations

from functools import reduce

import pytest
import torch
from torch import nn

from diffsci.core.denoisers import KarrasDenoiser
from diffsci.core.networks import UNet
from diffsci.core.quantize import (
    Int8Compiled,
    Int8Island,
    calibration_batches,
    have_pt2e,
    quantize_int8,
)
from diffsci.core.schedules import karras


def _denoiser() -> KarrasDenoiser:
    torch.manual_seed(0)
    net = UNet(2, 1, 1, channels=(16, 32), attention_levels=(False, True), num_res_blocks=1)
    for p in net.parameters():  # the zero-initialised output layers would hide every error
        if p.ndim > 1 and not p.any():
            nn.init.normal_(p, std=0.05)
    return KarrasDenoiser(net, sigma_data=0.5).eval()


def _images(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    r = torch.rand(n, 1, 1, 1, generator=g) * 0.5 + 0.2
    return 0.5 * ((xx**2 + yy**2) < r**2).float() - 0.1


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


METHODS = [
    "eager",
    pytest.param(
        "pt2e", marks=pytest.mark.skipif(not have_pt2e(), reason="torchao (extra int8) missing")
    ),
]


def _is_int8(q: nn.Module, method: str) -> bool:
    if method == "eager":
        islands = [m for m in q.modules() if isinstance(m, Int8Island)]
        return bool(islands) and all(
            type(m.layer).__module__.startswith("torch.ao.nn.quantized") for m in islands
        )
    # the converted graph quantizes every conv/linear input and holds int8 weights
    graph = q.net.graph
    nodes = list(graph.graph.nodes)
    consts = [reduce(getattr, n.target.split("."), graph) for n in nodes if n.op == "get_attr"]
    n_int8 = sum(isinstance(t, torch.Tensor) and t.dtype == torch.int8 for t in consts)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in _denoiser().net.modules())
    quantized = sum("quantize_per_tensor" in str(n.target) for n in nodes)
    return isinstance(q.net, Int8Compiled) and n_int8 >= n_layers // 2 and quantized > 0


@pytest.mark.parametrize("method", METHODS)
@torch.no_grad()
def test_int8_copy_tracks_fp32_at_every_noise_level_and_leaves_the_original(method):
    den = _denoiser()
    before = {k: v.clone() for k, v in den.state_dict().items()}
    sig = karras(10, 0.01, 10.0)
    q = quantize_int8(
        den, calibration_batches(_images(), sig, generator=torch.Generator()), method=method
    )
    assert _is_int8(q, method)
    x0 = _images(4)
    for s in (0.02, 0.5, 5.0):
        x = x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
        sigma = torch.full((4,), s)
        # random weights quantize worse than trained ones (1.5-3% on the medical prior, see
        # benchmarks/quantization.py); a miscalibrated copy is off by 30-70% (next test)
        assert _rel(q(x, sigma), den(x, sigma)) < 0.2, s
    assert all(torch.equal(before[k], v) for k, v in den.state_dict().items())


@pytest.mark.parametrize("method", METHODS)
@torch.no_grad()
def test_a_miscalibrated_copy_is_worse_than_a_calibrated_one(method):
    """Negative control: observers that saw only the smallest noise level clip the large
    activations of high noise levels (why calibration spans the schedule)."""
    den = _denoiser()
    full = quantize_int8(den, calibration_batches(_images(), karras(10, 0.01, 10.0)), method=method)
    low = quantize_int8(den, calibration_batches(_images(), [0.01]), method=method)
    x = _images(4) + 10.0 * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    sigma = torch.full((4,), 10.0)
    ref = den(x, sigma)
    assert _rel(low(x, sigma), ref) > 2 * _rel(full(x, sigma), ref)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="no Conv/Linear layer"):
        quantize_int8(nn.Sequential(nn.SiLU()), [(torch.ones(1, 2), torch.ones(1))])
    with pytest.raises(ValueError, match="no calibration batch"):
        quantize_int8(_denoiser(), calibration_batches(_images(), [0.0]))
    with pytest.raises(ValueError, match="engine 'nope' not available"):
        quantize_int8(_denoiser(), [], backend="nope", method="eager")


@pytest.mark.skipif(not have_pt2e(), reason="torchao (extra int8) missing")
def test_pt2e_copy_serves_other_batch_sizes_and_refuses_gradients():
    den = _denoiser()
    q = quantize_int8(den, calibration_batches(_images(), karras(6, 0.01, 10.0)), method="pt2e")
    x = _images(3) + 0.5 * torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    sigma = torch.full((3,), 0.5)
    with torch.no_grad():
        assert _rel(q(x, sigma), den(x, sigma)) < 0.2
    with pytest.raises(RuntimeError, match="inference only"):
        q(x.requires_grad_(), sigma)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be"):
        quantize_int8(_denoiser(), [], method="fp8")


class _SetNet(nn.Module):
    """A set network ``(B, N, d)`` conditioned on a dict (control cells, a label), with an
    input-check method that the wrapper calls, as the single-cell population network has."""

    def __init__(self, d: int = 8, width: int = 32) -> None:
        super().__init__()
        self.dim = d
        self.inp = nn.Linear(2 * d + 1, width)
        self.mid = nn.Linear(width, width)
        self.out = nn.Linear(width, d)
        self.embed = nn.Embedding(3, width)

    def check_cond(self, x: torch.Tensor, cond: dict) -> None:
        if cond["control"].shape[-1] != x.shape[-1]:
            raise ValueError("control cells must have the state's dimension")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        c = cond["control"].mean(1, keepdim=True).expand_as(x)
        s = sigma.reshape(-1, 1, 1).expand(*x.shape[:2], 1)  # the noise embedding K passes
        h = torch.nn.functional.silu(self.inp(torch.cat([x, c, s], -1)))
        h = h + self.embed(cond["label"])[:, None]
        return self.out(torch.nn.functional.silu(self.mid(h)))


class _SetDenoiser(nn.Module):
    """``net`` is a read-only view of ``karras.net`` (as in the single-cell domain)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.karras = KarrasDenoiser(_SetNet(), sigma_data=1.0)

    @property
    def net(self) -> nn.Module:
        return self.karras.net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        self.net.check_cond(x, cond)
        return self.karras(x, sigma, cond)


@pytest.mark.skipif(not have_pt2e(), reason="torchao (extra int8) missing")
@torch.no_grad()
def test_pt2e_quantizes_a_set_network_behind_a_property_with_a_dict_condition():
    den = _SetDenoiser().eval()
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 10, 8, generator=g)
    cond = {"control": torch.randn(6, 20, 8, generator=g), "label": torch.tensor([0, 1, 2] * 2)}
    q = quantize_int8(den, calibration_batches(x0, karras(8, 0.01, 10.0)), cond=cond, method="pt2e")
    assert isinstance(q.karras.net, Int8Compiled) and q.net is q.karras.net
    assert not isinstance(den.karras.net, Int8Compiled)  # the original is left as it was
    for s in (0.05, 1.0, 8.0):
        x = x0 + s * torch.randn(x0.shape, generator=g)
        sigma = torch.full((6,), s)
        assert _rel(q(x, sigma, cond), den(x, sigma, cond)) < 0.2, s
    # the network's own methods are served (by the fp32 source): the input check still refuses
    with pytest.raises(ValueError, match="control cells"):
        q(x0, torch.ones(6), {**cond, "control": torch.randn(6, 20, 5)})
