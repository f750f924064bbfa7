"""Pruning stages: one-shot pruning of a run's checkpoint (``final`` by default; the paper's
protocol prunes ``best``), then optional fine-tuning.

Each rate is its own unit, marked done on its own: ``prune_<label>_<rate>_<hash>`` writes the
pruned model's rows and its masks (``arrays.npz``, plain state_dict keys, True = kept);
``finetune_<label>_<rate>_<hash>`` loads those masks and fine-tunes with them kept exactly.
The hash covers every setting that changes the result, so changing e.g. the fine-tuning lr
makes a new unit and never retrains the dense run.

Rows carry ``criterion`` (the label: ``magnitude`` for the paper's global unstructured
magnitude pruning, ``<criterion>:layerwise`` for per-layer selection, ``structured:<importance>``
for channel pruning), ``prune_rate``, ``finetuned`` and ``protocol``; ``note`` records the
checkpoint, the prunable set and whether BatchNorm statistics were recomputed. A prune unit
also reports ``dense_test_acc``, the accuracy of the checkpoint it pruned (the same
evaluation), so pruned-vs-dense tables compare like with like; a fine-tune unit reports the
test accuracy after every epoch (``index`` = epoch), after the last (no index) and the best
(``best_test_acc``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

import torch
from torch import nn

from landscape.identity import RunIdentity
from landscape.pruning import (
    PRUNABLE_KINDS, SCOPES, EmptyLayerWarning, check_options, check_rate,
    import_criteria, prunable_parameters, prune, recalibrate_bn, sparsity_report,
    structured_prune,
)
from landscape.pruning.structured import IMPORTANCES
from landscape.seeds import FINETUNE_EPOCH, STRUCTURED_PRUNE, stream_seed
from landscape.stages.base import (
    CHECKPOINTS, Output, RunContext, Stage, Unit, check_number, check_protocol, is_checkpoint,
    register_stage,
)
from landscape.stages.batches import eval_split
from landscape.stages.criterion_data import (
    check_data_per_class, criterion_batches, data_note, first_batches, named_with_data,
)
from landscape.stages.pruned_geometry import (
    GEOMETRY_FIELDS, geometry_settings, pruned_geometry_rows, validate_geometry,
)
from landscape.train import evaluate, make_loader


@dataclass
class PruneConfig:
    enabled: bool = False
    protocol: str = "default"  # default (ours) | paper (the released procedure)
    checkpoint: str = "final"  # pruned weights: final | best (| init | epoch_<n>: a saved epoch)
    criterion: str = "magnitude"  # a name from landscape.pruning.list_criteria()
    scope: str = "global"  # global | layerwise
    rates: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])
    include: list[str] = field(default_factory=lambda: ["conv", "linear"])  # weights only
    exclude_first_conv: bool = False
    exclude_classifier: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the criterion
    imports: list[str] = field(default_factory=list)  # modules registering user criteria
    data_batches: int = 1  # training batches (no augmentation) given to data-based criteria
    data_per_class: Optional[int] = None  # instead: this many images of each class (seeded)
    data_augment: bool = False  # those images with one draw of the training augmentation
    recalibrate_bn: bool = False  # recompute BN running stats on training data before eval
    structured: bool = False  # channel pruning through torch-pruning instead of masks
    structured_importance: str = "magnitude"
    finetune: bool = False
    finetune_epochs: int = 10
    finetune_lr: float = 1e-4
    finetune_momentum: float = 0.9
    finetune_weight_decay: float = 5e-4
    finetune_grad_clip: Optional[float] = 0.1  # max global gradient L2 norm
    finetune_recipe: str = "finetune"  # finetune (the settings above) | train (the run's own)
    # Geometry of each pruned (and fine-tuned) network, measured in its unit
    # (landscape/stages/pruned_geometry.py); 0 / false = off.
    hessian_k: int = 0  # top-k eigenvalues of the Hessian on the unpruned weights
    hessian_blocks: bool = False  # per module: top eigenvalue and trace of its kept block
    hessian_trace_samples: int = 20  # Hutchinson samples per block
    hessian_tol: float = 1e-3  # Lanczos residual tolerance, relative to |lambda_max|
    path_points: int = 0  # linear path dense checkpoint -> pruned network (0 = none, >= 2)
    geometry_samples: int = 500  # the first n training images (no augmentation)
    geometry_batch_size: int = 250


FINETUNE_FIELDS = ("finetune_epochs", "finetune_lr", "finetune_momentum",
                    "finetune_weight_decay", "finetune_grad_clip")
# The released procedure (global L1 magnitude of conv and linear weights but the first conv and
# the classifier, no BN recalibration, the best-test-accuracy checkpoint) with the paper's
# text's fine-tuning; configs/prune/paper.yaml sets them.
PAPER_REQUIRES = {
    "checkpoint": "best", "criterion": "magnitude", "scope": "global",
    "include": ["conv", "linear"], "exclude_first_conv": True, "exclude_classifier": True,
    "options": {}, "recalibrate_bn": False, "structured": False, "finetune_epochs": 10,
    "finetune_lr": 1e-4, "finetune_momentum": 0.9, "finetune_weight_decay": 5e-4,
    "finetune_grad_clip": 0.1, "finetune_recipe": "finetune",
}
# Fields added after units were first hashed: left out of the hash at these values, so the
# units made before keep their names.
_LATER_FIELDS = {"protocol": "default", "checkpoint": "final", "data_per_class": None,
                 "data_augment": False}

def validate(cfg: PruneConfig) -> None:
    import_criteria(cfg.imports)
    if cfg.finetune and not cfg.enabled:
        raise ValueError("prune.finetune=true fine-tunes the pruned networks, but "
                         "prune.enabled=false prunes none: set prune.enabled=true, or "
                         "prune.finetune=false")
    if cfg.structured:
        if cfg.structured_importance not in IMPORTANCES:
            raise ValueError(f"prune.structured_importance must be one of "
                             f"{', '.join(IMPORTANCES)}, got {cfg.structured_importance!r}")
        if cfg.options:
            raise ValueError(f"prune.options={dict(cfg.options)} are options of "
                             f"prune.criterion, which structured pruning does not use "
                             "(prune.structured=true ranks channels by "
                             "prune.structured_importance)")
    else:
        try:
            check_options(cfg.criterion, cfg.options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"prune.options: {e}") from None
    if not cfg.include or any(k not in PRUNABLE_KINDS for k in cfg.include):
        raise ValueError(f"prune.include must be a non-empty subset of {list(PRUNABLE_KINDS)}, "
                         f"got {list(cfg.include)}")
    if cfg.scope not in SCOPES:
        raise ValueError(f"prune.scope must be one of {', '.join(SCOPES)}, got {cfg.scope!r}")
    if not cfg.rates:
        raise ValueError("prune.rates must hold at least one rate in [0, 1)")
    for r in cfg.rates:
        try:
            check_rate(r)
        except (TypeError, ValueError) as e:
            raise ValueError(f"prune.rates: {e}") from None
    if cfg.data_batches < 1:
        raise ValueError(f"prune.data_batches must be >= 1, got {cfg.data_batches}")
    check_data_per_class(cfg)
    if (isinstance(n := cfg.options.get("batches"), int) and n > cfg.data_batches
            and cfg.data_per_class is None):
        raise ValueError(f"prune.options.batches={n} reads more batches than the "
                         f"prune.data_batches={cfg.data_batches} given to the criterion")
    if not 1 <= cfg.finetune_epochs <= FINETUNE_EPOCH.span:
        raise ValueError(f"prune.finetune_epochs must be in 1..{FINETUNE_EPOCH.span}, "
                         f"got {cfg.finetune_epochs}")
    check_number("prune.finetune_lr", cfg.finetune_lr, above=0)
    check_number("prune.finetune_momentum", cfg.finetune_momentum, above=0, strict=False)
    if cfg.finetune_momentum >= 1:
        raise ValueError(f"prune.finetune_momentum must be in [0, 1), got "
                         f"{cfg.finetune_momentum}")
    check_number("prune.finetune_weight_decay", cfg.finetune_weight_decay, above=0, strict=False)
    check_number("prune.finetune_grad_clip", cfg.finetune_grad_clip, above=0, optional=True)
    if not is_checkpoint(cfg.checkpoint):
        raise ValueError(f"prune.checkpoint must be one of {CHECKPOINTS} or epoch_<n> (an "
                         f"epoch of train.save_epochs), got {cfg.checkpoint!r}")
    validate_geometry(cfg)
    check_protocol("prune", cfg, requires=PAPER_REQUIRES)


def validate_for(cfg: PruneConfig, identity: RunIdentity) -> None:
    """The prunable set of this architecture (built on the meta device) is not empty."""
    with torch.device("meta"):
        model = identity.build_model()
    try:
        prunable_parameters(model, include=cfg.include, exclude_first_conv=cfg.exclude_first_conv,
                            exclude_classifier=cfg.exclude_classifier)
    except ValueError as e:
        raise ValueError(f"prune.include / prune.exclude_*: {e}") from None


def label(cfg: PruneConfig) -> str:
    if cfg.structured:
        return f"structured:{cfg.structured_importance}"
    return cfg.criterion if cfg.scope == "global" else f"{cfg.criterion}:{cfg.scope}"


def settings_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _prune_key(cfg: PruneConfig) -> dict[str, Any]:
    skip = {"enabled", "rates", "finetune", "imports", "finetune_recipe", *FINETUNE_FIELDS,
            *GEOMETRY_FIELDS}
    if not named_with_data(cfg):  # the same pruning whatever images: the default's name
        cfg = replace(cfg, data_batches=PruneConfig.data_batches, data_per_class=None,
                      data_augment=False)
    return {k: v for k, v in asdict(cfg).items()
            if k not in skip and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


def unit_suffix(cfg: PruneConfig, rate: float) -> str:
    return f"{label(cfg).replace(':', '-')}_{rate:g}_{settings_hash(_prune_key(cfg))}"


# ---------------------------------------------------------------------------------------------
def prune_note(cfg: PruneConfig) -> str:
    """Every setting in the prune unit's hash but the criterion label, as ``k=v; k=v`` (the
    report labels units of different settings by the fields that differ)."""
    note = (f"checkpoint={cfg.checkpoint}; scope={cfg.scope}; include={','.join(cfg.include)}; "
            f"exclude_first_conv={cfg.exclude_first_conv}; "
            f"exclude_classifier={cfg.exclude_classifier}; bn_recalibrated={cfg.recalibrate_bn}")
    if cfg.options:
        note += f"; options={json.dumps(cfg.options, sort_keys=True, separators=(',', ':'))}"
    return note + data_note(cfg)


def finetune_note(cfg: PruneConfig) -> str:
    """:func:`prune_note` and every fine-tuning setting (those in the fine-tune unit's hash)."""
    return prune_note(cfg) + "".join(f"; {k}={getattr(cfg, k)}" for k in FINETUNE_FIELDS)


def prune_checkpoint(ctx: RunContext, cfg: PruneConfig, rate: float,
                 model: nn.Module) -> tuple[nn.Module, Optional[dict], list[dict]]:
    """``model`` (the checkpoint) pruned at ``rate``: (model, masks or None if structured,
    rows)."""
    rows: list[dict] = []
    kwargs = dict(include=tuple(cfg.include), exclude_first_conv=cfg.exclude_first_conv,
                  exclude_classifier=cfg.exclude_classifier)
    if cfg.structured:
        example = first_batches(ctx, 1)[0][0]
        res = structured_prune(model, rate, example, importance=cfg.structured_importance,
                               seed=stream_seed(ctx.identity.seed, STRUCTURED_PRUNE), **kwargs)
        total = sum(p.numel() for p in res.model.parameters())
        rows += [{"metric": "sparsity", "value": res.achieved},
                 {"metric": "nonzero_params", "value": total},
                 {"metric": "compression_ratio",
                  "value": sum(p.numel() for p in model.parameters()) / total}]
        return res.model.to(ctx.settings.device), None, rows
    data = criterion_batches(ctx, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("always", EmptyLayerWarning)  # still shown, once per call
        masks = prune(model, rate, cfg.criterion, cfg.scope, data=data, **kwargs, **cfg.options)
    report = sparsity_report(model, masks)
    rows += [{"metric": "sparsity", "value": report.sparsity},
             {"metric": "nonzero_params", "value": report.model_nonzero},
             {"metric": "compression_ratio", "value": report.compression_ratio}]
    rows += [{"metric": "layer_sparsity", "value": r.sparsity, "layer": r.layer}
             for r in report.layers]
    rows += [{"metric": "empty_layer", "value": 1.0, "layer": name}
             for name in report.empty_layers]
    return model, masks, rows


def evaluate_on_test(ctx: RunContext, cfg: PruneConfig, model: nn.Module) -> list[dict]:
    if cfg.recalibrate_bn:
        loader = make_loader(eval_split(ctx, "train_eval"), ctx.train.batch_size, ctx.settings,
                             shuffle=False)
        recalibrate_bn(model, ((ctx.settings.to_device(x), y) for x, y in loader),
                       ctx.settings.device)
    loader = make_loader(eval_split(ctx, "test"), ctx.train.eval_batch_size, ctx.settings,
                         shuffle=False)
    loss, acc = evaluate(model, loader, ctx.settings)
    return [{"metric": "test_acc", "value": acc}, {"metric": "test_loss", "value": loss}]


@register_stage
class PruneStage(Stage):
    """One-shot pruning of a checkpoint, one unit per rate."""

    name = "prune"
    perturbs_parameters = True
    config_field = "prune"

    def validate(self, config: PruneConfig) -> None:
        validate(config)

    def validate_for(self, config: PruneConfig, identity: RunIdentity) -> None:
        validate_for(config, identity)

    def units(self, config: PruneConfig) -> list[Unit]:
        return [Unit(f"prune_{unit_suffix(config, r)}",
                     {"rate": float(r), "checkpoint": config.checkpoint}) for r in config.rates]

    def settings(self, config: PruneConfig) -> dict:
        # the unit name's hash covers the pruning, not the geometry (a change recomputes)
        return geometry_settings(config)

    def run(self, ctx: RunContext, config: PruneConfig, unit: Unit) -> Output:
        rate = unit.params["rate"]
        model = ctx.load_model(config.checkpoint)
        loader = make_loader(eval_split(ctx, "test"), ctx.train.eval_batch_size, ctx.settings,
                             shuffle=False)
        dense_acc = evaluate(model, loader, ctx.settings)[1]
        dense = copy.deepcopy(model) if config.path_points else None  # pruning is in place
        model, masks, rows = prune_checkpoint(ctx, config, rate, model)
        rows += evaluate_on_test(ctx, config, model)
        rows.append({"metric": "dense_test_acc", "value": dense_acc})
        note = prune_note(config)
        rows += pruned_geometry_rows(ctx, config, model, masks, dense, note, stage=self,
                                     unit=unit.name)
        arrays = {k: v.cpu().numpy() for k, v in masks.items()} if masks is not None else {}
        common = {"criterion": label(config), "prune_rate": rate, "finetuned": False,
                  "protocol": config.protocol, "note": note}
        return Output([{**common, **r} for r in rows], arrays)
