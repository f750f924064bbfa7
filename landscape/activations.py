"""Capturing the outputs of named modules during a forward pass (shared by CKA and importance).

Modules are chosen by glob patterns on their qualified names (``fnmatch``, case-sensitive),
e.g. ``"features.*"`` or ``"layer?.*.conv2"``; by default every ``Conv2d`` and ``Linear``.
Layer order is *execution* order, recorded during the forward, not registration order.

A module called several times in one forward (a torchvision ResNet block calls its one
``relu`` two or three times) has one output per *call site*: ``"layer1.0.relu@1"`` names its
second call (0-based). Given an ``example`` input, :func:`select_modules` runs one eval-mode
forward and resolves what was matched by a wildcard or by type: a module called k > 1 times
becomes its k call sites (so ``cka=paper`` counts every ReLU application: 49 in a torchvision
ResNet50, as the paper does); one that never runs (a ShuffleNet unit's empty ``branch1``) or
returns no tensor, or one whose first dimension is not the batch (patches or windows folded
into it), is left out with one warning. A module named exactly must have one output (else the
error lists its call sites); ``name@k`` must have a k-th call.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from landscape.modes import eval_mode

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
_GLOB_CHARS = frozenset("*?[")
# "module@k": the k-th call (0-based) of a module called several times per forward ("@" needs
# no quoting in a Hydra override, "#" would)
CALL = "@"
log = logging.getLogger("landscape")
_warned: set[tuple[tuple[str, str], ...]] = set()  # what was left out, warned once per process


def split_call(name: str) -> tuple[str, int | None]:
    """``"layer1.0.relu@1"`` -> ``("layer1.0.relu", 1)``; a plain name -> ``(name, None)``."""
    module, sep, k = name.partition(CALL)
    if not sep:
        return name, None
    if not k.isdigit():
        raise ValueError(f"{name!r}: a call site is <module>{CALL}<k> with k a call index "
                         f"(0, 1, ...), got {k!r} after {CALL!r}")
    return module, int(k)


def select_modules(
    model: nn.Module,
    patterns: Sequence[str] | None = None,
    *,
    arg: str = "layers",
    types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    example: Tensor | None = None,
) -> list[str]:
    """Names of the modules matched by ``patterns``, root excluded: in registration order, or
    with ``example`` in the order their outputs come in the forward (a shortcut's conv, often
    registered before its block's convs, runs after them).

    ``patterns=None`` selects every module of one of ``types`` (default ``Conv2d`` and
    ``Linear``). Every pattern must match at least one module; ``arg`` names the argument in
    error messages; ``"<pattern>@k"`` selects the k-th call of each module the pattern matches.
    With ``example`` (an input batch on the model's device, the meta device too), one
    eval-mode, no-grad forward of ``example[:2]`` counts each module's calls and the selection
    is resolved as the module doc says: modules called several times become call sites,
    modules without a tensor output per image are left out.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if patterns is None:
        names = [n for n, m in named if isinstance(m, types)]
        if not names:
            kinds = "/".join(t.__name__ for t in types)
            raise ValueError(f"{arg}=None selects {kinds} modules, but the model has none")
        return names if example is None else _resolve(
            model, names, example, arg, {f"{arg}=None": names}, exact=())
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{arg} must be a sequence of glob patterns (str), got {patterns!r}")
    if not patterns:
        raise ValueError(f"{arg} must hold at least one pattern, got an empty sequence")
    all_names = [n for n, _ in named]
    matches = {}
    for p in patterns:
        module, call = split_call(p)
        hit = [n for n in all_names if fnmatch.fnmatchcase(n, module)]
        if not hit:
            shown = ", ".join(all_names[:12]) + (", ..." if len(all_names) > 12 else "")
            raise ValueError(f"{arg} pattern {p!r} matches no module; module names are: {shown}")
        matches[p] = hit if call is None else [f"{n}{CALL}{call}" for n in hit]
    order = {n: i for i, n in enumerate(all_names)}
    names = sorted({n for hit in matches.values() for n in hit},
                   key=lambda n: (order[split_call(n)[0]], split_call(n)[1] or 0))
    if example is None:
        return names
    exact = [p for p in patterns if not _GLOB_CHARS & set(p)]
    return _resolve(model, names, example, arg,
                    {f"{arg} pattern {p!r}": hit for p, hit in matches.items()}, exact)


def module_calls(model: nn.Module, modules: Sequence[str], example: Tensor
                 ) -> tuple[dict[str, tuple[int, str | None]], list[tuple[str, int]]]:
    """``{module: (calls, why its outputs cannot be captured, or None)}`` in one eval-mode,
    no-grad forward of ``example[:2]`` (the caller's train/eval flags are restored), and the
    calls ``(module, k)`` in the order their outputs came. An output is captured per input
    image, so it must be a tensor whose first dimension is the batch: one that folds windows
    or patches into it (MobileViT's transformer runs on (B * patch pixels, patches, C)) would
    be read as more images than there are."""
    calls: dict[str, int] = dict.fromkeys(modules, 0)
    why: dict[str, str] = {}
    order: list[tuple[str, int]] = []
    by_name = dict(model.named_modules())
    x = example[:2]

    def hook(name: str) -> Callable:
        def fn(_m: nn.Module, _inputs: tuple, output: object) -> None:
            order.append((name, calls[name]))
            calls[name] += 1
            if not torch.is_tensor(output):
                why[name] = f"returned {type(output).__name__}, not a tensor"
            elif output.dim() == 0 or output.shape[0] != x.shape[0]:
                why[name] = (f"gives outputs of shape {tuple(output.shape)} for a batch of "
                             f"{x.shape[0]}: its first dimension is not the batch")
        return fn

    handles = [by_name[n].register_forward_hook(hook(n)) for n in modules]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: (calls[n], why.get(n)) for n in modules}, order


def _resolve(model: nn.Module, names: list[str], example: Tensor, arg: str,
             matches: dict[str, list[str]], exact: Sequence[str]) -> list[str]:
    """``names`` (modules and call sites) as captured (module doc): an error for a name given
    exactly that has no such output, or for a pattern left with nothing; one warning for the
    modules left out."""
    modules = list(dict.fromkeys(split_call(n)[0] for n in names))
    seen, order = module_calls(model, modules, example)
    why: dict[str, str] = {}  # name -> why it has no output to capture
    out: dict[str, list[str]] = {}  # name -> what it captures
    for name in names:
        module, call = split_call(name)
        n, reason = seen[module]
        if reason is not None:
            why[name] = reason
        elif n == 0:
            why[name] = "never ran"
        elif call is not None:
            if call < n:
                out[name] = [name]
            else:
                why[name] = f"ran {n} time(s), so it has no call {call}"
        else:
            out[name] = [name] if n == 1 else [f"{name}{CALL}{k}" for k in range(n)]
    for name in exact:
        if name in why:
            raise ValueError(f"{arg}: module {name!r} {why[name]} in a forward pass")
        if len(out.get(name, ())) > 1:
            sites = out[name]
            raise ValueError(f"{arg}: module {name!r} ran {len(sites)} times in a forward pass, "
                             f"so it has no single output; name its call sites instead: "
                             f"{', '.join(sites)}")
    for label, hit in matches.items():
        if all(n in why for n in hit):
            shown = "; ".join(f"{n} {why[n]}" for n in hit[:6]) + ("; ..." if len(hit) > 6 else "")
            raise ValueError(f"{label} matches no module with an output to capture ({shown})")
    if why and tuple(why.items()) not in _warned:
        _warned.add(tuple(why.items()))
        shown = "; ".join(f"{n} {r}" for n, r in list(why.items())[:6])
        log.warning("%s: left out %d matched module(s) without an output to capture: %s%s",
                    arg, len(why), shown, "; ..." if len(why) > 6 else "")
    rank = {call: i for i, call in enumerate(order)}
    return sorted((site for name in names for site in out.get(name, ())),
                  key=lambda site: rank[split_call(site)[0], split_call(site)[1] or 0])


def batch_inputs(batch: object) -> Tensor:
    """The inputs of a batch: the batch itself, or the first element of (inputs, labels, ...)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not torch.is_tensor(x):
        raise TypeError(f"batches must yield tensors or (inputs, ...) tuples, got "
                        f"{type(x).__name__}")
    return x


def select_on_batches(model: nn.Module, layers: Sequence[str] | None,
                      batches: Iterable[object], device: torch.device | str
                      ) -> tuple[list[str], Iterable[object]]:
    """:func:`select_modules` (``arg="layers"``) resolved on the first batch's inputs, and an
    iterable of all the batches, the first included; the model must be on ``device``."""
    check_on_device(model, device)
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("batches yielded no batch") from None
    names = select_modules(model, layers, arg="layers", example=batch_inputs(first).to(device))
    return names, itertools.chain([first], it)


def check_on_device(model: nn.Module, device: torch.device | str, *, arg: str = "model") -> None:
    """Raise if any parameter or buffer of ``model`` is not on ``device`` (we never move it)."""
    dev = torch.device(device)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != dev.type or (dev.index is not None and t.device.index != dev.index):
            raise ValueError(
                f"{arg} has tensors on {t.device} but device={str(device)!r}; move the model "
                f"with .to({str(device)!r}) first"
            )


# modules whose 4-D output is (N, C, H, W) whatever their input
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                   nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                   nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                   nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def _is_2d_norm(module: nn.Module) -> bool:
    """A LayerNorm subclass for (N, C, H, W) maps (torchvision's and timm's ``LayerNorm2d``
    permute inside and return the map channels first)."""
    return type(module).__name__.endswith("2d")


def acts_on_last_dim(module: nn.Module, x: object = None) -> bool:
    """Whether ``module`` maps the last dimension of its input (features last): ``Linear``,
    and ``LayerNorm`` / ``RMSNorm`` over one dimension, unless it normalised dimension 1 of
    the map ``x`` it ran on (a ``LayerNorm2d`` by any name: timm's ``LayerNorm2dNoBias``);
    without ``x`` (or where its size alone cannot tell) a subclass named ``...2d``."""
    if isinstance(module, nn.Linear):
        return True
    shape = getattr(module, "normalized_shape", None)
    if not (isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and shape is not None and
            len(shape) == 1):
        return False
    if torch.is_tensor(x) and x.dim() == 4:
        if x.shape[-1] != shape[0]:
            return False  # it normalised the channels of (N, C, H, W)
        if x.shape[1] != shape[0]:
            return True
    return not _is_2d_norm(module)


def _norm_of_dim_1(module: nn.Module) -> bool:
    """A LayerNorm / RMSNorm over one dimension that did not act on the last one: it
    normalised the channels of an (N, C, H, W) map, and returns one."""
    shape = getattr(module, "normalized_shape", None)
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and shape is not None and \
        len(shape) == 1


_PERMUTES = {torch.permute, Tensor.permute}
_MOVEDIMS = {torch.movedim, Tensor.movedim, torch.moveaxis, Tensor.moveaxis}
_TRANSPOSES = {torch.transpose, Tensor.transpose, torch.swapaxes, Tensor.swapaxes,
               torch.swapdims, Tensor.swapdims}
_LAST_FUNCTIONS = {F.linear}
_NORMS_OF_LAST = {F.layer_norm, F.rms_norm}
_FIRST_FUNCTIONS = {F.conv2d, torch.conv2d, F.batch_norm, F.group_norm, F.instance_norm,
                    F.max_pool2d, torch.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                    F.adaptive_max_pool2d}
# regroup the leading dimensions: the last keeps its features if its size is unchanged
_RESHAPES = {torch.reshape, Tensor.reshape, Tensor.view, torch.flatten, Tensor.flatten,
             torch.unflatten, Tensor.unflatten, Tensor.view_as, Tensor.reshape_as}
# parts or joins of tensors: the layout of their first input
_PARTS = {torch.split, Tensor.split, torch.chunk, Tensor.chunk, torch.tensor_split,
          Tensor.tensor_split, torch.cat, torch.concat, torch.concatenate}


def _order(func: Callable, args: tuple, kwargs: dict, n: int) -> list[int] | None:
    """Where an n-D permute / movedim / transpose takes each output dimension from (None for
    any other function)."""
    def at(i: int, name: str) -> object:
        return args[i] if len(args) > i else kwargs.get(name)
    if func in _PERMUTES:
        dims = args[1:] if len(args) > 2 or isinstance(at(1, "dims"), int) else at(1, "dims")
        return [int(d) % n for d in dims]
    if func in _MOVEDIMS:
        src, dst = at(1, "source"), at(2, "destination")
        src = [int(src) % n] if isinstance(src, int) else [int(d) % n for d in src]
        dst = [int(dst) % n] if isinstance(dst, int) else [int(d) % n for d in dst]
        out: list[int | None] = [None] * n
        for a, b in zip(src, dst):
            out[b] = a
        rest = iter(d for d in range(n) if d not in src)
        return [d if d is not None else next(rest) for d in out]
    if func in _TRANSPOSES:
        order = list(range(n))
        a, b = int(at(1, "dim0")) % n, int(at(2, "dim1")) % n
        order[a], order[b] = order[b], order[a]
        return order
    return None


def _puts_features_last(order: Sequence[int], x: Tensor, was_last: bool) -> bool:
    """Whether a permutation (output dimension i is input dimension ``order[i]``) of ``x``
    puts its features last: its last dimension if it held them last, else dimension 1 of a
    4-D map."""
    features = x.dim() - 1 if was_last else 1 if x.dim() == 4 else None
    return features is not None and list(order)[-1] == features


class _FollowFunctions(TorchFunctionMode):
    """The function-level half of :class:`Layouts`: every torch function or tensor method of
    the forward, between modules too (a block's ``x.permute(0, 2, 3, 1)``, a residual
    ``x + y``)."""

    def __init__(self, layouts: Layouts) -> None:
        super().__init__()
        self.layouts = layouts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.layouts.observe_function(func, args, kwargs, out)
        return out


class Layouts:
    """Which tensors of one forward hold their features last, as channels-last maps
    (N, H, W, C), windows of them (timm's HieraDet, Swin) or token sequences do, followed
    through the torch functions of the forward (:meth:`follow_functions`) and from module to
    module; a 4-D one is handed over as (N, C, H, W).

    Functions: ``linear``, and ``layer_norm`` / ``rms_norm`` over one dimension, put the
    features last; a conv, batch / group / instance norm or pooling makes a channels-first
    map; a permute, movedim or transpose moves the features where its dimensions say; a view
    or reshape keeps them last where the last dimension keeps its size (windows partitioned
    or merged back, tokens reshaped into a map); a split, chunk or cat keeps its first
    input's layout (MambaOut's gates); any other function whose output has as many
    dimensions and the same last size as its first input (an activation, ``x + y``, a pad of
    H and W) keeps that input's layout. Modules: the output of a module acting on the last
    dimension (:func:`acts_on_last_dim`) has its features last; that of a conv, batch /
    group / instance norm, pooling or ``LayerNorm2d`` does not; a ``Permute`` module
    (torchvision's, with ``dims``) moves them; any other module whose output has its input's
    shape (an activation, a residual block, torchvision's shifted-window attention, whose
    crop of its padded windows no function follows) keeps its input's layout; a module
    returning a tensor already known as features-last (a ``Sequential`` ending in a
    ``LayerNorm``) is. A map whose layout nothing follows is read as (N, C, H, W)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._last = torch.utils.weak.WeakIdKeyDictionary()  # tensor -> True
        # 4-D maps a function made channels first (a conv, a permute back): a module
        # returning one returns (N, C, H, W) whatever its type says (a LayerNorm2d)
        self._first = torch.utils.weak.WeakIdKeyDictionary()

    def follow_functions(self) -> TorchFunctionMode:
        """A context (a ``TorchFunctionMode``) under which the forward's functions are
        followed."""
        return _FollowFunctions(self)

    def observe_function(self, func: Callable, args: tuple, kwargs: dict, out: object) -> None:
        """Record which tensors of ``out`` = ``func(*args, **kwargs)`` hold their features
        last (tensors of at least 3 dimensions)."""
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))
                if torch.is_tensor(o) and o.dim() >= 3]
        if not outs:
            return
        first = args[0] if args else None
        if isinstance(first, (tuple, list)):  # cat's tensors
            first = next((t for t in first if torch.is_tensor(t)), None)
        x = first if torch.is_tensor(first) else None
        was_last = x is not None and x in self._last
        for o in outs:
            last = self._function_last(func, args, kwargs, x, was_last, o)
            if last:
                self._last[o] = True
            elif last is not None and o.dim() == 4:
                self._first[o] = True

    @staticmethod
    def _function_last(func: Callable, args: tuple, kwargs: dict, x: Tensor | None,
                       was_last: bool, o: Tensor) -> bool | None:
        """Whether ``o`` holds its features last: True, False where the function decides it
        (a conv, a permute), None where it only does not keep them last."""
        if func in _LAST_FUNCTIONS:
            return True
        if func in _NORMS_OF_LAST:
            shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
            return shape is not None and len(shape) == 1
        if func in _FIRST_FUNCTIONS:
            return False
        if x is None:
            return None
        order = _order(func, args, kwargs, x.dim())
        if order is not None:
            return _puts_features_last(order, x, was_last)
        if func in _PARTS:
            return was_last or None
        if func in _RESHAPES:
            return (was_last and o.shape[-1] == x.shape[-1]) or None
        return (was_last and o.dim() == x.dim() and o.shape[-1] == x.shape[-1]) or None

    def observe(self, module: nn.Module, inputs: tuple, output: object) -> bool:
        """Whether ``output`` of ``module`` (called on ``inputs``) is a channels-last map
        (4-D); features-last tensors of other ranks are recorded for what follows."""
        if not torch.is_tensor(output) or output.dim() < 3:
            return False
        if output in self._last:  # made by a function followed, or returned by an inner module
            return output.dim() == 4
        if output in self._first:
            return False
        x = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
        was_last = x is not None and x in self._last
        dims = getattr(module, "dims", None)
        if acts_on_last_dim(module, x):
            last = True
        elif isinstance(module, _CHANNELS_FIRST) or _is_2d_norm(module) or \
                _norm_of_dim_1(module):
            last = False
        elif type(module).__name__ == "Permute" and isinstance(dims, (list, tuple)) \
                and x is not None and sorted(dims) == list(range(x.dim())):
            last = _puts_features_last(dims, x, was_last)
        else:
            last = was_last and x.shape == output.shape
        if last:
            self._last[output] = True
        return last and output.dim() == 4


class ActivationCapture:
    """Forward hooks on the named modules of ``model``; a context manager.

    ``names`` are module names or call sites (``"module@k"``, the k-th call in a forward; see
    the module doc). On every forward run through :meth:`run`, ``on_output(name, output)`` is
    called once per name, in execution order, *inside* the hook: consume or copy the output
    there (a later in-place op such as ``ReLU(inplace=True)`` may overwrite it). A module
    named plainly that runs twice in one forward, or a name that is never reached, is an
    error. Hooks are removed on exit, also after an error.

    Every 4-D output is handed over as (N, C, H, W), a conv's layout: a channels-last map
    (N, H, W, C), as in ConvNeXt's and Swin's blocks (the output of a ``Linear`` or a 1-D
    ``LayerNorm``, and what follows it through permutes, element-wise functions and
    shape-keeping modules: :class:`Layouts`, hooked on every module and following every torch
    function while the capture is entered), is handed over as the view
    ``output.movedim(-1, 1)``, so that probes pool its positions and saturation counts its C
    features, not its rows.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        on_output: Callable[[str, Tensor], None],
    ) -> None:
        modules = dict(model.named_modules())
        if len(set(names)) != len(names):
            raise ValueError(f"module names must be unique, got {list(names)!r}")
        self._sites: dict[str, set[int] | None] = {}  # module -> call indices (None: plain)
        for name in names:
            module, call = split_call(name)
            if module not in modules:
                raise ValueError(f"no module named {module!r} in {type(model).__name__}")
            if module in self._sites and (call is None) != (self._sites[module] is None):
                raise ValueError(f"{module!r} is named both plainly and by call site")
            if call is None:
                self._sites[module] = None
            else:
                self._sites.setdefault(module, set()).add(call)
        self.model = model
        self.names = list(names)
        self.on_output = on_output
        self._modules = {m: modules[m] for m in self._sites}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._order: list[str] = []
        self._calls: dict[str, int] = {}
        self._layouts = Layouts()
        self._functions: TorchFunctionMode | None = None
        # every other module, containers too: a block's output follows from its input's
        # layout (timm's Swin blocks reshape their tokens back into a map by a view)
        self._others = [m for n, m in modules.items() if n and n not in self._sites]

    def __enter__(self) -> ActivationCapture:
        for module, mod in self._modules.items():
            self._handles.append(mod.register_forward_hook(self._hook(module), with_kwargs=True))
        for mod in self._others:  # only to follow the layouts to the selected modules
            self._handles.append(mod.register_forward_hook(self._follow))
        self._functions = self._layouts.follow_functions()
        self._functions.__enter__()
        return self

    def _follow(self, module: nn.Module, inputs: tuple, output: object) -> None:
        self._layouts.observe(module, inputs, output)  # returns None: the output is kept

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._functions is not None:
            self._functions.__exit__(None, None, None)
            self._functions = None

    def _hook(self, module: str) -> Callable:
        sites = self._sites[module]

        def fn(mod: nn.Module, inputs: tuple, _kwargs: dict, output: object) -> None:
            features_last = self._layouts.observe(mod, inputs, output)
            k = self._calls.get(module, 0)
            self._calls[module] = k + 1
            if sites is None and k:
                raise ValueError(
                    f"module {module!r} ran twice in one forward pass, so it has no single "
                    f"output; select its call sites ({module}{CALL}0, {module}{CALL}1, ...) "
                    "instead")
            if sites is not None and k not in sites:
                return
            name = module if sites is None else f"{module}{CALL}{k}"
            if not torch.is_tensor(output):
                raise TypeError(f"module {name!r} returned {type(output).__name__}, not a tensor")
            self._order.append(name)
            if features_last:
                output = output.movedim(-1, 1)  # (N, H, W, C) -> (N, C, H, W)
            self.on_output(name, output)

        return fn

    def run(self, x: Tensor) -> list[str]:
        """One forward of ``x``; returns the names in execution order."""
        if not self._handles:
            raise RuntimeError("ActivationCapture.run must be called inside its `with` block")
        self._order, self._calls = [], {}
        self._layouts.clear()
        self.model(x)
        never = [n for n in self.names if n not in self._order]
        if never:
            raise ValueError(f"selected modules never ran in the forward pass: {never}")
        return list(self._order)


def execution_order(model: nn.Module, names: Sequence[str], x: Tensor) -> list[str]:
    """``names`` sorted by when the modules run on ``x`` (one no-grad forward)."""
    with torch.no_grad(), ActivationCapture(model, names, lambda _n, _o: None) as c:
        return c.run(x)
