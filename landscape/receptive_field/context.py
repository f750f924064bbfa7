"""What a rule sees of one traced node: its input states, its module, and meta-tensor values.

Values (shapes, and the integers a forward computes from them) come from one forward pass on
the meta device (no memory, no arithmetic), evaluated lazily: only models whose rules need a
shape (``view`` / ``reshape`` / ``expand``, indexing with computed bounds) pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import fx, nn

from landscape.receptive_field import layout as L
from landscape.receptive_field.geometry import Geometry, Skip, State


class Values(Protocol):
    failure: str | None  # why values stopped being available (None: all known so far)

    def get(self, node: fx.Node) -> Any: ...  # the node's meta value, or None when unknown

    def peek(self, node: fx.Node) -> Any: ...  # the value if already computed (no forward run)


def get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Ctx:
    node: fx.Node
    mod: nn.Module | None
    where: str
    states: dict[str, State]
    values: Values
    se_gates: str
    root: nn.Module
    # inputs read through layout.settle (every op but those moving dimensions around)
    settled: bool = False
    _tensors: list[State] | None = field(default=None, repr=False)

    def state(self, a: Any) -> State:
        s = self.states.get(a.name) if isinstance(a, fx.Node) else None
        if self.settled and isinstance(s, Geometry):
            layout = L.settle(s.layout)
            return s if layout is s.layout else Geometry(s.h, s.w, layout)
        return s

    @property
    def tensors(self) -> list[State]:
        """States of the tensor inputs (constants excluded)."""
        if self._tensors is None:
            self._tensors = [s for s in (self.state(n) for n in self.node.all_input_nodes)
                             if s is not None]
        return self._tensors

    @property
    def x(self) -> State:
        """The main input: the first positional argument, else the first tensor input."""
        first = self.state(self.node.args[0]) if self.node.args else None
        return first if first is not None else (self.tensors[0] if self.tensors else None)

    @property
    def x_node(self) -> fx.Node | None:
        first = self.node.args[0] if self.node.args else None
        return first if isinstance(first, fx.Node) else None

    def value(self, a: Any) -> Any:
        return self.values.get(a) if isinstance(a, fx.Node) else a

    def shape(self, a: Any) -> tuple[int, ...] | None:
        v = self.value(a)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    def need_shape(self, a: Any) -> tuple[int, ...]:
        shape = self.shape(a)
        if shape is None:
            why = self.values.failure or "the value is not a tensor"
            raise Skip(f"{self.where} needs tensor shapes, which are unknown here ({why}); "
                       "pass an input_size the model accepts")
        return shape

    @property
    def out_ndim(self) -> int | None:
        """Dimensions of the output if its value is known without running the shape pass."""
        v = self.values.peek(self.node)
        return v.dim() if isinstance(v, torch.Tensor) else None

    def resolve(self, obj: Any) -> Any:
        """``obj`` with nodes replaced by their traced values (ints computed from shapes)."""
        return fx.node.map_aggregate(obj, lambda a: self.value(a) if isinstance(a, fx.Node)
                                     else a)

    def weight_shape(self, a: Any) -> tuple[int, ...] | None:
        if isinstance(a, fx.Node) and a.op == "get_attr":
            try:
                return tuple(get_attr(self.root, a.target).shape)
            except AttributeError:  # a constant recorded by the hooks fallback
                pass
        return self.shape(a)

    def local_x(self) -> Geometry:
        x = self.x
        if not (isinstance(x, Geometry) and x.is_local):
            raise Skip(f"{self.where} has no feature-map input")
        return x


Rule = Callable[[Ctx], "tuple[State, dict[str, Any] | None]"]
