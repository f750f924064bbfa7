"""The prunable set, applying keep-masks in place, and sparsity statistics.

A mask is a bool tensor shaped like its parameter, ``True`` = kept, keyed by the parameter's
name as in ``model.state_dict()`` (no ``weight_orig``/``weight_mask`` re-parametrisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

PRUNABLE_KINDS = ("conv", "linear", "bias", "batchnorm")
DEFAULT_INCLUDE = ("conv", "linear")


def classifier_layer(model: nn.Module) -> str | None:
    """Name of the *classifier*: the last ``nn.Linear`` or ``nn.Conv*d`` in registration order
    (``model.named_modules()``), so a 1x1-conv head (SqueezeNet) counts as well as a Linear
    one; None when the model has neither."""
    layers = [n for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    return layers[-1] if layers else None


def prunable_parameters(
    model: nn.Module,
    *,
    include: Iterable[str] = DEFAULT_INCLUDE,
    exclude_first_conv: bool = False,
    exclude_classifier: bool = False,
) -> dict[str, nn.Parameter]:
    """The parameters pruning may touch, by name, in registration order.

    ``include`` picks kinds: ``"conv"`` (weights of ``nn.Conv*d``), ``"linear"`` (weights of
    ``nn.Linear``), ``"bias"`` (biases of those layers), ``"batchnorm"`` (affine weight and bias
    of ``nn.BatchNorm*d``). The *first conv* is the first ``nn.Conv*d`` in registration order
    (``model.named_modules()``); every ``landscape`` model registers its stem conv first, so this
    is also the first conv in forward order. The *classifier* is :func:`classifier_layer`.
    ``exclude_*`` remove all parameters of that layer.
    """
    include = (include,) if isinstance(include, str) else tuple(include)
    unknown = sorted(set(include) - set(PRUNABLE_KINDS))
    if unknown:
        raise ValueError(
            f"include has unknown kind(s) {unknown}; allowed: {', '.join(PRUNABLE_KINDS)}"
        )
    modules = list(model.named_modules())
    convs = [n for n, m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [n for n, m in modules if isinstance(m, nn.Linear)]
    excluded = set()
    if exclude_first_conv and convs:
        excluded.add(convs[0])
    head = classifier_layer(model) if exclude_classifier else None
    if head is not None:
        excluded.add(head)

    out: dict[str, nn.Parameter] = {}
    for mod_name, m in modules:
        if mod_name in excluded:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        is_conv = isinstance(m, nn.modules.conv._ConvNd)
        is_linear = isinstance(m, nn.Linear)
        names = []
        if (is_conv and "conv" in include) or (is_linear and "linear" in include):
            names.append("weight")
        if (is_conv or is_linear) and "bias" in include:
            names.append("bias")
        if isinstance(m, nn.modules.batchnorm._NormBase) and "batchnorm" in include:
            names += ["weight", "bias"]
        for p_name in names:
            p = getattr(m, p_name, None)
            if isinstance(p, nn.Parameter):
                out[prefix + p_name] = p
    if not out:
        raise ValueError(
            f"the prunable set of {type(model).__name__} is empty (include={list(include)}, "
            f"exclude_first_conv={exclude_first_conv}, exclude_classifier={exclude_classifier}; "
            f"{len(convs)} conv and {len(linears)} linear layers found)"
        )
    return out


def check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    """Validate ``masks`` against ``model``; return the masked parameters by name."""
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(
                f"mask '{name}' names no parameter of {type(model).__name__} "
                f"(parameters: {', '.join(list(params)[:8])}, ...)"
            )
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = getattr(mask, "dtype", type(mask).__name__)
            raise TypeError(f"mask '{name}' must be a bool tensor, got {got}")
        if mask.shape != params[name].shape:
            raise ValueError(
                f"mask '{name}' has shape {tuple(mask.shape)}, parameter has "
                f"{tuple(params[name].shape)}"
            )
        out[name] = params[name]
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned weights in place: ``w[~mask] = 0`` (exact +0.0)."""
    for name, p in check_masks(model, masks).items():
        p.masked_fill_(~masks[name].to(p.device), 0.0)


@dataclass(frozen=True)
class LayerSparsity:
    """One masked tensor. ``sparsity = pruned / numel``; ``nonzero`` counts the actual weights
    (a kept weight may be zero too); ``empty`` is True when every weight is pruned."""

    layer: str
    numel: int
    pruned: int
    nonzero: int
    sparsity: float
    empty: bool


@dataclass(frozen=True)
class SparsityReport:
    """Sparsity of a masked model.

    ``sparsity`` = pruned / prunable_numel over the masked tensors (the prune rate achieved).
    ``compression_ratio`` = model_params / model_nonzero over *all* parameters of the model
    (ShrinkBench's convention), so unprunable parameters (BN, biases) count as dense.
    """

    layers: tuple[LayerSparsity, ...]
    prunable_numel: int
    pruned: int
    sparsity: float
    model_params: int
    model_nonzero: int
    compression_ratio: float

    @property
    def empty_layers(self) -> tuple[str, ...]:
        return tuple(row.layer for row in self.layers if row.empty)

    def as_rows(self) -> list[dict[str, object]]:
        """One dict per layer (keys as in :class:`LayerSparsity`), for a long-format table."""
        return [dict(vars(row)) for row in self.layers]


@torch.no_grad()
def sparsity_report(model: nn.Module, masks: Mapping[str, Tensor]) -> SparsityReport:
    """Per-layer and total sparsity of ``model`` under ``masks``."""
    params = check_masks(model, masks)
    layers = []
    for name, p in params.items():
        pruned = int(torch.count_nonzero(~masks[name]))
        layers.append(LayerSparsity(
            layer=name, numel=p.numel(), pruned=pruned,
            nonzero=int(torch.count_nonzero(p)), sparsity=pruned / max(p.numel(), 1),
            empty=p.numel() > 0 and pruned == p.numel(),
        ))
    numel = sum(row.numel for row in layers)
    pruned = sum(row.pruned for row in layers)
    model_params = sum(p.numel() for p in model.parameters())
    model_nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return SparsityReport(
        layers=tuple(layers), prunable_numel=numel, pruned=pruned,
        sparsity=pruned / max(numel, 1), model_params=model_params, model_nonzero=model_nonzero,
        compression_ratio=model_params / model_nonzero if model_nonzero else float("inf"),
    )
