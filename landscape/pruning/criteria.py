"""Pruning criteria: one small function each, found by name (the ShrinkBench idea).

A criterion maps the prunable parameters to importance scores of the same shapes; higher
means more important, and selection (:func:`landscape.pruning.select_masks`) removes the
lowest. Its signature is::

    @register_criterion("my_criterion")
    def my_criterion(params: Mapping[str, Tensor], *, model: nn.Module,
                     data: Iterable[tuple[Tensor, Tensor]] | None,
                     my_option: float = 1.0) -> dict[str, Tensor]: ...

``params`` are the live parameters by name (read them, don't modify them); ``model`` is the
model they belong to (leave its mode, ``requires_grad`` and ``.grad`` as found); ``data`` is an
iterable of (inputs, targets) batches or None. A criterion that declares keyword-only ``rate``
and/or ``scope`` also gets the pruning call's rate and scope (an iterative criterion such as
``synflow`` prunes towards them itself). Further keyword-only parameters are the
criterion's options: ``prune(model, 0.9, "random", seed=3)`` calls ``random`` with ``seed=3``,
and an option the criterion does not declare is an error (unless it takes ``**options``).
``@register_criterion("name", data_free=True)`` declares that the scores do not depend on
which images ``data`` holds (the prune stage's data settings then stay out of its notes).
Registration happens on import, so a criterion in a user's own module needs no edit here:
pass that module to :func:`import_criteria` (the pipeline exposes it as a config option).
"""

from __future__ import annotations

import inspect
from itertools import islice
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.modes import snapshot_modes
from landscape.pruning.selection import check_rate
from landscape.registry import Registry, import_modules

Criterion = Callable[..., dict[str, Tensor]]
Batches = Iterable[tuple[Tensor, Tensor]]

CRITERIA: Registry[Criterion] = Registry(
    "pruning criterion",
    hint="a criterion of your own: list the module that registers it in prune.imports=[...]")


# name -> check(options): raises ValueError naming an option whose value the criterion
# refuses (before any work: the prune stage checks prune.options when the config is checked)
VALUE_CHECKS: dict[str, Callable[[Mapping[str, object]], None]] = {}

# Criteria registered ``data_free=True``: their scores do not depend on which training images
# they are given (at most on the input's shape)
DATA_FREE: set[str] = set()


def register_criterion(name: str, *, check: Callable[[Mapping[str, object]], None] | None = None,
                       data_free: bool = False) -> Callable[[Criterion], Criterion]:
    """Decorator: register ``fn(params, *, model, data, **options) -> scores`` as ``name``;
    ``check(options)``, if given, refuses option values up front (:func:`check_options`).
    ``data_free``: the scores do not depend on which training images ``data`` holds
    (``magnitude``, ``random``; ``synflow`` reads one batch for the input's shape only): the
    prune stage then gives the criterion the first training batch, built only if it is read,
    and its units' notes leave out ``prune.data_batches`` / ``prune.data_per_class`` /
    ``prune.data_augment`` (the built-in ones' unit names too; :func:`reads_data`)."""
    register = CRITERIA.register(name)

    def deco(fn: Criterion) -> Criterion:
        fn = register(fn)  # a taken name fails here, before anything below is recorded
        if check is not None:
            VALUE_CHECKS[name] = check
        (DATA_FREE.add if data_free else DATA_FREE.discard)(name)
        return fn

    return deco


def reads_data(name: str) -> bool:
    """Whether criterion ``name``'s scores depend on the training images it is given (not
    registered ``data_free``); an unknown name raises, listing the valid ones."""
    get_criterion(name)
    return name not in DATA_FREE


def check_count(name: str, option: str, value: object, least: int) -> None:
    """ValueError unless ``value`` is an integer >= ``least`` (option ``option`` of ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"option '{option}' of pruning criterion '{name}' must be an integer "
                         f">= {least}, got {value!r}")


def list_criteria() -> list[str]:
    return CRITERIA.names()


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)


def import_criteria(modules: Sequence[str]) -> None:
    """Import user modules (dotted names) so that their ``@register_criterion`` calls run."""
    import_modules(modules, field="prune.imports")


# Keyword parameters a criterion receives from the pruning call, not from its options.
CALL_ARGUMENTS = ("model", "data", "rate", "scope")


def compute_scores(
    name: str,
    params: Mapping[str, Tensor],
    *,
    model: nn.Module,
    data: Batches | None = None,
    rate: float | None = None,
    scope: str = "global",
    **options,
) -> dict[str, Tensor]:
    """Run criterion ``name``; check its options and that it returns one score per weight.
    ``rate`` and ``scope`` reach a criterion that declares them (``rate`` is then required)."""
    fn = get_criterion(name)
    check_options(name, options)
    declared = inspect.signature(fn).parameters
    if "rate" in declared:
        if rate is None:
            raise ValueError(f"criterion '{name}' prunes towards the rate itself: pass rate= "
                             "(prune() does)")
        options["rate"] = check_rate(rate)
    if "scope" in declared:
        options["scope"] = scope
    scores = fn(params, model=model, data=data, **options)
    missing = [n for n in params if n not in scores]
    if missing:
        raise ValueError(f"criterion '{name}' returned no scores for {missing}")
    for n, p in params.items():
        if tuple(scores[n].shape) != tuple(p.shape):
            raise ValueError(
                f"criterion '{name}' returned scores of shape {tuple(scores[n].shape)} for "
                f"'{n}', whose shape is {tuple(p.shape)}"
            )
    return {n: scores[n] for n in params}


def check_options(name: str, options: Mapping[str, object]) -> None:
    """``options`` are keyword options criterion ``name`` declares (unless it takes
    ``**options``), each of the type of its default (an int, float, bool or str default; a
    float option takes an int): ``TypeError`` naming the option and what it takes; then the
    criterion's own ``check`` of the values (``ValueError``)."""
    params = inspect.signature(get_criterion(name)).parameters.values()
    declared = {p.name: p for p in params
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in CALL_ARGUMENTS}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    unknown = sorted(set(options) - set(declared))
    if unknown and not takes_any:
        raise TypeError(
            f"pruning criterion '{name}' got unknown option(s) {unknown}; "
            f"its options are: {', '.join(declared) or '(none)'}"
        )
    for key, value in options.items():
        default = declared[key].default if key in declared else inspect.Parameter.empty
        kind = type(default)
        if default is inspect.Parameter.empty or kind not in (int, float, bool, str):
            continue
        ok = (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
              or kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise TypeError(f"option '{key}' of pruning criterion '{name}' takes {article} "
                            f"{kind.__name__} (default {default!r}), got {value!r}")
    if name in VALUE_CHECKS:
        VALUE_CHECKS[name](options)


@register_criterion("magnitude", data_free=True)
def magnitude(
    params: Mapping[str, Tensor], *, model: nn.Module, data: Batches | None
) -> dict[str, Tensor]:
    """|w| (with the global scope, the paper's one-shot global magnitude pruning)."""
    return {n: p.detach().abs() for n, p in params.items()}


@register_criterion("random", data_free=True)
def random_scores(
    params: Mapping[str, Tensor], *, model: nn.Module, data: Batches | None, seed: int = 0
) -> dict[str, Tensor]:
    """i.i.d. U(0, 1) scores from a private generator seeded with ``seed`` (a baseline)."""
    gen = torch.Generator().manual_seed(int(seed))
    return {
        n: torch.rand(p.shape, generator=gen, dtype=torch.float64).to(p.device)
        for n, p in params.items()
    }


def _gradient_options(options: Mapping[str, object]) -> None:
    if options.get("batches") is not None:
        check_count("magnitude_gradient", "batches", options["batches"], 1)


@register_criterion("magnitude_gradient", check=_gradient_options)
def magnitude_gradient(
    params: Mapping[str, Tensor],
    *,
    model: nn.Module,
    data: Batches | None,
    batches: int | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> dict[str, Tensor]:
    """|w * g| with g = (1/B) sum_b dL_b/dw over the first ``batches`` batches of ``data``
    (None: every batch it yields; the prune stage gives ``prune.data_batches``).

    L_b is ``loss_fn(model(x_b), y_b)`` (mean cross-entropy by default), evaluated in eval mode
    so BatchNorm running statistics are untouched (SNIP / first-order Taylor saliency).
    Batches are moved to the device of the parameters.
    """
    if data is None:
        raise ValueError(
            "criterion 'magnitude_gradient' needs data: an iterable of (inputs, targets) batches"
        )
    _gradient_options({"batches": batches})
    names, tensors = list(params), list(params.values())
    device = tensors[0].device
    grads = [torch.zeros_like(t) for t in tensors]
    restore = snapshot_modes(model)
    flags = [t.requires_grad for t in tensors]
    seen = 0
    try:
        model.eval()
        for t in tensors:
            t.requires_grad_(True)
        for x, y in islice(data, batches):
            loss = loss_fn(model(x.to(device)), y.to(device))
            for acc, g in zip(grads, torch.autograd.grad(loss, tensors)):
                acc.add_(g)
            seen += 1
    finally:
        restore()
        for t, flag in zip(tensors, flags):
            t.requires_grad_(flag)
    if seen == 0 or batches is not None and seen < batches:
        raise ValueError(f"data yielded {seen} batch(es) but "
                         f"{batches or 'at least one'} were requested (option 'batches')")
    return {n: (t.detach() * g / seen).abs() for n, t, g in zip(names, tensors, grads)}
