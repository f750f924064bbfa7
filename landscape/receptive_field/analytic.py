"""Analytic receptive field per layer: r_min / r_max per axis, layer flags and r̃.

Definitions (n = input size in pixels, square inputs; RF sizes per image axis H and W):

* r_max / r_min of a tensor: largest / smallest RF over all input-to-tensor paths
  (Araujo et al., Distill 2019; Richter & Pal, rfa-toolbox), e.g. a residual block with two
  3x3 convs on its main path and an identity shortcut keeps r_min and grows r_max.
* r̃, the *minimal feasible input resolution* (Richter & Pal 2022, "Receptive Field Refinement
  for CNNs Reliably Improves Predictive Performance", Eq. 7): the largest r_min over ALL
  layers, per axis (:func:`min_feasible_input`). Not the r_min of the last layer: a skip
  path can end with a smaller r_min than a conv inside the block (ConvNeXt), and a final
  max-pool adds to the last conv's (torchvision VGG19: last conv 252, r̃ 268).
* A layer is *unproductive* for input size n when the minimum RF of its input is already at
  least n along both axes: ``input_r_min >= n``; it cannot integrate context that is not
  already available to every path. This is the predecessor test of rfa-toolbox's
  ``EnrichedNetworkNode.is_border`` (``input_resolution <= receptive_field_min`` of every
  predecessor, all axes), which also asks for the layer's own ``r_min > n`` and flags layers
  whose input map is no larger than their kernel (docs/receptive-field.md).
* The *border layer* is the first unproductive layer in forward order (so every layer is
  productive before it).
* A layer is *underutilised* when its own output r_min exceeds n along both axes. The
  comparison is the ``convention`` parameter: ``"rfa"`` (default) uses ``r_min > n``, the
  test of rfa-toolbox's "critical" layers (``own``), so n = r̃ leaves every layer utilised;
  ``"paper"`` uses ``r_min >= n``, the paper's reading that r̃ = n is not fully utilised.
* Head layers, whose output RF is the whole input (global pooling, Linear on flattened maps,
  attention, anything after them), are reported with ``is_global = True`` and NA sizes and
  are never flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from torch import nn

from landscape.fixed_size import built_for
from landscape.receptive_field.cost import meta_clone
from landscape.receptive_field.geometry import (
    AXES, Geometry, LayerRecord, Unsupported, UnsupportedModelError,
)
from landscape.receptive_field.graph import Traced, fx_traced, propagate, size_pair
from landscape.receptive_field.hooks import record_forward

TABLE_COLUMNS = (
    "layer", "kind", "kernel", "stride", "padding", "dilation", "jump", "r_min", "r_max",
    "input_r_min", "effective_padding", "center", "in_size", "out_size", "is_global",
    "unproductive", "border", "underutilised", "kernel_h", "kernel_w", "jump_h", "jump_w",
    "r_min_h", "r_min_w", "r_max_h", "r_max_w", "input_r_min_h", "input_r_min_w",
)
CONVENTIONS = ("rfa", "paper")
TRACERS = ("auto", "fx", "hooks")
_INT_COLUMNS = ("kernel", "stride", "padding", "dilation", "jump", "r_min", "r_max",
                "input_r_min", "effective_padding", "in_size", "out_size", "kernel_h",
                "kernel_w", "jump_h", "jump_w", "r_min_h", "r_min_w", "r_max_h", "r_max_w",
                "input_r_min_h", "input_r_min_w")
_BOOL_COLUMNS = ("is_global", "unproductive", "border", "underutilised")


def trace(model: nn.Module, input_size: int | None, tracer: str = "auto") -> Traced:
    """``tracer="auto"``: the fx trace of ``model``, or where fx fails the recorded meta-device
    forward (:mod:`.hooks`); ``"fx"`` / ``"hooks"``: only that one."""
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {', '.join(TRACERS)}; got {tracer!r}")
    if isinstance(model, nn.Module):  # never the caller's: a trace can write into its state
        model = meta_clone(model)
    if tracer == "hooks":
        return record_forward(model, size_pair(input_size), "(tracer='hooks')")
    try:
        return fx_traced(model, input_size)
    except UnsupportedModelError as exc:
        if tracer == "fx":
            raise
        return record_forward(model, size_pair(input_size), str(exc))


def layer_records(model: nn.Module, input_size: int | None = None, *,
                  se_gates: str = "scale", tracer: str = "auto") -> list[LayerRecord]:
    """Conv/pool/linear/attention records of ``model`` in forward order (see :mod:`.graph`)."""
    return propagate(trace(model, input_size, tracer), input_size, se_gates=se_gates)[1]


def square_input_size(input_size: object) -> int:
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        if input_size[0] != input_size[1]:
            raise ValueError(f"input_size must be square for the RF analysis, got {input_size}")
        input_size = input_size[0]
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer (pixels), got {input_size!r}")
    return input_size


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got "
                         f"{convention!r}")


def _finite(x: float | None) -> int | None:
    return int(x) if x is not None and math.isfinite(x) else None


def _square(pair: tuple[int, int] | None, pick=max) -> int | None:
    """The value where both axes agree; else ``pick`` of the two (documented per column)."""
    if pair is None or None in pair:
        return None
    return pair[0] if pair[0] == pair[1] else pick(pair)


def _row(rec: LayerRecord, n: int, convention: str) -> dict[str, object]:
    if isinstance(rec.out, Unsupported):
        raise UnsupportedModelError(rec.out.reason)
    inp = rec.inp if isinstance(rec.inp, Geometry) else None
    out = rec.out if isinstance(rec.out, Geometry) else None
    local = out is not None and out.is_local
    in_local = inp is not None and inp.is_local
    ax = {a: out.axis(a) for a in AXES} if out is not None else {}
    in_r_min = {a: _finite(inp.axis(a).r_min) for a in AXES} if inp is not None else {}
    r_min = {a: _finite(ax[a].r_min) for a in AXES} if out is not None else {}
    r_max = {a: _finite(ax[a].r_max) for a in AXES} if out is not None else {}
    jump = {a: ax[a].jump for a in AXES} if local else {}
    at_least = (lambda r: r > n) if convention == "rfa" else (lambda r: r >= n)
    centers = {(ax[a].lo + ax[a].hi) / 2 for a in AXES} if local else set()
    return {
        "layer": rec.name, "kind": rec.kind, "kernel": _square(rec.kernel),
        "stride": _square(rec.stride), "padding": _square(rec.padding),
        "dilation": _square(rec.dilation), "jump": _square(tuple(jump.values()) or None),
        "r_min": _square(tuple(r_min.values()) or None, min),
        "r_max": _square(tuple(r_max.values()) or None),
        "input_r_min": _square(tuple(in_r_min.values()) or None, min),
        "effective_padding": _square(tuple(-ax[a].lo for a in AXES)) if local else None,
        "center": centers.pop() if len(centers) == 1 else math.nan,
        "in_size": _square(tuple(inp.axis(a).size for a in AXES)) if in_local else None,
        "out_size": _square(tuple(ax[a].size for a in AXES)) if local else None,
        "is_global": not (out is not None and math.isfinite(out.r_max)),
        "unproductive": local and all(r is not None and r >= n for r in in_r_min.values()),
        "border": False,
        "underutilised": local and all(r is not None and at_least(r) for r in r_min.values()),
        "kernel_h": rec.kernel[0] if rec.kernel else None,
        "kernel_w": rec.kernel[1] if rec.kernel else None,
        "jump_h": jump.get("h"), "jump_w": jump.get("w"),
        "r_min_h": r_min.get("h"), "r_min_w": r_min.get("w"),
        "r_max_h": r_max.get("h"), "r_max_w": r_max.get("w"),
        "input_r_min_h": in_r_min.get("h"), "input_r_min_w": in_r_min.get("w"),
    }


def receptive_field_table(model: nn.Module, input_size: int | tuple[int, int], *,
                          se_gates: str = "scale", convention: str = "rfa",
                          tracer: str = "auto") -> pd.DataFrame:
    """One row per conv/pool/linear/attention op of ``model``, in forward order.

    Columns (sizes in input pixels; NA where undefined). Per-axis columns end in ``_h`` /
    ``_w``; the square columns hold the common value where both axes agree and otherwise
    (rectangular kernels, e.g. InceptionV3's 1x7) the larger axis, except ``r_min`` and
    ``input_r_min``, which hold the smaller one (so "smallest RF" still holds, and
    ``input_r_min >= n`` still means "along both axes"), and ``center`` (NaN):

    * ``layer``: module path (node name for functional ops; the recorded fallback prefixes the
      calling module's path); ``kind``: conv, max_pool, avg_pool, adaptive_avg_pool,
      adaptive_max_pool, global_avg_pool, linear or attention;
    * ``kernel, stride, padding, dilation``: the op's own settings (padding = left/top);
      ``kernel_h, kernel_w``: per axis; a Linear applied per position (a ViT/ConvNeXt MLP)
      is a 1x1 window, a Linear on flattened features has none;
    * ``jump`` (``jump_h, jump_w``): distance in input pixels between neighbouring output
      positions (effective stride, Araujo's S);
    * ``r_min, r_max`` (``r_min_h`` ... ``r_max_w``): min / max RF of the output over all
      paths; NA when global;
    * ``input_r_min`` (``input_r_min_h, input_r_min_w``): r_min of the op's input (what
      "unproductive" tests);
    * ``effective_padding``: Araujo's P; output position u covers the input pixels
      ``[u*jump - P, u*jump - P + span - 1]`` (span = r_max when all paths are centred alike);
    * ``center``: input coordinate of the RF centre of output position 0 (``u*jump + center``
      for position u); ``in_size, out_size``: spatial sizes of input and output (0 = vanished);
    * ``is_global``: some path sees the whole input (global pooling, Linear on flattened maps,
      attention, and later; adaptive pooling of one axis to 1 but not the other, a per-axis
      global field, is reported as global);
    * ``unproductive``: ``input_r_min >= input_size`` on both axes; ``border``: True on the
      first unproductive layer only; ``underutilised``: ``r_min > input_size`` on both axes
      (``convention="paper"``: ``>=``; module doc).

    ``se_gates``: ``"scale"`` (default) counts a squeeze-and-excitation gate (a feature map
    times a tensor computed only from global features) as a channel rescaling that adds no
    path; ``"global"`` counts it as a global path (r_max = inf after it). ``tracer``:
    ``"auto"`` traces with torch.fx and, where fx fails, records a meta-device forward
    (:mod:`.hooks`, which names what it cannot see); ``"fx"`` / ``"hooks"`` force one.
    ``df.attrs["trace"]`` says which was used.

    Raises :class:`UnsupportedModelError` naming the module and op when the model cannot be
    traced either way or a reported layer depends on an op whose effect on the RF is unknown.
    """
    n = square_input_size(input_size)
    _check_convention(convention)
    traced = trace(model, n, tracer)
    rows = [_row(rec, n, convention)
            for rec in propagate(traced, n, se_gates=se_gates)[1]]
    for row in rows:
        if row["unproductive"]:
            row["border"] = True
            break
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in _INT_COLUMNS:
        # a resize by a non-integer ratio spaces positions unevenly: its mean jump is a float
        fractional = col.startswith("jump") and not all(
            float(v).is_integer() for v in df[col].dropna())
        df[col] = df[col].astype(float if fractional else "Int64")
    df["center"] = df["center"].astype(float)
    for col in _BOOL_COLUMNS:
        df[col] = df[col].astype(bool)
    df.attrs["trace"] = traced.method
    return df


STATES = ("productive", "underutilised", "unproductive", "global", "head")


def layer_states(table: pd.DataFrame) -> list[str]:
    """Per row of a :func:`receptive_field_table`: ``global`` (a global RF inside the network:
    a later row, or this one, still has positions with a local path, e.g. attention and the
    blocks after it, or a squeeze-and-excitation branch), ``head`` (a global RF with no
    positions after it: global pooling, the classifier), then ``unproductive``,
    ``underutilised`` or ``productive``, in that precedence."""
    positions = table["r_min"].notna().to_numpy(bool)[::-1].cumsum()[::-1] > 0  # here or later
    return [("global" if p else "head") if g else "unproductive" if u
            else "underutilised" if w else "productive"
            for g, u, w, p in zip(table["is_global"], table["unproductive"],
                                  table["underutilised"], positions)]


def mixes_globally(table: pd.DataFrame) -> bool:
    """Whether the network mixes every position with every other *before* its head: a row
    whose output keeps positions with a local path (a finite ``r_min``) while another path
    sees the whole input (``is_global``), as after attention or a token-mixing MLP with a
    residual. A CNN whose only global ops are its pooled head (and squeeze-and-excitation
    gates, with ``se_gates="scale"``) does not."""
    return bool((table["is_global"].astype(bool) & table["r_min"].notna()).any())


def trunk_rows(table: pd.DataFrame) -> pd.Series:
    """Mask of the rows that are local or part of the head: global rows followed by local ones
    (squeeze-and-excitation branches inside the network) are False."""
    local = ~table["is_global"].astype(bool)
    after = local[::-1].cummax()[::-1].shift(-1, fill_value=False)  # a local row follows
    return local | ~after


@dataclass(frozen=True)
class FeasibleInput:
    """r̃ per axis (pixels): the largest r_min over all layers along H (``h``) and W (``w``),
    and the first layers where they are reached. ``size``: r̃ where both axes agree, else
    ``(h, w)``."""

    h: int
    w: int
    layer_h: str
    layer_w: str

    @property
    def size(self) -> int | tuple[int, int]:
        return self.h if self.h == self.w else (self.h, self.w)


def min_feasible_input(model: nn.Module, input_size: int | None = None, *,
                       se_gates: str = "scale", tracer: str = "auto") -> FeasibleInput:
    """r̃, the minimal feasible input resolution (Eq. 7 of Richter & Pal 2022): per axis, the
    largest r_min over every conv/pool/linear output with a local RF (module doc).

    An architecture property, except where a window depends on the input size: adaptive
    pooling to more than 1x1 (torchvision's VGG / AlexNet heads) needs ``input_size``, and
    the error says so. Inputs of at least r̃ on both axes leave no layer underutilised
    (``convention="rfa"``); ``se_gates`` as for :func:`receptive_field_table` (it changes
    r_max only, never r_min), ``tracer`` too. rfa-toolbox's ``input_resolution_range`` adds another lower
    bound, each layer's kernel size times its output jump (e.g. 96 for ResNet50 where Eq. 7
    gives 75); that term is not in Eq. 7 and not used here.
    """
    if input_size is not None:
        input_size = square_input_size(input_size)
    def local_r_min():
        for rec in layer_records(model, input_size, se_gates=se_gates, tracer=tracer):
            if isinstance(rec.out, Unsupported):
                raise UnsupportedModelError(rec.out.reason)
            if isinstance(rec.out, Geometry) and rec.out.is_local:
                yield rec.name, rec.out.axis("h").r_min, rec.out.axis("w").r_min

    return _largest_r_min(local_r_min(), type(model).__name__)


def feasible_input_of(table: pd.DataFrame) -> FeasibleInput:
    """:func:`min_feasible_input` read off a :func:`receptive_field_table` of the model (no
    second trace): the largest r_min per axis over its rows with a local path, those behind
    global attention included (their r_min is finite: the skip beside it), as there."""
    return _largest_r_min(zip(table["layer"], table["r_min_h"], table["r_min_w"]), "the model")


def _largest_r_min(rows, what: str) -> FeasibleInput:
    """r̃ per axis from (layer, r_min_h, r_min_w) in forward order: the largest finite r_min and
    the first layer that reaches it."""
    best: dict[str, tuple[int, str]] = {}
    for name, *r_min in rows:
        for a, r in zip(AXES, r_min):
            finite = r is not None and not pd.isna(r) and math.isfinite(r)
            if finite and r > best.get(a, (0, ""))[0]:
                best[a] = (int(r), str(name))
    if len(best) < 2:
        raise ValueError(f"{what} has no layer with a local receptive field, so it has no "
                         "minimal feasible input resolution")
    return FeasibleInput(h=best["h"][0], w=best["w"][0], layer_h=best["h"][1],
                         layer_w=best["w"][1])


def _deepest_conv(records: list[LayerRecord]) -> LayerRecord:
    """The Conv2d with the largest finite r_max (the last one among equals): the last conv of
    a chain, the last block's second conv of a ResNet even where its projection shortcut
    runs later (that 1x1 conv sees only what the block's input saw)."""
    convs = [r for r in records if r.kind == "conv"]
    if not convs:
        raise ValueError("the model has no Conv2d layer, so it has no last-conv receptive field")
    for r in convs:
        if isinstance(r.out, Unsupported):
            raise UnsupportedModelError(r.out.reason)
    local = [r for r in convs if isinstance(r.out, Geometry) and math.isfinite(r.out.r_max)]
    if not local:
        raise ValueError(f"the last conv '{convs[-1].name}' sees the whole input (it follows "
                         "global pooling or a Linear); it has no finite receptive field")
    top = max(r.out.r_max for r in local)
    return [r for r in local if r.out.r_max == top][-1]


def max_receptive_field(model: nn.Module) -> int:
    """r_max (pixels, the larger axis) of the network's last conv features: the largest r_max
    over its Conv2d layers (the last conv's for a plain chain; module doc of
    :func:`_deepest_conv`); independent of the input size. :func:`feature_field` also
    counts per-position Linears and windowed attention (a transformer's blocks)."""
    return int(_deepest_conv(layer_records(model, None)).out.r_max)


FEATURE_KINDS = ("conv", "linear", "attention")


def feature_field(model: nn.Module, input_size: int | None = None) -> tuple[int, bool]:
    """(r_max, mixing) of the network's deepest local features at ``input_size`` (default:
    the size the model was built for, :func:`~landscape.fixed_size.built_for`, else
    size-free): the largest finite r_max over its convs, Linears applied per position and
    windowed attention (:mod:`.mixing`; a model without a conv, NaFlexViT's Linear patch
    embedding, by those). For a CNN it is :func:`max_receptive_field`, at any
    size; for a Swin, the RF its windows grow to before one window covers the map, which
    depends on the size. ``mixing``: whether it then :func:`mixes_globally` before its head
    (a ViT: its patch embedding is all that is local). A layer the trace cannot follow is an
    error, never a smaller r_max."""
    records = layer_records(model, input_size if input_size is not None else built_for(model))
    for r in records:
        if r.kind in FEATURE_KINDS and isinstance(r.out, Unsupported):
            raise UnsupportedModelError(r.out.reason)
    local = [r.out.r_max for r in records if r.kind in FEATURE_KINDS
             and isinstance(r.out, Geometry) and math.isfinite(r.out.r_max)]
    if any(r.kind == "conv" for r in records) or not local:
        _deepest_conv(records)  # no local conv: its error (a Linear-first model may have none)
    mixing = any(isinstance(r.out, Geometry) and math.isfinite(r.out.r_min)
                 and not math.isfinite(r.out.r_max) for r in records)
    return int(max(local)), mixing


def deepest_conv(model: nn.Module) -> str:
    """Name of the conv whose r_max is :func:`max_receptive_field` (the last among equals)."""
    return _deepest_conv(layer_records(model, None)).name
