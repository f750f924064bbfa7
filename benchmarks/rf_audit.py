"""Whether the analytic receptive field of every model of a zoo equals its input gradients.

The RF rules are each tested against input gradients on small models; this audit checks the
whole analysis on real architectures. Per model (built on the CPU without weights for
``--size``, copied to float64, eval mode, ReLU / BatchNorm / max-pool linearised as in
``measure_receptive_field(mode="linearised")``, an all-ones input): among the tensors the RF
analysis reads as a local 4-d map, (N, C, H, W) or (N, H, W, C), the one of largest r_max
whose analytic boxes at four positions lie inside the image (1 px margin; the centre c and
c - 2, c - 1, c + 1 on the diagonal: four phases of a resized map) is seeded at each
position (one batch element each), every channel with its own seeded weight in [0.5, 1.5),
and back-propagated, with
the global operand of every squeeze-and-excitation gate detached and GroupNorm /
InstanceNorm statistics passed straight through (the analysis's default
``se_gates="scale"``: a gate adds no path), and every all-zero weight tensor of more than
one element set to ones (a zero-initialised gain, NF-ResNet's skipinit, would cut a path).
The box of the non-zero input gradient, per axis, is compared with the
analytic one (``Axis.span``, exact per phase):

The worst verdict over the four positions is the model's:

* ``equal``: what the table says;
* ``exceeds``: the gradient reaches a pixel the analysis says the position cannot see (a
  wrong table: the analysis misses a path);
* ``inside``: a smaller box (a path whose gradient vanishes here, e.g. a weight initialised
  to zero, or a wrong table that claims a path that is not there: to inspect).

A model torch.fx cannot trace is audited on the analysis's recorded forward (the fallback
every table of it comes from; :func:`audit_recorded`): among leaf-module outputs, with
``se_gates="global"`` and only module-level linearisation, so there ``exceeds`` is the
finding and ``inside`` may be a nonlinearity's zero.

``--source torchvision | timm | timm-modules`` as for ``rf_table``; models over
``--max-params`` are left out (the float64 copy). No target: every model not ``equal`` is
listed.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from benchmarks.common import make_parser, parse
from benchmarks.rf_table import over_zoo, qualified_names, zoo_arguments
from landscape.models.sources import external_model
from landscape.receptive_field import layout as L
from landscape.receptive_field.analytic import trace
from landscape.receptive_field.geometry import Geometry, UnsupportedModelError
from landscape.receptive_field.graph import input_channels, propagate, trace_model
from landscape.receptive_field.measured import (
    IdentityGrad, MaxValueAvgGrad, linearise, straight_through,
)
from landscape.receptive_field.rules import GATE_MODULES, GATING

QUICK = ("torchvision:resnet18", "timm:convnext_atto")


def _map_dims(g: Geometry) -> tuple[int, int] | None:
    """(dim of H, dim of W) of a 4-d map whose batch is dim 0 and whose other dimension
    holds channels only; None for any other tensor."""
    if not (isinstance(g, Geometry) and g.is_local and g.layout is not None
            and len(g.layout) == 4):
        return None
    dims = L.intact(g.layout)
    rest = set(range(1, 4)) - set(dims.values())
    if len(dims) < 2 or 0 in dims.values() or L.is_spatial(g.layout[0]) or any(
            L.is_spatial(g.layout[d]) for d in rest):
        return None
    return dims["h"], dims["w"]


# positions c + k on the diagonal of the map (c its centre): four phases of a resized map
OFFSETS = (-2, -1, 0, 1)


def pick(graph: fx.Graph, states: dict, size: int, allowed=lambda node: True
         ) -> tuple[fx.Node, tuple[int, int], list] | None:
    """(node, its (H, W) dims, per position of :data:`OFFSETS` the analytic (first, last)
    input rows and columns) of the ``allowed`` map of largest r_max whose boxes at those
    positions all lie inside the image, the last among equals; None when there is none."""
    best, key = None, -1.0
    for node in graph.nodes:
        g = states.get(node.name) if allowed(node) else None
        dims = _map_dims(g)
        if dims is None or not g.h.size or not g.w.size or not math.isfinite(g.r_max):
            continue
        if not all(0 <= a.size // 2 + k < a.size for a in (g.h, g.w) for k in OFFSETS):
            continue
        spans = [tuple(a.span(a.size // 2 + k) for a in (g.h, g.w)) for k in OFFSETS]
        if all(1 <= first and last <= size - 2 for box in spans for first, last in box) and \
                g.r_max >= key:
            best, key = (node, dims, spans), g.r_max
    return best


def gradient_boxes(gm: fx.GraphModule, node: str, dims: tuple[int, int], channels: int,
                   size: int) -> list:
    """Per position of :data:`OFFSETS`, the first and last input row / column with a
    non-zero gradient of that position of ``node`` (every channel, seeded weights), on ``gm``
    linearised, for an all-ones input: one batch element per position."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = (next(n for n in gm.graph.nodes if n.name == node),)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    x = torch.ones(len(OFFSETS), channels, size, size, dtype=torch.float64,
                   requires_grad=True)
    return _boxes_of(x, gm(x), dims)


def _boxes_of(x: Tensor, y: Tensor, dims: tuple[int, int]) -> list:
    """Per batch element b, the input rows / columns with a non-zero gradient of ``y``'s
    position centre + OFFSETS[b] (the batch elements are independent: eval mode)."""
    seed = torch.zeros_like(y)
    # unequal channel weights: an equal gradient on every channel of a LayerNorm's output
    # (weights 1) has no component it passes back (it is the mean direction it removes)
    gen = torch.Generator().manual_seed(0)
    for b, k in enumerate(OFFSETS):
        index: list = [b, slice(None), slice(None), slice(None)]
        index[dims[0]], index[dims[1]] = y.shape[dims[0]] // 2 + k, y.shape[dims[1]] // 2 + k
        seed[tuple(index)] = torch.rand(seed[tuple(index)].shape, generator=gen,
                                        dtype=seed.dtype) + 0.5
    (grad,) = torch.autograd.grad(y, x, seed)
    boxes = []
    for b in range(len(OFFSETS)):
        hit = grad[b].ne(0).any(dim=0)
        rows = hit.any(dim=1).nonzero().flatten().tolist()
        cols = hit.any(dim=0).nonzero().flatten().tolist()
        boxes.append((((rows[0], rows[-1]) if rows else None),
                      ((cols[0], cols[-1]) if cols else None)))
    return boxes


def _result(layer: str, trace: str, spans: list, boxes: list, gates: int) -> dict:
    """One row: the worst verdict over the positions (exceeds, then inside), the centre's
    boxes shown unless another position is worse (then the first such)."""
    verdicts = [verdict(a, m) for a, m in zip(spans, boxes)]
    worst = next(v for v in ("exceeds", "inside", "equal") if v in verdicts)
    shown = OFFSETS.index(0) if verdicts[OFFSETS.index(0)] == worst else verdicts.index(worst)
    return {"layer": layer, "trace": trace, "analytic": spans[shown],
            "measured": boxes[shown], "position": OFFSETS[shown], "verdict": worst,
            "gates": gates}


def verdict(analytic: tuple, measured: tuple) -> str:
    """"equal", "exceeds" (some measured pixel outside the analytic box on an axis) or
    "inside"."""
    if any(m is None for m in measured):
        return "inside"
    if any(m[0] < a[0] or m[1] > a[1] for a, m in zip(analytic, measured)):
        return "exceeds"
    return "equal" if tuple(analytic) == tuple(measured) else "inside"


def detach_gates(gm: fx.GraphModule, states: dict) -> int:
    """Detach the global operand of every product of a local map with a tensor computed
    from global features (a squeeze-and-excitation gate), as the analysis's default
    ``se_gates="scale"`` reads it: a channel rescaling that adds no path (``states``: the
    analysis of ``gm``). Returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method") or node.target not in GATING:
            continue
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        local = [isinstance(states.get(a.name), Geometry) and states[a.name].is_local
                 for a in inputs]
        if not any(local):
            continue
        for arg, is_local in zip(inputs, local):
            if not is_local and isinstance(states.get(arg.name), Geometry):
                with gm.graph.inserting_before(node):
                    detached = gm.graph.call_method("detach", (arg,))
                node.replace_input_with(arg, detached)
                count += 1
    gm.recompile()
    return count


def _straight(function):
    def norm(x, *args, **kwargs):
        with torch.no_grad():
            value = function(x, *args, **kwargs)
        return straight_through(value, x)
    return norm


_STRAIGHT = {F.group_norm: _straight(F.group_norm), F.instance_norm: _straight(F.instance_norm)}


def straight_norms(gm: fx.GraphModule) -> int:
    """Swap every GroupNorm / InstanceNorm (module or function) for its values with an
    identity gradient; returns how many."""
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), GATE_MODULES):
            parent, _, child = node.target.rpartition(".")
            owner = gm.get_submodule(parent) if parent else gm
            setattr(owner, child, IdentityGrad(getattr(owner, child)))
            count += 1
        elif node.op == "call_function" and node.target in _STRAIGHT:
            node.target = _STRAIGHT[node.target]
            count += 1
    gm.recompile()
    return count


def audit(model: nn.Module, size: int) -> dict:
    """The audit of one model (module doc): layer, analytic and measured boxes, verdict."""
    work = copy.deepcopy(model).to(torch.float64).eval().requires_grad_(False)
    with torch.no_grad():  # a gain initialised to zero (NF-ResNet's skipinit) cuts paths
        for p in work.parameters():
            if p.numel() > 1 and not p.any():
                p.fill_(1.0)
    try:
        gm = trace_model(work)
    except UnsupportedModelError:
        return audit_recorded(model, work, size)
    states, _ = propagate(gm, size)
    # picked on the traced graph (the detached operands and swapped norms are not in it)
    found = pick(gm.graph, states, size)
    if found is None:
        raise ValueError(f"no local map whose boxes at {OFFSETS} fit a {size} px input")
    gates = detach_gates(gm, states) + straight_norms(gm)
    node, dims, spans = found
    channels = input_channels(model, gm.graph) or 3
    linearise(gm)
    boxes = gradient_boxes(gm, node.name, dims, channels, size)
    return _result(node.name, "fx", spans, boxes, gates)


def audit_recorded(model: nn.Module, work: nn.Module, size: int) -> dict:
    """The audit of a model fx cannot trace, on the analysis's recorded forward
    (:mod:`landscape.receptive_field.hooks`): with ``se_gates="global"`` (a gate inside a
    module cannot be detached here, so the maps behind one are not candidates), among the
    outputs of leaf modules that run once; ReLU / BatchNorm / max-pool linearised where they
    are modules, other nonlinearities (functions) kept, so a smaller box may be theirs:
    ``exceeds`` is the finding."""
    traced = trace(model, size, "hooks")
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    states, _ = propagate(traced, size, se_gates="global")
    found = pick(traced.graph, states, size,
                 lambda n: n.op == "call_module" and calls[n.target] == 1)
    if found is None:
        raise ValueError(f"no local module output whose boxes at {OFFSETS} fit a {size} px "
                         "input")
    node, dims, spans = found
    for name, module in list(work.named_modules()):
        # torch's own classes only: a subclass may pad in its forward (timm's MaxPool2dSame)
        new = (MaxValueAvgGrad(module) if type(module) is nn.MaxPool2d else
               IdentityGrad(module) if type(module) in (nn.ReLU, nn.BatchNorm2d) else None)
        if new is not None and name and not list(module.children()):  # leaves: names stay
            parent, _, child = name.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, child, new)
    out: dict = {}
    hook = work.get_submodule(node.target).register_forward_hook(
        lambda m, i, o: out.setdefault("y", o))
    x = torch.ones(len(OFFSETS), input_channels(model, traced.graph) or 3, size, size,
                   dtype=torch.float64, requires_grad=True)
    try:
        work(x)
    finally:
        hook.remove()
    return _result(node.target, "recorded", spans, _boxes_of(x, out["y"], dims), 0)


def _one(name: str, size: int, max_params: float) -> dict:
    row: dict = {"model": name, "layer": None, "trace": None, "analytic": None,
                 "measured": None, "position": None, "verdict": None, "gates": None,
                 "seconds": None, "failure": None}
    t0 = time.perf_counter()
    try:
        model = external_model(name, device="cpu", img_size=size)
        params = sum(p.numel() for p in model.parameters())
        if params > max_params:
            row["failure"] = f"left out: {params / 1e6:.0f}M parameters"
            return row
        row.update(audit(model, size))
    except Exception as e:  # noqa: BLE001 - a model that cannot be audited is listed
        row["failure"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        return row
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def main(argv=None) -> list[dict]:
    parser = make_parser(__doc__, "two models (resnet18, convnext_atto)", threads=2)
    zoo_arguments(parser, "torchvision", 224, max_params=100e6)
    args = parse(parser, argv)
    rows = over_zoo(
        list(QUICK) if args.quick else qualified_names(args.source),
        lambda name: _one(name, args.size, args.max_params),
        lambda row: row["failure"] or (f"{row['verdict']:8s} {row['trace']:8s} "
                                       f"{row['layer']}: analytic {row['analytic']}, "
                                       f"gradient {row['measured']}"))
    done = [r for r in rows if r["failure"] is None]
    summary = {"model": "ALL", "models": len(rows), "audited": len(done), "size": args.size,
               "recorded": sum(r["trace"] == "recorded" for r in done),
               **{v: [r["model"] for r in done if r["verdict"] == v]
                  for v in ("exceeds", "inside")},
               "equal": sum(r["verdict"] == "equal" for r in done),
               "failures": [r["model"] for r in rows if r["failure"]]}
    print(f"{len(done)}/{len(rows)} models audited at {args.size} px ({summary['recorded']} on "
          f"the recorded forward): {summary['equal']} equal, exceeds {summary['exceeds']}, "
          f"inside {summary['inside']}", flush=True)
    return rows + [summary]


if __name__ == "__main__":
    main()
