"""Walk a torch.fx trace of a model, propagating receptive-field geometry node by node.

Each node gets a state (see :mod:`.geometry`): a :class:`Geometry` for feature maps, ``FLAT``
after the spatial axes were flattened, ``None`` for constants and shapes. Conv/pool/linear
nodes also yield a :class:`LayerRecord`, in forward (graph) order. BatchNorm is treated as
per-channel affine (its eval-mode map); batch statistics are ignored, as is usual for RF
analysis. Anything computed only from global features stays global.

Anything else that touches a feature map is marked :class:`Unsupported` with a message naming
the module; the error is raised by whoever reads a quantity that depends on it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from landscape.receptive_field.geometry import (
    FLAT, GLOBAL, Flat, Geometry, LayerRecord, Skip, State, Unsupported, UnsupportedModelError,
    Window, adaptive, arg, function_window, merge, module_window, spatial_dims,
)

# ---------------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """fx tracer that remembers the innermost module whose forward failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = f"module '{self.path_of_module(m)}' ({type(m).__name__})"
            raise


def trace_model(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` (forward hooks are not traced and are not needed)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or f"the forward of {type(model).__name__}"
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx (failed in {where}): {exc}. "
            "The receptive-field analysis needs a model without data-dependent control flow."
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


# ---------------------------------------------------------------------------- supported ops

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d, nn.SyncBatchNorm,
)
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.imul, torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.relu,
    torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, F.relu, F.relu_, F.relu6,
    F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.sigmoid, F.tanh, F.dropout, F.dropout2d, F.batch_norm,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "clamp", "add", "add_", "sub", "mul", "mul_", "div",
    "neg", "clone", "contiguous", "float", "double", "to", "type_as",
}
_META_METHODS = {"size", "dim", "numel", "get_device"}


# ------------------------------------------------------------------------------ propagation


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}() at node '{node.name}'"
    return f"function {getattr(node.target, '__name__', node.target)} at node '{node.name}'"



def propagate(gm: fx.GraphModule, input_size: int | None
              ) -> tuple[dict[str, State], list[LayerRecord]]:
    """States of every node and the conv/pool/linear records, in forward (graph) order."""
    states: dict[str, State] = {}
    records: list[LayerRecord] = []
    seen_input = False
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            states[node.name] = None if seen_input else Geometry(1, 1, 1, 0, 0, input_size)
            seen_input = True
            continue
        if node.op in ("get_attr", "output"):
            states[node.name] = None
            continue
        where = _describe(node, gm)
        inputs = [states[n.name] for n in node.all_input_nodes]
        tensors = [s for s in inputs if s is not None]
        bad = [s for s in tensors if isinstance(s, Unsupported)]
        is_meta = (node.op == "call_method" and node.target in _META_METHODS) or (
            node.op == "call_function" and node.target is getattr)
        if is_meta or not tensors:
            states[node.name] = None
            continue
        record: dict[str, Any] | None = None
        try:
            if bad:
                out: State = bad[0]
                record = _layer_kind(node, gm, where)
            else:
                out, record = _step(node, gm, tensors, where)
        except Skip as exc:
            out = Unsupported(f"receptive field of {type(gm).__name__}: {exc}")
            record = record or _layer_kind(node, gm, where)
        states[node.name] = out
        if record is not None:
            name = node.target if node.op == "call_module" else node.name
            fields = {"kernel": None, "stride": None, "padding": None, "dilation": None, **record}
            records.append(LayerRecord(name=name, node=node.name, inp=(bad or tensors)[0],
                                       out=out, **fields))
    return states, records


def _layer_kind(node: fx.Node, gm: fx.GraphModule, where: str) -> dict[str, Any] | None:
    """Kind of a conv/pool/linear node (for a record whose state is Unsupported), else None."""
    t = node.target
    if node.op == "call_module":
        mod = gm.get_submodule(t)
        if isinstance(mod, nn.Conv2d):
            return {"kind": "conv"}
        if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                            nn.AdaptiveMaxPool2d)):
            return {"kind": "pool"}
        if isinstance(mod, nn.Linear):
            return {"kind": "linear"}
        return None
    if t in (F.conv2d, torch.conv2d):
        return {"kind": "conv"}
    if t in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
             F.adaptive_max_pool2d):
        return {"kind": "pool"}
    if t is F.linear:
        return {"kind": "linear"}
    return None


def _window_record(w: Window) -> dict[str, Any]:
    return {"kind": w.kind, "kernel": w.kernel, "stride": w.stride, "padding": w.padding,
            "dilation": w.dilation}


def _step(node: fx.Node, gm: fx.GraphModule, tensors: list[Geometry | Flat], where: str
          ) -> tuple[State, dict[str, Any] | None]:
    """Output state of one node and its record fields (None for non-layer nodes)."""
    t = node.target
    mod = gm.get_submodule(t) if node.op == "call_module" else None
    window = (module_window(mod, where) if mod is not None
              else function_window(node, gm, where) if node.op == "call_function" else None)
    first = tensors[0]
    flat_in = isinstance(first, Flat)
    if window is not None:
        if flat_in:
            raise Skip(f"{where} is applied to a flattened tensor")
        return window.apply(first), _window_record(window)

    pooled = None
    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        kind = "adaptive_avg_pool" if isinstance(mod, nn.AdaptiveAvgPool2d) else "adaptive_max_pool"
        pooled = (kind, mod.output_size)
    elif t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        kind = "adaptive_avg_pool" if t is F.adaptive_avg_pool2d else "adaptive_max_pool"
        pooled = (kind, arg(node, 1, "output_size", None))
    elif (node.op == "call_method" and t == "mean") or t is torch.mean:
        if flat_in:
            raise Skip(f"{where} averages a flattened tensor")
        dims = spatial_dims(arg(node, 1, "dim", (0, 1, 2, 3)))
        if {2, 3} <= dims:
            pooled = ("global_avg_pool", 1)
        elif dims & {2, 3}:
            raise Skip(f"{where} averages over one spatial axis only")
        else:
            return merge(tensors, where), None
    if pooled is not None:
        if flat_in:
            raise Skip(f"{where} is applied to a flattened tensor")
        w, out = adaptive(pooled[1], first, where)
        fields = _window_record(w) if w is not None else {}
        return out, {**fields, "kind": pooled[0]}

    if isinstance(mod, nn.Linear) or t is F.linear:
        if isinstance(first, Geometry) and first.is_local:
            raise Skip(f"{where} is applied to a spatial feature map (it would mix only the "
                       "last axis); flatten or pool globally first")
        return GLOBAL, {"kind": "linear"}

    if all(isinstance(s, Geometry) and not s.is_local for s in tensors):
        return GLOBAL, None  # anything computed from global features stays global

    if isinstance(mod, nn.Flatten) or t is torch.flatten or (
            node.op == "call_method" and t == "flatten"):
        start = mod.start_dim if mod is not None else arg(node, 1, "start_dim", 0)
        end = mod.end_dim if mod is not None else arg(node, 2, "end_dim", -1)
        if flat_in or (int(start) % 4 < int(end) % 4 and int(end) % 4 >= 2):
            return FLAT, None
        return merge(tensors, where), None
    if isinstance(mod, _ELEMENTWISE_MODULES) or (
            node.op == "call_function" and t in _ELEMENTWISE_FUNCTIONS) or (
            node.op == "call_method" and t in _ELEMENTWISE_METHODS):
        return merge(tensors, where), None
    if t is torch.cat:
        dim = arg(node, 1, "dim", 0)
        if flat_in or int(dim) % 4 in (0, 1):
            return merge(tensors, where), None
        raise Skip(f"{where} concatenates along spatial axis {dim}")
    raise Skip(f"{where} is not supported: it may change the spatial geometry. Supported: "
               "Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d, Linear, BatchNorm2d, "
               "activations, dropout, identity, add/mul, channel cat, flatten, global mean")
