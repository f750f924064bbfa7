"""Sliding blocks (landscape.receptive_field.blocks): nn.Unfold / F.unfold, the span of every
output position checked against its input gradient in float64; a fold of overlapping blocks
is refused by name (non-overlapping ones: tests/test_rf_partial_mixing.py)."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch import nn

from landscape.receptive_field import UnsupportedModelError, receptive_field_table
from test_rf_windows import analytic_spans, gradient_spans


class Unfolded(nn.Module):
    """conv (stride 2) -> unfold k x k (stride s) -> an element-wise op and a Linear mixing
    each block's taps -> the blocks reshaped into their map -> 1x1 ``head``; with
    ``module``, as ``nn.Unfold``."""

    def __init__(self, k: int = 3, stride: int = 1, module: bool = False) -> None:
        super().__init__()
        self.k, self.stride, self.module = k, stride, module
        self.a = nn.Conv2d(1, 2, 3, padding=1, stride=2)
        self.unfold = nn.Unfold(k, padding=k // 2, stride=stride)
        self.mix = nn.Linear(k * k, 1)
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        y = self.a(x)
        n, c = y.shape[:2]
        k, s = self.k, self.stride
        u = self.unfold(y) if self.module else F.unfold(y, k, padding=k // 2, stride=s)
        side = int(u.shape[-1] ** 0.5)
        u = u.relu().reshape(n, c, k * k, u.shape[-1]).transpose(-1, -2)  # (n, c, L, k k)
        return self.head(self.mix(u)[..., 0].reshape(n, c, side, side))


@pytest.mark.parametrize("k, stride, module", [(3, 1, False), (3, 2, False), (3, 1, True),
                                               (5, 2, True), (2, 2, False)])
def test_unfold_spans_equal_the_input_gradients(k, stride, module):
    """A block position sees its whole window (the union over its taps), as a conv's."""
    model = Unfolded(k, stride, module)
    assert analytic_spans(model, 64) == gradient_spans(model, 64)
    t = receptive_field_table(Unfolded(k, stride, module), 64).set_index("layer")
    assert t.loc["unfold", "kind"] == "unfold" and t.loc["unfold", "kernel"] == k
    assert t.loc["unfold", "r_max"] == 3 + 2 * (k - 1)  # the conv's 3 px, then k taps 2 apart
    assert t.loc["unfold", "jump"] == 2 * stride


class Folded(Unfolded):
    def forward(self, x):
        y = self.a(x)
        h, w = y.shape[-2:]
        return self.head(F.fold(F.unfold(y, 3, padding=1), (h, w), 3, padding=1))


def test_a_fold_is_refused_naming_it():
    """fold(unfold(y)) without mixing the taps is y times the count of blocks covering each
    position (no growth); with mixing, it grows by the window again: the layout cannot tell."""
    with pytest.raises(UnsupportedModelError, match="folds blocks back into a map"):
        receptive_field_table(Folded(), 32)


class Outlook(nn.Module):
    """VOLO's outlook attention without its fold: per position, weights over the 3x3 window's
    taps (a Linear of that position's features) times the unfolded taps, a matmul whose
    operands hold the positions only in a batch dimension; was taken as global attention."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1, stride=2)
        self.attn = nn.Linear(2, 81)
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        v = F.unfold(y, 3, padding=1).reshape(n, c, 9, h * w).permute(0, 3, 2, 1)
        attn = self.attn(y.permute(0, 2, 3, 1)).reshape(n, h * w, 9, 9).softmax(-1)
        o = (attn @ v).sum(2).transpose(1, 2).reshape(n, c, h, w)
        return self.head(o)


class Broadcast(nn.Module):
    """LambdaNet's position lambdas: per position, the query of each head (n, heads, M, 1, K)
    times that position's K x V lambda shared by the heads (n, 1, M, K, V): positions in a
    batch dimension, the heads broadcast against a size-1 one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1, stride=2)
        self.lam = nn.Conv2d(4, 6, 3, padding=1)  # K x V = 2 x 3 per position
        self.head = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        y = self.a(x)
        n, _, h, w = y.shape
        q = y.flatten(2).transpose(1, 2).reshape(n, h * w, 2, 2).transpose(1, 2)  # n, 2, M, K
        lam = self.lam(y).flatten(2).transpose(1, 2).reshape(n, 1, h * w, 2, 3)
        o = (q.unsqueeze(-2) @ lam).squeeze(-2)  # n, 2, M, 3
        return self.head(o.transpose(1, 2).reshape(n, h, w, 6).permute(0, 3, 1, 2))


@pytest.mark.parametrize("model_class", [Outlook, Broadcast])
def test_a_product_per_position_keeps_the_positions(model_class):
    """VOLO's outlook product, and LambdaNet's with heads broadcast against size 1."""
    assert analytic_spans(model_class(), 64) == gradient_spans(model_class(), 64)
    t = receptive_field_table(model_class(), 64).set_index("layer")
    assert not t.loc["head", "is_global"] and t.loc["head", "r_max"] == 7


class TokenPool(nn.Module):
    """NextViT's spatial reduction: a map flattened row-major into tokens (N, C, H*W), a 1-d
    pool (or a Conv1d) of kernel = stride k over them, then back into its (H, W / k) map;
    ``axis``: the tokens hold one image axis only (the other folded into the batch)."""

    def __init__(self, k: int, op: str, axis: bool = False) -> None:
        super().__init__()
        self.k, self.axis = k, axis
        self.a = nn.Conv2d(1, 2, 3, padding=1, stride=2)
        self.op = {"avg": nn.AvgPool1d(k), "max": nn.MaxPool1d(k),
                   "conv": nn.Conv1d(2, 2, k, stride=k)}[op]
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        if self.axis:  # (N * H, C, W): rows pooled along w only
            t = self.op(y.permute(0, 2, 1, 3).reshape(n * h, c, w))
            y = t.reshape(n, h, c, w // self.k).permute(0, 2, 1, 3)
        else:
            y = self.op(y.flatten(2)).reshape(n, c, h, w // self.k)
        return self.head(y)


@pytest.mark.parametrize("k, op, axis", [(4, "avg", False), (2, "max", False),
                                         (4, "conv", False), (4, "avg", True)])
def test_a_1d_window_within_rows_of_flattened_tokens_is_exact(k, op, axis):
    model = TokenPool(k, op, axis)
    assert analytic_spans(model, 64) == gradient_spans(model, 64)
    t = receptive_field_table(TokenPool(k, op, axis), 64).set_index("layer")
    assert t.loc["op", "kernel_w"] == k and t.loc["op", "kernel_h"] == 1


def test_a_1d_window_across_rows_is_refused():
    """Kernel 3 over rows of 32 tokens: some windows hold the end of one row and the start
    of the next."""
    with pytest.raises(UnsupportedModelError, match=r"1-d avg_pool of kernel 3, stride 3"):
        receptive_field_table(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, stride=2),
                                            nn.Flatten(2), nn.AvgPool1d(3)), 64)
