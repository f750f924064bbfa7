"""Issue 24, items 3-5: any model by name (torchvision / timm / module:function), parameters and
FLOPs, refinement proposals with hand-counted r̃, the drawing, and ``landscape-rf`` on them."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn

from landscape.receptive_field import min_feasible_input, receptive_field_table
from landscape.receptive_field.cost import model_cost
from landscape.receptive_field.drawing import draw_receptive_field, save_drawing
from landscape.receptive_field.refine import proposals_table, refinement_proposals
from landscape.models.sources import external_model


def chain(width: float = 1.0) -> nn.Sequential:
    """3x3 convs (padding 1) with strides 1, 2, 1, 2, 1: RF 3, 5 (jump 2), 9, 13 (jump 4), 21."""
    c = max(1, round(256 * width))  # fine enough for shorter_wider's 1% (params ~ c^2)
    return nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.Conv2d(c, c, 3, 2, 1),
                         nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 2, 1),
                         nn.Conv2d(c, c, 3, 1, 1))


# ----------------------------------------------------------------------- models by name


def test_torchvision_and_timm_models_by_name_with_the_data_head_and_channels():
    m = external_model("torchvision:resnet18", num_classes=10, in_channels=1)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10 and m.conv1.weight.is_meta
    assert sum(p.numel() for p in external_model("torchvision:resnet18").parameters()) \
        == 11_689_512  # torchvision's documented count (ImageNet head)
    pytest.importorskip("timm")
    t = external_model("timm:resnet18", num_classes=10, in_channels=1)
    assert t.conv1.in_channels == 1 and t.fc.out_features == 10
    assert min_feasible_input(t, 224).size == 139  # as torchvision's ResNet18 (test_rf_any)


@pytest.mark.parametrize("name, message", [
    ("torchvision:resnet19", "unknown torchvision classification model 'resnet19'; did you "
                             "mean resnet18"),
    ("timm:convnext_tiniy", "unknown timm model 'convnext_tiniy'; did you mean convnext_tiny"),
    ("torchvison:resnet18", "cannot import module 'torchvison' (listed in model.name)"),
    ("tests.test_rf_refine:nothing", "model.name='tests.test_rf_refine:nothing': module "
                                     "'tests.test_rf_refine' has no function 'nothing'"),
    ("tests.test_rf_refine:pytest", "model.name='tests.test_rf_refine:pytest': module"),
    ("torchvision:", "model.name='torchvision:': expected torchvision:<name>"),
])
def test_a_bad_model_name_says_what_would_work(name, message):
    if name.startswith("timm"):
        pytest.importorskip("timm")
    with pytest.raises(ValueError) as e:
        external_model(name)
    assert str(e.value).startswith(message), e.value


def test_a_user_function_builds_the_model():
    m = external_model("tests.test_rf_refine:chain")
    assert isinstance(m, nn.Sequential) and not m.training
    assert min_feasible_input(m).size == 21


# ------------------------------------------------------------------------ cost


def test_parameters_and_flops_are_hand_counts():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2),
                        nn.Flatten(), nn.Linear(6 * 3 * 3, 5))
    cost = model_cost(net, 8)
    assert cost.params == (3 * 9 * 4 + 4) + (4 * 9 * 6 + 6) + (54 * 5 + 5)
    macs = 8 * 8 * 4 * 27 + 3 * 3 * 6 * 36 + 54 * 5  # output positions x channels x fan-in
    assert cost.macs == macs and cost.flops == 2 * macs
    assert not next(net.parameters()).is_meta  # the model itself is left as it was
    assert model_cost(net, (8, 8), in_channels=3) == cost


# ----------------------------------------------------------------------- refinement


def test_less_downsampling_and_shorter_give_hand_counted_r_tilde():
    props = refinement_proposals(chain(), 16, rebuild=chain, width=1.0)
    df = proposals_table(props).set_index("change")
    original = df.loc["-"]
    assert original["r_tilde"] == 21 and not original["fully_utilised"]
    assert original["n_underutilised"] == 1  # the last conv: 21 > 16
    # stride 1 at the 2nd conv: RF 3, 5, 7, 9 (jump 2), 13; at the 4th: 3, 5, 9, 13, 17
    first = df.loc["stride 1 at 1 (input jump 1)"]
    second = df.loc["stride 1 at 3 (input jump 2)"]
    assert (first["r_tilde"], second["r_tilde"]) == (13, 17)
    assert first["params"] == second["params"] == original["params"]
    assert first["flops"] > second["flops"] > original["flops"]
    assert bool(first["fully_utilised"]) and not bool(second["fully_utilised"])  # 17 > 16
    # shorter: the trailing shape-preserving conv (the underutilised one) goes: r̃ 13
    short = df[df.strategy == "shorter"].iloc[0]
    assert short.name == "drop 4" and short["r_tilde"] == 13
    wide = df[df.strategy == "shorter_wider"].iloc[0]
    assert abs(wide["params_change"]) <= 0.01 and wide["width"] > 1 and wide["r_tilde"] == 13
    assert short["params"] < original["params"]


def test_a_proposal_is_a_model_that_runs_and_a_fully_utilised_one_needs_none():
    props = refinement_proposals(chain(), 16)
    model = props[1].model
    assert model is not None and model[1].stride == (1, 1)
    assert chain()[1].stride == (2, 2)  # the original is not changed
    with torch.device("meta"):
        assert model(torch.empty(1, 3, 16, 16)).shape == (1, 256, 8, 8)
    assert [p.row["strategy"] for p in refinement_proposals(chain(), 21)] == ["original"]


def test_proposals_use_the_se_gates_they_are_given():
    from torchvision.ops import SqueezeExcitation

    from landscape.receptive_field.analytic import feasible_input_of

    def se_chain() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), SqueezeExcitation(8, 2),
                             nn.Conv2d(8, 8, 3, stride=2), nn.Conv2d(8, 8, 3))

    seen = {}
    for gates in ("scale", "global"):
        (original,) = refinement_proposals(se_chain(), 16, se_gates=gates)
        table = receptive_field_table(se_chain(), 16, se_gates=gates)
        assert original.row["r_tilde"] == feasible_input_of(table).size == \
            min_feasible_input(se_chain(), 16, se_gates=gates).size == 15  # r_min: no change
        seen[gates] = original.table.set_index("layer")["r_max"]
    # the gates change r_max: a global gate makes every layer after it see the whole input
    assert seen["scale"]["3"] == 15 and pd.isna(seen["global"]["3"])


def test_resnet18_stages_are_one_downsampling_point_each():
    props = proposals_table(refinement_proposals(external_model("torchvision:resnet18"), 96))
    changes = list(props["change"][props.strategy == "less_downsampling"])
    assert changes[2] == "stride 1 at layer2.0.conv1, layer2.0.downsample.0 (input jump 4)"
    assert len(changes) == 5 and props["error"].isna().all()
    assert list(props["change"][props.strategy == "shorter"]) == ["drop layer4.1"]


# ----------------------------------------------------------------------- drawing


def test_the_drawing_colours_every_layer_by_its_state(tmp_path):
    table = receptive_field_table(chain(), 16)
    fig = draw_receptive_field(table, 16, r_tilde=21)
    bars = fig.axes[0].patches
    assert len(bars) == len(table)
    colours = [tuple(round(c, 3) for c in b.get_facecolor()[:3]) for b in bars]
    assert len(set(colours[:4])) == 1 and colours[4] != colours[0]  # the last: underutilised
    assert save_drawing(fig, tmp_path / "chain.svg").read_text().startswith("<?xml")
    with pytest.raises(ValueError, match="must end in one of .png, .svg, .pdf"):
        save_drawing(fig, tmp_path / "chain.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.svg"]


def test_the_drawing_puts_the_border_line_through_the_border_layers_bar():
    table = receptive_field_table(chain(), 8)  # layer 3 is the first unproductive one
    ax = draw_receptive_field(table, 8).axes[0]
    (bar,) = [b for b in ax.patches if b.get_edgecolor()[3] > 0]  # outlined: the border
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("border:")]
    assert line.get_label() == "border: 3"
    assert line.get_xdata()[0] == bar.get_x() + bar.get_width() / 2 == 3  # was its left edge


# ----------------------------------------------------------------------- landscape-rf


@pytest.fixture
def rf(console):
    return lambda *args: console("rf_main", *args)


def test_landscape_rf_any_model_prints_params_flops_r_tilde_and_writes_files(rf, tmp_path):
    code, out, err = rf("model.name=torchvision:resnet18", "input_size=96", "num_classes=1000",
                        "refine=true", f"out={tmp_path}", "draw=png")
    assert code == 0, err
    assert "torchvision:resnet18: 11,689,512 parameters, 0.667 GFLOPs per 3x96x96 image" in out
    assert "minimal feasible input r\u0303 = 139 px (reached at layer4.1.conv2)" in out
    assert "NOT fully utilised: 2 underutilised layer(s) (r_min > 96)" in out
    assert "drop layer4.1" in out
    layers = pd.read_csv(tmp_path / "rf_layers.csv")
    assert len(layers) == 23 and set(layers["model"]) == {"torchvision:resnet18"}
    assert len(pd.read_csv(tmp_path / "rf_refine.csv")) == 7
    assert (tmp_path / "rf_torchvision_resnet18.png").stat().st_size > 10_000


def test_landscape_rf_own_model_layers_and_sweep_csv(rf, tmp_path):
    code, out, err = rf("model=vgg19", "model.width=0.125", "levels=[1,2]", "layers=true",
                        f"out={tmp_path}")
    assert code == 0, err
    sweep = pd.read_csv(tmp_path / "rf_sweep.csv")
    assert list(sweep["r_max"]) == [181, 359] and list(sweep["r_tilde"]) == [181, 359]
    layers = pd.read_csv(tmp_path / "rf_layers.csv")
    assert sorted(set(layers["level"])) == [1, 2] and "vgg19 pool level 2:" in out


@pytest.mark.parametrize("args, message", [
    (["draw=png"], "draw needs a folder to write to: add out=<folder>"),
    (["draw=jpg", "out=."], "draw must be one of png, svg, pdf, got 'jpg'"),
    (["out=/nonexistent/x"], "out='/nonexistent/x' is not an existing folder"),
    (["convention=strict"], "convention must be one of rfa, paper, got 'strict'"),
    (["model.name=torchvision:resnet18", "levels=[1]"], "levels=[1]: RF-pool levels apply to"),
    (["input_size=0"], "input_size must be a positive integer, got 0"),
])
def test_landscape_rf_bad_settings_are_one_line(rf, tmp_path, args, message):
    code, out, err = rf(*args)
    assert code == 2 and err.startswith(f"landscape-rf: error: {message}"), err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_a_proposal_applies_to_a_real_instance_that_trains():
    props = refinement_proposals(chain(), 16, rebuild=chain)
    stride, shorter, wider = props[1], props[-2], props[-1]
    real = chain(0.05)  # real weights, 13 channels
    changed = stride.apply(real)
    assert changed[1].stride == (1, 1) and real[1].stride == (2, 2)
    assert torch.equal(changed[0].weight, real[0].weight)  # the weights are kept
    ref = copy.deepcopy(real)  # the same network with the second conv's stride 1, by hand
    ref[1].stride = (1, 1)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(changed(x), ref(x), rtol=0, atol=0)
    assert changed(x).shape[-1] == 2 * real(x).shape[-1]
    # it trains: real, trainable parameters, and an SGD step lowers its loss
    assert all(p.requires_grad and not p.is_meta for p in changed.parameters())
    opt = torch.optim.SGD(changed.parameters(), lr=1e-3)
    before = changed(x).square().mean()
    before.backward()
    opt.step()
    assert changed(x).square().mean() < before
    assert isinstance(shorter.apply(real)[4], nn.Identity)
    assert wider.width is not None and isinstance(wider.apply(chain(wider.width))[4], nn.Identity)


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:inception_v3",
                                  "torchvision:efficientnet_b0"])
def test_r_tilde_from_the_table_equals_the_traced_one(name):
    from landscape.receptive_field.analytic import feasible_input_of

    model = external_model(name)
    assert feasible_input_of(receptive_field_table(model, 299)) == min_feasible_input(model, 299)


def test_landscape_rf_takes_a_variant_as_landscape_run_does(rf, tmp_path):
    """``variant=dilated`` needed ``+variant`` here (Hydra's "no match in the defaults list")."""
    code, out, err = rf("model=resnet18", "variant=dilated", "levels=[0]", f"out={tmp_path}")
    assert code == 0, err
    assert "stage_strides=[1, 2, 2, 1],dilation=[1, 1, 1, 2]" in out
    assert pd.read_csv(tmp_path / "rf_sweep.csv")["r_max"].tolist() == [117]
