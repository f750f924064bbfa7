"""The effective receptive field as a study (Luo et al. 2016): moments and Gaussian fit of a
map, RepLKNet's high-contribution ratio, the per-layer ERF table, the conv stacks and the
``landscape-erf`` command, checked against closed forms."""

import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from scipy import stats
from torch import nn

from analysis.erf import depth_slopes
from landscape.cli.erf import erf_main
from landscape.importance import (
    erf_fit, high_contribution_ratio, layer_erf_maps, layer_erf_table, projected_gradient,
)
from landscape.receptive_field import UnsupportedModelError
from landscape.importance.luo import StackSpec, check_input_size, erf_depth_sweep, stack_erf_map


def box_variance(n: int, k: int) -> float:
    """Per-axis variance of the n-fold convolution of a k-pixel box."""
    return n * (k * k - 1) / 12


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("n, k", [(1, 3), (2, 3), (5, 3), (3, 5), (2, 7)])
def test_uniform_linear_stack_has_the_box_filter_variance(n, k):
    spec = StackSpec(depth=n, kernel=k, width=2, init="uniform", nonlinearity="none")
    rf = n * (k - 1) + 1
    assert check_input_size(spec, rf) == rf  # the input just holds the RF
    fit = erf_fit(stack_erf_map(spec, rf, n_inputs=1))
    assert fit.sigma_y ** 2 == pytest.approx(box_variance(n, k), rel=1e-12)
    assert fit.sigma_x ** 2 == pytest.approx(box_variance(n, k), rel=1e-12)
    assert fit.centre == pytest.approx(((rf - 1) / 2, (rf - 1) / 2), abs=1e-12)


def test_a_separable_gaussian_map_gives_r2_one_and_its_sigmas_back():
    y, x = np.mgrid[:81, :91]
    m = 2.5 * np.exp(-(y - 40.0) ** 2 / (2 * 3.0 ** 2) - (x - 44.5) ** 2 / (2 * 5.0 ** 2))
    fit = erf_fit(m)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert (fit.fit_sigma_y, fit.fit_sigma_x) == pytest.approx((3.0, 5.0), rel=1e-8)
    assert fit.fit_centre == pytest.approx((40.0, 44.5), abs=1e-8)
    assert fit.amplitude == pytest.approx(2.5, rel=1e-8)
    # +-8 sigma inside the map: the moments are the Gaussian's too
    assert (fit.sigma_y, fit.sigma_x) == pytest.approx((3.0, 5.0), rel=1e-9)
    assert fit.sigma == pytest.approx(4.0, rel=1e-9)
    noisy = m + np.random.default_rng(0).uniform(0, 0.5, m.shape)
    assert 0 < erf_fit(noisy).r2 < 0.99


def test_uniform_linear_sigma_grows_as_the_square_root_of_depth():
    spec = StackSpec(depth=1, width=1, init="uniform", nonlinearity="none")
    rows, maps = erf_depth_sweep({"linear_uniform": spec}, [1, 2, 4, 8, 16], 33, n_inputs=1,
                                 progress=False)
    assert rows["sigma"].to_numpy() ** 2 == pytest.approx(
        [box_variance(n, 3) for n in (1, 2, 4, 8, 16)], rel=1e-12)
    assert list(rows["theoretical_rf"]) == [3, 5, 9, 17, 33]
    assert sorted(maps) == [("linear_uniform", d) for d in (1, 2, 4, 8, 16)]
    [fit] = depth_slopes(rows).itertuples()
    assert (fit.slope, fit.ci_low, fit.ci_high, fit.r2) == pytest.approx((0.5, 0.5, 0.5, 1.0),
                                                                         abs=1e-9)


def test_depth_slope_ci_is_the_student_t_interval():
    d = np.array([1, 2, 4, 8, 16, 32])
    sigma = d ** 0.7 * np.exp(np.random.default_rng(1).normal(0, 0.1, d.size))
    [fit] = depth_slopes(pd.DataFrame({"setting": "s", "depth": d, "sigma": sigma})).itertuples()
    x, y = np.log(d), np.log(sigma)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    se = np.sqrt((resid ** 2).sum() / (d.size - 2) / ((x - x.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, d.size - 2) * se
    assert (fit.slope, fit.ci_low, fit.ci_high) == pytest.approx(
        (slope, slope - half, slope + half), rel=1e-9)


def test_high_contribution_ratio_of_a_known_map():
    m = np.zeros((11, 11))
    m[5, 5] = 4.0
    m[4:7, 4:7] += 0.5 * (np.ones((3, 3)) - np.eye(3)[1][:, None] * np.eye(3)[1])  # ring: 4
    m[2, 5] = m[8, 5] = 1.0  # at distance 3: 2 -> total 10
    assert m.sum() == 10
    ratios = high_contribution_ratio(m)
    assert ratios == pytest.approx({0.2: 1 / 121, 0.3: 1 / 121, 0.5: 9 / 121, 0.99: 49 / 121})
    corner = np.zeros((5, 5))
    corner[0, 0] = corner[2, 2] = 1.0  # the square around (2, 2) is clipped to the map
    assert high_contribution_ratio(corner, thresholds=(0.5, 1.0)) == {0.5: 1 / 25, 1.0: 1.0}


# --------------------------------------------------------------------------- per-layer ERF
def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(4, 3, 3, padding=2, dilation=2)).double()


def test_the_first_conv_erf_is_its_kernel_footprint():
    net = small_net()
    maps = layer_erf_maps(net, 15, n=8)
    assert list(maps) == ["0", "2", "4"]
    footprint = np.zeros((15, 15), dtype=bool)
    footprint[5:10, 5:10] = True
    assert ((maps["0"] > 0) == footprint).all()
    linear = layer_erf_maps(net, 15, layers=["2", "4"], mode="linearised")
    assert (linear["2"] > 0).sum() == 7 * 7 and (linear["4"] > 0).sum() == 11 * 11
    table = layer_erf_table(net, 15, n=8)
    assert list(table["layer"]) == ["0", "2", "4"]
    assert list(table["r_max"]) == [5, 7, 11] and list(table["r_min"]) == [5, 7, 11]
    assert table.at[0, "erf_size"] <= 5
    assert (table["erf_size_over_r_max"] == table["erf_size"] / table["r_max"]).all()
    assert (table["erf_sigma"] == (table["sigma_y"] + table["sigma_x"]) / 2).all()
    assert ((table["erf_r2"] > 0.5) & (table["erf_r2"] <= 1)).all()


class _ShortcutFirst(nn.Module):
    """A residual block whose 1x1 shortcut is registered before its convs, as in timm's
    Xception and BoTNet; it runs after them."""

    def __init__(self) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(2, 3, 1)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x)


class _SharedConv(nn.Module):
    """One conv applied twice (CoaT's positional conv, shared by the blocks of a stage)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.shared = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.shared(self.shared(self.conv(x)))


def test_a_conv_called_twice_has_an_erf_per_call():
    torch.manual_seed(0)
    net = _SharedConv().double()
    table = layer_erf_table(net, 15, n=2).set_index("layer")
    assert list(table.index) == ["conv", "shared@0", "shared@1"]
    assert list(table["erf_size"]) == [3, 5, 7]  # each call adds its 3x3 window
    # each call its own analytic RF (the RF table has a row per call, in forward order)
    assert list(table["r_max"]) == [3, 5, 7] and list(table["r_min"]) == [3, 5, 7]
    assert list(table["erf_size_over_r_max"]) == [1.0, 1.0, 1.0]
    # the importance stage's default layer: the last call of the last conv to run
    from landscape.importance.maps import last_conv

    x = torch.randn(2, 2, 15, 15, dtype=torch.float64)
    assert last_conv(net, x) == "shared@1"
    assert projected_gradient(net, x).shape == (2, 15, 15)


def test_call_sites_take_their_own_row_of_the_rf_table_or_none():
    from landscape.importance.layer_erf import site_rf

    table = pd.DataFrame({"layer": ["a", "b", "b", "c", "c"], "r_max": [3, 5, 7, 9, pd.NA],
                          "r_min": [3, 5, 6, 9, 9]})
    assert site_rf(table, ["a", "b@0", "b@1", "d"]) == {
        "a": (3, 3), "b@0": (5, 5), "b@1": (7, 6), "d": (pd.NA, pd.NA)}
    # a call the sites leave out (a conv on windows folded into the batch): which row is
    # which is not known, so none is taken
    assert site_rf(table, ["b@1"]) == {"b@1": (pd.NA, pd.NA)}
    assert site_rf(table, ["c@0", "c@1"]) == {"c@0": (9, 9), "c@1": (pd.NA, 9)}


def test_layer_erfs_come_in_forward_order():
    torch.manual_seed(0)
    net = _ShortcutFirst().double()
    assert list(layer_erf_maps(net, 9, n=2)) == ["conv1", "conv2", "shortcut"]
    table = layer_erf_table(net, 9, n=2)
    assert list(table["layer"]) == ["conv1", "conv2", "shortcut"]
    assert list(table["r_max"]) == [3, 5, 1]


def test_a_conv_behind_global_pooling_has_an_erf_but_no_analytic_rf():
    """FasterNet's head conv runs on the globally pooled features: its ERF is measured, its
    analytic RF is NA (it crashed the table before)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                        nn.Conv2d(3, 3, 1)).double()
    table = layer_erf_table(net, 9, n=2)
    assert list(table["layer"]) == ["0", "2"] and table.at[1, "erf_size"] > 3
    assert table.at[0, "r_max"] == 3 and pd.isna(table.at[1, "r_max"])
    assert pd.isna(table.at[1, "r_min"]) and np.isnan(table.at[1, "erf_size_over_r_max"])


class _PositionConv(nn.Module):
    """Adds a conv of a fixed grid (EdgeNeXt's Fourier positional encoding): its output does
    not depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pos = nn.Conv2d(2, 3, 1)
        self.head = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        grid = torch.ones(len(x), 2, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
        return self.head(self.conv(x) + self.pos(grid))


def test_a_conv_the_image_does_not_reach_has_no_erf():
    torch.manual_seed(0)
    net = _PositionConv().double()
    maps = layer_erf_maps(net, 9, n=2)
    assert list(maps) == ["conv", "pos", "head"] and maps["pos"] is None
    table = layer_erf_table(net, 9, n=2).set_index("layer")
    assert table.loc[["conv", "head"], "erf_size"].notna().all()
    assert table.loc["pos", ["erf_size", "erf_sigma", "erf_r2"]].isna().all()
    assert list(table["r_max"].loc[["conv", "head"]]) == [3, 5]
    with pytest.raises(ValueError, match="layer 'pos': its output does not depend on the input"):
        projected_gradient(net, torch.randn(2, 2, 9, 9, dtype=torch.float64), layer="pos")


class _Unanalysable(nn.Module):
    """Upsamples a single position with ``align_corners=True`` (as MobileViT-v2 at 32 px),
    which the RF analysis refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 3, 9, stride=9)  # 9 px -> a single position
        self.head = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.down(self.conv(x))
        return self.head(F.interpolate(y, size=(2, 2), mode="bilinear", align_corners=True))


def test_the_erfs_of_a_model_the_rf_analysis_refuses(caplog):
    torch.manual_seed(0)
    net = _Unanalysable().double()
    with pytest.raises(UnsupportedModelError, match="no corners to align"):
        layer_erf_table(net, 9, n=2)
    table = layer_erf_table(net, 9, n=2, analytic=False)
    assert list(table["layer"]) == ["conv", "down", "head"] and table.at[0, "erf_size"] <= 3
    assert table[["r_max", "r_min"]].isna().all().all()
    assert table["erf_size_over_r_max"].isna().all()
    # the importance stage's analytic-RF unit: no rows, a warning naming the op
    from types import SimpleNamespace

    from landscape.stages.importance import ImportanceConfig, _rf_rows

    ctx = SimpleNamespace(build_model=_Unanalysable,
                          identity=SimpleNamespace(run_id="cell/seed=0", in_channels=2))
    with caplog.at_level("WARNING", logger="landscape"):
        assert _rf_rows(ctx, ImportanceConfig(per_layer=True, input_size=9)) == []
    assert "cell/seed=0: no analytic RF beside the per-layer ERFs" in caplog.text
    assert "no corners to align" in caplog.text


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, match", [
    (np.zeros((5, 5)), "all zero"),
    (np.full((5, 5), np.nan), "25 non-finite"),
    (np.ones((2, 5, 5)), r"2-D \(H, W\) array, got shape \(2, 5, 5\)"),
    (-np.ones((5, 5)), "non-negative"),
])
def test_bad_maps_are_refused_with_the_reason(bad, match):
    for fn in (erf_fit, high_contribution_ratio):
        with pytest.raises(ValueError, match=match):
            fn(bad)


def test_bad_layers_and_settings_are_named():
    net = small_net()
    with pytest.raises(ValueError, match=r"layers \['conv9'\] match no Conv2d .*valid: 0, 2, 4"):
        layer_erf_table(net, 15, layers=["conv9"])
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()
    with pytest.raises(ValueError, match="layer '0': the ERF map is all zero"):
        layer_erf_table(net, 15, layers=["0"])
    lenient = layer_erf_table(net, 15, strict=False)  # what the importance stage asks for
    assert lenient["erf_size"].isna().tolist() == [True, True, True]  # nothing reaches
    assert list(lenient["r_max"]) == [5, 7, 11]
    dropped = StackSpec(depth=1, width=1, dropout=0.999)
    with pytest.raises(ValueError, match=r"settings.drop, depth 1: the ERF map is all zero: no "
                                         r"gradient reached the input \(.*n_inputs, n_nets\)"):
        erf_depth_sweep({"drop": dropped}, [1], 3, n_inputs=1, progress=False)
    a, b = (stack_erf_map(replace(dropped, dropout=0.5, width=4), 3, seed=1) for _ in "ab")
    assert (a == b).all() and (a > 0).any()  # dropout masks are seeded too
    with pytest.raises(ValueError, match="nonlinearity must be one of none, relu, tanh; got 'elu'"):
        StackSpec(depth=2, nonlinearity="elu")
    with pytest.raises(ValueError, match="input_size=8 is too small for depth 4: .*9 pixels"
                                         r".*input_size=9 is the smallest"):
        check_input_size(StackSpec(depth=4), 8)


# --------------------------------------------------------------------------- the command
@pytest.fixture
def run_erf(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", ["landscape-erf", *args])
        try:
            erf_main()
        finally:
            GlobalHydra.instance().clear()
    return run


def test_the_command_writes_rows_slopes_and_figures(run_erf, tmp_path, capsys):
    run_erf("depths=[1,2,3]", "width=2", "n_inputs=3", "n_nets=1", "input_size=13", "out=res",
            "num_threads=1")  # as landscape-run takes it
    out = tmp_path / "res"
    rows = pd.read_csv(out / "erf_rows.csv")
    settings = ["linear_uniform", "linear_random", "relu", "tanh", "relu_dropout",
                "relu_subsample", "relu_dilated", "relu_skip"]
    assert list(rows["setting"].unique()) == settings and len(rows) == 8 * 3
    uniform = rows[rows.setting == "linear_uniform"]
    assert uniform["sigma"].to_numpy() ** 2 == pytest.approx(
        [box_variance(n, 3) for n in (1, 2, 3)], rel=1e-12)
    assert list(rows[rows.setting == "relu_dilated"]["theoretical_rf"]) == [5, 9, 13]
    assert list(rows[rows.setting == "relu_subsample"]["theoretical_rf"]) == [3, 5, 9]
    slopes = pd.read_csv(out / "erf_slopes.csv")
    assert set(slopes["measure"]) == {"sigma", "erf_rf_ratio"} and len(slopes) == 16
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"erf_images_{s}.png" for s in settings} | {
        "erf_size_vs_depth.png", "erf_ratio_vs_depth.png"}
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert not list(out.glob(".*.tmp"))
    printed = capsys.readouterr().out
    assert "ERF sigma (px) per depth and setting:" in printed and "wrote" in printed


@pytest.mark.parametrize("args, line", [
    (["depths=[]"], "depths must hold at least one depth, got []"),
    (["depths=[4,0]"], "depths must be integers >= 1, got [4, 0]"),
    (["kernel=1"], "kernel must be an odd integer >= 3: a 1x1 stack's ERF is one pixel"),
    (["settings.relu.dilation=x"], "settings.relu.dilation must be an integer, got 'x'"),
    (["settings.mine.skp=true"], "unknown config key 'settings.mine.skp'; did you mean "
                                 "'settings.mine.skip'?"),
    (["depths=[2,16]", "input_size=40"],  # the deepest, widest stack that does not fit
     "settings.relu_dilated: input_size=40 is too small for depth 16: its centre unit's "
     "theoretical RF (65 pixels) covers rows -12..52 of 0..39; input_size=65 is the smallest "
     "that holds it"),
    (["num_threads=0"], "num_threads must be >= 1 or null, got 0"),
    (["settings.relu.nonlinearity=elu"],
     "settings.relu: nonlinearity must be one of none, relu, tanh; got 'elu'"),
])
def test_the_command_refuses_bad_settings_in_one_line(run_erf, tmp_path, capsys, args, line):
    with pytest.raises(SystemExit) as e:
        run_erf(*args, "out=res")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"landscape-erf: error: {line}"), err
    assert not (tmp_path / "res").exists()
