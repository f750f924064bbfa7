"""Tables of the loss-landscape geometry per receptive field: barriers between seeds,
sharpness (with lambda_max / trace from the Hessian rows)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from analysis.stats import grid_frame, pruning_rows, select, shared_note
from analysis.tables import (MISSING, Table, _levels_frame, format_mean_std, grid_slug,
                             grid_title, settings_slug, settings_tag)


def _mean_std(x: np.ndarray) -> str:
    x = x[np.isfinite(x)]
    if not x.size:
        return MISSING
    return format_mean_std(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan,
                           x.size)


def barrier_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                  width: float | None = None, stage: str = "connectivity_final") -> Table | None:
    """Rows = receptive field; the loss barrier between seeds (mean ± std over seed pairs)
    and the largest path loss, or None when the grid has no barrier rows for ``stage``."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    b = select(g, stage=stage, metric="loss_barrier")
    if b.empty:
        return None
    path = select(g, stage=stage, metric="path_loss")
    rows, numbers = [], []
    for lv in _levels_frame(g).itertuples(index=False):
        x = select(b, cell=lv.cell)["value"].to_numpy(float)
        top = select(path, cell=lv.cell).groupby(["seed", "seed_b"])["value"].max()
        mean = float(x.mean()) if x.size else math.nan
        std = float(x.std(ddof=1)) if x.size > 1 else math.nan
        rows.append({"Receptive field": lv.label,
                     "Loss barrier": format_mean_std(mean, std, x.size) if x.size else MISSING,
                     "Max loss on the path": (format_mean_std(float(top.mean()),
                                              float(top.std(ddof=1)) if top.size > 1
                                              else math.nan, top.size)
                                              if top.size else MISSING),
                     "Seed pairs": str(x.size)})
        numbers.append({"cell": lv.cell, "barrier_mean": mean, "barrier_std": std,
                        "pairs": x.size})
    note = select(b, cell=b["cell"].iloc[0])["note"].iloc[0]
    return Table(f"{grid_slug(g)}-{stage}".replace("_", "-"),
                 f"{grid_title(g)}: loss barrier between seeds ({stage})",
                 pd.DataFrame(rows), pd.DataFrame(numbers),
                 "Barrier = max over the linear path of the loss minus the straight line "
                 f"between the end losses; mean ± std (ddof=1) over seed pairs; {note}.")


def sharpness_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                    width: float | None = None, checkpoint: str = "final") -> Table | None:
    """Rows = receptive field; adaptive and standard worst-case sharpness and, where the
    Hessian of the same checkpoint was computed (our protocol), lambda_max / trace; each mean
    ± std (ddof=1) over seeds. None when the grid has no sharpness rows for ``checkpoint``."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, stage=f"sharpness_{checkpoint}")
    if s.empty:
        return None
    h = select(g, stage=f"hessian_{checkpoint}")
    top = select(h, metric="hessian_eigenvalue", index=1).set_index("run_id")["value"]
    trace = select(h, metric="hessian_trace").set_index("run_id")["value"]
    ratio = (top / trace).dropna()
    rows, numbers = [], []
    for lv in _levels_frame(g).itertuples(index=False):
        row = {"Receptive field": lv.label}
        num = {"cell": lv.cell}
        for kind in ("adaptive", "standard"):
            x = select(s, cell=lv.cell, metric=f"{kind}_sharpness")["value"].to_numpy(float)
            row[f"{kind.capitalize()} sharpness"] = _mean_std(x)
            num[f"{kind}_mean"] = float(x.mean()) if x.size else math.nan
        runs = select(g, cell=lv.cell)["run_id"].unique()
        r = ratio[ratio.index.isin(runs)].to_numpy(float)
        row["λ_max ÷ trace (ratio)"] = _mean_std(r) if len(h) else MISSING
        num["ratio_mean"] = float(r.mean()) if r.size else math.nan
        rows.append(row)
        numbers.append(num)
    rho = ", ".join(f"{kind} {m.group(0)}" for kind in ("adaptive", "standard")
                    for note in select(s, metric=f"{kind}_sharpness")["note"].dropna()[:1]
                    if (m := re.search(r"rho=[^;]+", note)))
    return Table(f"{grid_slug(g)}-sharpness-{checkpoint}",
                 f"{grid_title(g)}: worst-case sharpness at the {checkpoint} checkpoint",
                 pd.DataFrame(rows), pd.DataFrame(numbers),
                 "Largest rise of the training loss found by projected gradient ascent in the "
                 f"adaptive (|w|-scaled) and the standard L2 ball ({rho}); the ratio "
                 "λ_max ÷ trace (per seed) from the Hessian rows of the same checkpoint; "
                 "mean ± std (ddof=1) over seeds.")


def pruned_hessian_table(df: pd.DataFrame, *, arch: str | None = None,
                         dataset: str | None = None, width: float | None = None,
                         criterion: str = "magnitude", protocol: str = "default",
                         prune_settings: str | None = None,
                         finetune_settings: str | None = None) -> Table | None:
    """Rows = (receptive field, pruning rate): test accuracy and the top eigenvalue of the
    Hessian on the unpruned weights, after pruning and after fine-tuning, and the loss barrier
    of the path from the dense checkpoint to the pruned network; each mean ± std (ddof=1)
    over seeds. None when the grid has no pruned-Hessian or path rows for the criterion."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    p = pruning_rows(g, criterion=criterion, protocol=protocol, prune_settings=prune_settings,
                     finetune_settings=finetune_settings)
    tag = settings_tag(prune_settings, finetune_settings)
    measured = select(p, metric=["pruned_hessian_eigenvalue", "dense_path_barrier"])
    if measured.empty:
        return None
    columns = [("Test acc. pruned (%)", False, "test_acc", None),
               ("λ_max pruned", False, "pruned_hessian_eigenvalue", 1),
               ("Barrier dense→pruned", False, "dense_path_barrier", None),
               ("Test acc. fine-tuned (%)", True, "test_acc", None),
               ("λ_max fine-tuned", True, "pruned_hessian_eigenvalue", 1),
               ("Barrier dense→fine-tuned", True, "dense_path_barrier", None)]
    present = [c for c in columns if len(select(p, finetuned=c[1], metric=c[2]))]
    rows, numbers = [], []
    for lv in _levels_frame(g).itertuples(index=False):
        for rate in sorted(select(measured, cell=lv.cell)["prune_rate"].dropna().unique()):
            row = {"Receptive field": lv.label,
                   "Rate": f"{rate:g}"}
            num = {"cell": lv.cell, "prune_rate": float(rate)}
            for title, ft, metric, index in present:
                s = select(p, cell=lv.cell, prune_rate=rate, finetuned=ft, metric=metric,
                           index=pd.NA if index is None else index)
                x = s["value"].to_numpy(float)
                # accuracies in %, as every other table shows them; the numbers keep fractions
                row[title] = _mean_std(100 * x if metric == "test_acc" else x)
                num[f"{metric}_{'finetuned' if ft else 'pruned'}"] = (
                    float(x.mean()) if x.size else math.nan)
            rows.append(row)
            numbers.append(num)
    slug = (f"{grid_slug(g)}-pruned-hessian-{criterion}{'-paper' if protocol == 'paper' else ''}"
            + settings_slug(prune_settings, finetune_settings))
    kept = measured.dropna(subset=["note"]).drop_duplicates(["note", "cell", "metric"])
    note = shared_note(kept["note"], kept["cell"], kept["metric"])
    return Table(slug.replace(":", "-"),
                 f"{grid_title(g)}: curvature of the pruned networks, criterion {criterion}"
                 + tag + (" (paper protocol)" if protocol == "paper" else ""),
                 pd.DataFrame(rows), pd.DataFrame(numbers),
                 "λ_max: top eigenvalue of the training-loss Hessian restricted to the unpruned "
                 "weights (rate 0 = the dense network by the same procedure); barrier: max over "
                 "the linear path from the dense checkpoint of the loss minus the straight line "
                 f"between its ends; mean ± std (ddof=1) over seeds; {note}.")


def imp_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
              width: float | None = None) -> Table | None:
    """Rows = receptive field, columns = IMP round (its cumulative sparsity): test accuracy of
    the IMP line after each round's retraining and, where run, of its random-mask and
    random-reinit controls; mean ± std over seeds. None without ``imp`` rows."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, stage="imp", metric="test_acc")
    if s.empty:
        return None
    rounds = sorted(int(r) for r in s["index"].dropna().unique())
    sparsity = select(g, stage="imp", metric="sparsity", criterion="imp:magnitude")
    branches = [b for b in ("imp:magnitude", "imp:random_mask", "imp:random_reinit")
                if (s["criterion"] == b).any()]
    rows, numbers = [], []
    for lv in _levels_frame(g).itertuples(index=False):
        for b in branches:
            row = {"Receptive field": lv.label,
                   "Branch": b.removeprefix("imp:").replace("_", " ")}
            for r in rounds:
                x = select(s, cell=lv.cell, criterion=b, index=r)["value"].to_numpy(float)
                sp = select(sparsity, cell=lv.cell, index=r)["value"]
                head = f"round {r}" + (f" ({100 * sp.mean():.0f}% pruned)" if len(sp) else "")
                row[head] = _mean_std(100 * x)
                numbers.append({"cell": lv.cell, "branch": b, "round": r,
                                "test_acc_mean": float(x.mean()) if x.size else math.nan,
                                "n": int(x.size)})
            rows.append(row)
    cells = pd.DataFrame(rows).fillna(MISSING)
    controls = {"imp:random_mask": "random mask: a random mask with the same per-layer counts",
                "imp:random_reinit": "random reinit: the round's mask on a fresh "
                                     "initialisation"}
    shown = [text for b, text in controls.items() if b in branches]
    return Table(f"{grid_slug(g)}-imp", f"{grid_title(g)}: iterative magnitude pruning",
                 cells, pd.DataFrame(numbers),
                 "Test accuracy (%) after each round's retraining from the rewind point, mask "
                 "kept" + (f"; controls: {'; '.join(shown)}" if shown else
                           " (no control branches: imp.controls=[])")
                 + "; mean ± std (ddof=1) over seeds.")
