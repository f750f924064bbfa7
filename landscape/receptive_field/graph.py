"""Trace a model and walk the trace, propagating receptive-field geometry node by node.

The trace is a ``torch.fx`` graph (:func:`trace_model`, :func:`fx_traced`) or, where fx
cannot trace a model, a recorded forward pass on the meta device (:mod:`.hooks`). Each node
gets a state (see :mod:`.geometry`): a :class:`Geometry` for tensors with a receptive field,
``None`` for constants and shapes, :class:`Unsupported` where an op's effect is unknown (the
error is raised by whoever reads a quantity that depends on it). Conv / pool / linear /
attention nodes also yield a :class:`LayerRecord`, in forward (graph) order. What each op does
is in :mod:`.rules`, :mod:`.tensor_ops` and :mod:`.mixing`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from landscape.fixed_size import built_for
from landscape.receptive_field import layout as L
from landscape.receptive_field import rules
from landscape.receptive_field.context import Ctx, Values, get_attr
from landscape.receptive_field.geometry import (
    LayerRecord, Skip, State, Unsupported, UnsupportedModelError, image,
)

SAME_SHAPE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
              nn.Sigmoid, nn.Tanh, nn.Mish, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d,
              nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
PROBE_SIZE = 224  # input size of the meta-device shape pass when no input_size is given
# (and the model was not built for one: landscape.fixed_size.built_for)
# Its batch: 2, not 1, so that a reshape never mistakes the batch dimension for a size-1 map
# (EdgeNeXt at 32 px: (B, H*W, C) with B = H*W = 1 put H and W in the batch dimension).
PROBE_BATCH = 2
SE_GATES = ("scale", "global")


class _Tracer(fx.Tracer):
    """fx tracer that remembers the innermost module whose forward failed."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(rules.M.leaf_functions()))
        self.failed_in: str | None = None

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = f"module '{self.path_of_module(m)}' ({type(m).__name__})"
            raise


def _fx_graph(model: nn.Module) -> fx.Graph:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tracer = _Tracer()
    try:
        return tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or f"the forward of {type(model).__name__}"
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx (failed in {where}): {exc}."
        ) from exc


def trace_model(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` (forward hooks are not traced and are not needed)."""
    try:
        graph = _fx_graph(model)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{exc} The receptive-field analysis needs a model without "
                                    "data-dependent control flow.") from exc.__cause__
    return fx.GraphModule(model, graph, type(model).__name__)


@dataclass
class Traced:
    """A traced model: its graph, the module its targets resolve in, meta values per node and
    how it was traced (``"fx"`` or ``"hooks"``)."""

    graph: fx.Graph
    root: nn.Module
    name: str
    values: Values
    method: str


def size_pair(input_size: Any) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        return int(input_size[0]), int(input_size[1])
    return int(input_size), int(input_size)


def input_shape(root: nn.Module, graph: fx.Graph | None, size: tuple[int, int] | None
                ) -> tuple[int, int, int, int]:
    """(PROBE_BATCH, C, H, W): C from :func:`input_channels` (3 where nothing tells); without
    a ``size``, the size a timm model was built for, else :data:`PROBE_SIZE`."""
    default = built_for(root) or PROBE_SIZE
    h, w = size if size is not None else (default, default)
    c = input_channels(root, graph)
    return PROBE_BATCH, (3 if c is None else c), h, w


def input_channels(root: nn.Module, graph: fx.Graph | None = None) -> int | None:
    """The channels of the model's input: ``root.in_channels`` (ours) or ``root.in_chans``
    (timm's; its first op need not be a conv: CSATv2's DCT stem), else those of the first
    conv of the graph, else of the first Conv2d module; None where nothing tells."""
    for attr in ("in_channels", "in_chans"):
        c = getattr(root, attr, None)
        if isinstance(c, int) and not isinstance(c, bool):
            return c
    for node in graph.nodes if graph is not None else ():
        if node.op == "call_module" and isinstance(root.get_submodule(node.target), nn.Conv2d):
            return root.get_submodule(node.target).in_channels
        if node.op == "call_function" and node.target in (F.conv2d, torch.conv2d):
            weight = node.args[1] if len(node.args) > 1 else node.kwargs["weight"]
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                return int(get_attr(root, weight.target).shape[1]) * int(groups)
    conv = next((m for m in root.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def float_dtype(root: nn.Module) -> torch.dtype:
    p = next((p for p in itertools.chain(root.parameters(), root.buffers())
              if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def meta_state(mod: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and buffers as meta tensors (for ``functional_call``)."""
    return {k: v if v.is_meta else torch.empty_like(v, device="meta")
            for k, v in itertools.chain(mod.named_parameters(), mod.named_buffers())}


class MetaValues:
    """Values of an fx graph's nodes from a forward pass on the meta device, run lazily up to
    the node asked for; after a failure every later value is None and ``failure`` says why."""

    def __init__(self, graph: fx.Graph, root: nn.Module, shape: tuple[int, ...],
                 dtype: torch.dtype) -> None:
        self._nodes, self._root, self._shape, self._dtype = iter(graph.nodes), root, shape, dtype
        self._env: dict[fx.Node, Any] = {}
        self._placeholder_seen = False
        self.failure: str | None = None

    def get(self, node: fx.Node) -> Any:
        while node not in self._env and self.failure is None:
            n = next(self._nodes, None)
            if n is None:
                break
            try:
                with torch.no_grad():
                    self._env[n] = self._run(n)
            except Exception as exc:
                self.failure = (f"the meta-device shape pass at input {self._shape} failed at "
                                f"{describe(n, self._root)}: {exc}")
        return self._env.get(node)

    def peek(self, node: fx.Node) -> Any:
        return self._env.get(node)

    def _run(self, n: fx.Node) -> Any:
        args = fx.node.map_arg(n.args, self._env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, self._env.__getitem__)
        if n.op == "placeholder":
            if self._placeholder_seen:
                return n.args[0] if n.args else None
            self._placeholder_seen = True
            return torch.empty(self._shape, device="meta", dtype=self._dtype)
        if n.op == "get_attr":
            v = get_attr(self._root, n.target)
            return torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "call_module":
            mod = self._root.get_submodule(n.target)
            if isinstance(mod, SAME_SHAPE) and isinstance(args[0], torch.Tensor):
                return torch.empty_like(args[0])  # activations, norms, dropout: only the shape
            if isinstance(mod, nn.Linear) and isinstance(args[0], torch.Tensor):
                x = args[0]
                return x.new_empty((*x.shape[:-1], mod.out_features))
            state = meta_state(mod)
            if all(v is getattr(mod, k, None) for k, v in state.items() if "." not in k):
                return mod(*args, **kwargs)  # already on the meta device
            return torch.func.functional_call(mod, state, args, kwargs)
        return None


def from_graph_module(gm: fx.GraphModule, input_size: Any) -> Traced:
    return _traced(gm.graph, gm, input_size)


def fx_traced(model: nn.Module, input_size: Any) -> Traced:
    """fx trace of ``model`` with lazily computed meta values."""
    return _traced(_fx_graph(model), model, input_size)


def _traced(graph: fx.Graph, root: nn.Module, input_size: Any) -> Traced:
    size = size_pair(input_size)
    values = MetaValues(graph, root, input_shape(root, graph, size), float_dtype(root))
    return Traced(graph, root, type(root).__name__, values, "fx")


def describe(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(root.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}() at node '{node.name}'"
    return f"function {getattr(node.target, '__name__', node.target)} at node '{node.name}'"


def propagate(traced: Traced | fx.GraphModule, input_size: Any, *, se_gates: str = "scale"
              ) -> tuple[dict[str, State], list[LayerRecord]]:
    """States of every node and the conv/pool/linear/attention records, in forward order."""
    if se_gates not in SE_GATES:
        raise ValueError(f"se_gates must be one of {', '.join(SE_GATES)}; got {se_gates!r}")
    if isinstance(traced, fx.GraphModule):
        traced = from_graph_module(traced, input_size)
    size = size_pair(input_size)
    states: dict[str, State] = {}
    records: list[LayerRecord] = []
    seen_input = False
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            states[node.name] = None if seen_input else image(size, L.canonical(4))
            seen_input = True
            continue
        if node.op in ("get_attr", "output"):
            states[node.name] = None
            continue
        mod = traced.root.get_submodule(node.target) if node.op == "call_module" else None
        ctx = Ctx(node, mod, describe(node, traced.root), states, traced.values, se_gates,
                  traced.root)
        ctx.settled = not rules.moves(ctx)
        tensors = ctx.tensors
        if not tensors or (node.op == "call_method" and node.target in rules.META_METHODS) or (
                node.target is getattr and node.args[1] in rules.META_ATTRS):
            states[node.name] = None
            continue
        bad = [s for s in tensors if isinstance(s, Unsupported)]
        record: dict[str, Any] | None = None
        try:
            if bad:
                out: State = bad[0]
                record = rules.layer_kind(ctx)
            else:
                out, record = rules.step(ctx)
        except Skip as exc:
            out = Unsupported(f"receptive field of {traced.name}: {exc}")
            record = record or rules.layer_kind(ctx)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            out = Unsupported(f"receptive field of {traced.name}: {ctx.where} could not be "
                              f"analysed ({type(exc).__name__}: {exc}); its arguments are not "
                              "of a form the RF rules know")
            record = record or rules.layer_kind(ctx)
        states[node.name] = out
        if record is not None:
            name = node.target if node.op == "call_module" else node.meta.get("rf_name",
                                                                               node.name)
            fields = {"kernel": None, "stride": None, "padding": None, "dilation": None, **record}
            # a rule may name the map it really reads (a conv over positions held in its
            # channels reads their blocks)
            first = fields.pop("input", ctx.x if ctx.x is not None else tensors[0])
            records.append(LayerRecord(name=name, node=node.name,
                                       inp=bad[0] if bad else first, out=out, **fields))
    return states, records
