"""Receptive fields through upsampling (landscape.receptive_field.phases): per-phase geometry,
checked against the input gradients of every interior output position."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.receptive_field import (
    UnsupportedModelError, measure_receptive_field, receptive_field_table,
)
from landscape.receptive_field.geometry import Axis, Window
from landscape.receptive_field.phases import Phased, resize_taps

MODES = ["nearest", "nearest-exact", "bilinear", "bicubic"]


def gradient_sizes(model: nn.Module, layer: str, n: int = 64,
                   zero: tuple[str, ...] = ()) -> tuple[int, int]:
    """Smallest and largest RF height over the interior positions of ``layer``'s first
    channel (centre column), from the input gradient of each: positive weights and no
    nonlinearity, so a path reaches an input pixel exactly when its gradient is non-zero.
    The modules in ``zero`` get zero weights (their paths are cut)."""
    model = model.double().eval()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if p.dim() == 1 or name.split(".")[0] in zero:
                p.zero_()
            else:
                p.uniform_(0.5, 1.5)
    out = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: out.update(y=o))
    x = torch.zeros(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    model(x)
    hook.remove()
    y = out["y"]
    rows, c = y.shape[-2], y.shape[-1] // 2
    sizes = []
    for v in range(rows // 4, rows - rows // 4):
        (g,) = torch.autograd.grad(y[0, 0, v, c], x, retain_graph=True)
        hit = (g[0, 0].abs().sum(1) > 0).nonzero().flatten()
        assert 0 < hit[0] and hit[-1] < n - 1  # not clipped by the image border
        sizes.append(int(hit[-1] - hit[0] + 1))
    return min(sizes), max(sizes)


class Chain(nn.Module):
    """conv stride k -> upsample x k -> conv K (stride s) -> conv 2x2: positions of ``up``
    are not evenly spaced in the input; ``b`` and ``c`` see one or two of them per phase."""

    def __init__(self, mode: str, k: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, stride=k, padding=1)
        self.up = nn.Upsample(scale_factor=k, mode=mode)
        self.b = nn.Conv2d(1, 1, kernel, stride=stride, padding=kernel // 2)
        self.c = nn.Conv2d(1, 1, 2)

    def forward(self, x):
        return self.c(self.b(self.up(self.a(x))))


@pytest.mark.parametrize("mode, k, kernel, stride",
                         list(itertools.product(MODES, [2, 3], [1, 2, 3], [1, 2])))
def test_rf_after_upsampling_equals_the_input_gradients_at_every_phase(mode, k, kernel, stride):
    t = receptive_field_table(Chain(mode, k, kernel, stride), 64).set_index("layer")
    for layer in ("b", "c"):
        assert tuple(t.loc[layer, ["r_min", "r_max"]]) == gradient_sizes(
            Chain(mode, k, kernel, stride), layer), layer


class Mixed(nn.Module):
    """After a 2x upsampling: padding, a slice from an odd offset, an even adaptive pool."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.mode = mode
        self.pool = nn.AdaptiveAvgPool2d(30)
        self.c = nn.Conv2d(1, 1, 2)

    def forward(self, x):
        y = F.interpolate(self.a(x), scale_factor=2, mode=self.mode)  # 64 -> 32 -> 64
        y = F.pad(y, (1, 1, 1, 1))[:, :, 3:63, 3:63]  # 66 -> 60 positions, from offset 2
        return self.c(self.pool(y))  # windows of 2 at stride 2, then a 2x2 conv


@pytest.mark.parametrize("mode", MODES)
def test_padding_slicing_and_adaptive_pooling_after_upsampling(mode):
    t = receptive_field_table(Mixed(mode), 64).set_index("layer")
    assert tuple(t.loc["c", ["r_min", "r_max"]]) == gradient_sizes(Mixed(mode), "c")


class Fusion(nn.Module):
    """HRNet's fusion: a high-resolution path plus a low-resolution one (stride 2, 1x1 conv)
    upsampled back and added; then two 3x3 convs and a 2x2 one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.high = nn.Conv2d(1, 1, 3, padding=1)
        self.low = nn.Conv2d(1, 1, 5, stride=2, padding=2)
        self.proj = nn.Conv2d(1, 1, 1)
        self.mode = mode
        self.b = nn.Conv2d(1, 1, 3, padding=1)
        self.c = nn.Conv2d(1, 1, 2)

    def forward(self, x):
        low = F.interpolate(self.proj(self.low(x)), scale_factor=2, mode=self.mode)
        return self.c(self.b(self.high(x) + low))


@pytest.mark.parametrize("mode", MODES)
def test_a_fusion_of_upsampled_and_full_resolution_paths(mode):
    t = receptive_field_table(Fusion(mode), 64).set_index("layer")
    for layer in ("b", "c"):
        r_min, r_max = t.loc[layer, ["r_min", "r_max"]]
        assert r_max == gradient_sizes(Fusion(mode), layer)[1]  # the union: the low path
        assert r_min == gradient_sizes(Fusion(mode), layer, zero=("low",))[0]  # high path
        assert r_min < r_max and t.loc[layer, "jump"] == 1


def test_hrnet_is_analysed_and_matches_the_measured_rf():
    pytest.importorskip("timm")
    from landscape.models.sources import timm_model

    model = timm_model("hrnet_w18_small", num_classes=10, device="cpu")
    t = receptive_field_table(model, 224).set_index("layer")
    assert t["r_max"].notna().sum() > 80
    layer = "stage3.0.branches.0.0.conv1"  # after two fusions with upsampled branches
    measured = measure_receptive_field(model, layer, input_size=160)
    assert (measured.height, measured.width, measured.clipped) == (t.loc[layer, "r_max"],) * 2 \
        + (False,)


class Resized(nn.Module):
    """conv (stride ``stride``) -> resize (to ``size``, or by ``scale``) -> conv K -> conv
    2x2: the positions after the resize are unevenly spaced by a rational ratio."""

    def __init__(self, resize: dict, stride: int = 4, kernel: int = 3, back: int | None = None):
        super().__init__()
        self.resize, self.back = resize, back
        self.a = nn.Conv2d(1, 1, 3, stride=stride, padding=1)
        self.b = nn.Conv2d(1, 1, kernel, padding=kernel // 2)
        self.c = nn.Conv2d(1, 1, 2)

    def forward(self, x):
        y = self.b(F.interpolate(self.a(x), **self.resize))
        if self.back is not None:  # MobileViT: up to a multiple of the patch size and back
            y = F.interpolate(y, size=self.back, mode="bilinear")
        return self.c(y)


def position_spans(model: nn.Module, layer: str, n: int) -> list[tuple[int, tuple, tuple]]:
    """Per output row t of ``layer`` (centre column): the analytic (first, last) input row of
    its RF and the one the input gradient reaches, for the rows whose RF lies inside the
    image (torch clamps a resize's taps at the map's borders, which the analysis ignores as
    it ignores padding)."""
    from landscape.receptive_field.graph import propagate, trace_model

    _, records = propagate(trace_model(model), n)
    axis = next(r for r in records if r.name == layer).out.h
    model = model.double().eval()
    for p in model.parameters():
        with torch.no_grad():
            p.uniform_(0.5, 1.5) if p.dim() > 1 else p.zero_()
    out = {}
    dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.update(y=o))
    x = torch.zeros(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    model(x)
    y, found = out["y"], []
    for t in range(y.shape[-2]):
        first, last = axis.span(t)
        if first < 1 or last > n - 2:
            continue
        (g,) = torch.autograd.grad(y[0, 0, t, y.shape[-1] // 2], x, retain_graph=True)
        hit = (g[0, 0].abs().sum(1) > 0).nonzero().flatten()
        found.append((t, (first, last), (int(hit[0]), int(hit[-1]))))
    return found


RESIZES = [
    dict(size=30, mode="bilinear"),  # 24 -> 30: 4 source positions per 5
    dict(size=18, mode="bicubic"),  # 24 -> 18: a non-integer downsampling
    dict(scale_factor=1.5, mode="nearest"),  # 24 -> 36, mapped with 1 / 1.5
    dict(size=30, mode="nearest-exact"),
    dict(scale_factor=1.25, mode="bilinear", recompute_scale_factor=True),  # 24 -> 30
    # align_corners=True: (n_in - 1) / (n_out - 1) source positions per output position
    dict(size=30, mode="bilinear", align_corners=True),  # 23 per 29
    dict(scale_factor=2, mode="bilinear", align_corners=True),  # 24 -> 48: 23 per 47
    dict(size=18, mode="bicubic", align_corners=True),  # 23 per 17
]


@pytest.mark.parametrize("resize", RESIZES, ids=lambda r: "-".join(map(str, r.values())))
def test_rf_after_a_rational_resize_equals_the_input_gradients(resize):
    """Every position whose RF lies inside the image, exactly, and the table's r_min / r_max
    are the gradients' extremes over the interior positions (every phase is among them)."""
    spans = position_spans(Resized(resize), "c", 96)
    assert len(spans) >= 10 and all(want == got for _, want, got in spans), spans
    t = receptive_field_table(Resized(resize), 96).set_index("layer")
    for layer in ("b", "c"):
        table = tuple(t.loc[layer, ["r_min", "r_max"]])
        interior = gradient_sizes(Resized(resize), layer, n=96)
        if resize.get("align_corners"):
            # one period spans about the whole map: an extreme may occur only at a corner
            # (which reads one source position), outside the interior measured
            assert table[0] <= interior[0] and table[1] >= interior[1], layer
        else:
            assert table == interior, layer


class Adaptive(nn.Module):
    """conv (stride 4) -> adaptive pooling to ``size`` (module or function, avg or max) ->
    conv 3x3 -> conv 2x2: uneven windows space the pooled positions unevenly."""

    def __init__(self, size, kind: str = "avg", function: bool = False) -> None:
        super().__init__()
        self.size, self.kind, self.function = size, kind, function
        self.a = nn.Conv2d(1, 1, 3, stride=4, padding=1)
        self.pool = (nn.AdaptiveAvgPool2d if kind == "avg" else nn.AdaptiveMaxPool2d)(size)
        self.b = nn.Conv2d(1, 1, 3, padding=1)
        self.c = nn.Conv2d(1, 1, 2)

    def forward(self, x):
        y = self.a(x)
        if self.function:
            pool = F.adaptive_avg_pool2d if self.kind == "avg" else F.adaptive_max_pool2d
            y = pool(y, self.size)
        else:
            y = self.pool(y)
        return self.c(self.b(y))


# 96 px -> 24 positions, pooled to: 18 (4 per 3), 30 (up, 4 per 5), 7, 40, 11 (coprime)
@pytest.mark.parametrize("size", [18, 30, 7, 40, 11])
@pytest.mark.parametrize("function", [False, True])
def test_uneven_adaptive_pooling_equals_the_input_gradients(size, function):
    """Output t of an adaptive pool reads torch's window floor(t n / m) .. ceil((t + 1) n / m)
    - 1: every position whose RF lies inside the image, exactly, and the table's extremes
    are the gradients' (uneven windows were reported as global before)."""
    model = Adaptive(size, function=function)
    for layer in ("b", "c"):
        spans = position_spans(model, layer, 96)
        assert len(spans) >= 3 and all(want == got for _, want, got in spans), (layer, spans)
    t = receptive_field_table(model, 96).set_index("layer")
    assert not t["is_global"].any()
    if size // math.gcd(24, size) <= size // 3:  # every phase among the interior positions
        for layer in ("b", "c"):
            assert tuple(t.loc[layer, ["r_min", "r_max"]]) == gradient_sizes(model, layer, n=96)
    if not function:
        assert t.loc["pool", "kind"] == "adaptive_avg_pool" and pd.isna(t.loc["pool", "kernel"])
    # max pooling reads the same windows; each axis on its own (a rectangular output)
    cols = ["jump", "r_min", "r_max", "effective_padding", "out_size"]
    pd.testing.assert_frame_equal(
        receptive_field_table(Adaptive(size, "max", function), 96)[cols], t.reset_index()[cols])
    rect = receptive_field_table(Adaptive((size, 9), function=function), 96).set_index("layer")
    other = receptive_field_table(Adaptive(9, function=function), 96).set_index("layer")
    for axis, same in (("h", t), ("w", other)):
        ax = [f"r_min_{axis}", f"r_max_{axis}", f"jump_{axis}"]
        assert rect.loc[["b", "c"], ax].astype(float).equals(same.loc[["b", "c"], ax].astype(float))


@pytest.mark.parametrize("resize", ["adaptive", "nearest"])
def test_a_map_shorter_than_its_period_reports_only_the_phases_it_has(resize):
    """timm's VGG head at 32 px: one position pooled (or upsampled) to 7, read whole by a
    7x7 conv. Its one output reads only what position 0 reads; the other phases of the
    periodic structure (a 7-wide window across two periods) do not exist in the map."""
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 1, 5, stride=8)  # 13 px -> 2 positions
            self.fc = nn.Conv2d(1, 1, 7)  # 7 -> 1

        def forward(self, x):
            y = self.a(x)
            y = (F.adaptive_avg_pool2d(y, 7) if resize == "adaptive"
                 else F.interpolate(y[..., :1, :1], scale_factor=7, mode="nearest"))
            return self.fc(y)

    model = Head().double()
    for p in model.parameters():
        with torch.no_grad():
            p.uniform_(0.5, 1.5)
    x = torch.zeros(1, 1, 13, 13, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    hit = (g[0, 0].abs().sum(1) > 0).nonzero().flatten()
    row = receptive_field_table(Head(), 13).set_index("layer").loc["fc"]
    assert row["out_size"] == 1
    assert row["r_min"] == row["r_max"] == hit[-1] - hit[0] + 1 == (13 if resize == "adaptive"
                                                                       else 5)


def test_mobilevit_resizes_up_to_the_patch_multiple_and_back():
    """14 -> 16 -> 14 positions (jump 4 -> mean jump 3.5 -> 4): the table's jump is the mean
    spacing, and each position's RF is exact."""
    model = Resized(dict(size=16, mode="bilinear"), back=14)
    spans = position_spans(model, "c", 56)
    assert len(spans) >= 5 and all(want == got for _, want, got in spans), spans
    t = receptive_field_table(model, 56).set_index("layer")
    assert (t.loc["b", "jump"], t.loc["b", "out_size"], t.loc["c", "jump"]) == (3.5, 16, 4)


class Decoder(nn.Module):
    """conv stride 4 -> transposed conv (k, stride s, padding p; module or function) -> conv
    3x3 -> conv 2x2: a UNet decoder's upsampling, its positions unevenly spaced per phase."""

    def __init__(self, k: int, s: int, p: int, out_pad: int = 0, function: bool = False):
        super().__init__()
        self.function, self.s, self.p, self.out_pad = function, s, p, out_pad
        self.a = nn.Conv2d(1, 1, 3, stride=4, padding=1)
        self.up = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=out_pad)
        self.b = nn.Conv2d(1, 1, 3, padding=1)
        self.c = nn.Conv2d(1, 1, 2)

    def forward(self, x):
        y = self.a(x)
        if self.function:
            y = F.conv_transpose2d(y, self.up.weight, self.up.bias, self.s, self.p, self.out_pad)
        else:
            y = self.up(y)
        return self.c(self.b(y))


@pytest.mark.parametrize("k, s, p, out_pad, function", [
    (4, 2, 1, 0, False), (3, 2, 1, 1, False), (2, 2, 0, 0, False), (5, 2, 2, 1, True),
    (3, 3, 0, 0, False), (3, 1, 1, 0, True)])
def test_transposed_convs_equal_the_input_gradients(k, s, p, out_pad, function):
    make = lambda: Decoder(k, s, p, out_pad, function)  # noqa: E731
    t = receptive_field_table(make(), 96).set_index("layer")
    up = "up" if not function else t.index[t["kind"] == "conv_transpose"][0]
    assert (t.loc[up, "kind"], t.loc[up, "kernel"], t.loc[up, "stride"]) == (
        "conv_transpose", k, s)
    assert t.loc[up, "out_size"] == (24 - 1) * s - 2 * p + k + out_pad
    spans = position_spans(make(), "c", 96)
    assert len(spans) >= 10 and all(want == got for _, want, got in spans), spans
    for layer in ("b", "c"):
        assert tuple(t.loc[layer, ["r_min", "r_max"]]) == gradient_sizes(make(), layer, n=96)


def test_transposed_convs_the_rf_cannot_follow_are_refused():
    with pytest.raises(UnsupportedModelError, match="kernel \\(1, 1\\) is smaller than its stride"):
        receptive_field_table(Decoder(1, 2, 0), 96)
    net = Decoder(3, 2, 1)
    net.up.dilation = (2, 2)
    with pytest.raises(UnsupportedModelError, match="dilation \\(2, 2\\)"):
        receptive_field_table(net, 96)


@pytest.mark.parametrize("step, message", [
    (lambda x: F.interpolate(x[..., :1, :], size=(4, 30), mode="bilinear",
                             align_corners=True),
     "align_corners=True: a single position has no corners to align"),
    (lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True),
     "downsamples with antialias=True"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="area"), "mode='area'"),
    (lambda x: F.interpolate(x, scale_factor=2), "upsamples beyond the input's resolution"),
])
def test_upsampling_the_rf_cannot_follow_is_refused_naming_it(step, message):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.b(step(self.a(x)))

    with pytest.raises(UnsupportedModelError, match=message.replace("(", r"\(").replace(
            ")", r"\)")):
        receptive_field_table(Net(), 32)


@settings(max_examples=60, deadline=None)
@given(jump=st.integers(1, 8), r=st.integers(1, 40), lo=st.integers(-20, 0),
       kernel=st.integers(1, 7), stride=st.integers(1, 4), padding=st.integers(0, 3),
       dilation=st.integers(1, 3))
def test_a_one_phase_class_follows_the_closed_form(jump, r, lo, kernel, stride, padding,
                                                   dilation):
    """Period 1 is Araujo's closed form: r + (K-1) j, j s, lo - p j, hi + (K-1-p) j."""
    axis = Axis(jump, r, r, lo, lo + r - 1, None)
    want = Window("conv", (kernel, 1), (stride, 1), (padding, 0), (dilation, 1)).apply_axis(
        axis, 0)
    got = Phased.plain(jump, r, r, lo, lo + r - 1).window(stride, padding,
                                                           dilation * (kernel - 1))
    assert (got.period, got.shift, got.r_min, got.r_max, got.lo, got.hi) == (
        1, want.jump, want.r_min, want.r_max, want.lo, want.hi)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_taps_are_periodic_and_are_torchs_non_zero_weights(mode, k):
    taps = resize_taps(mode, Fraction(1, k))
    x = torch.zeros(1, 1, 1, 12, dtype=torch.float64, requires_grad=True)
    y = F.interpolate(x, scale_factor=(1, k), mode="bicubic" if mode == "bicubic" else
                      "bilinear" if mode == "bilinear" else mode)
    for t in range(3 * k, 8 * k):
        assert taps(t + k) == (taps(t)[0] + 1, taps(t)[1] + 1)
        (g,) = torch.autograd.grad(y[0, 0, 0, t], x, retain_graph=True)
        hit = g[0, 0, 0].nonzero().flatten()
        assert (int(hit[0]), int(hit[-1])) == taps(t)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("n_in, n_out", [(12, 23), (12, 30), (12, 7), (12, 12)])
def test_aligned_taps_are_periodic_and_are_torchs_non_zero_weights(mode, n_in, n_out):
    """align_corners=True: output t reads around source t (n_in - 1) / (n_out - 1), exactly
    (away from the borders, where bicubic clamps)."""
    r = Fraction(n_in - 1, n_out - 1)
    taps = resize_taps(mode, r, aligned=True)
    x = torch.zeros(1, 1, 1, n_in, dtype=torch.float64, requires_grad=True)
    y = F.interpolate(x, size=(1, n_out), mode=mode, align_corners=True)
    for t in range(n_out):
        assert taps(t + r.denominator) == (taps(t)[0] + r.numerator,
                                           taps(t)[1] + r.numerator)
        lo, hi = taps(t)
        if lo < 0 or hi > n_in - 1:
            continue
        (g,) = torch.autograd.grad(y[0, 0, 0, t], x, retain_graph=True)
        hit = g[0, 0, 0].nonzero().flatten()
        assert (int(hit[0]), int(hit[-1])) == (lo, hi), t


class Shuffled(nn.Module):
    """conv -> pixel (un)shuffle by r (module or function) -> conv K -> conv 2x2. Before a
    shuffle the conv has stride r, so positions stay whole input pixels apart."""

    def __init__(self, r: int, kernel: int, shuffle: bool, function: bool) -> None:
        super().__init__()
        self.r, self.shuffle, self.function = r, shuffle, function
        self.a = nn.Conv2d(1, r * r if shuffle else 1, 3, padding=1, stride=r if shuffle else 1)
        self.move = nn.PixelShuffle(r) if shuffle else nn.PixelUnshuffle(r)
        self.b = nn.Conv2d(1 if shuffle else r * r, 2, kernel, padding=kernel // 2)
        self.c = nn.Conv2d(2, 1, 2)

    def forward(self, x):
        y = self.a(x)
        if self.function:
            y = (F.pixel_shuffle if self.shuffle else F.pixel_unshuffle)(y, self.r)
        else:
            y = self.move(y)
        return self.c(self.b(y))


def test_pixel_shuffle_and_unshuffle_equal_the_input_gradients() -> None:
    """Space to depth is a window of kernel r and stride r; depth to space places positions as
    a nearest upsampling by r does (per-phase geometry). 2 x 2 x 3 x 2 chains, both layers."""
    for shuffle, r, kernel, function in itertools.product((False, True), (2, 3), (1, 2, 3),
                                                          (False, True)):
        t = receptive_field_table(Shuffled(r, kernel, shuffle, function), 48).set_index("layer")
        assert "move" not in t.index  # moves positions, not a layer of the table
        for layer in ("b", "c"):
            assert tuple(t.loc[layer, ["r_min", "r_max"]]) == gradient_sizes(
                Shuffled(r, kernel, shuffle, function), layer, n=48), (shuffle, r, kernel, layer)
    t = receptive_field_table(Shuffled(2, 3, False, False), 48).set_index("layer")
    # conv 3; a 2 x 2 block adds 1; kernel 3 at jump 2 adds 4
    assert (t.loc["b", "jump"], t.loc["b", "r_max"]) == (2, 3 + 1 + 2 * 2)
