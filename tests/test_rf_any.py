"""Receptive field of any CNN (issue 24): every torchvision classifier, r̃ against published or
hand-counted values, and hand-computed geometry for each op beyond conv/pool chains.

Sources of the r̃ values (minimal feasible input resolution, Eq. 7 of Richter & Pal 2022,
"Receptive Field Refinement for CNNs Reliably Improves Predictive Performance"): the paper's
tables for VGG19 (268) and MobileNetV3-large (263); rfa-toolbox 1.7.0's
``input_resolution_range`` (run on torchvision 0.29 models at 224 px in a side environment)
for ResNet18 (139), EfficientNet-B0 (299) and ConvNeXt-T (224), each also counted by hand below.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.ops import SqueezeExcitation, StochasticDepth, stochastic_depth

from landscape.receptive_field import (
    TABLE_COLUMNS, UnsupportedModelError, measure_receptive_field, min_feasible_input,
    receptive_field_table, torchvision_classifiers, torchvision_model,
)
from landscape.receptive_field import layout as L

# ----------------------------------------------------------------- every torchvision model


def test_every_torchvision_classifier_builds_a_table_at_224():  # ~30 s on 2 cores
    failures, names = {}, torchvision_classifiers()
    assert len(names) >= 80
    for name in names:
        model = torchvision_model(name)
        try:
            table = receptive_field_table(model, 224)
        except UnsupportedModelError as exc:  # collect all, then fail once
            failures[name] = str(exc)
            continue
        assert list(table.columns) == list(TABLE_COLUMNS) and len(table), name
        assert table.attrs["trace"] == "fx", name
        local = table[~table["is_global"]]
        assert len(local) and local["r_min"].notna().all() and local["r_max"].notna().all(), name
        assert (local["r_min"] <= local["r_max"]).all(), name
        assert table["is_global"].iloc[-1], name  # the classifier sees the whole input
    assert not failures, failures


# (model, r̃, where the number comes from)
PUBLISHED = [
    ("vgg19", 268, "paper table; the final max-pool: last conv 252 + (2-1)*16"),
    ("mobilenet_v3_large", 263, "paper table; rfa-toolbox 1.7.0: 263"),
    ("resnet18", 139, "rfa-toolbox 1.7.0: 139; hand count below"),
    ("efficientnet_b0", 299, "rfa-toolbox 1.7.0: 299; hand count below"),
    ("convnext_tiny", 224, "rfa-toolbox 1.7.0: 224; hand count below"),
]
# Hand counts (r_min grows only along paths without a skip; (k-1) * jump per layer):
# * ResNet18: stem 7x7/2 (r 7, j 2), max-pool 3x3/2 (11, 4); layer1 keeps r_min 11 (skips);
#   layer2.0: conv1 3x3/2 on r_min 11 -> 19 (j 8), conv2 -> 35, the 1x1/2 shortcut keeps 11,
#   so the block output has r_min 11; layer3.0: 11 -> 27 (j 16) -> 59, out 11; layer4.0:
#   conv1 11 + 2*16 = 43 (j 32), conv2 43 + 2*32 = 107; layer4.1.conv1 on r_min 11 -> 75,
#   conv2 139. r̃ = 139 (layer4.1.conv2).
# * EfficientNet-B0 (stride and kernel per stage: 3/2 stem; k3 s1; k3 s2; k5 s2; k3 s2; k5 s1;
#   k5 s2; k3 s1), residual blocks keep r_min: stem 3 (j 2); stage 1 dw3: 7; stage 2 dw3/2:
#   11 (j 4); stage 3 dw5/2: 27 (j 8); stage 4 dw3/2: 43 (j 16); stage 5 (no skip on its first
#   block) dw5: 107; stage 6 dw5/2: 171 (j 32), its residual blocks' dw5: 171 + 4*32 = 299;
#   stage 7 dw3: 235. r̃ = 299.
# * ConvNeXt-T: stem 4x4/4 (4, j 4); every block's 7x7 depthwise conv adds 6*j on the main
#   path only; downsampling 2x2/2 adds 1*j: stage 1 dwconv 4 + 24 = 28, down 8 (j 8); stage 2
#   dwconv 56, down 16 (j 16); stage 3 dwconv 112, down 32 (j 32); stage 4 dwconv 32 + 6*32 =
#   224 (its block output: 32 through the skip). r̃ = 224.


@pytest.mark.parametrize("name,expected,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_minimal_feasible_input_matches_published_values(name, expected, source):
    got = min_feasible_input(torchvision_model(name), 224)
    assert (got.h, got.w, got.size) == (expected, expected, expected), source


def test_r_tilde_is_the_largest_r_min_not_the_last_layers():
    table = receptive_field_table(torchvision_model("convnext_tiny"), 224).set_index("layer")
    assert table.loc["features.7.2.block.0", "r_min"] == 224  # last 7x7 depthwise conv
    assert table.loc["features.7.2.block.0", "input_r_min"] == 32  # the skip path
    vgg = receptive_field_table(torchvision_model("vgg19"), 224).set_index("layer")
    assert vgg.loc["features.34", "r_min"] == 252 and vgg.loc["features.36", "r_min"] == 268
    assert min_feasible_input(torchvision_model("vgg19"), 224).layer_h == "features.36"


# --------------------------------------------------------------------- rectangular windows

class Rect(nn.Module):
    """1x7 then 7x1 (InceptionV3), then 3x5 with stride (1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, (1, 7), padding=(0, 3))
        self.b = nn.Conv2d(1, 1, (7, 1), padding=(3, 0))
        self.c = nn.Conv2d(1, 1, (3, 5), stride=(1, 2), padding=(1, 2))

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_rectangular_kernels_have_per_axis_geometry():
    t = receptive_field_table(Rect(), 32).set_index("layer")
    per_axis = ["kernel_h", "kernel_w", "r_min_h", "r_min_w", "r_max_h", "r_max_w", "jump_h",
                "jump_w"]
    assert list(t.loc["a", per_axis]) == [1, 7, 1, 7, 1, 7, 1, 1]
    assert list(t.loc["b", per_axis]) == [7, 1, 7, 7, 7, 7, 1, 1]
    assert list(t.loc["c", per_axis]) == [3, 5, 9, 11, 9, 11, 1, 2]
    # square columns: the common value, else the larger axis (r_min: the smaller one)
    assert list(t.loc["a", ["kernel", "r_min", "r_max", "jump"]]) == [7, 1, 7, 1]
    assert list(t.loc["c", ["kernel", "stride", "r_min", "r_max", "jump"]]) == [5, 2, 9, 11, 2]
    # P per axis: h 3 + 1 = 4, w 3 + 2 = 5; centre of position 0: (lo + hi) / 2 = 0 on both
    assert (t.loc["c", "effective_padding"], t.loc["c", "center"]) == (5, 0.0)
    assert t.loc["c", "out_size"] == 32  # 32 x 16
    got = min_feasible_input(Rect())
    assert (got.h, got.w, got.size, got.layer_h) == (9, 11, (9, 11), "c")


def test_rectangular_flags_need_both_axes():
    t = receptive_field_table(Rect(), 7).set_index("layer")
    # b's input has r_min 1 x 7: only W covers 7 pixels, so b still grows the RF along H
    assert not t.loc["b", "unproductive"] and t.loc["c", "unproductive"]
    assert t.loc["c", "border"]
    t8 = receptive_field_table(Rect(), 8).set_index("layer")
    assert t8.loc["c", "underutilised"] and not t8.loc["b", "underutilised"]  # 9 x 11 vs 7 x 7


def test_rectangular_rf_equals_the_input_gradient_box():
    net = Rect().double()
    for p in net.parameters():
        nn.init.ones_(p)  # positive weights: no cancellation in the gradient
    x = torch.ones(1, 1, 40, 40, dtype=torch.float64, requires_grad=True)
    y = net(x)
    y[0, 0, 20, 10].backward()
    rows, cols = x.grad[0, 0].ne(0).nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (9, 11)
    # the box starts at u * jump - P per axis: row 20 - 4, column 10 * 2 - 5
    assert (rows.min(), cols.min()) == (16, 15)


# -------------------------------------------------------- permute, channels-last, shuffle

class ChannelsLast(nn.Module):
    """conv3 -> permute to NHWC -> LayerNorm(C) -> Linear -> permute back -> + x -> conv3."""

    def __init__(self, method: bool) -> None:
        super().__init__()
        self.method = method
        self.conv, self.head = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.norm, self.fc = nn.LayerNorm(4), nn.Linear(4, 4)

    def forward(self, x):
        x = self.conv(x)
        y = x.permute(0, 2, 3, 1) if self.method else torch.permute(x, (0, 2, 3, 1))
        y = self.fc(self.norm(y))
        y = y.permute(0, 3, 1, 2) if self.method else torch.permute(y, (0, 3, 1, 2))
        return self.head(y + x)


@pytest.mark.parametrize("method", [True, False])
def test_permute_around_layernorm_keeps_the_geometry(method):
    t = receptive_field_table(ChannelsLast(method), 16).set_index("layer")
    assert list(t.index) == ["conv", "fc", "head"]
    assert list(t.loc["fc", ["kind", "kernel", "r_min", "r_max", "is_global"]]) == [
        "linear", 1, 3, 3, False]  # a Linear over channels is a 1x1 conv
    assert list(t.loc["head", ["r_min", "r_max", "jump", "effective_padding"]]) == [5, 5, 1, 2]


class SpatialNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)

    def forward(self, x):
        x = self.conv(x)
        return self.head(F.layer_norm(x, x.shape[-2:]))  # statistics over all positions


def test_layernorm_over_positions_is_a_gate():
    assert receptive_field_table(SpatialNorm(), 16).set_index("layer").loc["head", "r_max"] == 5
    glob = receptive_field_table(SpatialNorm(), 16, se_gates="global").set_index("layer")
    assert pd.isna(glob.loc["head", "r_max"]) and glob.loc["head", "r_min"] == 5


class Shuffle(nn.Module):
    """ShuffleNetV2's channel shuffle between two 3x3 convs: view / transpose / view."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.size()
        x = torch.transpose(x.view(n, 2, c // 2, h, w), 1, 2).contiguous().view(n, -1, h, w)
        left, right = x.chunk(2, dim=1)
        return self.b(torch.cat([left, right], dim=1))


def test_channel_shuffle_keeps_the_geometry():
    t = receptive_field_table(Shuffle(), 16).set_index("layer")
    assert list(t.loc["b", ["r_min", "r_max", "jump", "out_size"]]) == [5, 5, 1, 16]


def test_channel_shuffle_of_a_1x1_map_keeps_positions_out_of_the_channels():
    # size-1 H and W atoms go to the size-1 dimensions of the view, not into the channels;
    # before, ShuffleNetV2 was refused at 32 px ("chunk splits along spatial dimension 1")
    nchw = L.fit(L.canonical(4), (2, 8, 1, 1), "t")
    assert L.reshape(nchw, (2, 8, 1, 1), (2, 2, 4, 1, 1), "t") == (
        (("c", 0, 2),), (("c", 0, 2),), (("c", 0, 4),), (("h", 1, 1),), (("w", 1, 1),))
    assert L.reshape(nchw, (2, 8, 1, 1), (2, 8), "t")[1] == (("c", 0, 8), ("h", 1, 1),
                                                           ("w", 1, 1))
    t = receptive_field_table(Shuffle(), 1).set_index("layer")
    assert list(t.loc["b", ["r_min", "r_max", "out_size"]]) == [5, 5, 1]


def test_shufflenet_is_analysed_where_its_last_stage_is_1x1():
    model = torchvision_model("shufflenet_v2_x0_5", num_classes=10)
    t = receptive_field_table(model, 32).set_index("layer")
    assert t.loc["conv5.0", "out_size"] == 1 and t.loc["conv5.0", "r_max"] > 32


def test_a_reshape_that_splits_positions_is_refused_at_the_next_conv():
    class Fold(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.b(self.a(x).reshape(-1, 1, 4, 64))  # H and W mixed into new axes

    with pytest.raises(UnsupportedModelError, match=r"module 'b' \(Conv2d\).*spatial axes"):
        receptive_field_table(Fold(), 16)


class Strided(nn.Module):
    """conv3 p1 -> rows 1::2, columns ::2 (one of Swin's patch-merging slices) -> conv3;
    or F.pad (left 2, top 1, bottom 1) -> conv3 p0."""

    def __init__(self, pad: bool) -> None:
        super().__init__()
        self.pad = pad
        self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3)

    def forward(self, x):
        x = self.a(x)
        return self.b(F.pad(x, (2, 0, 1, 1)) if self.pad else x[:, :, 1::2, ::2])


def test_slicing_and_padding_shift_position_zero():
    t = receptive_field_table(Strided(pad=False), 16).set_index("layer")
    # after a: r 3, lo -1 on both axes; slicing: H starts 1 position later, both jumps 2
    # b at jump 2: r 7; lo: H 0, W -1 -> P = 1 (the larger); centres 3 and 2 differ -> NaN
    assert list(t.loc["b", ["r_min", "r_max", "jump_h", "jump_w", "effective_padding"]]) == [
        7, 7, 2, 2, 1]
    assert math.isnan(t.loc["b", "center"]) and t.loc["b", "out_size"] == 6
    p = receptive_field_table(Strided(pad=True), 16).set_index("layer")
    # padding shifts position 0 by -2 (W) and -1 (H): P = 1 + 2 and 1 + 1; sizes 18 x 18 -> 16
    assert list(p.loc["b", ["r_max", "jump", "effective_padding", "out_size"]]) == [5, 1, 3, 16]


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_every_padding_mode_shifts_position_zero_and_keeps_the_interior(mode):
    """A circular pad was read as global; its wrapped positions are the border, as a conv's
    padding_mode="circular" and Swin's roll are: the interior positions read their window."""
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.b(F.pad(self.a(x), (1, 1, 1, 1), mode=mode))

    t = receptive_field_table(Padded(), 16).set_index("layer")
    assert list(t.loc["b", ["r_min", "r_max", "jump", "effective_padding", "out_size"]]) == [
        5, 5, 1, 2, 16]
    assert not t.loc["b", "is_global"]
    model = Padded().double()
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(model(x)[0, 0, 8, 8], x)
    rows = (g[0, 0].abs().sum(1) > 0).nonzero().flatten()
    assert (int(rows[0]), int(rows[-1])) == (6, 10)  # an interior position: its 5 x 5 window


class SpaceToDepth(nn.Module):
    """conv3 -> the four 2x2 phases stacked into channels (Swin's patch merging) -> 1x1 conv;
    with ``conv=True`` a 2x2 stride-2 conv instead of the slices."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv = conv
        self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(4 if not conv else 1, 1, 1)
        self.merge = nn.Conv2d(1, 1, 2, stride=2)

    def forward(self, x):
        x = self.a(x)
        if self.conv:
            return self.b(self.merge(x))
        phases = [x[..., i::2, j::2] for j in (0, 1) for i in (0, 1)]
        return self.b(torch.cat(phases, dim=1))


def test_space_to_depth_slices_act_like_a_strided_window():
    sliced = receptive_field_table(SpaceToDepth(conv=False), 16).set_index("layer").loc["b"]
    conv = receptive_field_table(SpaceToDepth(conv=True), 16).set_index("layer").loc["b"]
    cols = ["r_min", "r_max", "jump", "effective_padding", "center", "out_size"]
    assert list(sliced[cols]) == list(conv[cols]) == [4, 4, 2, 1, 0.5, 8]


class ViewSpaceToDepth(nn.Module):
    """TResNet's stem: 4x4 blocks moved into channels with view / permute, then a 3x3 conv;
    with ``conv=True`` a 4x4 stride-4 conv instead."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv = conv
        self.a = nn.Conv2d(1, 1, 1)  # a 1x1 stem: the measured RF reads its input channels
        self.merge = nn.Conv2d(1, 16, 4, stride=4)
        self.b = nn.Conv2d(16, 2, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        if self.conv:
            return self.b(self.merge(x))
        n, c, h, w = x.size()
        x = x.view(n, c, h // 4, 4, w // 4, 4).permute(0, 3, 5, 1, 2, 4).contiguous()
        return self.b(x.view(n, c * 16, h // 4, w // 4))


def test_a_space_to_depth_reshape_acts_like_a_strided_window():
    view = receptive_field_table(ViewSpaceToDepth(conv=False), 32).set_index("layer").loc["b"]
    conv = receptive_field_table(ViewSpaceToDepth(conv=True), 32).set_index("layer").loc["b"]
    cols = ["r_min", "r_max", "jump", "effective_padding", "out_size"]
    assert list(view[cols]) == list(conv[cols]) == [12, 12, 4, 4, 8]  # 4 + 2 x 4
    measured = measure_receptive_field(ViewSpaceToDepth(conv=False), "b")
    assert (measured.height, measured.width) == (12, 12) and not measured.clipped


class TokenBatchNorm(nn.Module):
    """LeViT's pattern: conv -> tokens (B, H*W, C) -> Linear -> BatchNorm1d over the batch and
    tokens merged (``flatten(0, 1)``) -> ``reshape_as`` back -> map -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Conv2d(4, 2, 3, padding=1)
        self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        t = self.fc(x.flatten(2).transpose(1, 2))
        t = self.bn(t.flatten(0, 1)).reshape_as(t)
        return self.b(t.transpose(1, 2).reshape(n, c, h, w))


def test_batchnorm_over_batch_and_tokens_merged_keeps_the_geometry():
    # refused before (LeViT): the merged batch and token sizes could not be told apart
    t = receptive_field_table(TokenBatchNorm(), 16).set_index("layer")
    assert list(t.loc["fc", ["kind", "r_max", "jump"]]) == ["linear", 3, 2]
    assert list(t.loc["b", ["r_min", "r_max", "jump", "out_size"]]) == [7, 7, 2, 8]
    measured = measure_receptive_field(TokenBatchNorm().eval(), "b")
    assert (measured.height, measured.width) == (7, 7)


class Repeated(nn.Module):
    """conv3 -> copies along the batch of windows (GCViT repeats its global query for every
    window: ``repeat_interleave`` on dim 0), along channels (``repeat``), or along the
    width (``how="width"``, tiling positions: refused) -> conv3."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        if self.how == "batch":  # two copies of every image, merged into channels again
            n, c, h, w = y.shape
            y = y.repeat_interleave(2, dim=0).reshape(n, 2 * c, h, w)
        elif self.how == "channels":
            y = y.repeat(1, 2, 1, 1)
        else:
            y = torch.cat([y, y], 1).repeat(1, 1, 1, 2)[..., :x.shape[-1]]
        return self.b(y)


@pytest.mark.parametrize("how", ["batch", "channels"])
def test_copies_along_the_batch_or_channels_keep_the_geometry(how):
    t = receptive_field_table(Repeated(how), 16).set_index("layer")
    assert list(t.loc["b", ["r_min", "r_max", "jump", "out_size"]]) == [5, 5, 1, 16]
    measured = measure_receptive_field(Repeated(how).eval(), "b")
    assert (measured.height, measured.width) == (5, 5)


def test_copies_along_a_spatial_axis_are_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="repeats along a dimension that holds "
                                                    "image positions"):
        receptive_field_table(Repeated("width"), 16)


class CachedBias(nn.Module):
    """Caches a tensor per input device in eval mode, as timm's LeViT does with its attention
    biases: an fx trace stored a proxy there under the proxy's device name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bias = nn.Parameter(torch.zeros(2, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        x = self.conv(x)
        if self.training:
            return x + self.bias
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 1
        return x + self.cache[key]


def test_analysing_a_model_leaves_its_state_alone_and_can_be_repeated():
    model = CachedBias().eval()
    first = receptive_field_table(model, 16)
    assert model.cache == {}  # the trace ran on a copy
    pd.testing.assert_frame_equal(receptive_field_table(model, 16), first)
    assert model.conv.weight.device.type == "cpu" and not model.conv.weight.is_meta


@pytest.mark.parametrize("name", ["resnest14d", "tresnet_m", "edgenext_xx_small"])
def test_timm_cnns_with_split_attention_or_a_space_to_depth_stem(name):
    # refused before: ResNeSt's radix split left a size-1 batch dimension without atoms on
    # one side of the residual add; TResNet's stem reshapes 4x4 blocks into channels;
    # EdgeNeXt's (B, H*W, C) with B = H*W = 1 at 32 px (the shape pass now has a batch of 2)
    pytest.importorskip("timm")
    from landscape.models.sources import timm_model

    t = receptive_field_table(timm_model(name, num_classes=10), 32)
    assert t["r_max"].notna().sum() > 10 and (t["kind"] == "conv").any()
    if name == "edgenext_xx_small":  # its cross-covariance attention mixes every position
        xca = t[t["layer"].str.contains(r"\.xca\.proj$")]
        assert len(xca) and xca["is_global"].all()
        assert t.loc[:xca.index[0] - 1, "r_max"].notna().all()  # local before it
    if name == "resnest14d":  # by hand: a deep stem (3x3 s2, 3x3, 3x3), max-pool 3 s2,
        # then each block's radix-split 3x3 (its attention gate only scales the merge: no path)
        r = {row.layer: (row.r_max, row.jump) for row in t.itertuples()}
        assert [r[n] for n in ("conv1.0", "conv1.3", "conv1.6", "maxpool")] == [
            (3, 2), (7, 2), (11, 2), (15, 4)]
        assert r["layer1.0.conv2.conv"] == r["layer1.0.conv3"] == (23, 4)
        assert r["layer2.0.downsample.0"] == (23 + 4, 8)  # 2x2 s2 avg-pool after the add
        assert r["layer2.0.conv2.conv"] == (31, 4) and r["layer2.0.avd_last"] == (39, 8)
    if name == "tresnet_m":  # the stem's first conv sees 4x4 blocks: r = 4 + 2 x 4
        first = t[t["kind"] == "conv"].iloc[0]
        assert (first["r_max"], first["jump"]) == (12, 4)


class Lambda3d(nn.Module):
    """LambdaNet's position lambdas: a Conv3d whose kernel is 1 along a third, non-spatial
    dimension, here the channels moved last (kernel (3, 5, 1), image axes in dims -3, -2)
    or first (kernel (1, 3, 5), image axes in dims -2, -1); then a 2x2 conv."""

    def __init__(self, last: bool, kernel: tuple = (3, 5, 1)) -> None:
        super().__init__()
        self.last = last
        self.a = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        k = kernel if last else (kernel[2], *kernel[:2])
        self.b = nn.Conv3d(1, 1, k, padding=tuple(v // 2 for v in k))
        self.c = nn.Conv2d(2, 1, 2)

    def forward(self, x):
        y = self.a(x)
        if self.last:  # (B, 1, H, W, C)
            y = self.b(y.permute(0, 2, 3, 1).unsqueeze(1)).squeeze(1).permute(0, 3, 1, 2)
        else:  # (B, 1, C, H, W)
            y = self.b(y.unsqueeze(1)).squeeze(1)
        return self.c(y)


@pytest.mark.parametrize("last", [True, False])
def test_a_conv3d_over_the_image_axes_is_a_2d_window(last):
    t = receptive_field_table(Lambda3d(last), 40).set_index("layer")
    assert (t.loc["b", "kernel_h"], t.loc["b", "kernel_w"], t.loc["b", "kind"]) == (3, 5, "conv")
    net = Lambda3d(last).double()
    for p in net.parameters():
        nn.init.ones_(p)
    x = torch.ones(1, 1, 40, 40, dtype=torch.float64, requires_grad=True)
    net(x)[0, 0, 9, 9].backward()
    rows, cols = x.grad[0, 0].ne(0).nonzero().unbind(1)
    box = (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    assert box == (t.loc["c", "r_max_h"], t.loc["c", "r_max_w"]) == (3 + 2 * 2 + 2, 3 + 4 * 2 + 2)
    with pytest.raises(UnsupportedModelError, match=r"'b' \(Conv3d\) has kernel .*kernel 1, "
                                                  r"stride 1 and no padding along a third"):
        receptive_field_table(Lambda3d(last, kernel=(3, 5, 3)), 40)


class Unfolded(nn.Module):
    """MobileViTv2: 2x2 patches unfolded to (B, C, 4 patch pixels, patches), a 1x1 conv
    there (channels only), folded back, then a 3x3 conv; a global context vector
    ``expand_as`` the map gates it (a product with a global tensor: an SE-like gate)."""

    def __init__(self, kernel: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(2, 2, kernel)
        self.b = nn.Conv2d(2, 1, 3)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        p = y.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        p = self.mix(p.reshape(b, c, 4, h * w // 4))
        context = p.softmax(dim=-1).sum(-1, keepdim=True)  # over the patches: global
        p = p * context.expand_as(p)
        y = p.reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.b(y)


class Tokens1d(nn.Module):
    """EfficientViM: a Conv1d over the flattened positions (N, C, H W), then back to a map."""

    def __init__(self, kernel: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.proj = nn.Conv1d(2, 2, kernel)
        self.b = nn.Conv2d(2, 1, 3)

    def forward(self, x):
        y = self.a(x)
        return self.b(self.proj(y.flatten(2)).reshape(y.shape))


def test_a_kernel_1_conv1d_over_flattened_positions_keeps_their_geometry():
    t = receptive_field_table(Tokens1d(), 32).set_index("layer")
    assert (t.loc["proj", "kind"], t.loc["proj", "r_max"], t.loc["proj", "jump"]) == ("conv", 3, 2)
    assert t.loc["b", "r_max"] == 3 + 2 * 2
    with pytest.raises(UnsupportedModelError, match="1-d conv of kernel 3, stride 1, padding 0 over flattened positions"):
        receptive_field_table(Tokens1d(kernel=3), 32)


class ChannelConv1d(nn.Module):
    """ECA: a Conv1d of kernel 3 along the channels of the pooled vector gates the map; and
    the same Conv1d along each position's channels, (N H W, 1, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.eca, self.per_position = nn.Conv1d(1, 1, 3, padding=1), nn.Conv1d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(4, 1, 3)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        gate = self.eca(y.mean((2, 3)).unsqueeze(1)).sigmoid().reshape(n, c, 1, 1)
        z = self.per_position(y.permute(0, 2, 3, 1).reshape(n * h * w, 1, c))
        return self.b(y * gate + z.reshape(n, h, w, c).permute(0, 3, 1, 2))


def test_a_conv1d_along_channels_mixes_no_positions():
    t = receptive_field_table(ChannelConv1d(), 32).set_index("layer")
    assert t.loc["eca", "is_global"] and not t.loc["per_position", "is_global"]
    assert (t.loc["per_position", "r_max"], t.loc["b", "r_min"], t.loc["b", "r_max"]) == (3, 7, 7)


def test_a_1x1_conv_on_unfolded_patches_keeps_each_positions_geometry():
    t = receptive_field_table(Unfolded(), 32).set_index("layer")
    assert (t.loc["mix", "r_max"], t.loc["mix", "jump"]) == (3, 2)
    assert (t.loc["b", "r_min"], t.loc["b", "r_max"]) == (3 + 2 * 2, 3 + 2 * 2)  # a gate
    assert receptive_field_table(Unfolded(), 32, se_gates="global").set_index(
        "layer").loc["b", "is_global"]
    with pytest.raises(UnsupportedModelError, match="'mix' .*needs a feature map"):
        receptive_field_table(Unfolded(kernel=2), 32)  # a 2x2 window there mixes patches


def test_layout_follows_maxvit_window_partition_and_back():
    nchw = L.fit(L.canonical(4), (2, 8, 14, 14), "t")
    parts = L.reshape(nchw, (2, 8, 14, 14), (2, 8, 2, 7, 2, 7), "t")
    assert parts[2:] == ((("h", 7, 2),), (("h", 1, 7),), (("w", 7, 2),), (("w", 1, 7),))
    windows = L.reshape(L.permute(parts, (0, 2, 4, 3, 5, 1), "t"), (2, 2, 2, 7, 7, 8),
                        (2, 4, 49, 8), "t")
    assert L.spatial_dims(windows) == {1, 2} and L.intact(windows) == {}
    back = L.reshape(windows, (2, 4, 49, 8), (2, 2, 2, 7, 7, 8), "t")
    back = L.reshape(L.permute(back, (0, 5, 1, 3, 2, 4), "t"), (2, 8, 2, 7, 2, 7),
                     (2, 8, 14, 14), "t")
    assert L.intact(back) == {"h": 2, "w": 3}


# ------------------------------------------------------------------- SE gates, stochastic depth

class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)
        self.se = SqueezeExcitation(4, 2)

    def forward(self, x):
        return self.head(self.se(self.conv(x)))


def test_squeeze_excitation_module_scales_by_default():
    t = receptive_field_table(SENet(), 16).set_index("layer")
    assert t.loc[["se.avgpool", "se.fc1", "se.fc2"], "is_global"].all()
    assert list(t.loc["head", ["r_min", "r_max", "is_global"]]) == [5, 5, False]
    glob = receptive_field_table(SENet(), 16, se_gates="global").set_index("layer")
    assert glob.loc["head", "is_global"] and glob.loc["head", "r_min"] == 5


def test_mobilenet_v3_se_gates_leave_the_trunk_finite():
    model = torchvision_model("mobilenet_v3_large")
    scale = receptive_field_table(model, 224)
    glob = receptive_field_table(model, 224, se_gates="global")
    trunk = scale["layer"].str.startswith("features")
    se_rows = scale["layer"].str.contains(r"\.avgpool$|\.fc1$|\.fc2$") & trunk
    assert int(se_rows.sum()) == 24  # 8 SE blocks
    assert scale.loc[~se_rows & trunk, "r_max"].notna().all()
    assert int(glob["is_global"].sum()) > int(scale["is_global"].sum()) == 24 + 3
    pd.testing.assert_series_equal(scale["r_min"], glob["r_min"])  # r_min never changes
    assert scale["r_max"].max() == 595  # rfa-toolbox 1.7.0's r_max for this model


class SDBlock(nn.Module):
    def __init__(self, drop: str) -> None:
        super().__init__()
        self.drop = drop
        self.stem, self.a, self.head = (nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, padding=1),
                                        nn.Conv2d(2, 2, 3))
        self.sd = StochasticDepth(0.5, "row")

    def forward(self, x):
        x = self.stem(x)
        y = self.a(x)
        if self.drop == "module":
            y = self.sd(y)
        elif self.drop == "function":
            y = stochastic_depth(y, 0.5, "row", self.training)
        return self.head(x + y)


@pytest.mark.parametrize("drop", ["module", "function"])
@pytest.mark.parametrize("train", [True, False])
def test_stochastic_depth_is_the_identity_for_the_rf(drop, train):
    got = receptive_field_table(SDBlock(drop).train(train), 16)
    ref = receptive_field_table(SDBlock("none"), 16)
    pd.testing.assert_frame_equal(got, ref)
    assert list(got.set_index("layer").loc["head", ["r_min", "r_max"]]) == [5, 7]


# ------------------------------------------------------------------- adaptive pooling

class Adaptive(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.conv, self.pool, self.after = nn.Conv2d(1, 1, 3, padding=1), \
            nn.AdaptiveMaxPool2d(out), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.after(self.pool(self.conv(x)))


def test_adaptive_pool_even_windows_and_uneven_ones():
    even = receptive_field_table(Adaptive(4), 8).set_index("layer")  # 8 -> 4: a 2x2/2 window
    assert list(even.loc["pool", ["kernel", "stride", "r_max", "jump"]]) == [2, 2, 4, 2]
    assert even.loc["after", "r_max"] == 4
    uneven = receptive_field_table(Adaptive(3), 8).set_index("layer")  # 8 -> 3: uneven
    assert uneven.loc["conv", "r_max"] == 3 and not uneven.loc["conv", "is_global"]
    # windows 0..2, 2..5, 5..7 (torch's floor(8t / 3) .. ceil(8(t + 1) / 3) - 1): r 5 or 6
    for layer in ("pool", "after"):
        assert list(uneven.loc[layer, ["r_min", "r_max", "jump"]]) == [5, 6, 8 / 3]
        assert not uneven.loc[layer, "is_global"]
    assert pd.isna(uneven.loc["pool", "kernel"])


# ------------------------------------------------------------------------------ attention

class TinyViT(nn.Module):
    """4x4 patches, a class token, one attention block, a per-token MLP, the class token head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp, self.head = nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, C)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(x)
        return self.head(x[:, 0])


def test_attention_makes_the_state_global():
    t = receptive_field_table(TinyViT(), 32).set_index("layer")
    assert list(t.index) == ["patch", "attn", "mlp", "head"]
    assert list(t.loc["patch", ["r_max", "jump", "out_size"]]) == [4, 4, 8]
    assert t.loc["attn", "kind"] == "attention" and t.loc["attn", "is_global"]
    # after x + attn(x): r_min through the skip, r_max global
    assert t.loc["mlp", "is_global"] and t.loc["mlp", "r_min"] == 4
    assert t.loc["head", "is_global"] and pd.isna(t.loc["head", "r_min"])  # the class token
    assert min_feasible_input(TinyViT()).size == 4


class PrefixViT(nn.Module):
    """``prefix`` constant tokens (class, registers) before 4x4 patch tokens (after them with
    ``last``); RMSNorm, a RoPE-like table cast with ``type_as``, attention, then ``read``
    picks the tokens the head sees."""

    def __init__(self, read, prefix: int = 1, last: bool = False, attend: bool = True):
        super().__init__()
        self.read, self.last, self.attend = read, last, attend
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.tokens = nn.Parameter(torch.zeros(1, prefix, 8))
        self.norm = nn.RMSNorm(8)
        self.rope = nn.Parameter(torch.ones(8), requires_grad=False)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp, self.head = nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, C)
        extra = self.tokens.expand(x.shape[0], -1, -1)
        x = torch.cat([x, extra] if self.last else [extra, x], dim=1)
        x = self.norm(x) * self.rope.type_as(x)
        if self.attend:
            x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(self.mlp(self.read(x)))


@pytest.mark.parametrize("prefix", [1, 5])
def test_slicing_off_class_and_register_tokens_keeps_the_image_tokens(prefix):
    """The tokens after the constant ones are the image tokens: before attention they keep
    the patches' RF (4); a slice of the leading ones only, or one of them, is a readout."""
    def table(read, **kw):
        fx = receptive_field_table(PrefixViT(read, prefix, **kw), 32, tracer="fx")
        hooks = receptive_field_table(PrefixViT(read, prefix, **kw), 32, tracer="hooks")
        assert hooks.equals(fx)  # the recorded forward follows the same rules
        return fx.set_index("layer")

    t = table(lambda x: x[:, prefix:], attend=False)
    assert tuple(t.loc["mlp", ["r_min", "r_max", "is_global"]]) == (4, 4, False)
    t = table(lambda x: x[:, prefix:])  # behind attention: r_min through the skip, r_max global
    assert (t.loc["mlp", "r_min"], t.loc["mlp", "is_global"]) == (4, True)
    assert table(lambda x: x[:, prefix + 3], attend=False).loc["mlp", "r_max"] == 4  # one patch
    for read in (lambda x: x[:, :prefix], lambda x: x[:, prefix - 1], lambda x: x[:, 0]):
        assert table(read, attend=False).loc["mlp", "is_global"]  # the readout tokens
    if prefix > 1:  # a slice that keeps some register tokens: the image tokens' geometry
        t = table(lambda x: x[:, 1:], attend=False)
        assert (t.loc["mlp", "r_min"], t.loc["mlp", "r_max"]) == (4, 4)
    with pytest.raises(UnsupportedModelError, match="leading class / register tokens are not "
                                                    "known"):
        table(lambda x: x[:, 1:], last=True)  # constant tokens after the image's


def test_a_class_token_updated_alone_keeps_the_image_tokens():
    """CaiT / XCiT class attention: the class token is replaced by a global one and added to
    the sequence whose class token was constant. A token without a position, global or
    constant, reaches no image token without token mixing: the image tokens keep the
    patches' RF (4), checked against the input gradient of an image token; the class token
    alone is a readout."""
    def update(x):
        cls = x.mean(1, keepdim=True)  # global
        return x + torch.cat([cls, x[:, 1:]], dim=1)

    t = receptive_field_table(PrefixViT(update, attend=False), 32).set_index("layer")
    assert (t.loc["mlp", "r_min"], t.loc["mlp", "r_max"], t.loc["mlp", "is_global"]) == \
        (4, 4, False)
    model = PrefixViT(lambda x: update(x)[:, 1:], attend=False)
    assert receptive_field_table(model, 32).set_index("layer").loc["mlp", "r_max"] == 4
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(model(x)[0, 9].sum(), x)  # image token 9: patch (1, 1)
    rows, cols = g[0].abs().sum(0).nonzero().unbind(1)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (4, 7, 4, 7)
    readout = PrefixViT(lambda x: update(x)[:, 0], attend=False)
    assert receptive_field_table(readout, 32).set_index("layer").loc["mlp", "is_global"]


def test_empty_and_whole_slices_of_tokens_are_followed():
    """x[:, :0] (no prefix tokens) holds no positions; x[:, 0:] is all of them."""
    class NoPrefix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch, self.mlp = nn.Conv2d(3, 8, 4, stride=4), nn.Linear(8, 8)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            return self.mlp(torch.cat([x[:, :0] * 2, x[:, 0:]], dim=1))

    t = receptive_field_table(NoPrefix(), 32).set_index("layer")
    assert (t.loc["mlp", "r_max"], t.loc["mlp", "jump"]) == (4, 4)


class MatmulAttention(nn.Module):
    """Self-attention written out: softmax(q k^T) v over the positions of a feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.qkv, self.head = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 12, 1), \
            nn.Conv2d(4, 4, 3)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # (B, C, HW)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, HW, HW)
        y = (v @ attn.transpose(1, 2)).view(b, c, h, w)
        return self.head(x + y)


def test_matmul_over_positions_is_token_mixing():
    t = receptive_field_table(MatmulAttention(), 12).set_index("layer")
    assert list(t.loc["qkv", ["r_min", "r_max"]]) == [3, 3]
    assert t.loc["head", "r_min"] == 5 and t.loc["head", "is_global"]


# ------------------------------------------------------------------------------ fallback

class Conv2dSame(nn.Conv2d):
    """TF 'SAME' padding computed from the input shape at run time (as timm's Conv2dSame):
    torch.fx cannot trace ``max`` / ``math.ceil`` on a traced shape."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:], self.weight.shape[-2:], self.stride):
            pads.append(max((math.ceil(size / s) - 1) * s + k - size, 0))
        x = F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 4, 3, stride=2)
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.b(F.relu(self.a(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_untraceable_model_falls_back_to_a_recorded_forward():
    t = receptive_field_table(SameNet(), 16)
    assert t.attrs["trace"] == "hooks"
    t = t.set_index("layer")
    assert list(t.index) == ["stem.conv2d", "a", "b", "adaptive_avg_pool2d", "head"]
    # 16 px, k3 s2 SAME: pad 0 top / 1 bottom, so P = 0; r 3 -> 7 -> 11 at jump 2; the
    # shortcut keeps r_min 3 after the add (seen: the fallback rebuilds the data flow)
    assert list(t.loc["stem.conv2d", ["r_max", "jump", "effective_padding", "out_size"]]) == [
        3, 2, 0, 8]
    assert list(t.loc["b", ["r_min", "r_max", "effective_padding"]]) == [11, 11, 4]
    assert t.loc["adaptive_avg_pool2d", "input_r_min"] == 3
    assert min_feasible_input(SameNet(), 16).size == 11


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "efficientnet_b0", "vit_b_16"])
def test_the_fallback_gives_the_fx_table(name):
    model = torchvision_model(name)
    fx_table = receptive_field_table(model, 224, tracer="fx")
    hooks_table = receptive_field_table(model, 224, tracer="hooks")
    assert hooks_table.attrs.pop("trace") == "hooks" and fx_table.attrs.pop("trace") == "fx"
    pd.testing.assert_frame_equal(fx_table, hooks_table, obj=name)


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate = nn.Conv2d(1, 1, 3), DataDependent()

    def forward(self, x):
        return self.gate(self.conv(x))


def test_a_model_neither_trace_can_follow_is_refused_naming_module_and_op():
    with pytest.raises(UnsupportedModelError,
                       match=r"meta device in module 'gate' \(DataDependent\), at op \S+__bool__"):
        receptive_field_table(Untraceable(), 16)
    unfold = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Unfold(2), nn.Fold(14, 2), nn.Conv2d(4, 1, 3))
    with pytest.raises(UnsupportedModelError,
                       match=r"module '2' \(Fold\) folds blocks back into a map"):
        receptive_field_table(unfold, 16)
    # a pixel shuffle is followed, but not to positions finer than the input's pixels
    shuffle = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelShuffle(2), nn.Conv2d(1, 1, 3))
    with pytest.raises(UnsupportedModelError,
                       match=r"module '1' \(PixelShuffle\) upsamples beyond the input's "
                             r"resolution \(a mean jump of 0.5 pixels\)"):
        receptive_field_table(shuffle, 16)


# ------------------------------------------------------------------ flags and arguments

def test_underutilised_convention_at_equality():
    chain = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(3)])  # r 3, 5, 7
    rfa = receptive_field_table(chain, 7)
    paper = receptive_field_table(chain, 7, convention="paper")
    assert list(rfa["underutilised"]) == [False, False, False]  # r_min > 7 (rfa's "critical")
    assert list(paper["underutilised"]) == [False, False, True]  # r_min >= 7: r̃ = n counts
    pd.testing.assert_series_equal(rfa["unproductive"], paper["unproductive"])
    with pytest.raises(ValueError, match="convention must be one of rfa, paper"):
        receptive_field_table(chain, 7, convention="strict")
    with pytest.raises(ValueError, match="se_gates must be one of scale, global"):
        receptive_field_table(chain, 7, se_gates="ignore")
    with pytest.raises(ValueError, match="tracer must be one of auto, fx, hooks"):
        receptive_field_table(chain, 7, tracer="jit")
    with pytest.raises(UnsupportedModelError, match="cannot trace SameNet with torch.fx"):
        receptive_field_table(SameNet(), 16, tracer="fx")
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet7'"):
        torchvision_model("resnet7")


# ------------------------------------------------------------- random rectangular chains

axis_st = st.tuples(st.integers(1, 4), st.integers(1, 2), st.integers(1, 2), st.integers(0, 2))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["conv", "max"]), axis_st, axis_st), min_size=1,
                max_size=3))
def test_random_rectangular_chains_match_the_closed_form_per_axis(spec):
    layers, geo = [nn.Conv2d(1, 2, 1)], {"h": [], "w": []}
    for kind, *axes in spec:
        k, s, d, p = zip(*axes)
        d = d if kind == "conv" else (1, 1)
        p = tuple(min(p[i], (d[i] * (k[i] - 1) + 1) // 2 if kind == "conv" else k[i] // 2)
                  for i in range(2))
        layers.append(nn.Conv2d(2, 2, k, s, p, d) if kind == "conv" else nn.MaxPool2d(k, s, p))
        for i, a in enumerate("hw"):
            geo[a].append((d[i] * (k[i] - 1) + 1, s[i], p[i]))
    expect = {}
    for a in "hw":  # Araujo's closed form per axis: r = 1 + sum (K-1) prod s, P = sum p prod s
        r, P, j = 1, 0, 1
        for k_eff, s, p in geo[a]:
            r, P, j = r + (k_eff - 1) * j, P + p * j, j * s
        expect[a] = (r, j)
    net = nn.Sequential(*layers)
    n = 4 * max(expect["h"][0], expect["w"][0]) + 8
    last = receptive_field_table(net, n).iloc[-1]
    for a in "hw":
        assert (last[f"r_min_{a}"], last[f"r_max_{a}"], last[f"jump_{a}"]) == (
            expect[a][0], expect[a][0], expect[a][1])
