"""Receptive-field refinement proposals (Richter & Pal 2022): for an input size at which a
model is not fully utilised, the minimal changes that bring r̃ down towards the input size.

* ``less_downsampling``: one downsampling point loses its stride. A point is every strided
  conv / pool whose input has the same jump (a ResNet stage's first 3x3 conv and its 1x1
  projection shortcut are one point); all of them get stride 1, nothing else changes, so the
  parameter count stays and the FLOPs grow.
* ``shorter``: the trailing blocks from the one holding the first underutilised layer on are
  dropped (replaced by ``nn.Identity``) where their output has the shape of their input, so
  they can go without touching the rest; a block is an element of an ``nn.Sequential`` that
  is not inside another block (a ResNet's ``layer4.1``, an EfficientNet's ``features.6.2``).
* ``shorter_wider``: ``shorter`` on the model rebuilt at the width (a ``rebuild(width)``
  callable, e.g. the ``width`` multiplier of the project's own architectures) that brings the
  parameter count back to within ``tolerance`` of the original's (bisection; where channel
  counts are rounded, the closest width found, with the ``params_change`` it reaches). Widening
  is uniform over the kept layers; models without a width knob get ``shorter`` only.

Each proposal is a list of edits (:func:`apply_edits`; :meth:`Proposal.apply` makes it on any
instance of the architecture, e.g. one built on the GPU to train) and is re-analysed: r̃,
parameters, FLOPs, the number of underutilised and unproductive layers at the input size, the
share of conv and linear weights that only multiply padding there (``padding_only``,
:mod:`.padding`), and whether the changed model still runs (a meta-device forward pass); a
change that breaks the model is listed with the reason instead of numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from landscape.receptive_field.analytic import (
    feasible_input_of, receptive_field_table, square_input_size,
)
from landscape.receptive_field.cost import meta_copy, model_cost
from landscape.receptive_field.padding import padding_only_share

PROPOSAL_COLUMNS = (
    "strategy", "change", "r_tilde", "params", "params_change", "flops", "n_underutilised",
    "n_unproductive", "padding_only", "fully_utilised", "width", "error",
)
_STRIDED = ("conv", "max_pool", "avg_pool")


Edit = tuple[str, str]  # ("stride1" | "drop", module path)


def apply_edits(model: nn.Module, edits: Sequence[Edit]) -> nn.Module:
    """``model`` changed in place by ``edits``: ``("stride1", path)`` sets that conv's / pool's
    stride to 1, ``("drop", path)`` replaces that block by ``nn.Identity``."""
    for kind, path in edits:
        mod = model.get_submodule(path)
        if kind == "stride1":
            if isinstance(mod, nn.Conv2d):
                mod.stride = (1, 1)
            elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
                mod.stride = 1
            else:
                raise ValueError(f"'{path}' is a {type(mod).__name__}, whose stride cannot be "
                                 "set")
        elif kind == "drop":
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, name, nn.Identity())
        else:
            raise ValueError(f"unknown edit {kind!r}; valid: stride1, drop")
    return model


@dataclass
class Proposal:
    """One candidate: its row of :data:`PROPOSAL_COLUMNS`, the ``edits`` that make it, the
    ``width`` multiplier to rebuild at first (``shorter_wider``; else None) and ``model``, the
    changed model on the meta device (None when the change breaks the model)."""

    row: dict[str, object]
    model: nn.Module | None = field(default=None, repr=False)
    edits: tuple[Edit, ...] = ()
    width: float | None = None
    table: pd.DataFrame | None = field(default=None, repr=False)  # its receptive-field table

    def apply(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (the analysed architecture built anywhere, with any weights,
        e.g. ``torchvision.models.resnet18()`` on the GPU; for ``shorter_wider`` built at
        :attr:`width`) with this proposal's edits: a model to train."""
        return apply_edits(copy.deepcopy(model), self.edits)


def _analyse(strategy: str, change: str, model: nn.Module, n: int, in_channels: int,
             base_params: int, rf: dict[str, str], width: float | None = None,
             edits: Sequence[Edit] = ()) -> Proposal:
    """``rf``: the ``convention`` and ``se_gates`` of :func:`receptive_field_table`."""
    row: dict[str, object] = {"strategy": strategy, "change": change, "width": width}
    made = {"edits": tuple(edits), "width": width}
    try:
        table = receptive_field_table(model, n, **rf)
        cost = model_cost(model, n, in_channels)
        dead = padding_only_share(model, n, in_channels)
        r = feasible_input_of(table)
    except Exception as e:  # the change broke the model: say why, keep the other proposals
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return Proposal(row, **made)
    under = int(table["underutilised"].sum())
    row.update(r_tilde=r.size if isinstance(r.size, int) else max(r.size), params=cost.params,
               params_change=cost.params / base_params - 1, flops=cost.flops,
               n_underutilised=under, n_unproductive=int(table["unproductive"].sum()),
               padding_only=dead, fully_utilised=under == 0, error=None)
    return Proposal(row, model, table=table, **made)


def downsampling_points(table: pd.DataFrame) -> list[tuple[float, list[str]]]:
    """(input jump, layer names) of every downsampling point of a receptive-field table, in
    forward order (a float input jump only behind a resize by a non-integer ratio)."""
    strided = table[table["kind"].isin(_STRIDED) & (table["stride"].fillna(1) > 1)
                    & ~table["is_global"]]
    points: dict[float, list[str]] = {}
    for layer, jump, stride in zip(strided["layer"], strided["jump"], strided["stride"]):
        j = float(jump) / int(stride)
        points.setdefault(int(j) if j.is_integer() else j, []).append(layer)
    return list(points.items())


def _blocks(model: nn.Module) -> list[str]:
    """Paths of the blocks of ``model``: the elements of its ``nn.Sequential`` containers,
    except those inside an element that is not itself a Sequential (a MobileNet block's
    depthwise conv is part of the block, not a block of its own)."""
    mods = dict(model.named_modules())
    elements = [f"{path}.{name}" if path else name
                for path, mod in mods.items() if isinstance(mod, nn.Sequential)
                for name, _ in mod.named_children()]
    return [p for p in elements if not any(
        p.startswith(q + ".") and not isinstance(mods[q], nn.Sequential) for q in elements)]


def _shape_preserving(model: nn.Module, paths: list[str], n: int, in_channels: int
                      ) -> set[str]:
    shapes: dict[str, bool] = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, args, out, p=p: shapes.__setitem__(
            p, bool(args) and isinstance(out, torch.Tensor) and args[0].shape == out.shape))
        for p in paths]
    try:
        with torch.no_grad():
            model(torch.empty(1, in_channels, n, n, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return {p for p, same in shapes.items() if same}


def _trailing_blocks(model: nn.Module, table: pd.DataFrame, n: int, in_channels: int
                     ) -> list[str]:
    """Paths of the shape-preserving blocks from the one holding the first underutilised
    layer on (``shorter``; outermost only)."""
    under = [str(x) for x in table.loc[table["underutilised"], "layer"]]
    blocks = _blocks(model)
    order = {str(layer): i for i, layer in enumerate(table["layer"])}
    keep = _shape_preserving(model, blocks, n, in_channels)

    def rows_of(path: str) -> list[int]:
        return [i for layer, i in order.items() if layer == path or layer.startswith(path + ".")]

    # the shape-preserving blocks that hold the first underutilised layer or come after it
    first = min((order[u] for u in under), default=None)
    if first is None:
        return []
    drop = [p for p in blocks if p in keep and rows_of(p) and max(rows_of(p)) >= first]
    return [p for p in drop if not any(p.startswith(q + ".") for q in drop)]  # outermost


def refinement_proposals(model: nn.Module, input_size: int, *, in_channels: int | None = None,
                         convention: str = "rfa", se_gates: str = "scale",
                         rebuild: Callable[[float], nn.Module] | None = None,
                         width: float = 1.0, tolerance: float = 0.01) -> list[Proposal]:
    """The original model and every proposal (module doc) at ``input_size``, or the original
    alone when it is fully utilised there; ``rebuild``: the same architecture at another
    width multiplier (``width`` = the current one) for ``shorter_wider``. ``convention`` and
    ``se_gates`` are those of :func:`receptive_field_table`, for every model analysed."""
    rf = {"convention": convention, "se_gates": se_gates}
    n = square_input_size(input_size)
    base = meta_copy(model).eval()
    if in_channels is None:
        conv = next((m for m in base.modules() if isinstance(m, nn.Conv2d)), None)
        in_channels = conv.in_channels if conv is not None else 3
    original = _analyse("original", "-", base, n, in_channels, 1, rf,
                        width if rebuild is not None else None)
    if original.row.get("error"):
        raise ValueError(f"the model cannot be analysed at {n} px: {original.row['error']}")
    base_params = int(original.row["params"])
    original.row["params_change"] = 0.0
    proposals = [original]
    if original.row["fully_utilised"]:
        return proposals  # nothing to refine at this input size
    table = original.table
    for jump, layers in downsampling_points(table):
        edits = tuple(("stride1", name) for name in layers)
        change = f"stride 1 at {', '.join(layers)} (input jump {jump})"
        try:
            new = apply_edits(copy.deepcopy(base), edits)
        except (AttributeError, ValueError) as e:
            proposals.append(Proposal({"strategy": "less_downsampling", "change": change,
                                       "error": str(e)}, edits=edits))
            continue
        proposals.append(_analyse("less_downsampling", change, new, n, in_channels,
                                  base_params, rf, edits=edits))
    dropped = _trailing_blocks(base, table, n, in_channels)
    if dropped:
        edits = tuple(("drop", p) for p in dropped)
        change = f"drop {', '.join(dropped)}"
        proposals.append(_analyse("shorter", change, apply_edits(copy.deepcopy(base), edits),
                                  n, in_channels, base_params, rf, edits=edits))
        if rebuild is not None:
            proposals.append(_shorter_wider(rebuild, width, dropped, change, n, in_channels,
                                            base_params, rf, tolerance))
    return proposals


def _shorter_wider(rebuild: Callable[[float], nn.Module], width: float, dropped: list[str],
                   change: str, n: int, in_channels: int, base_params: int,
                   rf: dict[str, str], tolerance: float) -> Proposal:
    edits = tuple(("drop", p) for p in dropped)

    def shortened(w: float) -> nn.Module:
        with torch.device("meta"):  # shapes only: no initialisation cost
            return apply_edits(meta_copy(rebuild(w)).eval(), edits)

    def params(w: float) -> int:
        return sum(p.numel() for p in shortened(w).parameters())

    lo, hi = width, width
    while params(hi) < base_params and hi < 64 * width:
        lo, hi = hi, hi * 1.5
    best = min((lo, hi), key=lambda w: abs(params(w) - base_params))
    for _ in range(40):  # bisection on the width multiplier
        if abs(params(best) / base_params - 1) <= tolerance:
            break
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(mid) < base_params else (lo, mid)
        best = min((best, lo, hi), key=lambda w: abs(params(w) - base_params))
    return _analyse("shorter_wider", f"{change}; width {width:g} -> {best:.4g}",
                    shortened(best), n, in_channels, base_params, rf, width=best,
                    edits=edits)


def proposals_table(proposals: list[Proposal]) -> pd.DataFrame:
    """The rows of ``proposals`` as a DataFrame with :data:`PROPOSAL_COLUMNS`."""
    df = pd.DataFrame([p.row for p in proposals], columns=list(PROPOSAL_COLUMNS))
    for col in ("r_tilde", "params", "flops", "n_underutilised", "n_unproductive"):
        df[col] = df[col].astype("Int64")
    return df
