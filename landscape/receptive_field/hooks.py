"""Fallback trace where torch.fx fails: one recorded forward pass on the meta device.

The model runs once on a meta tensor (no memory, no arithmetic) with its parameters swapped for
meta copies (``torch.func.functional_call``; the model is not touched). Forward hooks on its
``torch.nn`` leaf modules (Conv2d, Linear, pools, norms, activations, ...) record each call
in order with its inputs and output, and a ``TorchFunctionMode`` records the torch functions
and tensor methods called outside those modules (``F.pad``, ``+``, ``torch.cat``,
``.view``...). Inputs are matched to the calls that produced them by tensor identity, which
rebuilds the data flow of this forward: skip connections, branches, concatenations and
functional ops are seen, not just a chain of modules. The records become an fx graph walked
by the same rules as an fx trace (:mod:`.graph`), so a table from this fallback has the same
columns and meaning.

What it cannot see: control flow that depends on tensor *values* (a meta tensor has none: the
forward fails, and the refusal names the module and op where); branches this input size does
not take (the trace is of one forward at the analysed size; when none is given, at the size a
timm model was built for, else 224 px);
work done outside torch (numpy, Python arithmetic on values); and where a tensor created outside
the forward is used, it is a constant. Modules outside ``torch.nn`` are entered, so their
internals are recorded op by op.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from landscape.receptive_field.geometry import UnsupportedModelError
from landscape.receptive_field.graph import (
    Traced, float_dtype, input_shape, meta_state,
)

_DUNDER = {"__getitem__": operator.getitem, "__add__": operator.add, "__iadd__": operator.iadd,
           "__sub__": operator.sub, "__isub__": operator.isub, "__mul__": operator.mul,
           "__imul__": operator.imul, "__truediv__": operator.truediv,
           "__itruediv__": operator.itruediv, "__matmul__": operator.matmul,
           "__neg__": operator.neg, "__pow__": operator.pow}
_REVERSED = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
             "__rtruediv__": operator.truediv, "__rmatmul__": operator.matmul}


class DictValues:
    """Values recorded by the forward, by node name."""

    failure: str | None = None

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def get(self, node: fx.Node) -> Any:
        return self._values.get(node.name)

    peek = get


def _is_leaf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn") and not isinstance(
        m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)


class _Recorder(TorchFunctionMode):
    """Records torch calls made outside leaf modules while ``active``."""

    def __init__(self, where: Any) -> None:
        super().__init__()
        self.where = where  # () -> path of the innermost module running ("" for the model)
        self.calls: list[tuple[str, Any, tuple, dict, Any, str]] = []
        self.depth = 0
        self.active = False
        self.current = "-"

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self.active or self.depth:
            return func(*args, **kwargs)
        if any(isinstance(a, torch.Tensor) for a in args):
            self.current = getattr(func, "__qualname__", None) or getattr(func, "__name__", "?")
        out = func(*args, **kwargs)
        if _has_tensor(out):
            self.calls.append(("function", func, args, kwargs, out, self.where()))
        return out


def _fx_call(func: Any, args: tuple) -> tuple[str, Any, tuple]:
    """(op, target, args) of a recorded torch function as an fx node would have them."""
    name = getattr(func, "__name__", "")
    owner = getattr(func, "__objclass__", None)
    if name == "__get__" and hasattr(getattr(func, "__self__", None), "__name__"):
        return "call_function", getattr, (args[0], func.__self__.__name__)  # x.T, x.mT
    if owner in (torch._C.TensorBase, torch.Tensor) or getattr(
            func, "__qualname__", "").startswith(("Tensor.", "TensorBase.")):
        if name in _DUNDER:
            return "call_function", _DUNDER[name], args
        if name in _REVERSED:
            return "call_function", _REVERSED[name], (args[1], args[0]) + tuple(args[2:])
        return "call_method", name, args
    return "call_function", func, args


def record_forward(model: nn.Module, size: tuple[int, int] | None, fx_reason: str) -> Traced:
    """:class:`Traced` of one recorded meta-device forward of ``model`` (module doc)."""
    names = dict(model.named_modules())
    path = {id(m): n for n, m in names.items()}
    stack: list[nn.Module] = []
    handles: list[Any] = []
    recorder = _Recorder(lambda: path[id(stack[-1])] if stack else "")

    def pre(m: nn.Module, args: tuple, kwargs: dict) -> None:
        stack.append(m)
        if m is model:
            recorder.active = True
        elif _is_leaf(m) and recorder.active:
            recorder.depth += 1

    def post(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        stack.pop()
        if m is model:
            recorder.active = False
        elif _is_leaf(m) and recorder.active:
            recorder.depth -= 1
            if not recorder.depth:
                recorder.calls.append(("module", path[id(m)], args, kwargs, out, ""))

    for m in names.values():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    state = meta_state(model)
    x = torch.empty(input_shape(model, None, size), device="meta", dtype=float_dtype(model))
    try:
        with recorder, torch.no_grad():
            torch.func.functional_call(model, state, (x,))
    except Exception as exc:
        where = (f"module '{path[id(stack[-1])]}' ({type(stack[-1]).__name__})"
                 if stack and stack[-1] is not model else f"the forward of {type(model).__name__}")
        raise UnsupportedModelError(
            f"cannot analyse {type(model).__name__}: {fx_reason} Its forward also fails on the "
            f"meta device in {where}, at op {recorder.current}: {str(exc).rstrip('.')}. The "
            "receptive-field analysis needs a forward whose control flow depends on shapes only, "
            "not on tensor values; rewrite that part without it or pass a model that torch.fx "
            "can trace."
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return _build(model, x, {id(t): n for n, t in state.items()}, recorder.calls)


def _build(model: nn.Module, x: torch.Tensor, params: dict[int, str],
           calls: list[tuple[str, Any, tuple, dict, Any, str]]) -> Traced:
    graph = fx.Graph()
    env: dict[int, fx.Node] = {id(x): graph.placeholder("x")}
    values: dict[str, Any] = {env[id(x)].name: x}
    alive: list[Any] = [x]

    def node_of(a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        if id(a) not in env:  # a parameter, buffer or constant made outside the record
            env[id(a)] = graph.create_node("get_attr", params.get(id(a), f"_constant{len(env)}"))
            values[env[id(a)].name] = a
            alive.append(a)
        return env[id(a)]

    for kind, target, args, kwargs, out, owner in calls:
        args, kwargs = fx.node.map_aggregate(args, node_of), fx.node.map_aggregate(kwargs, node_of)
        if kind == "module":
            node = graph.call_module(target, args, kwargs)
        else:
            op, fn, args = _fx_call(target, args)
            node = graph.create_node(op, fn, args, kwargs)
            if owner:  # records name functional layers by the module that called them
                node.meta["rf_name"] = f"{owner}.{node.name}"
        values[node.name] = out
        alive.append(out)
        if isinstance(out, torch.Tensor):
            env[id(out)] = node
        elif isinstance(out, (tuple, list)):
            for i, t in enumerate(out):
                if isinstance(t, torch.Tensor):
                    part = graph.call_function(operator.getitem, (node, i))
                    env[id(t)], values[part.name] = part, t
    graph.output(None)
    return Traced(graph, model, type(model).__name__, DictValues(values), "hooks")
