"""The row schema: identity columns, value columns, dtypes, and every metric name in one table.

Rows are long format, one observation per row (DESIGN.md §4). Metric names are fixed
snake_case strings, one per quantity; every built-in stage's metrics are declared here, so
rows can be written and read without importing the stage that made them. A user stage
declares its own with :func:`register_metric`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import pandas as pd

# Identity columns, in order (DESIGN.md §4). pool_padding is kept too: a kernel/stride sweep
# needs it to tell settings apart.
ID_COLUMNS = [
    "run_id", "arch", "dataset", "pool_level", "pool_kernel", "pool_stride", "pool_padding",
    "receptive_field", "width", "seed", "stage", "criterion", "prune_rate", "finetuned",
]
VALUE_COLUMNS = ["metric", "value"]
# protocol: "default" or "paper" (docs/paper-protocol.md) for the stages that have both;
# missing for the others (and for rows written before the column existed: "default").
# coord_x / coord_y: the coordinates of a point of a loss slice or path (direction units).
# unit: the stage unit folder that holds the row (``load`` fills it for rows written before
# the column existed); it tells apart units of one stage with different settings, e.g. two
# fine-tunings of the same pruned network.
# arch_variant: the architecture's knobs that differ from the paper's model
# (``"stem=imagenet,skips=False"``; missing for the paper's architectures).
# image_size, resize: the network's input side in pixels and the protocol that made it
# (``"direct"``, ``"down_up:<down_size>"``, ``"canvas:<object size>"``; data.resize): study
# axes like the pool level (missing in rows written before the columns existed).
# epoch: the training epoch of the checkpoint a unit measured (units with a ``checkpoint``:
# init 0, final train.epochs, epoch_<n> n, best the run's best epoch; missing for best in a
# cell unit, whose seeds each have their own, and for rows without a checkpoint).
# global_mixing: the network mixes every position with every other before its head
# (attention, a token-mixing MLP), so its features see the whole input and receptive_field is
# that of the layers before (a ViT's patch embedding; missing in rows written before the
# column existed, and where the RF analysis cannot follow the model).
OPTIONAL_COLUMNS = ["index", "layer", "layer_b", "seed_b", "coord_x", "coord_y", "protocol",
                    "note", "unit", "arch_variant", "image_size", "resize", "epoch",
                    "global_mixing"]
COLUMNS = ID_COLUMNS + VALUE_COLUMNS + OPTIONAL_COLUMNS

DTYPES: dict[str, str] = {
    "run_id": "string", "arch": "string", "dataset": "string", "pool_level": "Int64",
    "pool_kernel": "Int64", "pool_stride": "Int64", "pool_padding": "Int64",
    "receptive_field": "Int64", "width": "float64", "seed": "Int64", "stage": "string",
    "criterion": "string", "prune_rate": "float64", "finetuned": "boolean", "metric": "string",
    "value": "float64", "index": "Int64", "layer": "string", "layer_b": "string",
    "seed_b": "Int64", "coord_x": "float64", "coord_y": "float64", "protocol": "string",
    "note": "string", "unit": "string", "arch_variant": "string", "image_size": "Int64",
    "resize": "string", "epoch": "Int64", "global_mixing": "boolean",
}

# Every metric name, one per quantity, with its meaning and unit.
METRICS: dict[str, str] = {
    # train
    "train_loss": "mean training cross-entropy over an epoch (augmented data); index = epoch",
    "train_acc": "training accuracy over an epoch, fraction in [0, 1]; index = epoch",
    "test_loss": "mean test cross-entropy after an epoch; index = epoch",
    "test_acc": "test accuracy after an epoch, fraction in [0, 1]; index = epoch",
    "learning_rate": "learning rate used during an epoch; index = epoch",
    "epoch_seconds": "wall time of an epoch (train + test evaluation), seconds; index = epoch",
    "diverged": "1 if the training loss became NaN/inf (index = epoch it happened), else 0",
    "num_params": "number of parameters of the model",
    "train_seconds": "wall time of the training stage in this process, seconds",
    "resident_data": "1 if the training batches were drawn on the device from resident data "
                     "(data.loader), 0 for the DataLoader path; note = the path",
    "compiled": "1 if the training steps ran a torch.compile'd model (train.compile), else 0; "
                "note = why compiling failed, when it was asked for",
    "bn_initial_share": "largest share of initial values (mean 0, var 1) left in a BatchNorm "
                        "layer's running statistics after training, (1 - momentum)^steps; "
                        "layer = that BatchNorm; note = its momentum and steps (and "
                        "whether the initial values came from model.weights)",
    "best_test_acc": "highest test accuracy over the epochs of training (its weights are "
                     "best.pt) or of a fine-tuning, fraction; index = that epoch",
    # receptive_field (cell-level, one row per conv/pool layer; layer = module name)
    "rf_r_max": "analytic receptive field of a layer's output, max over paths, pixels",
    "rf_r_min": "analytic receptive field of a layer's output, min over paths, pixels",
    "rf_jump": "effective stride of a layer's output in input pixels",
    "rf_unproductive": "1 if the r_min of the layer's input already covers the input size",
    "rf_border": "1 for the border layer (the first unproductive layer), else 0",
    "rf_underutilised": "1 if the layer's own r_min exceeds the input size on both axes "
                        "(rfa-toolbox's critical layers)",
    "rf_min_feasible_input": "r̃, the minimal feasible input resolution: the largest r_min "
                             "over all layers (larger axis), pixels; layer = where reached",
    "rf_unsupported": "1 when the RF analysis cannot follow the model (note = the op and why; "
                      "the cell has no other receptive_field rows and its receptive_field "
                      "column is empty)",
    "flops_per_image": "FLOPs of one forward pass of one image at the data's size (2 x "
                       "multiply-accumulates of conv / linear / matmul; note = the convention)",
    "padding_only_weights": "weights of a conv layer that multiply zero padding at every "
                            "position at the data's size (no path to the input); layer = "
                            "name, only layers that have some",
    "padding_only_share": "padding-only weights / all conv and linear weights (the default "
                          "prunable set) at the data's size",
    # prune, finetune (also test_acc, test_loss, train_loss, train_acc, best_test_acc)
    "dense_test_acc": "test accuracy of the unpruned checkpoint a prune unit pruned (the same "
                      "evaluation as its test_acc), fraction",
    "sparsity": "fraction of the prunable weights that are pruned",
    "nonzero_params": "nonzero parameters of the whole model after pruning",
    "compression_ratio": "all parameters / nonzero parameters",
    "layer_sparsity": "fraction of a layer's weights pruned; layer = name",
    "empty_layer": "1 for a layer left with no weights (layer = name)",
    # hessian
    "hessian_eigenvalue": "Hessian eigenvalue of the mean training loss; index = rank (1 = largest)",
    "hessian_residual": "||H v - lambda v|| of an eigenpair; index = rank",
    "hessian_trace": "Hutchinson estimate of the Hessian trace",
    "hessian_trace_stderr": "standard error of hessian_trace",
    "hessian_density_node": "SLQ node (Ritz value); index = run * n_iter + step",
    "hessian_density_weight": "SLQ weight of the node with the same index (a run sums to 1)",
    "hessian_num_hvp": "Hessian-vector products spent by the stage unit",
    "hessian_converged": "1 if every top-k residual is below tol * |lambda_max|",
    "hessian_seconds": "wall time of the stage unit, seconds",
    # importance
    "importance_max": "mean over samples of the per-sample maximum of the projected-gradient "
                      "map (|d out / d pixel|); note holds the settings",
    "importance_max_std": "population std over samples of the per-sample maximum of the "
                          "projected-gradient map",
    "importance_n": "number of input samples behind importance_max",
    "erf_size": "side (pixels) of the smallest centred square holding mass_fraction of the "
                "mean importance map (Luo et al. 2016)",
    "erf_size_censored": "1 when erf_size's square reaches past the image's edge (the input "
                         "cut the ERF: its size is bounded by the image, not the network), "
                         "else 0",
    "erf_area": "pixels of the mean importance map >= rel_threshold x max",
    # slice (loss-landscape slices around a checkpoint; coord_x, coord_y = the point)
    "slice_loss": "mean training loss (no augmentation) at w + coord_x d1 (+ coord_y d2), "
                  "d filter-normalised random directions; note holds the settings",
    "slice_acc": "training accuracy at the slice point, fraction in [0, 1]",
    # sharpness
    "adaptive_sharpness": "worst-case rise of the training loss within ||delta / |w| || <= rho "
                          "(ASAM's adaptive L2 ball; rho in note), loss units",
    "standard_sharpness": "worst-case rise of the training loss within ||delta|| <= rho "
                          "(rho in note), loss units",
    "sharpness_loss": "training loss at the checkpoint on the sharpness stage's images (what "
                      "the sharpness rows rise from)",
    "adaptive_perturbed_loss": "training loss at the worst point found in the adaptive ball "
                               "(sharpness_loss + adaptive_sharpness)",
    "standard_perturbed_loss": "training loss at the worst point found in the L2 ball "
                               "(sharpness_loss + standard_sharpness)",
    # prune, finetune: geometry of the pruned (fine-tuned) network, prune.hessian_k etc.
    "pruned_hessian_eigenvalue": "eigenvalue of the training-loss Hessian restricted to the "
                                 "unpruned weights; index = rank (1 = largest)",
    "pruned_hessian_residual": "Lanczos residual ||H x - lambda x|| of that eigenpair; "
                               "index = rank",
    "pruned_hessian_dim": "number of unpruned coordinates the pruned Hessian acts on",
    "block_hessian_eigenvalue": "top eigenvalue of one module's diagonal Hessian block on its "
                                "unpruned weights; layer = module",
    "block_hessian_trace": "Hutchinson trace of that block; layer = module",
    "dense_path_loss": "training loss on the linear path from the dense checkpoint (alpha 0) "
                       "to the pruned or fine-tuned network (alpha 1 = coord_x), BN "
                       "recalibrated per point",
    "dense_path_acc": "training accuracy on that path at alpha = coord_x, fraction",
    "dense_path_barrier": "loss barrier of that path (loss units; >= 0)",
    # probes (layer = module, index = its position among the probed layers)
    "probe_acc": "test accuracy of a logistic-regression probe on the layer's pooled output, "
                 "fraction in [0, 1]",
    "probe_train_acc": "training accuracy of that probe, fraction in [0, 1]",
    "saturation": "intrinsic dimension / width of the layer's output covariance (positions "
                  "as samples, channels as dimensions), in (0, 1]",
    "intrinsic_dim": "eigendirections of the layer's output covariance explaining the "
                     "threshold share of its variance (note: threshold, rule)",
    "border_predicted": "index of the first probed layer whose input's minimum receptive "
                        "field covers the image (layer = its name; from the architecture)",
    "tail_observed": "index of the first layer of the observed tail (probe accuracy flat, "
                     "saturation below the mean after it; layer = its name)",
    "position_probe_acc": "test accuracy of a probe on one feature-map position of the layer "
                          "(coord_x = column, coord_y = row), fraction",
    # importance.per_layer (layer = the conv, index = its position in forward order)
    "layer_erf_size": "side of the centred square holding 95% of the ERF map of the layer's "
                      "centre unit, pixels",
    "layer_erf_censored": "1 when layer_erf_size's square reaches past the image's edge, "
                          "else 0",
    "layer_erf_sigma": "mean of the per-axis standard deviations of the layer's ERF map, pixels",
    "layer_erf_r2": "R^2 of a 2-D Gaussian fit to the layer's ERF map",
    "layer_r_max": "analytic receptive field (max over paths) of the layer, pixels",
    # train.track (measured after training epochs; index = epoch)
    "track_lambda_max": "top eigenvalue of the Hessian of the mean training loss on the "
                        "tracker's evaluation set after epoch index (warm-started Lanczos; note: "
                        "HVPs, warm, residual)",
    "track_grad_norm": "norm of the gradient of the mean training loss on the tracker's "
                       "evaluation set after epoch index",
    "track_saturation": "saturation of layer after epoch index on the tracker's evaluation set, "
                        "in (0, 1]",
    # resolution (a checkpoint evaluated at other input sizes)
    "resolution_test_acc": "test accuracy of the checkpoint at input size index (pixels), "
                           "fraction in [0, 1]; note: checkpoint, eval and training size",
    "resolution_test_loss": "mean test cross-entropy of the checkpoint at input size index "
                            "(pixels)",
    # connectivity (cell-level: linear paths between the seeds of a cell)
    "path_loss": "loss on the linear path from seed to seed_b at alpha = coord_x",
    "path_acc": "accuracy on the linear path at alpha = coord_x, fraction in [0, 1]",
    "loss_barrier": "max over the path of the loss minus the linear interpolation of the end "
                    "losses, seed to seed_b (loss units; >= 0)",
    # cka (cell-level)
    "cka": "linear CKA between layer (of seed) and layer_b (of seed_b), in [0, 1]; note holds "
           "the estimator",
    "cka_to_final": "linear CKA between layer of seed at a checkpoint (epoch = its epoch) and "
                    "the same layer of the same seed's final weights (cka.to_final), in [0, 1]",
}


class SchemaError(ValueError):
    """A row that does not fit the schema (unknown column or metric, bad value)."""


def register_metric(name: str, description: str) -> None:
    """Declare a new metric name (snake_case) with its meaning and unit."""
    if not name.replace("_", "").isalnum() or name.lower() != name:
        raise SchemaError(f"metric names are snake_case, got {name!r}")
    if name in METRICS and METRICS[name] != description:
        raise SchemaError(f"metric {name!r} is already registered: {METRICS[name]}")
    METRICS[name] = description


def validate_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows):
        unknown = set(r) - set(COLUMNS)
        if unknown:
            raise SchemaError(f"row {i}: unknown column(s) {sorted(unknown)}; valid: {COLUMNS}")
        metric = r.get("metric")
        if metric not in METRICS:
            raise SchemaError(
                f"row {i}: unknown metric {metric!r}; register it with "
                f"landscape.results.register_metric. Known: {', '.join(sorted(METRICS))}"
            )
        value = r.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars, 0-d tensors
            except (TypeError, ValueError):
                raise SchemaError(f"row {i} ({metric}): value must be a number, got {value!r}")
        out.append({**r, "value": float(value)})
    return out


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> DataFrame with every schema column, in order, with the schema dtypes."""
    return normalized(pd.DataFrame(list(rows)))


def normalized(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every schema column, in order (a missing one NA; others dropped),
    with the schema dtypes; ``ValueError`` / ``TypeError`` for a value its column cannot
    hold."""
    df = df.reindex(columns=COLUMNS)
    for c, t in DTYPES.items():
        col = df[c]
        if t == "boolean":
            col = col.astype(object).map(_to_bool)
        elif t == "float64":
            col = pd.to_numeric(col.astype(object).where(col.notna(), None), errors="raise")
        df[c] = col.astype(t)
    return df


def _to_bool(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return pd.NA
    if isinstance(v, str):
        return {"true": True, "false": False}.get(v.strip().lower(), pd.NA)
    return bool(v)

