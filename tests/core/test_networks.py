"""Networks: shapes, conditioning, validation, learning sanity, permutation equivariance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from diffsci.core.networks import (
    MLPDenoiser,
    SetTransformerDenoiser,
    UNet,
    count_parameters,
    unet_from_config,
)

TINY = dict(channels=(8, 16), attention_levels=(False, True), num_head_channels=8)


def _unzero(net: nn.Module) -> nn.Module:
    """Re-initialise zero-initialised layers so the output is not identically zero."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear) and not bool(m.weight.any()):
            m.reset_parameters()
    return net


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny networks: one thread is faster than two on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_unet_shapes_unconditional(spatial):
    net = UNet(len(spatial), 2, 3, **TINY)
    x = torch.randn(2, 2, *spatial)
    out = net(x, torch.tensor([-1.0, 0.5]))
    assert out.shape == (2, 3, *spatial)
    assert out.dtype == x.dtype
    assert net(x, torch.tensor(0.3)).shape == out.shape  # scalar noise level broadcasts


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_unet_shapes_all_conditioning(spatial):
    d = len(spatial)
    net = UNet(d, 1, 1, cond_channels=2, num_classes=3, cross_attention_dim=6, **TINY)
    x = torch.randn(2, 1, *spatial)
    img = torch.randn(2, 2, *spatial)
    cond = {"concat": img, "class_labels": torch.tensor([0, 2]), "context": torch.randn(2, 4, 6)}
    assert net(x, torch.zeros(2), cond).shape == x.shape


def test_unet_each_conditioning_type_alone():
    x, t = torch.randn(2, 1, 16, 16), torch.zeros(2)
    concat = UNet(2, 1, 1, cond_channels=2, **TINY)
    img = torch.randn(2, 2, 16, 16)
    assert concat(x, t, img).shape == x.shape  # plain tensor = concat
    assert concat(x, t, {"concat": img}).shape == x.shape
    classes = UNet(2, 1, 1, num_classes=4, **TINY)
    assert classes(x, t, torch.tensor([1, 3])).shape == x.shape  # integer tensor = labels
    assert classes(x, t, {"class_labels": torch.tensor([1, 3])}).shape == x.shape
    ctx = UNet(2, 1, 1, cross_attention_dim=5, **TINY)
    assert ctx(x, t, {"context": torch.randn(2, 3, 5)}).shape == x.shape


def test_unet_rejects_1d_and_bad_shapes():
    with pytest.raises(ValueError, match="2-D \\(time x space\\)"):
        UNet(1, 1, 1, **TINY)
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNet(2, 1, 1, channels=(8, 12), attention_levels=(False, False), norm_num_groups=8)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(2, 1, 1, channels=(8, 16))  # default attention_levels has 3 entries
    net = UNet(2, 1, 1, channels=(8, 16, 16), attention_levels=(False, False, True))
    with pytest.raises(ValueError, match=r"\(10, 16\).*divisible by .* 4"):
        net(torch.randn(1, 1, 10, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(1, 2, 16, 16), torch.zeros(1))  # wrong channel count
    with pytest.raises(ValueError, match="noise_level"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="cond_channels=0"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1), torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="unknown cond keys"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1), {"mask": torch.ones(1)})
    cnet = UNet(2, 1, 1, cond_channels=1, cross_attention_dim=4, **TINY)
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="concat condition must have shape"):
        cnet(
            x, torch.zeros(1), {"concat": torch.randn(1, 1, 8, 8), "context": torch.randn(1, 2, 4)}
        )
    with pytest.raises(ValueError, match="context"):
        cnet(x, torch.zeros(1), {"concat": torch.randn(1, 1, 16, 16)})


def test_unet_output_depends_on_noise_level_and_gradients_flow():
    net = _unzero(UNet(2, 1, 1, **TINY))
    x = torch.randn(2, 1, 16, 16)
    a = net(x, torch.full((2,), -1.0))
    b = net(x, torch.full((2,), 1.0))
    c = net(x, torch.full((2,), -0.95))  # 0.05 apart in c_noise units is resolved
    assert (a - b).abs().mean() > 1e-2
    assert (a - c).abs().mean() > 1e-3
    # MONAI zero-initialises the output convolution; the first step makes it non-zero.
    net = UNet(2, 1, 1, num_classes=2, **TINY)
    (net(x, torch.zeros(2), torch.tensor([0, 1])) - x).square().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["unet.out.2.conv.weight"].abs().sum() > 0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (net(x, torch.zeros(2)) - x).square().mean().backward()
        opt.step()
    assert (net(x, torch.full((2,), -2.0)) - net(x, torch.full((2,), 2.0))).abs().mean() > 1e-4


def test_unet_null_class():
    net = _unzero(UNet(2, 1, 1, num_classes=3, **TINY)).eval()
    assert net.null_class == 3
    x, t = torch.randn(2, 1, 16, 16), torch.zeros(2)
    null = torch.full((2,), net.null_class)
    out_null = net(x, t, null)
    assert torch.equal(out_null, net(x, t))  # no labels = the null class
    assert not torch.allclose(out_null, net(x, t, torch.tensor([0, 1])))
    with pytest.raises(IndexError):
        net(x, t, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="without num_classes"):
        UNet(2, 1, 1, **TINY)(x, t, torch.tensor([0, 1]))


def test_unet_from_config_round_trip():
    net = UNet(2, 1, 2, cond_channels=1, num_classes=2, noise_level_scale=1.0, **TINY)
    cfg = json.loads(json.dumps(net.config))  # plain, serialisable
    assert cfg["channels"] == [8, 16] and cfg["noise_level_scale"] == 1.0
    net2 = unet_from_config(cfg)
    assert net2.config == net.config
    net2.load_state_dict(_unzero(net).state_dict())
    x, img = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    cond = {"concat": img, "class_labels": torch.tensor([0, 1])}
    t = torch.tensor([3.0, 700.0])
    assert torch.equal(net.eval()(x, t, cond), net2.eval()(x, t, cond))
    with pytest.raises(ValueError, match="unknown UNet config keys"):
        unet_from_config({**cfg, "chanels": [8]})
    with pytest.raises(ValueError, match="missing"):
        unet_from_config({"channels": [8, 16]})


def test_count_parameters():
    lin = nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12
    shared = nn.Sequential(lin, lin)
    assert count_parameters(shared) == 16


# -------------------------------------------------------------------------------------- MLP


def test_mlp_shapes_conditioning_and_zero_init():
    net = MLPDenoiser(3, hidden=32, depth=2, cond_dim=2, num_classes=4)
    x = torch.randn(5, 3)
    out = net(x, torch.randn(5), {"vector": torch.randn(5, 2), "class_labels": torch.arange(5) % 5})
    assert out.shape == (5, 3) and not out.any()  # zero-initialised output layer
    assert net.null_class == 4
    assert net(x, torch.randn(5), torch.randn(5, 2)).shape == (5, 3)
    with pytest.raises(ValueError, match="cond_dim=2"):
        net(x, torch.randn(5))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(5, 4), torch.randn(5), torch.randn(5, 2))
    plain = _unzero(MLPDenoiser(3, hidden=32, depth=2))
    with pytest.raises(ValueError, match="cond_dim=0"):
        plain(x, torch.randn(5), torch.randn(5, 2))
    a, b = plain(x, torch.full((5,), -1.0)), plain(x, torch.full((5,), 1.0))
    assert (a - b).abs().mean() > 1e-3


def test_mlp_learns_a_noise_dependent_regression():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 2, generator=g)
    t = torch.rand(256, generator=g) * 5 - 3  # c_noise range
    y = torch.stack([torch.sin(2 * x[:, 0]) * t, x[:, 1] * torch.tanh(t) + t.cos()], 1)
    net = MLPDenoiser(2, hidden=64, depth=2, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        loss = (net(x, t) - y).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * y.var().item(), loss.item()


# ---------------------------------------------------------------------------------- sets


def test_set_transformer_permutation_equivariance():
    net = _unzero(SetTransformerDenoiser(3, width=32, depth=2, heads=4, cond_dim=2)).eval()
    x, t, c = torch.randn(2, 7, 3), torch.tensor([-1.0, 1.0]), torch.randn(2, 2)
    out = net(x, t, c)
    assert out.shape == (2, 7, 3)
    perm = torch.randperm(7)
    torch.testing.assert_close(net(x[:, perm], t, c), out[:, perm], atol=1e-5, rtol=1e-5)
    assert (out - net(x, t.flip(0), c)).abs().mean() > 1e-3  # noise level matters


def test_set_transformer_mask():
    net = _unzero(SetTransformerDenoiser(2, width=16, depth=2, heads=2, num_classes=3)).eval()
    assert net.null_class == 3
    n_valid, n = 4, 6
    x = torch.randn(2, n, 2)
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[:, :n_valid] = True
    t, labels = torch.tensor([0.1, -0.4]), torch.tensor([0, 3])
    out = net(x, t, {"mask": mask, "class_labels": labels})
    assert torch.equal(out[:, n_valid:], torch.zeros_like(out[:, n_valid:]))
    # Padded entries do not influence valid ones: same as the unpadded set, any padding values.
    ref = net(x[:, :n_valid], t, labels)
    torch.testing.assert_close(out[:, :n_valid], ref, atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[:, n_valid:] = math.nan
    torch.testing.assert_close(net(x2, t, {"mask": mask, "class_labels": labels}), out)
    # Permuting valid and padded entries together is still equivariant.
    perm = torch.randperm(n)
    out_p = net(x[:, perm], t, {"mask": mask[:, perm], "class_labels": labels})
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-5)
    # A fully padded set is well defined (the conditioning token is always attended to).
    empty = net(x, t, {"mask": torch.zeros(2, n, dtype=torch.bool)})
    assert torch.isfinite(empty).all() and not empty.any()
    with pytest.raises(ValueError, match="mask"):
        net(x, t, {"mask": mask.float()})


def test_set_transformer_gradients_flow_in_training_mode():
    net = SetTransformerDenoiser(2, width=16, depth=1, heads=2)
    x = torch.randn(3, 5, 2)
    (net(x, torch.zeros(3)) - x).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
