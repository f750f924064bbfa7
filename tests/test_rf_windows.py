"""Windowed attention and rolls (landscape.receptive_field.mixing): the span of every interior
position, checked against its input gradient; torchvision's and timm's Swin agree."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from landscape.receptive_field import UnsupportedModelError, receptive_field_table
from landscape.receptive_field.analytic import (
    FeasibleInput, feasible_input_of, feature_field, layer_states, min_feasible_input,
    mixes_globally, trace,
)
from landscape.receptive_field.graph import propagate

N = 96  # input side: a 24 x 24 token map at patch 4, six 4-token windows per axis


class Windows(nn.Module):
    """Patch embedding (conv 4/4), then attention blocks on 4x4 windows folded into the batch
    (as timm's Swin writes them), each optionally on windows shifted by 2 (roll, attend, roll
    back) and with a skip; attention by ``mode``: scaled_dot_product_attention ("sdpa"), the
    two matmuls ("matmul") or einsums ("einsum", torchvision's MaxViT)."""

    def __init__(self, shifts: tuple[int, ...], mode: str, skip: bool, w: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 4, 4, stride=4)
        self.qkv = nn.ModuleList(nn.Linear(4, 12) for _ in shifts)
        self.shifts, self.mode, self.skip, self.w = shifts, mode, skip, w
        self.head = nn.Conv2d(4, 1, 1)

    def attend(self, y: torch.Tensor, qkv: nn.Linear, s: int) -> torch.Tensor:
        n, h, w_, c = y.shape
        w = self.w
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        t = y.view(n, h // w, w, w_ // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        q, k, v = qkv(t).chunk(3, dim=-1)
        if self.mode == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        elif self.mode == "matmul":
            o = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            a = torch.einsum("bid,bjd->bij", q, k).softmax(dim=-1)
            o = torch.einsum("bij,bjd->bid", a, v)
        o = o.view(n, h // w, w_ // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w_, c)
        return torch.roll(o, shifts=(s, s), dims=(1, 2)) if s else o

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)
        for qkv, s in zip(self.qkv, self.shifts):
            o = self.attend(y, qkv, s)
            y = y + o if self.skip else o
        return self.head(y.permute(0, 3, 1, 2))


class TorchvisionWindows(nn.Module):
    """torchvision's ShiftedWindowAttention blocks (windows of 4, shifts 0 then 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 4, 4, stride=4)
        self.blocks = nn.ModuleList(ShiftedWindowAttention(4, [4, 4], [s, s], num_heads=1)
                                    for s in (0, 2))
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)
        for block in self.blocks:
            y = block(y)
        return self.head(y.permute(0, 3, 1, 2))


def gradient_spans(model: nn.Module, n: int = N, rows: range | None = None
                   ) -> dict[int, tuple[int, int]]:
    """Per interior row v of the output (centre column): the first and last input row its
    gradient reaches, in float64 with positive weights and a positive input (so that every
    path that exists carries a non-zero gradient; the attention's weights are small, so that
    its softmax does not saturate to exact zeros)."""
    model = model.double().eval()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        with torch.no_grad():
            p.uniform_(0.5, 1.5)
            if "qkv" in name or "proj" in name:
                p.mul_(1e-2)
    x = torch.rand(1, 1, n, n, dtype=torch.float64).add_(0.5).requires_grad_(True)
    y = model(x)
    side, c = y.shape[-2], y.shape[-1] // 2
    spans = {}
    # away from the border, where a rolled window wraps around
    for v in rows or range(side // 4, side - side // 4):
        (g,) = torch.autograd.grad(y[0, 0, v, c], x, retain_graph=True)
        hit = (g[0, 0].abs().sum(1) > 0).nonzero().flatten()
        spans[v] = (int(hit[0]), int(hit[-1]))
    return spans


def analytic_spans(model: nn.Module, n: int = N, rows: range | None = None
                   ) -> dict[int, tuple[int, int]]:
    """The same rows' spans from the analytic geometry of the model's output (its ``head``)."""
    traced = trace(model, n)
    states, _ = propagate(traced, n)
    out = states[next(node.name for node in traced.graph.nodes if node.target == "head")]
    return {v: out.h.span(v) for v in gradient_spans(model, n, rows)}


@pytest.mark.parametrize("mode", ["sdpa", "matmul", "einsum"])
@pytest.mark.parametrize("shifts, skip", [((0,), False), ((0,), True), ((0, 2), True),
                                          ((2,), False), ((0, 2, 0), True)])
def test_windowed_attention_spans_equal_the_input_gradients(mode, shifts, skip):
    model = Windows(shifts, mode, skip)
    assert analytic_spans(model) == gradient_spans(model)


def test_window_spans_by_phase():
    """One block of 4-token windows at patch 4: every position of a window sees the same 16
    input rows, whatever its phase; shifted windows straddle two of the first block's."""
    spans = gradient_spans(Windows((0,), mode="sdpa", skip=False), rows=range(3, 10))
    assert spans[4] == spans[7] == (16, 31) and spans[8] == (32, 47)
    two = analytic_spans(Windows((0, 2), mode="sdpa", skip=False), rows=range(3, 10))
    assert two[4] == two[5] == (0, 31) and two[6] == (16, 47)  # windows 2-5 and 6-9
    t = receptive_field_table(Windows((0, 2), mode="sdpa", skip=True), N).set_index("layer")
    assert t.loc["head", ["r_min", "r_max", "jump"]].tolist() == [4, 32, 4]


def test_torchvision_shifted_window_attention_spans_equal_the_input_gradients():
    model = TorchvisionWindows()
    assert analytic_spans(model) == gradient_spans(model)
    t = receptive_field_table(TorchvisionWindows(), N)
    att = t[t["kind"] == "attention"]
    assert att["kernel"].tolist() == [4, 4] and att["r_max"].tolist() == [16, 32]
    assert att["r_min"].tolist() == [4, 4]  # the query path: a position's own patch


def test_a_window_holding_the_whole_map_or_strided_tokens_is_global():
    whole = Windows((0,), mode="sdpa", skip=True, w=24)  # one 24-token window per axis
    t = receptive_field_table(whole, N)
    assert t.set_index("layer").loc["head", "is_global"] and mixes_globally(t)
    assert layer_states(t)[-1] == "global"  # positions remain (the skip): not a head

    class Grid(Windows):  # MaxViT's grid attention: tokens 3 positions apart
        def attend(self, y, qkv, s):
            n, h, w_, c = y.shape
            g = self.w
            t = y.view(n, g, h // g, g, w_ // g, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c)
            q, k, v = qkv(t).chunk(3, dim=-1)
            o = F.scaled_dot_product_attention(q, k, v)
            return o.view(n, h // g, w_ // g, g, g, c).permute(0, 3, 1, 4, 2, 5).reshape(
                n, h, w_, c)

    t = receptive_field_table(Grid((0,), mode="sdpa", skip=False), N)
    assert t.set_index("layer").loc["head", "is_global"]


def test_roll_is_a_translation_along_an_axis_and_global_across_a_flattened_map():
    class Rolled(nn.Module):
        def __init__(self, flat: bool) -> None:
            super().__init__()
            self.a, self.head, self.flat = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 1), flat

        def forward(self, x):
            y = self.a(x)
            if self.flat:
                return self.head(torch.roll(y.flatten(2), 5, dims=2).view_as(y))
            return self.head(torch.roll(y, shifts=(3, -2), dims=(2, 3)))

    assert analytic_spans(Rolled(False)) == gradient_spans(Rolled(False))
    assert receptive_field_table(Rolled(True), N).set_index("layer").loc["head", "is_global"]


def test_swin_from_timm_and_torchvision_agree():
    """Swin-T at 224 px: the windows grow the RF (28 and 56 px in stage 1, 84 / 224 / 952 at
    the patch mergings); the last stage's one window covers its 7x7 map: global. Its RF
    column is the last local layer's r_max, and it mixes globally after it."""
    pytest.importorskip("timm")
    from landscape.receptive_field import timm_model, torchvision_model

    tv = receptive_field_table(torchvision_model("swin_t", num_classes=10), 224)
    tm = receptive_field_table(timm_model("swin_tiny_patch4_window7_224", num_classes=10), 224)
    for t, merge in ((tv, "features.{}.reduction"), (tm, "layers.{}.downsample.reduction")):
        r = t.set_index("layer")["r_max"]
        assert [r[merge.format(i)] for i in ((2, 4, 6) if t is tv else (1, 2, 3))] == \
            [84, 224, 952]
        assert mixes_globally(t)
    assert tv[tv["kind"] == "attention"]["r_max"].tolist()[:4] == [28, 56, 112, 168]
    with torch.device("meta"):
        model = torchvision_model("swin_t", num_classes=10)
    assert feature_field(model) == (952, True)


def test_global_rows_with_positions_after_them_are_global_not_head():
    """A ViT block: attention (global), a per-token MLP beside the skip (global, with the
    skip's r_min), then the pooled head; the summary names where global mixing starts."""
    from landscape.receptive_field.cost import ModelCost
    from landscape.receptive_field.text import format_summary

    t = pd.DataFrame({
        "layer": ["embed", "attention", "mlp", "pool", "fc"],
        "r_min": pd.array([16, None, 16, None, None], dtype="Int64"),
        "is_global": [False, True, True, True, True],
        "unproductive": [False] * 5, "underutilised": [False] * 5,
        "border": [False] * 5})
    assert layer_states(t) == ["productive", "global", "global", "head", "head"]
    assert mixes_globally(t) and not mixes_globally(t.drop(index=2))
    cost = ModelCost(params=1, flops=1, input_size=(32, 32), in_channels=1)
    r_tilde = FeasibleInput(16, 16, "embed", "embed")
    assert "global mixing from attention on" in format_summary("vit", t, cost, r_tilde, 32,
                                                               "rfa")
    assert "global mixing" not in format_summary("cnn", t.drop(index=2), cost, r_tilde, 32,
                                                 "rfa")


class MergedWindows(Windows):
    """One block of 4-token windows, then Swin's patch merging written with slices: the four
    2x2 phases of the (N, H, W, C) map stacked into channels and mixed by a Linear."""

    def __init__(self) -> None:
        super().__init__((0,), "sdpa", skip=False)
        self.reduce = nn.Linear(16, 4)

    def forward(self, x):
        y = self.attend(self.embed(x).permute(0, 2, 3, 1), self.qkv[0], 0)
        y = torch.cat([y[:, 0::2, 0::2], y[:, 1::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 1::2]],
                      -1)
        return self.head(self.reduce(y).permute(0, 3, 1, 2))


def test_patch_merging_slices_of_a_windowed_map_are_one_exact_window():
    """Stacking the strided views of a map whose positions lie in windows was refused ("views
    of an upsampled map stacked into channels"); it is the 2x2 stride-2 window it stands for,
    per phase: a merged position sees the window of its two tokens."""
    model = MergedWindows()
    assert analytic_spans(model) == gradient_spans(model)
    spans = analytic_spans(model, rows=range(2, 6))
    assert spans[2] == (16, 31) and spans[3] == (16, 31) and spans[4] == (32, 47)


class ConvInWindows(Windows):
    """EfficientViT-MSRA's layout: a 3x3 depthwise conv (zero padding) run on each 4x4
    window, the windows folded into the batch, between two window attentions."""

    def __init__(self, kernel: int = 3, dilation: int = 1) -> None:
        super().__init__((0, 2), "sdpa", skip=True)
        pad = dilation * (kernel - 1) // 2
        self.dw = nn.Conv2d(4, 4, kernel, padding=pad, dilation=dilation, groups=4)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)
        n, h, w_, c = y.shape
        w = self.w
        t = y.view(n, h // w, w, w_ // w, w, c).permute(0, 1, 3, 5, 2, 4).reshape(-1, c, w, w)
        t = self.dw(t)
        y = y + t.view(n, h // w, w_ // w, c, w, w).permute(0, 1, 4, 2, 5, 3).reshape(
            n, h, w_, c)
        for qkv, s in zip(self.qkv, self.shifts):
            y = y + self.attend(y, qkv, s)
        return self.head(y.permute(0, 3, 1, 2))


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (5, 1), (3, 2)])
def test_a_conv_on_windows_folded_into_the_batch_is_clipped_to_its_window(kernel, dilation):
    model = ConvInWindows(kernel, dilation)
    assert analytic_spans(model) == gradient_spans(model)
    t = receptive_field_table(ConvInWindows(kernel, dilation), N).set_index("layer")
    assert t.loc["dw", "kind"] == "conv" and t.loc["dw", "r_max"] <= 16  # within its window


def test_a_conv_with_ceil_mode_on_windows_is_refused_by_name():
    model = ConvInWindows()
    model.dw = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    with pytest.raises(UnsupportedModelError, match="ceil_mode=True on windows folded into"):
        receptive_field_table(model, N)


class HeadsInWindows(Windows):
    """Two attention heads on the same windows, their outputs stacked into channels and
    mixed by a Linear (EfficientViT-MSRA's cascaded heads; a multi-head block written with
    one module per head); then shifted windows."""

    def __init__(self) -> None:
        super().__init__((0, 2), "matmul", skip=True)
        self.proj = nn.Linear(8, 4)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)
        heads = torch.cat([self.attend(y, self.qkv[0], 0), self.attend(y, self.qkv[1], 0)], -1)
        y = y + self.proj(heads)
        return self.head((y + self.attend(y, self.qkv[1], 2)).permute(0, 3, 1, 2))


def test_heads_of_a_windowed_attention_stacked_into_channels_are_one_merge():
    """Their outputs have the same windowed positions: stacking them into channels is the
    union of their paths, nothing more (before, every map of windowed positions stacked
    into channels was refused)."""
    model = HeadsInWindows()
    assert analytic_spans(model) == gradient_spans(model)


def test_gcvit_global_query_repeated_for_every_window_is_global_mixing():
    """timm's GCViT was refused at ``repeat_interleave`` (its global query, one map of window
    size for the whole image, copied for every window along the batch of windows). The query
    of a window's tokens then comes from far outside the window: the global-attention block
    mixes globally; the local window block before it keeps its window (7 tokens at jump 4:
    r_max 11 + 6 x 4 = 35)."""
    pytest.importorskip("timm")
    from landscape.receptive_field import timm_model

    t = receptive_field_table(timm_model("gcvit_xxtiny", num_classes=10), 224)
    r = t.set_index("layer")
    assert r.loc["stages.0.blocks.0.attn.proj", ["r_min", "r_max"]].tolist() == [7, 35]
    assert r.loc["stages.0.global_block.blocks.pool3", "r_max"] == 123  # the global query
    assert layer_states(t)[list(r.index).index("stages.0.blocks.1.attn.proj")] == "global"
    assert mixes_globally(t)


def test_efficientvit_msra_is_analysed():
    """timm's EfficientViT-MSRA (convs and cascaded heads on 7x7 windows folded into the
    batch) was refused at its first depthwise conv on a window; at 224 px its stage-1
    windows tile the 14x14 map and its stage-2 window covers the 7x7 map (global)."""
    pytest.importorskip("timm")
    from landscape.receptive_field import timm_model

    t = receptive_field_table(timm_model("efficientvit_m0", num_classes=10), 224)
    r = t.set_index("layer")
    assert r.loc["stages.0.blocks.0.mixer.m.attn.dws.0.conv", ["r_min", "r_max"]].tolist() \
        == [63, 127]  # a 5x5 depthwise conv clipped to its 7-position window, at jump 16
    assert mixes_globally(t) and layer_states(t)[-1] == "head"
    # r̃ counts the rows behind global attention (a finite r_min, the skip's), as
    # min_feasible_input does: 383 px, so 224 px leaves layers underutilised (it read 191)
    model = timm_model("efficientvit_m0", num_classes=10)
    assert feasible_input_of(t).size == min_feasible_input(model, 224).size == 383
    assert t["underutilised"].any()


class ReshapeMerging(nn.Module):
    """timm Swin's patch merging, written with a reshape and a permute (2x2 neighbours into
    channels, then a Linear), ``merges`` times after a 3x3 conv stem of stride 4."""

    def __init__(self, merges: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 4, 3, stride=4, padding=1)
        self.reduce = nn.ModuleList(nn.Linear(16, 4) for _ in range(merges))
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)
        for reduce in self.reduce:
            n, h, w, c = y.shape
            y = y.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
            y = reduce(y)
        return self.head(y.permute(0, 3, 1, 2))


@pytest.mark.parametrize("n, merges", [(8, 1), (16, 2), (16, 1)])
def test_a_patch_merging_down_to_one_position_keeps_it(n, merges):
    """A 2x2 map merged into a 1x1 one (timm Swin's last stage at 32 px): the reshape's
    size-1 dimensions hold the map's one position, which sees the whole input; it was taken
    as global (its rows drawn as the head)."""
    model = ReshapeMerging(merges)
    side = n // 4 // 2 ** merges
    rows = range(side)  # every row: the spans at the border are clipped to the input
    clipped = {v: (max(a, 0), min(b, n - 1)) for v, (a, b) in
               analytic_spans(model, n, rows).items()}
    assert clipped == gradient_spans(model, n, rows)
    t = receptive_field_table(ReshapeMerging(merges), n).set_index("layer")
    last = t.loc[f"reduce.{merges - 1}"]
    assert not last["is_global"] and last["out_size"] == side
    assert last["jump"] == 4 * 2 ** merges and last["r_max"] == 4 * 2 ** merges - 1
    assert layer_states(t.reset_index())[-1] != "head"


class LinearAttention(nn.Module):
    """Linear attention (EfficientViT's LiteMLA, XCiT's channel attention): a c x c matrix
    summed over every position, then applied to each position's features, by matmul or
    einsum, and a skip; it was taken as a per-position product of the query's geometry."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.embed = nn.Conv2d(1, 4, 3, padding=1)
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.embed(x)
        n, c, h, w = y.shape
        q, k, v = self.qkv(y.flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        if self.mode == "matmul":
            o = q @ (k.transpose(1, 2) @ v)
        else:
            o = torch.einsum("nlc,ncd->nld", q, torch.einsum("nlc,nld->ncd", k, v))
        return self.head((o + v).transpose(1, 2).reshape(n, c, h, w))  # with a skip


@pytest.mark.parametrize("mode", ["matmul", "einsum"])
def test_linear_attention_is_global(mode):
    model = LinearAttention(mode)
    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(model(x)[0, 0, 0, 0], x)
    assert g[0, 0, -1, -1] != 0  # the corner output reaches the opposite corner
    t = receptive_field_table(LinearAttention(mode), 16)
    assert t.set_index("layer").loc["head", "is_global"] and mixes_globally(t)
    assert layer_states(t)[-1] == "global"  # positions remain (the skip)


class ClassToken(nn.Module):
    """A class token before the image tokens (a parameter, a zero slot made by ``F.pad`` as
    CoaT does, or a token computed from every position as XCiT's class attention does), a
    per-token block with a skip, the class token sliced off and the image tokens reshaped
    back into a map for a conv (CoaT's convolutional position encoding, PiT's pooling)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.embed = nn.Conv2d(1, 4, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 4))
        self.mlp = nn.Linear(4, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.embed(x)
        n, c, h, w = y.shape
        t = y.flatten(2).transpose(1, 2)
        if self.how == "parameter":
            t = torch.cat([self.cls.expand(n, -1, -1), t], dim=1)
        elif self.how == "pad":
            t = F.pad(t, (0, 0, 1, 0))
        else:  # "global": a token made from every position
            t = torch.cat([t.mean(1, keepdim=True), t], dim=1)
        t = t + self.mlp(t)
        y = t[:, 1:].transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.conv(y))


@pytest.mark.parametrize("how", ["parameter", "pad", "global"])
def test_image_tokens_after_a_class_token_go_back_into_a_map(how):
    """Sliced off the class token, the image tokens are the map they were: a conv on them
    was refused ("reshapes ... across a spatial axis"). A class token made from every
    position reaches no image token through a per-token block: they stay local."""
    model = ClassToken(how)
    assert analytic_spans(model) == gradient_spans(model)
    t = receptive_field_table(ClassToken(how), N).set_index("layer")
    assert t.loc["conv", "r_max"] == 12 and not t.loc["head", "is_global"]


class QueryPooled(nn.Module):
    """HieraDet's query pooling: 8x8 windows folded into the batch, the queries max-pooled
    2x2 within each window (4x4 per window), attending to their window's 8x8 keys; the
    result unpartitioned into the half-resolution map, beside a 2x2 max-pooled shortcut."""

    def __init__(self, w: int = 8, mode: str = "sdpa") -> None:
        super().__init__()
        self.w, self.mode = w, mode
        self.embed = nn.Conv2d(1, 4, 4, stride=4)
        self.qkv = nn.Linear(4, 12)
        self.q_pool = nn.MaxPool2d(2, 2)
        self.pool = nn.MaxPool2d(2, 2)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)  # (n, H, W, C)
        n, h, w_, c = y.shape
        w = self.w
        t = y.view(n, h // w, w, w_ // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w, w, c)
        q, k, v = self.qkv(t).chunk(3, dim=-1)  # (windows, w, w, c)
        q = self.q_pool(q.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (windows, w/2, w/2, c)
        q = q.reshape(-1, (w // 2) ** 2, c)
        k, v = k.reshape(-1, w * w, c), v.reshape(-1, w * w, c)
        if self.mode == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        else:  # timm without fused attention (Hiera's, HieraDet's matmul path)
            o = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        o = o.view(n, h // w, w_ // w, w // 2, w // 2, c).permute(0, 1, 3, 2, 4, 5)
        o = o.reshape(n, h // 2, w_ // 2, c)
        short = self.pool(y.permute(0, 3, 1, 2))
        return self.head(short + o.permute(0, 3, 1, 2))


@pytest.mark.parametrize("mode", ["sdpa", "matmul"])
def test_pooled_queries_attending_their_window_equal_the_input_gradients(mode):
    """Was refused (a stride-2 pool on windows folded into the batch); now a pooled query
    reads its window's keys: every position sees the 32 input rows of its window. Written
    with matmuls (timm's unfused attention) it was read as global."""
    model = QueryPooled(mode=mode)
    assert analytic_spans(model) == gradient_spans(model)
    spans = analytic_spans(QueryPooled(mode=mode), rows=range(4, 8))
    assert spans[4] == spans[7] == (32, 63)
    t = receptive_field_table(QueryPooled(mode=mode), N).set_index("layer")
    assert t.loc["q_pool", "kind"] == "max_pool" and not t.loc["head", "is_global"]
