"""Projected-gradient importance maps and ERF size: closed forms, analytic receptive fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.importance import (
    ERFSize, erf_area, erf_size, erf_square, erf_stats, last_conv, linearised_copy, mass_centre,
    projected_gradient, projected_gradient_maps,
)
from landscape.models import InputTooSmallError, create_model


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial eval-mode BN (at init it is almost the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
    return model


# --- closed forms -----------------------------------------------------------------------------


@pytest.mark.parametrize("k, p, s, size", [(3, 1, 1, 9), (5, 2, 1, 8), (3, 1, 2, 10)])
@pytest.mark.parametrize("mode", ["random_input", "linearised"])
def test_single_conv_map_is_the_kernel_summed_over_output_channels(k, p, s, size, mode) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, k, stride=s, padding=p)
    # The in-place ReLU after the conv must not leak into the gradient of the conv's output.
    model = nn.Sequential(conv, nn.ReLU(inplace=True)).double()
    res = projected_gradient_maps(model, input_size=size, n_samples=3, mode=mode)
    # out[c, h0, w0] = sum_{ci,i,j} W[c,ci,i,j] x[ci, s*h0 - p + i, s*w0 - p + j] + b[c], so
    # map[s*h0 - p + i, s*w0 - p + j] = sum_ci |sum_c W[c, ci, i, j]| and 0 elsewhere.
    h0 = ((size + 2 * p - k) // s + 1) // 2
    expected = np.zeros((size, size))
    top = s * h0 - p
    expected[top: top + k, top: top + k] = conv.weight.detach().sum(0).abs().sum(0).numpy()
    assert res.layer == "0" and res.centre == (h0, h0)
    np.testing.assert_allclose(res.mean_map, expected, rtol=0, atol=1e-14)
    assert res.n == (3 if mode == "random_input" else 1)
    np.testing.assert_allclose(res.maxima, expected.max(), rtol=1e-14)
    assert res.max_mean == pytest.approx(expected.max(), rel=1e-14) and res.max_std < 1e-14


def _rf_box(layers: list[tuple[int, int, int]], out_index: int) -> tuple[int, int]:
    """Input interval [lo, hi] seen by output index ``out_index`` through (kernel, stride, pad)
    layers, walked back from the last: lo <- s*lo - p, hi <- s*hi - p + k - 1."""
    lo = hi = out_index
    for k, s, p in reversed(layers):
        lo, hi = s * lo - p, s * hi - p + k - 1
    return lo, hi


def _sequential_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
    ).double()
    return _randomise_bn(net, 0)


def test_linearised_support_is_the_analytic_receptive_field() -> None:
    net = _sequential_net()
    # RF by hand: conv3 -> 3; maxpool 2/2 -> 4 (jump 2); conv3 -> 4 + 2*2 = 8; conv3 -> 12.
    lo, hi = _rf_box([(3, 1, 1), (2, 2, 0), (3, 1, 1), (3, 1, 1)], out_index=16 // 2)
    assert (lo, hi) == (11, 22) and hi - lo + 1 == 12
    box = np.zeros((32, 32), dtype=bool)
    box[lo: hi + 1, lo: hi + 1] = True
    lin = projected_gradient_maps(net, input_size=32, mode="linearised")
    assert lin.layer == "7" and lin.centre == (8, 8)
    np.testing.assert_array_equal(lin.mean_map > 0, box)
    # Paper mode (max-pool routing, ReLU gating) cannot leave the receptive field either.
    paper = projected_gradient_maps(net, input_size=32, n_samples=4, mode="random_input")
    support = paper.mean_map > 0
    assert support.any() and not (support & ~box).any()


def test_linearised_copy_swaps_nonlinear_modules_and_is_linear() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(3, 2, 1)).double()
    lin = linearised_copy(net)
    assert [type(m) for m in lin] == [nn.Conv2d, nn.Identity, nn.Identity, nn.AvgPool2d, nn.Conv2d]
    pool = lin[3]
    assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == (3, 2, 1, True)
    assert isinstance(net[2], nn.ReLU) and net[0].weight.requires_grad
    assert not any(p.requires_grad for p in lin.parameters()) and not lin.training
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2, 2, 9, 9, generator=g, dtype=torch.float64) for _ in range(2))
    zero = torch.zeros_like(a)
    torch.testing.assert_close(lin(a + b), lin(a) + lin(b) - lin(zero))
    with pytest.raises(ValueError, match="'1'.*GELU"):
        linearised_copy(nn.Sequential(nn.Conv2d(1, 1, 3), nn.GELU()))


# --- batching, seeds, caller's model ----------------------------------------------------------


def _small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(create_model("small_cnn", num_classes=3, width=0.25).double(), seed)


def test_batched_equals_per_sample_loop() -> None:
    model = _small_cnn()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched = projected_gradient(model, x)
    looped = torch.cat([projected_gradient(model, x[i: i + 1]) for i in range(5)])
    assert batched.shape == (5, 16, 16) and batched.dtype == torch.float64
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(batched[0], batched[1])  # the maps do depend on the input


@pytest.mark.parametrize("layer, upto", [(None, 8), ("4", 5)])
def test_maps_equal_an_independent_input_gradient_through_relu_pool_and_bn(layer, upto) -> None:
    """The map of a nonlinear net (ReLU gating, max-pool routing, eval-mode BN with moved
    statistics) is |d sum_c out[c, centre] / dx| summed over input channels, computed here one
    sample at a time on the net cut after the layer (no hooks)."""
    net = _sequential_net()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    maps = projected_gradient(net, x, layer=layer)
    cut = net[:upto].eval()
    expected = []
    for xi in x:
        xi = xi[None].clone().requires_grad_(True)
        out = cut(xi)
        (g,) = torch.autograd.grad(out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum(), xi)
        expected.append(g[0].abs().sum(0))
    torch.testing.assert_close(maps, torch.stack(expected), rtol=1e-12, atol=0)
    assert net.training  # restored


def test_seeds_are_reproducible() -> None:
    model = _small_cnn()
    a = projected_gradient_maps(model, input_size=16, n_samples=4, seed=3)
    b = projected_gradient_maps(model, input_size=16, n_samples=4, seed=3)
    c = projected_gradient_maps(model, input_size=16, n_samples=4, seed=4)
    np.testing.assert_array_equal(a.mean_map, b.mean_map)
    np.testing.assert_array_equal(a.maxima, b.maxima)
    assert not np.allclose(a.mean_map, c.mean_map)
    assert a.layer == "features.8" and a.seed == 3 and a.input_size == 16
    assert a.max_mean == pytest.approx(a.maxima.mean()) and a.max_std == pytest.approx(a.maxima.std())
    assert a.bn_mode.startswith("eval") and "h // 2" in a.centre_convention


def test_callers_model_is_left_unchanged() -> None:
    model = _small_cnn()
    model.train()
    model.features[2].eval()
    model.classifier.weight.requires_grad_(False)
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}
    for mode in ("random_input", "linearised"):
        projected_gradient_maps(model, input_size=16, n_samples=2, mode=mode)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    assert {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()} == hooks
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


class _Reordered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(2, 2, 3, padding=1)
        self.early = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


def test_default_layer_is_the_last_conv_to_run_and_errors() -> None:
    net = _Reordered()
    assert projected_gradient_maps(net, input_size=8, n_samples=1, in_channels=1).layer == "late"
    res = projected_gradient_maps(net, input_size=8, n_samples=1, in_channels=1, layer="early")
    assert res.layer == "early"
    with pytest.raises(ValueError, match="mode"):
        projected_gradient_maps(net, mode="exact")
    with pytest.raises(ValueError, match="n_samples"):
        projected_gradient_maps(net, n_samples=0)
    with pytest.raises(ValueError, match="input_size"):
        projected_gradient_maps(net, input_size=True)
    with pytest.raises(ValueError, match="'nope' is not a module"):
        projected_gradient_maps(net, input_size=8, in_channels=1, layer="nope")
    with pytest.raises(ValueError, match="device"):
        projected_gradient_maps(net, input_size=8, device="meta")
    with pytest.raises(ValueError, match=r"must output a map \(n, C, h, w\) or tokens"):
        projected_gradient_maps(_small_cnn(), input_size=16, n_samples=1, layer="classifier")
    # a too-small input is torch's error at the forward (InputTooSmallError is a build-time check)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        projected_gradient_maps(create_model("vgg19", num_classes=2, width=0.0625, pool_level=4),
                                input_size=8, n_samples=1)
    with pytest.raises(InputTooSmallError):
        create_model("vgg19", num_classes=2, width=0.0625, pool_level=4, input_size=8)
    with pytest.raises(ValueError, match="in_channels"):
        projected_gradient_maps(nn.Sequential(nn.Linear(2, 2)), input_size=4)


def test_hooked_forward_at_a_new_input_size_runs_each_module_once_and_keeps_modes() -> None:
    """A fresh model at an input size it never saw: one hooked forward runs each hooked module
    exactly once (no hidden dry run of the model) and leaves every module's mode as it was."""
    x = torch.randn(2, 3, 24, 24)
    fresh = create_model("vgg19", num_classes=10, width=0.0625, pool_level=1).train()
    fresh.features[1].eval()  # a mixed per-module mode
    flags = {n: m.training for n, m in fresh.named_modules()}
    names = [n for n, m in fresh.named_modules() if n and not list(m.children())]
    counts = dict.fromkeys(names, 0)
    modules = dict(fresh.named_modules())
    hooks = [modules[n].register_forward_hook(
        lambda *_a, n=n: counts.__setitem__(n, counts[n] + 1)) for n in names]
    try:
        assert last_conv(fresh, x[:1]) == "features.49"
        assert counts == dict.fromkeys(names, 1)
        assert {n: m.training for n, m in fresh.named_modules()} == flags
        maps = projected_gradient(fresh, x, layer="features.49")
    finally:
        for h in hooks:
            h.remove()
    assert maps.shape == (2, 24, 24) and torch.isfinite(maps).all()
    assert {n: m.training for n, m in fresh.named_modules()} == flags


# --- ERF size ---------------------------------------------------------------------------------


def _rings() -> np.ndarray:
    """Centre 0.5, ring at Chebyshev radius 1 holds 0.3, radius 2 holds 0.2 (total 1)."""
    m = np.zeros((9, 9))
    m[2:7, 2:7] = 0.2 / 16
    m[3:6, 3:6] = 0.3 / 8
    m[4, 4] = 0.5
    return m


@pytest.mark.parametrize("fraction, side", [(0.3, 1), (0.5, 1), (0.6, 3), (0.8, 3), (0.81, 5), (1.0, 5)])
def test_erf_size_closed_form(fraction: float, side: int) -> None:
    assert erf_size(_rings(), mass_fraction=fraction) == side


@pytest.mark.parametrize("threshold, area", [(1.0, 1), (0.1, 1), (0.07, 9), (0.05, 9), (0.02, 25), (0.01, 25)])
def test_erf_area_closed_form(threshold: float, area: int) -> None:
    assert erf_area(_rings(), rel_threshold=threshold) == area


def test_erf_centre_and_clipping() -> None:
    m = np.zeros((15, 15))
    m[2:5, 10:13] = 1.0
    assert mass_centre(m) == (3, 11) and erf_size(m, mass_fraction=1.0) == 3
    corner = np.zeros((15, 15))
    corner[0, 0], corner[14, 14] = 1.0, 1.0  # centroid (7, 7): needs the whole 15 x 15
    assert erf_size(corner, mass_fraction=1.0) == 15
    assert erf_size(corner, mass_fraction=0.5, centre=(0, 0)) == 1
    assert erf_size(corner, mass_fraction=1.0, centre=(0, 0)) == 29  # clipped to the image
    stats = erf_stats(_rings(), mass_fraction=0.8, rel_threshold=0.05)
    assert stats == ERFSize(size=3, mass_fraction=0.8, area=9, rel_threshold=0.05, centre=(4, 4),
                            censored=False)
    # censored: the square reaches past the edge (the image cut the ERF), not merely its size
    assert erf_square(corner, mass_fraction=1.0) == (15, False)  # exactly the image
    assert erf_square(corner, mass_fraction=1.0, centre=(0, 0)) == (29, True)
    assert erf_square(np.ones((32, 32))) == (33, True)  # 33 px "ERF" of a 32 px input
    assert erf_stats(np.ones((32, 32))).censored


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**16),
       fraction=st.floats(0.05, 1.0))
def test_erf_censored_exactly_when_the_square_leaves_the_image(h, w, seed, fraction):
    m = np.random.default_rng(seed).random((h, w)) ** 4
    size, censored = erf_square(m, mass_fraction=fraction)
    r0, c0 = mass_centre(m)
    room = 2 * min(r0, c0, h - 1 - r0, w - 1 - c0) + 1  # the largest centred square inside
    assert censored == (size > room)
    assert size == erf_size(m, mass_fraction=fraction)
    if not censored:  # the whole square inside: its own sum holds the fraction
        r = size // 2
        assert m[r0 - r:r0 + r + 1, c0 - r:c0 + r + 1].sum() >= fraction * m.sum() * (1 - 1e-9)


def test_erf_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        erf_size(np.ones(5))
    with pytest.raises(ValueError, match="non-negative"):
        erf_area(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="not all zero"):
        erf_size(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="mass_fraction"):
        erf_size(np.ones((3, 3)), mass_fraction=0.0)
    with pytest.raises(ValueError, match="rel_threshold"):
        erf_area(np.ones((3, 3)), rel_threshold=1.5)
    with pytest.raises(ValueError, match="centre"):
        erf_size(np.ones((3, 3)), centre=(3, 0))


def test_importance_layer_is_checked_before_training_and_used(tmp_path):
    """importance.layer: a module whose output is a map receives the gradient (a
    transformer's default, its patch embedding, answers little); a wrong name or a module
    without a map is an error before anything runs, and protocol=paper has its own layer."""
    import dataclasses

    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.identity import identify
    from landscape.stages.importance import ImportanceConfig, ImportanceStage
    from landscape.train import TrainConfig

    cfg = RunConfig(model=ModelConfig(name="resnet18", width=0.125, pool_level=1),
                    data=DataConfig(name="digits", image_size=16, train_subset=64,
                                    test_subset=32),
                    train=TrainConfig(epochs=1, batch_size=64), results_root=str(tmp_path),
                    device="cpu", progress=False)
    stage, ident = ImportanceStage(), identify(cfg)
    with pytest.raises(ValueError, match=r"importance.layer='layer1.0.conv3' is not a module "
                                         r"of the model; did you mean layer1.0.conv"):
        stage.validate_for(ImportanceConfig(enabled=True, layer="layer1.0.conv3"), ident)
    with pytest.raises(ValueError, match=r"importance.layer='linear' outputs shape "
                                         r"\(2, 10\), neither a feature map"):
        stage.validate_for(ImportanceConfig(enabled=True, layer="linear"), ident)
    with pytest.raises(ValueError, match="importance.layer left at None"):
        stage.validate(ImportanceConfig(enabled=True, protocol="paper", layer="layer1"))
    run = dataclasses.replace(cfg, importance=ImportanceConfig(
        enabled=True, layer="layer2", input_size=16, n_samples=4))
    assert pipeline.run(run).status == "ok"
    rows = results.load(tmp_path).query("metric == 'erf_size'")
    assert rows["layer"].tolist() == ["layer2"] and "layer=layer2;" in rows["note"].item()
    assert "centre=(4, 4)" in rows["note"].item()  # layer2's 8 x 8 map at 16 px, pool 1


@pytest.mark.parametrize("source,reg", [("timm", 0), ("timm", 2), ("torchvision", 0)])
def test_token_layers_give_the_map_of_their_centre_image_token(source, reg) -> None:
    """A layer outputting a ViT's tokens (n, L, C): the gradient goes to the centre token of
    the image-token grid, after the class (and register) tokens. Right after the patch
    embedding and position embedding a token sees exactly its own 4 x 4 patch, so the map is
    non-zero on the centre patch (grid (2, 2) of 4 x 4 at 16 px: pixels 8..11) and nowhere
    else."""
    import numpy as np

    from landscape.importance.maps import prefix_tokens
    from landscape.stages.importance import _check_layer

    def build() -> nn.Module:
        if source == "timm":
            from timm.models.vision_transformer import VisionTransformer
            return VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=0,
                                     num_heads=1, num_classes=3, reg_tokens=reg)
        import torchvision
        return torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=0,
                                                    num_heads=1, hidden_dim=8, mlp_dim=8,
                                                    num_classes=3)

    layer = "pos_drop" if source == "timm" else "encoder.dropout"
    with torch.device("meta"):
        _check_layer(build(), layer, 16, 3)  # accepted before training, as validate_for does
    net = build()
    assert prefix_tokens(net) == 1 + reg
    res = projected_gradient_maps(net, input_size=16, n_samples=2, layer=layer, in_channels=3)
    assert res.centre == (2, 2) and res.layer == layer
    support = np.zeros((16, 16), dtype=bool)
    support[8:12, 8:12] = True
    assert (res.mean_map[support] > 0).all() and (res.mean_map[~support] == 0).all()


def test_token_layers_without_a_square_image_grid_are_refused() -> None:
    """Tokens that are no square grid after the prefix tokens have no centre token."""
    from landscape.importance.maps import centre_token
    from landscape.stages.importance import _check_layer

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, 4, 4, stride=4)
            self.tokens = nn.Identity()

        def forward(self, x):  # 4 x 4 patches, the last row dropped: 12 tokens
            return self.tokens(self.embed(x).flatten(2).transpose(1, 2)[:, :12])

    with pytest.raises(ValueError, match=r"importance.layer='tokens': layer 'tokens' outputs "
                                         r"12 tokens; after the model's 0 prefix tokens"):
        _check_layer(Tokens(), "tokens", 16, 1)
    assert centre_token(Tokens(), "tokens", (2, 16, 4), 2) == (10, (2, 2))
    with pytest.raises(ValueError, match="not tokens"):
        centre_token(Tokens(), "tokens", (3, 16, 4), 2)


def test_a_norm_with_equal_channel_weights_is_refused_as_layer() -> None:
    """The channel sum of a LayerNorm (or GroupNorm) output with one weight for every channel
    is its bias sum: the map would be rounding noise, so naming it is an error; once its
    weights differ (trained), its map is measured."""
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=0, num_heads=1,
                            num_classes=3)
    with pytest.raises(ValueError, match="layer 'norm' is a LayerNorm whose weight is the same "
                                         "for every channel"):
        projected_gradient_maps(net, input_size=16, n_samples=2, layer="norm", in_channels=3)
    with torch.no_grad():
        net.norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
    res = projected_gradient_maps(net, input_size=16, n_samples=2, layer="norm", in_channels=3)
    assert res.mean_map[8:12, 8:12].min() > 1e-3  # the centre token's patch
    group = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match="is a GroupNorm whose weight"):
        projected_gradient_maps(group, input_size=8, n_samples=1, layer="1", in_channels=1)
