"""The paper's projected-gradient procedure: a closed form, the released code's own mechanism
(backward hooks on the unmodified model) as an independent oracle, and its conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.importance import (
    PAPER_PROBES, importance_at_init, paper_centre, paper_importance, paper_projection,
    paper_probe,
)
from landscape.models import create_model


class OneConv(nn.Module):
    """``features`` = conv -> BN -> ReLU: linearised, the map is the conv kernel."""

    def __init__(self, c_in: int, c_out: int, k: int, p: int) -> None:
        super().__init__()
        self.in_channels = c_in
        self.features = nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=p), nn.BatchNorm2d(c_out),
                                      nn.ReLU(inplace=True))

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize("size, k, p", [(8, 3, 1), (9, 3, 1), (10, 5, 2), (7, 3, 0)])
def test_one_conv_map_is_channel_0_of_the_kernel_summed_over_output_channels(size, k, p):
    torch.manual_seed(size + k)
    net = OneConv(3, 4, k, p).double()
    nn.init.normal_(net.features[1].weight)  # BN is bypassed: its scale must not matter
    m, (r, c) = paper_projection(net, layer="features", input_size=size)
    h = size + 2 * p - k + 1
    assert (r, c) == (math.ceil(h / 2) - 1,) * 2
    expected = np.zeros((size, size))
    kernel = net.features[0].weight.detach()[:, 0].sum(0).abs().numpy()  # input channel 0
    for a in range(k):
        for b in range(k):
            u, v = r - p + a, c - p + b
            if 0 <= u < size and 0 <= v < size:
                expected[u, v] = kernel[a, b]
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)


def test_only_input_channel_0_counts():
    torch.manual_seed(0)
    net = OneConv(3, 4, 3, 1).double()
    before, _ = paper_projection(net, layer="features", input_size=9)
    with torch.no_grad():
        net.features[0].weight[:, 1:].normal_()
    after, _ = paper_projection(net, layer="features", input_size=9)
    np.testing.assert_array_equal(before, after)


def test_centre_convention():
    assert [paper_centre(h, h) for h in (1, 2, 3, 4, 7, 8)] == [
        (0, 0), (0, 0), (1, 1), (1, 1), (3, 3), (3, 3)]


class Stem(nn.Module):
    """conv -> relu (kept by the paper for ResNet) -> conv: ``layer`` = the second conv."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 1
        self.conv1, self.relu, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), \
            nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


def test_a_kept_relu_gates_the_gradient_by_the_sign_of_its_input():
    torch.manual_seed(1)
    net = Stem().double()
    linear, _ = paper_projection(net, layer="conv2", input_size=8)
    with torch.no_grad():  # input 3 * ones: conv1 > 0 everywhere -> the kept ReLU is identity
        net.conv1.weight.abs_()
        net.conv1.bias.fill_(0.1)
    np.testing.assert_allclose(paper_projection(net, layer="conv2", input_size=8, keep=("relu",))[0],
                               paper_projection(net, layer="conv2", input_size=8)[0], atol=1e-15)
    with torch.no_grad():  # conv1 < 0 everywhere -> the kept ReLU blocks everything
        net.conv1.weight.neg_()
        net.conv1.bias.fill_(-0.1)
    assert not paper_projection(net, layer="conv2", input_size=8, keep=("relu",))[0].any()
    assert paper_projection(net, layer="conv2", input_size=8)[0].any() and linear.any()


# --- the released code's mechanism as an oracle ----------------------------------------------
def hooked_map(model: nn.Module, layer: str, size: int, keep: tuple[str, ...]) -> np.ndarray:
    """The released code's way: backward hooks on the *unmodified* model (ReLU and BN pass
    the gradient, max-pool back-propagates as an average pool), eval mode, 3 * ones input,
    unit gradient at the ceil(h/2) - 1 centre of every channel of ``layer``, |grad| of
    input channel 0."""
    model = model.double().eval()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # full backward hooks refuse in-place outputs
    handles, inputs = [], {}
    for name, m in model.named_modules():
        if name in keep:
            continue
        if isinstance(m, (nn.ReLU, nn.BatchNorm2d)):
            handles.append(m.register_full_backward_hook(lambda mod, gi, go: (go[0],)))
        elif isinstance(m, nn.MaxPool2d):
            handles.append(m.register_forward_hook(
                lambda mod, i, o: inputs.__setitem__(mod, i[0].detach())))

            def avg_grad(mod, gi, go):
                x = inputs[mod].clone().requires_grad_(True)
                with torch.enable_grad():
                    y = F.avg_pool2d(x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode)
                return torch.autograd.grad(y, x, go[0])

            handles.append(m.register_full_backward_hook(avg_grad))
    out = {}
    handles.append(dict(model.named_modules())[layer].register_forward_hook(
        lambda mod, i, o: out.__setitem__("y", o)))
    x = torch.full((1, model.in_channels, size, size), 3.0, dtype=torch.float64,
                   requires_grad=True)
    model(x)
    y = out["y"]
    grad = torch.zeros_like(y)
    r, c = math.ceil(y.shape[-2] / 2) - 1, math.ceil(y.shape[-1] / 2) - 1
    grad[0, :, r, c] = 1
    (g,) = torch.autograd.grad(y, x, grad)
    for h in handles:
        h.remove()
    return g[0, 0].abs().numpy()


@pytest.mark.parametrize("arch, level", [("vgg19", 1), ("vgg19", 3), ("resnet18", 1),
                                         ("resnet18", 2), ("resnet50", 4)])
def test_linearised_copy_equals_the_released_codes_backward_hooks(arch, level):
    torch.manual_seed(level)
    model = create_model(arch, num_classes=10, pool_level=level, width=0.125).double()
    for m in model.modules():  # BN away from its init identity: the hooks must bypass it
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
    probe = paper_probe(arch)
    ours, _ = paper_projection(model, layer=probe.layer, keep=probe.keep, input_size=32)
    oracle = hooked_map(model, probe.layer, 32, probe.keep)
    assert ours.any()
    np.testing.assert_allclose(ours, oracle, rtol=1e-10, atol=1e-300)


def test_the_resnet_stem_relu_is_kept_and_vgg_has_none():
    assert PAPER_PROBES["resnet50"].keep == ("relu",) and PAPER_PROBES["resnet50"].layer == "layer4"
    assert PAPER_PROBES["vgg19"].keep == () and PAPER_PROBES["vgg19"].layer == "features"
    with pytest.raises(ValueError, match="defined for resnet18, resnet50, vgg19.*small_cnn"):
        paper_probe("small_cnn")


# --- over fresh initialisations ---------------------------------------------------------------
def test_fresh_inits_are_seeded_distinct_and_summarised():
    def build():
        return OneConv(1, 3, 3, 1)

    a = paper_importance(build, layer="features", n_inits=4, input_size=9, seed=5)
    b = paper_importance(build, layer="features", n_inits=4, input_size=9, seed=5)
    np.testing.assert_array_equal(a.maxima, b.maxima)
    assert len(set(a.maxima.tolist())) == 4  # every init differs
    assert a.n == 4 and a.max_mean == pytest.approx(a.maxima.mean())
    assert a.max_std == pytest.approx(a.maxima.std())
    assert a.mean_map.shape == (9, 9) and a.mode == "paper" and a.centre == (4, 4)
    rng = torch.get_rng_state()
    paper_importance(build, layer="features", n_inits=2, input_size=9, seed=1)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is left alone


def test_importance_at_init_both_protocols_and_errors():
    paper = importance_at_init("resnet18", 2, n_inits=2, width=0.125, input_size=32)
    assert paper.layer == "layer4" and paper.n == 2 and paper.mean_map.shape == (32, 32)
    again = importance_at_init("resnet18", 2, n_inits=2, width=0.125, input_size=32)
    np.testing.assert_array_equal(paper.maxima, again.maxima)
    ours = importance_at_init("resnet18", 2, protocol="default", n_inits=2, width=0.125,
                              input_size=32)
    assert ours.mode == "random_input" and ours.layer.startswith("layer4")
    with pytest.raises(ValueError, match="protocol must be one of"):
        importance_at_init("vgg19", 1, protocol="ours")
    with pytest.raises(ValueError, match="shrinks a 8x8 input"):
        importance_at_init("vgg19", 4, input_size=8)
