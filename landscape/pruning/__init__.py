"""Pruning: criteria registry, exact mask selection, masks, mask-keeping fine-tuning, and
structured (channel) pruning through torch-pruning.

One-shot unstructured pruning is three steps, each usable on its own::

    params = prunable_parameters(model)                        # what may be pruned
    scores = compute_scores("magnitude", params, model=model)  # criterion: importance per weight
    masks = select_masks(scores, rate=0.9, scope="global")     # exactly round(0.9 * N) pruned
    apply_masks(model, masks)

:func:`prune` does all three. Built in: ``magnitude``, ``random``, ``magnitude_gradient``
(:mod:`.criteria`), ``obd`` and ``grasp`` (:mod:`.second_order`), ``synflow``
(:mod:`.synaptic_flow`). Adding a criterion: decorate a function in your own module with
``@register_criterion("name")`` and import that module (:func:`import_criteria`).
"""

from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from landscape.pruning.criteria import (
    CRITERIA, Batches, Criterion, check_options, compute_scores, get_criterion, import_criteria,
    list_criteria, reads_data, register_criterion,
)
from landscape.pruning.finetune import FinetuneResult, MaskKeeper, finetune, recalibrate_bn
from landscape.pruning.masks import (
    DEFAULT_INCLUDE, PRUNABLE_KINDS, LayerSparsity, SparsityReport, apply_masks, check_masks,
    classifier_layer, prunable_parameters, sparsity_report,
)
from landscape.pruning.selection import SCOPES, EmptyLayerWarning, check_rate, select_masks
from landscape.pruning.second_order import grasp, obd
from landscape.pruning.synaptic_flow import synflow
from landscape.pruning.structured import IMPORTANCES, StructuredResult, structured_prune


def prune(
    model: nn.Module,
    rate: float,
    criterion: str = "magnitude",
    scope: str = "global",
    data: Batches | None = None,
    *,
    include: Iterable[str] = DEFAULT_INCLUDE,
    exclude_first_conv: bool = False,
    exclude_classifier: bool = False,
    **options,
) -> dict[str, Tensor]:
    """Prune ``model`` in place (weights multiplied by their masks); return the keep-masks.

    Exactly ``round(rate * N)`` of the N prunable weights (see :func:`prunable_parameters`)
    are zeroed, chosen by ``criterion`` (a name from :func:`list_criteria`) over ``scope``
    ("global" or "layerwise"; see :func:`select_masks`). ``data`` and ``**options`` go to the
    criterion. Masks are bool tensors keyed like ``model.state_dict()``, ``True`` = kept.
    """
    check_rate(rate)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    get_criterion(criterion)  # unknown names fail before any work
    params = prunable_parameters(
        model, include=include, exclude_first_conv=exclude_first_conv,
        exclude_classifier=exclude_classifier,
    )
    scores = compute_scores(criterion, params, model=model, data=data, rate=rate, scope=scope,
                            **options)
    masks = select_masks(scores, rate, scope)
    apply_masks(model, masks)
    return masks


__all__ = [
    "CRITERIA", "DEFAULT_INCLUDE", "IMPORTANCES", "PRUNABLE_KINDS", "SCOPES", "Batches",
    "Criterion", "EmptyLayerWarning", "FinetuneResult", "LayerSparsity", "MaskKeeper",
    "SparsityReport", "StructuredResult", "apply_masks", "check_masks", "check_rate",
    "check_options", "classifier_layer", "compute_scores", "finetune", "get_criterion", "grasp",
    "import_criteria", "list_criteria", "obd", "prunable_parameters", "prune",
    "reads_data", "recalibrate_bn", "register_criterion", "select_masks", "sparsity_report",
    "structured_prune", "synflow",
]
