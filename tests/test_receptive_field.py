"""Receptive-field analysis: closed forms, published values, and gradient-measured agreement.

Published references (RF size, effective stride, effective padding per end-point):
google-research/receptive_field, ``receptive_field/RECEPTIVE_FIELD_TABLE.md``, the table
behind Araujo, Norris & Sim, "Computing receptive fields of convolutional neural networks",
Distill 2019 (TF-Slim models). torchvision's ResNet-50 (stride on the 3x3 conv) stage values
35/91/267/427 are the ones tabulated in samson-wang's "ResNet Receptive Field Size" gist.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.models import create_model
from landscape.receptive_field import (
    MODES, TABLE_COLUMNS, UnsupportedModelError, format_sweep_table, max_receptive_field,
    measure_receptive_field, min_feasible_input, receptive_field_table, rf_sweep_table,
)

TINY = 0.0625  # channel multiplier: RF geometry does not depend on width


# ------------------------------------------------------------------------ hand-computed nets

class HandNet(nn.Module):
    """conv3 p1 -> conv3 s2 p1 -> maxpool2 -> conv3 dil2 p2 -> conv5 p0 (modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=2, dilation=2),
            nn.Conv2d(2, 2, 5),
        )

    def forward(self, x):
        return self.body(x)


class FunctionalHandNet(nn.Module):
    """The same geometry written with functional ops and tensor methods."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(2, 1, 3, 3))
        self.w2 = nn.Parameter(torch.randn(2, 2, 3, 3))
        self.w3 = nn.Parameter(torch.randn(2, 2, 3, 3))
        self.w4 = nn.Parameter(torch.randn(2, 2, 5, 5))

    def forward(self, x):
        x = torch.relu(F.conv2d(x, self.w1, padding=1))
        x = F.conv2d(x, self.w2, stride=2, padding=1).relu()
        x = F.max_pool2d(x, 2)
        x = F.conv2d(x, self.w3, padding=2, dilation=2)
        return F.conv2d(x, self.w4)


# (jump, r, effective padding, out size at n = 64), derived by hand:
# r_l = r_{l-1} + (K_l - 1) j_{l-1}, K = d(k-1)+1; P_l = P_{l-1} + p_l j_{l-1}
HAND_EXPECTED = [(1, 3, 1, 64), (2, 5, 2, 32), (4, 7, 2, 16), (4, 23, 10, 16), (4, 39, 10, 12)]


@pytest.mark.parametrize("net", [HandNet, FunctionalHandNet])
def test_hand_computed_sequential_net(net):
    table = receptive_field_table(net(), 64)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table["kind"]) == ["conv", "conv", "max_pool", "conv", "conv"]
    got = list(zip(table["jump"], table["r_max"], table["effective_padding"], table["out_size"]))
    assert got == HAND_EXPECTED
    assert (table["r_min"] == table["r_max"]).all()  # a single path
    assert list(table["dilation"]) == [1, 1, 1, 2, 1]
    # centre of position 0 = -P + (r - 1) / 2; the 2x2 pool shifts it by half its jump
    assert table["center"].iloc[-1] == -10 + (39 - 1) / 2 == 9
    # linearised gradient (functional relu / max_pool2d are swapped too) spans exactly r = 39
    m = measure_receptive_field(net(), mode="linearised")
    assert (m.layer, m.height, m.width, m.clipped) == (table["layer"].iloc[-1], 39, 39, False)
    assert m.top == m.position * 4 - 10 == m.analytic_first


def test_unproductive_border_and_underutilised_on_a_plain_chain():
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(5)])  # r = 3, 5, ..., 11
    table = receptive_field_table(net, 7)
    assert list(table["input_r_min"]) == [1, 3, 5, 7, 9]
    assert list(table["unproductive"]) == [False, False, False, True, True]  # input r_min >= 7
    assert list(table["border"]) == [False, False, False, True, False]
    assert list(table["underutilised"]) == [False, False, False, True, True]  # r_min > 7
    assert list(receptive_field_table(net, 9)["border"]) == [False] * 4 + [True]
    assert not receptive_field_table(net, 10)["unproductive"].any()


# ----------------------------------------------------------------------------- multi-path

class ResidualToy(nn.Module):
    """stem conv3 -> [conv3, conv3] + identity -> conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.b(self.a(x)) + x)


class ConcatToy(nn.Module):
    """Inception-like: cat([conv1x1, conv5x5 p2], channels) -> conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.p1, self.p5 = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 5, padding=2)
        self.head = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        return self.head(torch.cat([self.p1(x), self.p5(x)], dim=1))


def test_residual_block_keeps_r_min_and_grows_r_max():
    table = receptive_field_table(ResidualToy(), 32).set_index("layer")
    assert (table.loc["b", "r_min"], table.loc["b", "r_max"]) == (7, 7)
    # after the add r_min = 3 (shortcut) and r_max = 7 (main path); the head adds 2 to both
    assert (table.loc["head", "input_r_min"], table.loc["head", "r_min"]) == (3, 5)
    assert table.loc["head", "r_max"] == 9
    assert max_receptive_field(ResidualToy()) == 9
    # unproductive uses the minimum: input r_max = 7 >= n = 6 but input r_min = 3 < 6
    small = receptive_field_table(ResidualToy(), 6).set_index("layer")
    assert not small.loc["head", "unproductive"]


def test_concatenation_merges_min_and_max():
    table = receptive_field_table(ConcatToy(), 16).set_index("layer")
    head = table.loc["head"]
    assert (head["input_r_min"], head["r_min"], head["r_max"]) == (1, 3, 7)


@pytest.mark.parametrize("mode", MODES)
def test_residual_and_concat_measured_equal_analytic(mode):
    for net, r_max in ((ResidualToy(), 9), (ConcatToy(), 7)):
        m = measure_receptive_field(net, mode=mode)  # no ReLU: plain is exact as well
        assert (m.height, m.width, m.analytic_r_max) == (r_max, r_max, r_max)
        assert (m.top, m.top + m.height - 1) == (m.analytic_first, m.analytic_last)


class JumpMismatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 1, 3, stride=2, padding=1)  # 8 -> 4, jump 2
        self.valid = nn.Conv2d(1, 1, 5)  # 8 -> 4, jump 1
        self.head = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.head(self.down(x) + self.valid(x))


def test_merging_different_jumps_is_an_error():
    with pytest.raises(UnsupportedModelError, match=r"different jumps \[1, 2\]"):
        receptive_field_table(JumpMismatch(), 8)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
        return self.head(x)


def test_se_gate_rescales_by_default_and_is_a_global_path_on_request():
    table = receptive_field_table(SqueezeExcite(), 16).set_index("layer")
    assert table.loc["adaptive_avg_pool2d", "is_global"] and table.loc["fc", "is_global"]
    # se_gates="scale": the gate rescales channels, so the head sees conv3 -> conv3 only
    assert not table.loc["head", "is_global"]
    assert (table.loc["head", "r_min"], table.loc["head", "r_max"]) == (5, 5)
    glob = receptive_field_table(SqueezeExcite(), 16, se_gates="global").set_index("layer")
    assert glob.loc["head", "is_global"] and pd.isna(glob.loc["head", "r_max"])
    assert glob.loc["head", "r_min"] == 5  # a global path never lowers r_min


# ------------------------------------------------------------------ closed form, hypothesis

layer_st = st.tuples(
    st.sampled_from(["conv", "max", "avg"]), st.integers(1, 4), st.integers(1, 2),
    st.integers(1, 2), st.integers(0, 2), st.booleans(),
)


def _build(spec) -> tuple[nn.Sequential, list[tuple[int, int, int]]]:
    layers, geo = [], []
    for kind, k, s, d, p, ceil in spec:
        d = 1 if kind == "avg" else d
        k_eff = d * (k - 1) + 1
        p = min(p, k_eff // 2 if kind == "conv" else k // 2)
        if kind == "conv":
            layers += [nn.Conv2d(2, 2, k, stride=s, padding=p, dilation=d), nn.ReLU()]
        elif kind == "max":
            layers.append(nn.MaxPool2d(k, s, p, dilation=d, ceil_mode=ceil))
        else:
            layers.append(nn.AvgPool2d(k, s, p, ceil_mode=ceil))
        geo.append((k_eff, s, p))
    return nn.Sequential(nn.Conv2d(1, 2, 1), *layers), [(1, 1, 0)] + geo


@settings(max_examples=20, deadline=None)
@given(st.lists(layer_st, min_size=1, max_size=4))
def test_random_sequential_nets_match_closed_form_and_gradient(spec):
    net, geo = _build(spec)
    # closed form (Araujo eq. 2 / 7): r = 1 + sum (K_l - 1) prod_{i<l} s_i, P = sum p_l prod s_i
    r, P, jump = 1, 0, 1
    for k_eff, s, p in geo:
        r, P, jump = r + (k_eff - 1) * jump, P + p * jump, jump * s
    table = receptive_field_table(net, 4 * r + 8)
    last = table.iloc[-1]
    got = (last["r_max"], last["r_min"], last["jump"], last["effective_padding"])
    assert got == (r, r, jump, P)
    m = measure_receptive_field(net, layer=last["layer"], mode="linearised")
    assert not m.clipped
    assert (m.height, m.width) == (r, r)
    assert m.top == m.left == m.position * jump - P == m.analytic_first
    plain = measure_receptive_field(net, layer=last["layer"], mode="plain", seed=1)
    assert plain.height <= r and plain.width <= r
    if plain.height:
        assert m.analytic_first <= plain.top and plain.top + plain.height - 1 <= m.analytic_last


# ------------------------------------------------------------------------ published values

VGG16_TF = {  # end-point: (RF, effective stride, effective padding)
    "features.0": (3, 1, 1), "features.4": (6, 2, 2), "features.5": (10, 2, 4),
    "features.9": (16, 4, 6), "features.10": (24, 4, 10), "features.12": (32, 4, 14),
    "features.16": (44, 8, 18), "features.17": (60, 8, 26), "features.19": (76, 8, 34),
    "features.23": (100, 16, 42), "features.24": (132, 16, 58), "features.26": (164, 16, 74),
    "features.30": (212, 32, 90),  # pool5
}
ALEXNET_V2_TF = {  # conv1, pool1, conv2, conv3, conv4, conv5, pool5
    "features.0": (11, 4, 0), "features.2": (19, 8, 0), "features.3": (51, 8, 16),
    "features.6": (99, 16, 32), "features.8": (131, 16, 48), "features.10": (163, 16, 64),
    "features.12": (195, 32, 64),
}


def _on_meta(builder):
    with torch.device("meta"):  # no weights are allocated; tracing needs shapes only
        return builder()


def test_torchvision_vgg16_matches_published_table():
    vgg16 = _on_meta(torchvision.models.vgg16)
    table = receptive_field_table(vgg16, 224).set_index("layer")
    for name, expected in VGG16_TF.items():
        row = table.loc[name]
        assert (row["r_max"], row["jump"], row["effective_padding"]) == expected, name
    assert table.loc["classifier.0", "is_global"] and not table["unproductive"].any()
    assert max_receptive_field(vgg16) == 196  # conv5_3; pool5 adds 16


def test_torchvision_alexnet_matches_published_rf_and_stride():
    table = receptive_field_table(_on_meta(torchvision.models.alexnet), 224).set_index("layer")
    for name, (r, s, p_tf) in ALEXNET_V2_TF.items():
        row = table.loc[name]
        assert (row["r_max"], row["jump"]) == (r, s), name
        # torchvision pads conv1 by 2 where TF-Slim's alexnet_v2 uses VALID: P is 2 larger
        assert row["effective_padding"] == p_tf + 2, name


def test_resnet50_torchvision_and_tf_slim_stride_placement():
    r50 = _on_meta(torchvision.models.resnet50)
    stages = ["layer1.2.conv3", "layer2.3.conv3", "layer3.5.conv3", "layer4.2.conv3"]
    table = receptive_field_table(r50, 224).set_index("layer")
    assert [table.loc[s, "r_max"] for s in stages] == [35, 91, 267, 427]
    assert max_receptive_field(r50) == 427
    # TF-Slim resnet_v1_50 strides the LAST unit of blocks 1-3 (1x1 max-pool shortcut):
    # published block1..4 RF 35/99/291/483, effective stride 8/16/32/32
    with torch.device("meta"):
        for name in ("layer2", "layer3", "layer4"):
            stage = getattr(r50, name)
            stage[0].conv2.stride, stage[0].downsample[0].stride = (1, 1), (1, 1)
        for name in ("layer1", "layer2", "layer3"):
            stage = getattr(r50, name)
            stage[-1].conv2.stride, stage[-1].downsample = (2, 2), nn.MaxPool2d(1, 2)
    table = receptive_field_table(r50, 224).set_index("layer")
    assert [table.loc[s, "r_max"] for s in stages] == [35, 99, 291, 483]
    assert [table.loc[s, "jump"] for s in stages] == [8, 16, 32, 32]


def test_uneven_adaptive_pool_reads_its_windows():
    vgg16 = _on_meta(torchvision.models.vgg16)
    small = receptive_field_table(vgg16, 100)  # features give 3x3; pooling to 7x7 is uneven
    big = receptive_field_table(vgg16, 224)  # 7x7 -> 7x7: a 1x1 window
    features = small["layer"].str.startswith("features")
    cols = ["layer", "jump", "r_min", "r_max", "effective_padding"]
    pd.testing.assert_frame_equal(small.loc[features, cols], big.loc[features, cols],
                                  check_dtype=False)  # jump: float where one is fractional
    # 3 -> 7: output t reads positions floor(3t / 7) .. ceil(3(t + 1) / 7) - 1, one or two
    # of them (32 px apart): r 212 or 244, 7 positions per 3 of the features (jump 96 / 7)
    pool = small.set_index("layer").loc["avgpool"]
    assert pool["kind"] == "adaptive_avg_pool" and not pool["is_global"]
    assert (pool["r_min"], pool["r_max"], pool["jump"]) == (212, 244, 96 / 7)
    assert pd.isna(pool["kernel"]) and pool["out_size"] == 7
    assert small.loc[small["kind"] == "linear", "is_global"].all()
    # the terminal view: whole jumps without decimals although the column is float
    from landscape.receptive_field.text import format_layer_table
    lines = {line.split()[0]: line.split() for line in format_layer_table(small).splitlines()}
    assert lines["avgpool"][4:7] == ["13.7143", "212", "244"]
    assert lines["features.30"][4] == "32" and lines["features.0"][4] == "1"
    assert big.set_index("layer").loc["avgpool", "r_max"] == 212 and not big.loc[
        big["layer"] == "avgpool", "is_global"].any()
    # pooling one axis whole is a per-axis global field: reported as global
    row = receptive_field_table(nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d((1, 4))),
                                32).iloc[-1]
    assert row["is_global"] and pd.isna(row["r_max"])
    # without an input size the window is unknown: the error names the module and says what to do
    with pytest.raises(UnsupportedModelError,
                       match=r"module 'avgpool' \(AdaptiveAvgPool2d\).*pass input_size"):
        min_feasible_input(vgg16)


# ---------------------------------------------------------------------- the paper's models

def test_paper_vgg19_rf_values():
    got = [max_receptive_field(create_model("vgg19", num_classes=10, pool_level=level, width=TINY))
           for level in range(5)]
    assert got == [180, 181, 359, 537, 715]


def test_resnet50_level1_analytic():
    model = create_model("resnet50", num_classes=10, pool_level=1, width=TINY)
    assert max_receptive_field(model) == 108  # the paper printed 110


@pytest.mark.parametrize("arch", ["vgg19", "resnet18", "small_cnn"])
def test_rf_does_not_depend_on_width_or_classes(arch):
    cols = ["layer", "kind", "jump", "r_min", "r_max", "effective_padding", "out_size"]
    a = receptive_field_table(create_model(arch, num_classes=10, pool_level=3, width=TINY), 48)
    b = receptive_field_table(create_model(arch, num_classes=7, pool_level=3, width=0.25), 48)
    pd.testing.assert_frame_equal(a[cols], b[cols])


@pytest.mark.parametrize("arch,level", [("vgg19", 2), ("resnet18", 1), ("small_cnn", 3)])
def test_rows_follow_forward_order_and_sizes_match_real_shapes(arch, level):
    # input_size: the build-time size check runs here, so its dry run does not fire the hooks
    model = create_model(arch, num_classes=10, pool_level=level, width=TINY, input_size=40)
    seen: list[tuple[str, int | None]] = []
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear)
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.append(
        (n, o.shape[-1] if o.dim() == 4 and not isinstance(m, nn.AdaptiveAvgPool2d) else None)))
        for n, m in model.named_modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 40, 40))
    for h in hooks:
        h.remove()
    table = receptive_field_table(model, 40)
    assert list(table["layer"]) == [n for n, _ in seen]
    sizes = [None if pd.isna(v) else int(v) for v in table["out_size"]]
    assert sizes == [s for _, s in seen]


@pytest.mark.parametrize("arch,level", [("vgg19", 1), ("resnet18", 2)])
def test_paper_models_measured_equal_analytic(arch, level):
    model = create_model(arch, num_classes=10, pool_level=level, width=TINY)
    r_max = max_receptive_field(model)
    lin = measure_receptive_field(model, mode="linearised")
    assert (lin.mode, lin.clipped, lin.height, lin.width) == ("linearised", False, r_max, r_max)
    assert (lin.top, lin.left) == (lin.analytic_first, lin.analytic_first)
    plain = measure_receptive_field(model, mode="plain", input_size=lin.input_size, seed=3)
    assert plain.mode == "plain" and 0 < plain.height <= r_max and 0 < plain.width <= r_max
    assert lin.analytic_first <= plain.top and plain.top + plain.height - 1 <= lin.analytic_last


def test_intermediate_layer_and_clipping_flag():
    model = create_model("resnet18", num_classes=10, pool_level=1, width=TINY)
    table = receptive_field_table(model, 64).set_index("layer")
    m = measure_receptive_field(model, layer="layer2.0.conv1")
    assert m.height == table.loc["layer2.0.conv1", "r_max"] == 14
    small = measure_receptive_field(model, input_size=32)  # r_max 110 cannot fit in 32
    assert small.clipped and small.height <= 32


def test_measurement_leaves_the_model_untouched():
    model = create_model("small_cnn", num_classes=10, pool_level=2, width=TINY).train()
    model.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    n_hooks = len(model._forward_pre_hooks)
    for mode in MODES:
        measure_receptive_field(model, mode=mode)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(model._forward_pre_hooks) == n_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.features[3], nn.ReLU) and isinstance(model.features[7], nn.MaxPool2d)


# ------------------------------------------------------------------------------- sweep table

def test_sweep_table_levels_params_and_sizes():
    df = rf_sweep_table("vgg19", input_size=32, width=TINY)
    assert list(df["level"]) == [0, 1, 2, 3, 4]
    assert list(df["r_max"]) == [180, 181, 359, 537, 715]
    assert list(zip(df["kernel"], df["stride"], df["padding"])) == [
        (0, 1, 0), (2, 1, 0), (3, 2, 1), (4, 3, 1), (5, 4, 1)]
    assert df["params"].nunique() == 1  # a max-pool has no parameters
    assert list(df["feature_size"]) == [4, 3, 2, 1, 1] and df["fits"].all()
    # first layer whose input r_min >= 32: conv3_3 without pool, earlier as the pool grows
    assert list(df["border_layer"]) == [
        "features.21", "features.21", "features.18", "features.14", "features.11"]
    assert (df["r_min"] == df["r_max"]).all()


def test_sweep_keeps_each_levels_model_and_table_traced_once_with_its_settings():
    from landscape.receptive_field.sweep import rf_sweep, sweep_frame

    analyses = rf_sweep("small_cnn", input_size=16, levels=(1, 3), width=TINY,
                        convention="paper")
    assert [a.level for a in analyses] == [1, 3]
    for a in analyses:  # the table the CLI shows is the one the sweep row came from
        pd.testing.assert_frame_equal(a.table, receptive_field_table(a.model, 16,
                                                                     convention="paper"))
        assert a.model.pool_spec.level == a.level
    pd.testing.assert_frame_equal(sweep_frame(analyses), rf_sweep_table(
        "small_cnn", input_size=16, levels=(1, 3), width=TINY))


def test_sweep_levels_named_twice_are_one_row_in_their_order():
    table = rf_sweep_table("small_cnn", input_size=16, levels=(2, 1, 2, 1), width=TINY)
    assert table["level"].tolist() == [2, 1]


def test_sweep_marks_a_vanishing_feature_map():
    df = rf_sweep_table("small_cnn", input_size=6, levels=(0, 4), width=TINY)
    assert list(df["fits"]) == [True, False]
    assert df.loc[0, "feature_size"] == 3 and pd.isna(df.loc[1, "feature_size"])  # 6 -> 6 -> 3
    text = format_sweep_table(df)
    assert "vanishes" in text and "border_layer" in text.splitlines()[0]


# ------------------------------------------------------------------------------------ errors

class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate = nn.Conv2d(1, 1, 3), DataDependent()

    def forward(self, x):
        return self.gate(self.conv(x))


class WithUpsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.conv2(self.up(self.conv1(x)))


def test_untraceable_model_names_the_module():
    with pytest.raises(UnsupportedModelError, match=r"module 'gate' \(DataDependent\)"):
        max_receptive_field(Untraceable())


def test_unsupported_op_names_the_module():
    with pytest.raises(UnsupportedModelError, match=r"module 'up' \(Upsample\)"):
        receptive_field_table(WithUpsample(), 16)
    with pytest.raises(UnsupportedModelError, match=r"module 'up' \(Upsample\)"):
        max_receptive_field(WithUpsample())
    linear_on_map = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Linear(6, 6))
    with pytest.raises(UnsupportedModelError, match=r"module '1' \(Linear\).*spatial"):
        receptive_field_table(linear_on_map, 8)


def test_bad_arguments():
    model = create_model("small_cnn", num_classes=10, width=TINY)
    with pytest.raises(ValueError, match="mode must be one of linearised, plain"):
        measure_receptive_field(model, mode="exact")
    with pytest.raises(ValueError, match="unknown layer 'nope'; valid layers: features.0"):
        measure_receptive_field(model, layer="nope")
    with pytest.raises(ValueError, match="input_size must be a positive integer"):
        receptive_field_table(model, 0)
    with pytest.raises(ValueError, match="too small"):
        measure_receptive_field(model, input_size=1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        max_receptive_field(lambda x: x)
    with pytest.raises(ValueError, match="no Conv2d"):
        max_receptive_field(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="levels must be a non-empty sequence"):
        rf_sweep_table("vgg19", input_size=32, levels=())
    assert math.isnan(receptive_field_table(model, 8)["center"].iloc[-1])


def test_the_analysis_version_covers_the_packages_that_define_the_models(monkeypatch):
    """An upgrade of torch, torchvision or timm (which may change a model's padding or the
    tracing) gives another digest, so the cheap units derived from the analysis recompute."""
    from importlib import metadata

    from landscape.receptive_field import version

    installed = version.package_versions()
    assert installed.startswith("torch=") and ";torchvision=" in installed and ";timm=" in installed
    version.analysis_version.cache_clear()
    before = version.analysis_version()
    real = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: "99.0" if name == "timm" else real(name))
    version.analysis_version.cache_clear()
    try:
        assert "timm=99.0" in version.package_versions()
        assert version.analysis_version() != before
    finally:
        monkeypatch.undo()
        version.analysis_version.cache_clear()
    assert version.analysis_version() == before
