"""Weights that only ever multiply padding (landscape.receptive_field.padding) against the
gradient of a convolution of an all-ones input: exactly zero at those taps, nowhere else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.models import create_model
from landscape.receptive_field.padding import padding_only_taps, padding_only_weights


def _zero_gradient_taps(n: int, k: int, s: int, left: int, right: int, d: int) -> list[bool]:
    """Oracle: the taps whose weight gradient of sum(conv(ones)) is exactly 0."""
    x = F.pad(torch.ones(1, 1, n, dtype=torch.float64), (left, right))
    w = torch.ones(1, 1, k, dtype=torch.float64, requires_grad=True)
    F.conv1d(x, w, stride=s, dilation=d).sum().backward()
    return [bool(g == 0) for g in w.grad.flatten()]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 7), s=st.integers(1, 4), left=st.integers(0, 6),
       right=st.integers(0, 6), d=st.integers(1, 3))
def test_padding_only_taps_are_the_taps_without_gradient(n, k, s, left, right, d):
    if n + left + right < d * (k - 1) + 1:
        return  # no output position
    assert padding_only_taps(n, k, s, left, d, right) == _zero_gradient_taps(n, k, s, left,
                                                                             right, d)


def _oracle_dead(model: nn.Module, size: int, in_channels: int) -> dict[str, int]:
    """Per conv, the weights whose gradient of sum(conv(ones of its input's shape)) is 0."""
    shapes, names = {}, {m: n for n, m in model.named_modules()}

    def record(m: nn.Module, args: tuple) -> None:
        shapes.setdefault(names[m], args[0].shape)
    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, size, size))
    for h in hooks:
        h.remove()
    out = {}
    for name, shape in shapes.items():
        conv = model.get_submodule(name)
        w = torch.ones_like(conv.weight, dtype=torch.float64, requires_grad=True)
        F.conv2d(torch.ones(shape, dtype=torch.float64), w, stride=conv.stride,
                 padding=conv.padding, dilation=conv.dilation, groups=conv.groups).sum().backward()
        out[name] = int((w.grad == 0).sum())
    return out


def test_padding_only_weights_of_the_papers_vgg19_and_resnet18():
    for arch, pool, size, expect in (("vgg19", 2, 16, 245760), ("vgg19", 0, 32, 0),
                                     ("resnet18", 4, 16, None)):
        torch.manual_seed(0)
        model = create_model(arch, num_classes=10, width=0.125, pool_level=pool, in_channels=1)
        got = padding_only_weights(model, size)
        assert {r.layer: r.dead for r in got} == _oracle_dead(model, size, 1)
        assert all(r.weights == model.get_submodule(r.layer).weight.numel() for r in got)
        if expect is not None:
            assert sum(r.dead for r in got) == expect
    # a conv called twice counts a tap only if it reads padding in both calls
    assert [(r.layer, r.dead) for r in padding_only_weights(_Twice(), 1)] == [("conv", 0)]
    assert [r.dead for r in padding_only_weights(nn.Conv2d(1, 2, 3, padding=1), 1)] == [16]


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        once = self.conv(x)  # on 1 x 1: 8 of 9 taps read padding
        return self.conv(F.interpolate(once, size=(4, 4)))  # on 4 x 4: every tap reads the map


def test_the_sweep_and_the_receptive_field_stage_report_the_share():
    from landscape.receptive_field import rf_sweep_table

    df = rf_sweep_table("vgg19", input_size=16, levels=[0, 2, 4], width=0.125, in_channels=1)
    assert df["padding_only"].iloc[0] == 0.0
    assert df["padding_only"].iloc[1] == 245760 / 313480  # 78.4 %, as the OBD scores found
    assert df["padding_only"].isna().iloc[2]  # level 4: the map vanishes
    # the receptive_field stage's rows: the share, and a row per conv layer that has some
    from landscape.receptive_field.padding import padding_only_share
    from landscape.stages.receptive_field import ReceptiveFieldStage

    class Ctx:  # what the stage reads of its cell context
        class identity:
            image_size, in_channels = 16, 1
        build_model = staticmethod(lambda: create_model("vgg19", num_classes=10, width=0.125,
                                                        pool_level=2, in_channels=1))
    rows = ReceptiveFieldStage().run(Ctx(), None, None)
    share = [r for r in rows if r["metric"] == "padding_only_share"]
    assert [r["value"] for r in share] == [padding_only_share(Ctx.build_model(), 16, 1)]
    assert "of 313480 conv and linear weights" in share[0]["note"]
    layers = {r["layer"]: r["value"] for r in rows if r["metric"] == "padding_only_weights"}
    assert len(layers) == 8 and sum(layers.values()) == 245760


def test_refinement_proposals_report_the_share_each_change_leaves():
    from landscape.receptive_field import proposals_table, refinement_proposals
    from landscape.receptive_field.padding import padding_only_share

    model = create_model("vgg19", num_classes=10, width=0.125, pool_level=3)
    props = proposals_table(refinement_proposals(model, 32))
    original = props[props["strategy"] == "original"].iloc[0]
    assert original["padding_only"] == padding_only_share(model, 32) > 0.7
    # a stride taken out before the 1 x 1 maps leaves none; one after them changes nothing
    less = props[props["strategy"] == "less_downsampling"].set_index("change")["padding_only"]
    assert less.min() == 0.0 and less.max() == original["padding_only"]


@pytest.mark.parametrize("n, k, s", [(1, 3, 1), (1, 3, 2), (2, 5, 2), (5, 3, 2), (3, 7, 3)])
def test_timm_same_padding_is_read_as_padding(n, k, s):
    from timm.layers import Conv2dSame

    conv = Conv2dSame(1, 1, k, stride=s).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    conv(torch.ones(1, 1, n, n, dtype=torch.float64)).sum().backward()
    (got,) = padding_only_weights(conv, n, in_channels=1)
    assert got.dead == int((conv.weight.grad == 0).sum())
