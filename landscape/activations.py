"""Capturing the outputs of named modules during a forward pass (shared by CKA and importance).

Modules are chosen by glob patterns on their qualified names (``fnmatch``, case-sensitive),
e.g. ``"features.*"`` or ``"layer?.*.conv2"``; by default every ``Conv2d`` and ``Linear``.
Layer order is *execution* order, recorded during the forward, not registration order.

Given an ``example`` input, :func:`select_modules` keeps only the modules that have one output
to capture: those that run exactly once in an eval-mode forward and return a tensor. A module
named exactly that does not is an error; one matched by a wildcard or by type (a glob such as
``"layer1.*"`` also matches a torchvision ResNet block's shared ``relu``, which runs twice, and
a ShuffleNet unit's empty ``branch1``, which never runs) is left out with one warning.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from landscape.modes import eval_mode

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
_GLOB_CHARS = frozenset("*?[")
log = logging.getLogger("landscape")
_warned: set[tuple[tuple[str, str], ...]] = set()  # what was left out, warned once per process


def select_modules(
    model: nn.Module,
    patterns: Sequence[str] | None = None,
    *,
    arg: str = "layers",
    types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    example: Tensor | None = None,
) -> list[str]:
    """Names of the modules matched by ``patterns`` (registration order), root excluded.

    ``patterns=None`` selects every module of one of ``types`` (default ``Conv2d`` and
    ``Linear``). Every pattern must match at least one module; ``arg`` names the argument in
    error messages. With ``example`` (an input batch on the model's device, the meta device
    too), only modules with one output per forward are kept (module doc): one eval-mode,
    no-grad forward of ``example[:2]`` counts each module's calls.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if patterns is None:
        names = [n for n, m in named if isinstance(m, types)]
        if not names:
            kinds = "/".join(t.__name__ for t in types)
            raise ValueError(f"{arg}=None selects {kinds} modules, but the model has none")
        return names if example is None else _with_one_output(
            model, names, example, arg, {f"{arg}=None": names}, exact=())
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{arg} must be a sequence of glob patterns (str), got {patterns!r}")
    if not patterns:
        raise ValueError(f"{arg} must hold at least one pattern, got an empty sequence")
    all_names = [n for n, _ in named]
    matches = {p: [n for n in all_names if fnmatch.fnmatchcase(n, p)] for p in patterns}
    for p, hit in matches.items():
        if not hit:
            shown = ", ".join(all_names[:12]) + (", ..." if len(all_names) > 12 else "")
            raise ValueError(f"{arg} pattern {p!r} matches no module; module names are: {shown}")
    names = [n for n in all_names if any(n in hit for hit in matches.values())]
    if example is None:
        return names
    exact = [p for p in patterns if not _GLOB_CHARS & set(p)]
    return _with_one_output(model, names, example, arg,
                            {f"{arg} pattern {p!r}": hit for p, hit in matches.items()}, exact)


def without_one_output(model: nn.Module, names: Sequence[str], example: Tensor
                       ) -> dict[str, str]:
    """Why each of ``names`` has no single output in an eval-mode, no-grad forward of
    ``example`` ("never ran", "ran N times", "returned <type>"); modules with one tensor output
    are absent. The caller's train/eval flags are restored."""
    calls: dict[str, int] = dict.fromkeys(names, 0)
    kinds: dict[str, str] = {}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable:
        def fn(_m: nn.Module, _inputs: tuple, output: object) -> None:
            calls[name] += 1
            if not torch.is_tensor(output):
                kinds[name] = type(output).__name__
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example[:2])
    finally:
        for h in handles:
            h.remove()
    return {n: ("never ran" if calls[n] == 0 else f"ran {calls[n]} times" if calls[n] > 1
                else f"returned {kinds[n]}, not a tensor")
            for n in names if calls[n] != 1 or n in kinds}


def _with_one_output(model: nn.Module, names: list[str], example: Tensor, arg: str,
                     matches: dict[str, list[str]], exact: Sequence[str]) -> list[str]:
    """``names`` less the modules without one output per forward (:func:`without_one_output`):
    an error for a name given exactly or for a pattern left with nothing, else one warning."""
    why = without_one_output(model, names, example)
    for name in exact:
        if name in why:
            raise ValueError(f"{arg}: module {name!r} {why[name]} in a forward pass, so it has "
                             "no single output to capture; select the modules it calls instead")
    for label, hit in matches.items():
        if all(n in why for n in hit):
            shown = "; ".join(f"{n} {why[n]}" for n in hit[:6]) + ("; ..." if len(hit) > 6 else "")
            raise ValueError(f"{label} matches no module with one output per forward pass "
                             f"({shown})")
    if why and tuple(why.items()) not in _warned:
        _warned.add(tuple(why.items()))
        shown = "; ".join(f"{n} {r}" for n, r in list(why.items())[:6])
        log.warning("%s: left out %d matched module(s) without one output per forward pass: "
                    "%s%s", arg, len(why), shown, "; ..." if len(why) > 6 else "")
    return [n for n in names if n not in why]


def peek_inputs(batches: Iterable[object]) -> tuple[Tensor, Iterable[object]]:
    """The inputs of the first batch of ``batches`` (a tensor, or the first element of an
    (inputs, labels, ...) tuple) and an iterable of all the batches, the first included."""
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("batches yielded no batch") from None
    x = first[0] if isinstance(first, (tuple, list)) and first else first
    if not torch.is_tensor(x):
        raise TypeError(f"batches must yield tensors or (inputs, ...) tuples, got "
                        f"{type(x).__name__}")
    return x, itertools.chain([first], it)


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
