"""Capturing the outputs of named modules during a forward pass (shared by CKA and importance).

Modules are chosen by glob patterns on their qualified names (``fnmatch``, case-sensitive),
e.g. ``"features.*"`` or ``"layer?.*.conv2"``; by default every ``Conv2d`` and ``Linear``.
Layer order is *execution* order, recorded during the forward, not registration order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from landscape.modes import eval_mode  # noqa: F401  (re-exported: cka, importance use it)

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def select_modules(
    model: nn.Module,
    patterns: Sequence[str] | None = None,
    *,
    arg: str = "layers",
    types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
) -> list[str]:
    """Names of the modules matched by ``patterns`` (registration order), root excluded.

    ``patterns=None`` selects every module of one of ``types`` (default ``Conv2d`` and
    ``Linear``). Every pattern must match at least one module; ``arg`` names the argument in
    error messages.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if patterns is None:
        names = [n for n, m in named if isinstance(m, types)]
        if not names:
            kinds = "/".join(t.__name__ for t in types)
            raise ValueError(f"{arg}=None selects {kinds} modules, but the model has none")
        return names
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{arg} must be a sequence of glob patterns (str), got {patterns!r}")
    if not patterns:
        raise ValueError(f"{arg} must hold at least one pattern, got an empty sequence")
    all_names = [n for n, _ in named]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in all_names):
            shown = ", ".join(all_names[:12]) + (", ..." if len(all_names) > 12 else "")
            raise ValueError(f"{arg} pattern {p!r} matches no module; module names are: {shown}")
    return [n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def check_on_device(model: nn.Module, device: torch.device | str, *, arg: str = "model") -> None:
    """Raise if any parameter or buffer of ``model`` is not on ``device`` (we never move it)."""
    dev = torch.device(device)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != dev.type or (dev.index is not None and t.device.index != dev.index):
            raise ValueError(
                f"{arg} has tensors on {t.device} but device={str(device)!r}; move the model "
                f"with .to({str(device)!r}) first"
            )


class ActivationCapture:
    """Forward hooks on the named modules of ``model``; a context manager.

    On every forward run through :meth:`run`, ``on_output(name, output)`` is called once per
    module, in execution order, *inside* the hook: consume or copy the output there (a later
    in-place op such as ``ReLU(inplace=True)`` may overwrite it). A module that runs twice in
    one forward, or never runs, is an error. Hooks are removed on exit, also after an error.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        on_output: Callable[[str, Tensor], None],
    ) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no module named {missing[0]!r} in {type(model).__name__}")
        if len(set(names)) != len(names):
            raise ValueError(f"module names must be unique, got {list(names)!r}")
        self.model = model
        self.names = list(names)
        self.on_output = on_output
        self._modules = [modules[n] for n in self.names]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._order: list[str] = []

    def __enter__(self) -> ActivationCapture:
        for name, module in zip(self.names, self._modules):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable:
        def fn(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if name in self._order:
                raise ValueError(
                    f"module {name!r} ran twice in one forward pass, so it has no single "
                    "output; select the modules at each call site instead"
                )
            if not torch.is_tensor(output):
                raise TypeError(f"module {name!r} returned {type(output).__name__}, not a tensor")
            self._order.append(name)
            self.on_output(name, output)

        return fn

    def run(self, x: Tensor) -> list[str]:
        """One forward of ``x``; returns the module names in execution order."""
        if not self._handles:
            raise RuntimeError("ActivationCapture.run must be called inside its `with` block")
        self._order = []
        self.model(x)
        never = [n for n in self.names if n not in self._order]
        if never:
            raise ValueError(f"selected modules never ran in the forward pass: {never}")
        return list(self._order)


def execution_order(model: nn.Module, names: Sequence[str], x: Tensor) -> list[str]:
    """``names`` sorted by when the modules run on ``x`` (one no-grad forward)."""
    with torch.no_grad(), ActivationCapture(model, names, lambda _n, _o: None) as c:
        return c.run(x)
