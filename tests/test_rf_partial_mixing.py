"""Ops that mix part of the positions: a Linear, sum, reduction or softmax over the inner
positions of blocks (a map reshaped as ``(H / k, k)``) reads each block, exactly as the input
gradients say; one that mixes a whole row but not the other axis is refused, never read as
global; a space-to-depth whose positions come back out of the channels is followed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.receptive_field import UnsupportedModelError, receptive_field_table
from landscape.receptive_field.analytic import trace
from landscape.receptive_field.geometry import Geometry, Skip
from landscape.receptive_field.graph import input_channels, propagate
from landscape.receptive_field import layout as L
from landscape.receptive_field.layout import mixed

try:  # a global name, as timm calls it: the trace keeps it as one call (leaf_functions)
    from timm.layers.bottleneck_attn import rel_logits_1d
    from timm.layers.halo_attn import HaloAttn
except ImportError:  # timm is an optional extra
    rel_logits_1d = HaloAttn = None

N, K = 48, 4  # input side, block side


def blocks(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H / K, W / K, K, K)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // K, K, w // K, K).permute(0, 1, 2, 4, 3, 5)


def unblocks(t: torch.Tensor) -> torch.Tensor:
    b, c, hb, wb = t.shape[:4]
    return t.permute(0, 1, 2, 4, 3, 5).reshape(b, c, hb * K, wb * K)


class Stem(nn.Module):
    """A 3x3 conv, ``body`` (the op under test), a 1x1 conv ``head``."""

    out = 2

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Conv2d(self.out, 1, 1)

    def forward(self, x):
        return self.head(self.body(self.a(x)))


class BlockTransform(Stem):
    """A separable transform of each block (a DCT, as CSATv2's stem writes it: a Linear over
    the block's columns, then its rows), then the K * K coefficients into channels."""

    out = 2 * K * K

    def __init__(self, how: str) -> None:
        super().__init__()
        self.t, self.how = nn.Linear(K, K, bias=False), how

    def along_last(self, y):
        if self.how == "linear":
            return self.t(y)
        if self.how == "matmul":
            return y @ self.t.weight.T
        return torch.einsum("bcxyuk,jk->bcxyuj", y, self.t.weight)

    def body(self, y):
        t = self.along_last(self.along_last(blocks(y)).transpose(-1, -2)).transpose(-1, -2)
        b, c, hb, wb = t.shape[:4]
        return t.permute(0, 1, 4, 5, 2, 3).reshape(b, c * K * K, hb, wb)


class BlockReduce(Stem):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def body(self, y):
        t = blocks(y)
        return t.mean(dim=(-2, -1)) if self.op == "mean" else t.sum(dim=(-1, -2))


class BlockSoftmax(Stem):
    """A softmax over each block's positions, the positions kept."""

    def body(self, y):
        t = blocks(y)
        return unblocks(t.flatten(-2).softmax(-1).view_as(t))


class SpaceToDepthAndBack(Stem):
    """Blocks moved into channels by view / permute, then back: nothing mixed."""

    def body(self, y):
        b, c, h, w = y.shape
        t = blocks(y).permute(0, 1, 4, 5, 2, 3).reshape(b, c * K * K, h // K, w // K)
        t = torch.relu(t).view(b, c, K, K, h // K, w // K).permute(0, 1, 4, 5, 2, 3)
        return unblocks(t)


class UnrolledWindows(Stem):
    """Attention within 4x4 windows whose 16 tokens are ordered as Hiera's unroll leaves
    them: the offsets inside the window outermost (two atoms per axis, strides 1 and 2),
    the window index innermost."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def body(self, y):
        b, c, h, w = y.shape
        t = y.view(b, c, h // 4, 2, 2, w // 4, 2, 2)  # h = 4 hu + 2 sy2 + sy1
        t = t.permute(0, 4, 7, 3, 6, 2, 5, 1).reshape(b, 16, h // 4 * (w // 4), c)
        t = t.transpose(1, 2)  # (b, windows, tokens, c)
        if self.how == "sdpa":
            o = F.scaled_dot_product_attention(t, t, t)
        else:
            o = (t @ t.transpose(-2, -1)).softmax(-1) @ t
        o = o.transpose(1, 2).reshape(b, 2, 2, 2, 2, h // 4, w // 4, c)
        return o.permute(0, 7, 5, 3, 1, 6, 4, 2).reshape(b, c, h, w)


class StridedInWindows(Stem):
    """8x8 windows folded into the batch, a conv of kernel k, stride s, padding p on each
    (zeros at the window's edges: TNT's pixel embedding of each patch), the m x m outputs of
    every window put back into a map."""

    def __init__(self, k: int, s: int, p: int) -> None:
        super().__init__()
        self.conv, self.how = nn.Conv2d(2, 2, k, stride=s, padding=p), f"{k}/{s}/{p}"

    def body(self, y):
        n, c, h, w = y.shape
        t = y.view(n, c, h // 8, 8, w // 8, 8).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, 8, 8)
        t = self.conv(t)
        m = t.shape[-1]
        t = t.view(n, h // 8, w // 8, c, m, m).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(n, c, h // 8 * m, w // 8 * m)


class NonOverlapping(Stem):
    """Blocks of K x K as a non-overlapping unfold (``F.unfold`` or ``nn.Unfold``) or a pixel
    unshuffle, then: a Linear over each block's taps (``mix``: a K/K window, the map of
    blocks), or the taps put back into the map by a reshape (TNT's pixels), ``F.fold`` or a
    pixel shuffle (nothing mixed: the identity; a 1x1 conv over the blocks' channels before
    the shuffle: each pixel reads its block), then a 3x3 conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.mix = nn.Linear(K * K, 1)
        self.c = nn.Conv2d(2 * K * K, 2 * K * K, 1)
        self.after = nn.Conv2d(2, 2, 3, padding=1)

    def body(self, y):
        n, c, h, w = y.shape
        if self.how == "unshuffle-shuffle":
            return self.after(F.pixel_shuffle(F.pixel_unshuffle(y, K).relu(), K))
        if self.how == "unshuffle-conv":  # a 1x1 conv over the blocks, then back: the window
            return self.after(F.pixel_shuffle(self.c(F.pixel_unshuffle(y, K)), K))
        u = (nn.Unfold(K, stride=K) if self.how == "module" else
             lambda t: F.unfold(t, K, stride=K))(y)  # (n, c K K, L)
        if self.how == "fold":
            return self.after(F.fold(u.relu(), (h, w), K, stride=K))
        t = u.view(n, c, K * K, h // K, w // K)
        if self.how == "mix":  # the map of blocks
            return self.after(self.mix(t.permute(0, 1, 3, 4, 2))[..., 0])
        t = t.view(n, c, K, K, h // K, w // K).permute(0, 1, 4, 2, 5, 3)
        return self.after(t.reshape(n, c, h, w))


class RelativeLogits(Stem):
    """timm's relative-position logits (BoTNet, HaloNet: ``rel_logits_1d``, whose pads and
    reshapes shift each query row into absolute key order) along W and H, summed over the
    keys: each query position's logits come from its own query."""

    def __init__(self) -> None:
        super().__init__()
        self.rel_w, self.rel_h = nn.Parameter(torch.randn(2 * N - 1, 2)), \
            nn.Parameter(torch.randn(2 * N - 1, 2))

    def body(self, y):
        q = y.permute(0, 2, 3, 1)  # (B, H, W, dim)
        logits = rel_logits_1d(q, self.rel_w, permute_mask=(0, 1, 3, 2, 4)) + \
            rel_logits_1d(q.transpose(1, 2), self.rel_h, permute_mask=(0, 3, 1, 4, 2))
        return logits.sum(dim=(-2, -1)).unsqueeze(1).expand(-1, 2, -1, -1)


class Sliding(Stem):
    """``Tensor.unfold`` along H then W (windows of 3 every ``step``), a mean over the taps:
    the 3x3 pool of that stride, written as timm's median pool writes its windows."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def body(self, y):
        return y.unfold(2, 3, self.step).unfold(3, 3, self.step).mean(dim=(-2, -1))


class Halo(Stem):
    """timm's HaloAttn (blocks of 4 queries attending to their block's window with a halo of
    1: the keys from ``Tensor.unfold`` of the padded map, relative-position logits)."""

    out = 4

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.attn = HaloAttn(dim=4, dim_out=4, feat_size=(N, N), block_size=4, halo_size=1,
                             num_heads=1) if HaloAttn is not None else None

    def body(self, y):
        return self.attn(y)


class RowLinear(Stem):
    """A Linear over every position of a row (and the channels): one whole axis."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * N, 2 * N)

    def body(self, y):
        b, c, h, w = y.shape
        r = self.fc(y.permute(0, 2, 1, 3).reshape(b, h, c * w))
        return r.view(b, h, c, w).permute(0, 2, 1, 3)


class AxialAttention(Stem):
    """Attention along W only, H folded into the batch."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def body(self, y):
        b, c, h, w = y.shape
        t = y.permute(0, 2, 3, 1).reshape(b * h, w, c)
        if self.how == "sdpa":
            o = F.scaled_dot_product_attention(t, t, t)
        else:
            o = (t @ t.transpose(-2, -1)).softmax(-1) @ t
        return o.view(b, h, w, c).permute(0, 3, 1, 2)


class RowCumsum(Stem):
    def body(self, y):
        return y.cumsum(dim=-1)


def gradient_spans(model: nn.Module) -> dict[tuple[str, int], tuple[int, int]]:
    """Per output position along each axis (the other at the centre): the first and last input
    pixel its gradient reaches, in float64 with positive weights and inputs (every path that
    exists carries a non-zero gradient; an attention's weights small, so that its softmax
    does not saturate to exact zeros)."""
    model = model.double().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5)
            if name.startswith("attn."):
                p.mul_(1e-2)
    x = torch.rand(1, 1, N, N, dtype=torch.float64).add_(0.5).requires_grad_(True)
    y = model(x)
    side, c = y.shape[-1], y.shape[-1] // 2
    out = {}
    for v in range(side):
        for axis, pos, keep in (("h", (v, c), 1), ("w", (c, v), 0)):
            (g,) = torch.autograd.grad(y[0, 0, pos[0], pos[1]], x, retain_graph=True)
            hit = (g[0, 0].abs().sum(keep) > 0).nonzero().flatten()
            out[(axis, v)] = (int(hit[0]), int(hit[-1]))
    return out


def analytic_spans(model: nn.Module) -> dict[tuple[str, int], tuple[int, int]]:
    """The same spans from the analytic geometry of the head's output, clipped to the input."""
    traced = trace(model, N)
    states, _ = propagate(traced, N)
    out = states["head"]
    assert isinstance(out, Geometry) and out.is_local, out
    return {(a, v): (max(out.axis(a).span(v)[0], 0), min(out.axis(a).span(v)[1], N - 1))
            for a in "hw" for v in range(out.axis(a).size)}


@pytest.mark.parametrize("model", [
    BlockTransform("linear"), BlockTransform("matmul"), BlockTransform("einsum"),
    BlockReduce("mean"), BlockReduce("sum"), BlockSoftmax(), SpaceToDepthAndBack(),
    UnrolledWindows("sdpa"), UnrolledWindows("matmul"), StridedInWindows(3, 2, 1),
    StridedInWindows(7, 4, 3), StridedInWindows(3, 2, 0), StridedInWindows(2, 2, 0),
    StridedInWindows(5, 1, 2), NonOverlapping("functional"), NonOverlapping("module"),
    NonOverlapping("mix"), NonOverlapping("fold"), NonOverlapping("unshuffle-shuffle"),
    NonOverlapping("unshuffle-conv"),
    pytest.param(RelativeLogits(), marks=pytest.mark.skipif(rel_logits_1d is None,
                                                            reason="needs timm")),
    Sliding(1), Sliding(2),
    pytest.param(Halo(), marks=pytest.mark.skipif(HaloAttn is None, reason="needs timm")),
], ids=lambda m: type(m).__name__ + "-" + str(getattr(m, "how", getattr(m, "op", ""))))
def test_mixing_the_inner_positions_of_blocks_equals_the_input_gradients(model):
    """Each was read as global (a Linear, reduction or softmax over a dimension holding
    positions; attention over windows whose tokens hold several atoms per axis), or with the
    wrong map size (a space-to-depth taken as final), or refused (a strided conv on windows
    folded into the batch; timm's relative logits, padding a dimension of positions)."""
    assert analytic_spans(model) == gradient_spans(model)


def test_a_block_transform_is_a_patchify_in_the_table():
    t = receptive_field_table(BlockTransform("linear"), N).set_index("layer")
    head = t.loc["head"]
    assert not head["is_global"]
    assert (head["r_min"], head["r_max"], head["jump"], head["out_size"]) == (K + 2, K + 2, K,
                                                                              N // K)
    mean = receptive_field_table(BlockReduce("mean"), N)
    pool = mean[mean["kind"] == "avg_pool"].iloc[0]  # the mean over blocks is a pool row
    assert (pool["kernel"], pool["stride"], pool["in_size"], pool["out_size"]) == (K, K, N, N // K)


@pytest.mark.parametrize("model, op", [
    (RowLinear(), "Linear"), (AxialAttention("sdpa"), "scaled_dot_product_attention"),
    (AxialAttention("matmul"), "matmul"), (RowCumsum(), "cumsum"),
])
def test_mixing_one_whole_axis_is_refused_not_global(model, op):
    """The output is global along W and local along H (or, for a cumsum, not the same field at
    every position): it was read as global."""
    with pytest.raises(UnsupportedModelError, match=op):
        receptive_field_table(model, N)


@pytest.mark.parametrize("layout, dims, expected", [
    # H split as (H / 4, 4): the inner 4 mixed is a block of 4; the outer is the whole axis
    (((("c", 0, 2),), (("h", 4, 12),), (("h", 1, 4),), (("w", 1, 48),)), {2}, {"h": 4}),
    (((("c", 0, 2),), (("h", 4, 12),), (("h", 1, 4),), (("w", 1, 48),)), {1}, {"h": None}),
    # three levels: the inner two together are blocks of 8
    (((("h", 8, 6),), (("h", 2, 4), ("h", 1, 2)), (("w", 1, 4),)), {1}, {"h": 8}),
    # a channel dimension holding both axes' inner positions (a space-to-depth)
    (((("h", 2, 3),), (("w", 2, 3),), (("h", 1, 2), ("w", 1, 2), ("c", 0, 5))), {2},
     {"h": 2, "w": 2}),
    # a 2x2 map reshaped as (1, 2): the outer size-1 atom is the map's position
    (((("h", 2, 1),), (("w", 2, 1),), (("h", 1, 2), ("w", 1, 2))), {2}, {"h": 2, "w": 2}),
    # tokens of unknown origin; channels only
    (((("c", 0, 2),), (("*", 2, 197),)), {1}, {"*": None}),
    (((("c", 0, 2),), (("h", 1, 7),), (("c", 0, 3),)), {2}, {}),
])
def test_mixed_classifies_blocks_whole_axes_and_channels(layout, dims, expected):
    assert mixed(layout, dims, "op") == expected


def test_mixed_refuses_a_middle_atom():
    layout = ((("h", 8, 6),), (("h", 2, 4),), (("h", 1, 2),))
    with pytest.raises(Skip, match="not the inner positions"):
        mixed(layout, {1}, "op")


def test_timm_in_chans_is_the_input_channels():
    """CSATv2's first op is a colour transform, its first conv reads 64 DCT channels: the
    probe input was (2, 64, H, W). timm models record ``in_chans``."""
    class DctFirst(nn.Module):
        in_chans = 3

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(64, 8, 1)

        def forward(self, x):
            return self.conv(x.repeat(1, 22, 1, 1)[:, :64])

    assert input_channels(DctFirst()) == 3
    assert input_channels(nn.Sequential(nn.Conv2d(5, 2, 3))) == 5
    assert input_channels(nn.Sequential(nn.Linear(3, 2))) is None


def test_convnext_v2_global_response_norm_is_a_gate():
    """ConvNeXt-V2's GRN divides by a norm over every position (``x.norm(p=2, dim=(1, 2))``):
    a global statistic gating the map, as squeeze-and-excitation; it was refused."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnextv2_atto", num_classes=10)
    t = receptive_field_table(model, 64)
    convs = t[t["kind"] == "conv"]
    assert not convs["is_global"].any() and convs["r_max"].max() > 64
    g = receptive_field_table(model, 64, se_gates="global")
    mlp = g[g["layer"].str.endswith("mlp.fc2")]
    assert mlp["is_global"].all()  # the gate is a global path under se_gates="global"


def test_hiera_mask_unit_attention_is_local_and_equals_the_input_gradients():
    """timm's Hiera: tokens unrolled (a window's offsets outermost), attention within mask
    units in its first two stages, queries max-pooled over a dimension of unit offsets. It
    was read as global from the first block, and its first qkv as seeing 35 px (a
    space-to-depth taken at a reshape); each block's output is its mask unit."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("hiera_tiny_224").double().eval()
    t = receptive_field_table(model, 224).set_index("layer")
    assert t.loc["blocks.0.attn.qkv", "r_max"] == 7
    assert t.loc["blocks.1.amax", "kind"] == "max_pool" and t.loc["blocks.1.amax", "stride"] == 2
    assert not t.loc["blocks.3.mlp.fc2", "is_global"] and t.loc["blocks.4.mlp.fc2", "is_global"]
    _, records = propagate(trace(model, 224), 224)
    out = next(r.out for r in records if r.name == "blocks.0.mlp.fc2")
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    (feat,) = model.forward_intermediates(x, indices=[0], output_fmt="NCHW",
                                          intermediates_only=True)
    for v, u in ((0, 28), (20, 3), (28, 55)):
        (g,) = torch.autograd.grad(feat[0, :, v, u].sum(), x, retain_graph=True)
        hit = g[0].abs().sum(0) > 0
        rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
        expect = [(max(a.span(p)[0], 0), min(a.span(p)[1], 223)) for a, p in ((out.h, v),
                                                                              (out.w, u))]
        assert [(int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))] == expect
        assert expect[0][1] - expect[0][0] + 1 <= 35  # its mask unit, never the whole image


def test_tnt_pixels_and_patches_equal_the_input_gradients():
    """timm's TNT: a non-overlapping unfold of 16 px patches reshaped into a batch of 16x16
    maps, a 7x7 stride-4 conv on each (zeros at the patch's edges), attention among each
    patch's 4x4 pixel tokens, a Linear over them into the patch token. It was refused (the
    unfold was a window whose taps could not become a map again)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tnt_s_patch16_224").double().eval()
    _, records = propagate(trace(model, 224), 224)
    out = {r.name: r.out for r in records}
    seen = {}
    model.pixel_embed.proj.register_forward_hook(lambda m, i, o: seen.__setitem__("pixel", o))
    model.blocks[0].proj.register_forward_hook(lambda m, i, o: seen.__setitem__("patch", o))
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    model(x)
    for name, index, (v, u) in (("pixel", (20, slice(None), 1, 2), (5, 26)),
                                ("pixel", (20, slice(None), 3, 3), (7, 27)),
                                ("patch", (0, 20), (1, 6)), ("patch", (0, 195), (13, 13))):
        (g,) = torch.autograd.grad(seen[name][index].sum(), x, retain_graph=True)
        hit = g[0].abs().sum(0) > 0
        rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
        g_out = out["pixel_embed.proj" if name == "pixel" else "blocks.0.proj"]
        expect = [(max(a.span(p)[0], 0), min(a.span(p)[1], 223)) for a, p in ((g_out.h, v),
                                                                                (g_out.w, u))]
        assert [(int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))] == expect, name
    t = receptive_field_table(model, 224).set_index("layer")
    assert (t.loc["blocks.0.proj", "r_max"], t.loc["blocks.0.proj", "out_size"]) == (16, 14)
    assert t.loc["blocks.0.attn_out.proj", "is_global"]  # attention among the patches


def _atom_positions(layout, shape) -> dict[str, torch.Tensor]:
    """The H and W index of every element of a tensor of ``shape`` as ``layout`` says: per
    dimension its atoms in mixed radix, outer first, an atom adding coordinate x stride."""
    layout = L.fit(layout, shape, "test")
    out = {a: torch.zeros(shape, dtype=torch.long) for a in "hw"}
    for d, dim in enumerate(layout):
        index = torch.arange(shape[d]).view([-1 if i == d else 1 for i in range(len(shape))])
        inner = shape[d]
        for atom in dim:
            inner //= atom[2]
            if atom[0] in out:
                out[atom[0]] = out[atom[0]] + (index // inner) % atom[2] * atom[1]
    return out


@st.composite
def moved_maps(draw):
    """A (2, H, W) map of each element's H and W index, and its layout, after H and W are
    split into factors, the dimensions permuted and neighbours merged, as views of windows,
    space-to-depth and token sequences do."""
    hs = draw(st.lists(st.sampled_from([2, 3]), min_size=1, max_size=3))
    ws = draw(st.lists(st.sampled_from([2, 3]), min_size=1, max_size=3))
    h, w = math.prod(hs), math.prod(ws)
    ih = torch.arange(h).view(1, h, 1).expand(2, h, w)
    iw = torch.arange(w).view(1, 1, w).expand(2, h, w)
    t = torch.stack([ih, iw])  # (2: which index, 2 channels, H, W)
    layout = L.canonical(3)
    split = (2, *hs, *ws)
    layout = L.reshape(layout, (2, h, w), split, "view")
    t = t.reshape(2, *split)
    order = draw(st.permutations(range(len(split))))
    layout, t = L.permute(layout, order, "permute"), t.permute(0, *[o + 1 for o in order])
    every = set(range(1, len(split)))
    cuts = sorted(draw(st.one_of(st.just(every), st.sets(st.sampled_from(sorted(every))))))
    shape, start = [], 0
    for end in [*cuts, len(split)]:
        shape.append(math.prod(t.shape[1 + start:1 + end]))
        start = end
    layout = L.reshape(layout, tuple(t.shape[1:]), shape, "reshape")
    return t.reshape(2, *shape), layout, (h, w)


@settings(max_examples=300, deadline=None)
@given(moved=moved_maps(), data=st.data())
def test_layouts_mixing_and_pooling_agree_with_the_moved_indices(moved, data):
    """Property: the layout algebra's reading of a moved map is the map's. The atoms give
    every element's H / W index; what an op over some dimensions mixes (:func:`mixed`) is,
    per group of elements sharing the other dimensions, one position (axis left out), an
    aligned block of w positions ({axis: w}) or positions spanning over half the axis (None);
    and after pooling those blocks (:func:`pool_atoms`) the atoms give each group's block."""
    t, layout, size = moved
    index = _atom_positions(layout, t.shape[1:])
    assert torch.equal(index["h"], t[0]) and torch.equal(index["w"], t[1])
    one = st.integers(0, len(layout) - 1)
    dims = data.draw(st.one_of(one.map(lambda d: {d}), st.sets(one, min_size=1)))
    try:
        m = mixed(layout, dims, "op")
    except Skip:
        return
    keep = [d for d in range(len(layout)) if d not in dims]
    groups = t.permute(0, *[d + 1 for d in keep], *[d + 1 for d in sorted(dims)]).reshape(
        2, -1, math.prod(t.shape[1 + d] for d in dims))
    for i, axis in enumerate("hw"):
        lo, hi = groups[i].amin(-1), groups[i].amax(-1)
        if axis not in m:
            assert torch.equal(lo, hi)
        elif m[axis] is None:
            assert (hi - lo + 1 > size[i] // 2).all()
        else:
            w = m[axis]
            assert (hi - lo + 1 == w).all() and (lo % w == 0).all()
            assert all(len(set(g.tolist())) == w for g in groups[i])
    if None in m.values():
        return
    pooled = L.pool_atoms(layout, m, "pool")
    reduced = [t.shape[1 + d] for d in keep]
    left = tuple(dim for d, dim in enumerate(pooled) if d in keep)
    blocks = _atom_positions(left, reduced)
    for i, axis in enumerate("hw"):
        expect = groups[i].amin(-1).reshape(reduced) // m.get(axis, 1)
        assert torch.equal(blocks[axis], expect)
