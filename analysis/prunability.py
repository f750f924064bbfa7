"""What goes with prunability: the per-run quantities of the loss landscape and the
representations (lambda_max, the Hessian trace, worst-case sharpness, the observed probe
tail, the importance maximum, the ERF size) against the accuracy pruning costs the same run
(dense - pruned, dense - fine-tuned), as Spearman's rho over all runs of a grid and within each
cell (:func:`analysis.stats.stratified_correlation`).

Over all runs, a quantity the receptive field drives and a cost it drives correlate whatever
the quantity says of the network: within a cell (one receptive field and input size) only the
differences between seeds count, so a rho that stays there is one the cell's settings do not
explain.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.plots import _levels, _panels, _styled, _suptitle, legend_below, present_stages
from analysis.stats import (final_epoch, grid_frame, holm, pruning_observations,
                            pruning_rows, select, stratified_correlation)
from analysis.tables import MISSING, Table, format_number, grid_slug, grid_title, settings_tag

SCOPES = (("all runs", "rho", "p"), ("within cells", "rho_within", "p_within"))
STRATA = "cell"  # a grid's cells differ in the receptive field (and the input size) only
DENSE = "dense test acc. (reference)"


def landscape_quantities(d: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows: one value per run) of every per-run landscape and representation
    quantity in ``d`` (final-epoch rows of one grid), stage by stage, those with rows only."""
    out: list[tuple[str, pd.DataFrame]] = []
    for st in present_stages(select(d, metric="hessian_eigenvalue"), "hessian"):
        out += [(f"{st}: λ_max", select(d, stage=st, metric="hessian_eigenvalue", index=1)),
                (f"{st}: trace", select(d, stage=st, metric="hessian_trace"))]
    for st in present_stages(d, "sharpness"):
        out += [(f"{st}: {kind} sharpness", select(d, stage=st, metric=f"{kind}_sharpness"))
                for kind in ("adaptive", "standard")]
    for st in present_stages(select(d, metric="tail_observed"), "probes"):
        out.append((f"{st}: observed tail start (layer #)",
                    select(d, stage=st, metric="tail_observed")))
    for st in present_stages(d, "importance"):
        out.append((f"{st}: importance_max", select(d, stage=st, metric="importance_max")))
        cut = select(d, stage=st, metric="erf_size_censored")
        k = int((cut["value"] > 0).sum())  # sizes bounded by the image: their ranks too
        out.append((f"{st}: erf_size" + (f" ({k} of {len(cut)} cut by the image)" if k else ""),
                    select(d, stage=st, metric="erf_size")))
    return [(name, obs) for name, obs in out if len(obs)]


def reference_quantities(d: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The dense test accuracy (a reference: pruning costs are measured from it), then
    :func:`landscape_quantities` of ``d``; empty when ``d`` has no landscape quantity."""
    quantities = landscape_quantities(d)
    return [(DENSE, select(d, stage="train", metric="test_acc")), *quantities] if quantities \
        else []


def pruning_costs(g: pd.DataFrame, units: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, one row per run: ``value`` = dense - pruned test accuracy) of each pruning unit
    of ``units`` (``report._units``), labelled ``"<unit>: dense - pruned"`` (or fine-tuned)."""
    out = []
    for u in units.itertuples(index=False):
        obs = pruning_observations(g, criterion=u.criterion, prune_rate=u.prune_rate,
                                   finetuned=bool(u.finetuned), protocol=u.protocol,
                                   prune_settings=u.prune_settings,
                                   finetune_settings=u.finetune_settings)
        after = "fine-tuned" if u.finetuned else "pruned"
        out.append((f"{u.unit}: dense - {after}", obs.rename(columns={"difference": "value"})))
    return out


def highest_rates(units: pd.DataFrame) -> pd.DataFrame:
    """Of the pruning units (``report._units``: one row per unit), the one at the highest
    rate of each procedure (stage, criterion, protocol and settings); pruned before
    fine-tuned, then by protocol and criterion."""
    key = ["stage", "criterion", "finetuned", "protocol", "prune_settings", "finetune_settings"]
    units = units.reset_index(drop=True)
    keys = units[key].astype(object).where(units[key].notna(), "")  # no settings: NA or ""
    top = units.loc[units["prune_rate"].groupby([keys[k] for k in key], sort=False).idxmax()]
    return top.sort_values(["finetuned", "protocol", "criterion", "prune_settings",
                            "finetune_settings"], kind="stable", na_position="first")


def procedure_units(units: pd.DataFrame, procedure: Mapping[str, Any]) -> pd.DataFrame:
    """The pruning units (``report._units``) of one procedure (``criterion``, ``protocol``,
    ``prune_settings`` and, for the fine-tune units, ``finetune_settings``)."""
    def same(column: str) -> pd.Series:
        want = procedure.get(column)
        have = units[column].astype(object).where(units[column].notna(), None)
        return have.map(lambda v: (v or "") == (want or ""))

    ours = (units["criterion"] == procedure["criterion"]) & same("protocol") \
        & same("prune_settings")
    return units[ours & ((units["stage"] != "finetune") | same("finetune_settings"))]


def prunability_table(g: pd.DataFrame, units: pd.DataFrame,
                      quantities: Sequence[tuple[str, pd.DataFrame]] | None = None, *,
                      name: str = "", what: str = "") -> Table | None:
    """Rows = each landscape quantity over all runs and within cells; columns = the
    pruning units at their procedure's highest rate (``units``, labelled by their ``unit``
    column; the report gives one procedure's, :func:`procedure_units`, named ``name`` in the
    file and ``what`` in the title); each cell Spearman's rho of the quantity against the
    accuracy that unit costs the run, its p Holm-adjusted over every test of the table, and
    the runs compared; the dense test accuracy first, for reference (the cost is measured
    from it; ``quantities``: :func:`reference_quantities` of the grid's final epoch unless
    given). None without a pruning unit or a quantity with values for at least 3 runs."""
    if quantities is None:
        quantities = reference_quantities(final_epoch(g))
    usable, dropped = [], []
    for label, obs in quantities:
        (dropped if obs["run_id"].duplicated().any() else usable).append((label, obs))
    units = highest_rates(units) if len(units) else units
    if not usable or not len(units):
        return None
    costs = pruning_costs(g, units)
    numbers = pd.DataFrame([
        {"quantity": q, "pruning": c, "scope": scope, "rho": getattr(r, rho),
         "p": getattr(r, p), "n": r.n, "cells": r.strata}
        for q, x in usable for c, y in costs
        for r in [stratified_correlation(x, y, strata=STRATA)] for scope, rho, p in SCOPES])
    if not (numbers["n"] >= 3).any():
        return None
    numbers.insert(numbers.columns.get_loc("p") + 1, "p_holm", holm(numbers["p"].to_numpy(float)))
    cells = numbers.assign(text=[_cell(r) for r in numbers.itertuples(index=False)]).pivot(
        index=["quantity", "scope"], columns="pruning", values="text")
    order = pd.MultiIndex.from_tuples([(q, s) for q, _ in usable for s, *_ in SCOPES])
    cells = cells.reindex(index=order, columns=[c for c, _ in costs]).reset_index()
    cells.columns = ["Quantity (per run)", "Runs", *cells.columns[2:]]
    tests = int(numbers["p"].notna().sum())
    notes = ("Spearman's ρ between each quantity and the test accuracy pruning costs the same "
             "run (dense - pruned or dense - fine-tuned, at the highest rate of each "
             "procedure): + means runs with more of the quantity lose more. 'all runs' pools "
             "every receptive field; 'within cells' ranks both within each cell (one receptive "
             "field and input size: only its seeds differ), so that what the receptive field "
             "drives in both does not count. p: permutation tests (within cells: shuffled "
             f"within each cell), Holm-adjusted over the table's {tests} tests; n: runs with "
             "both values." + (" The dense test accuracy is a reference: the cost is "
                               "measured from it." if usable[0][0] == DENSE else ""))
    if dropped:
        notes += (" Left out (two values for one run): "
                  + ", ".join(label for label, _ in dropped) + ".")
    return Table(f"{grid_slug(g)}-prunability" + (f"-{name}" if name else ""),
                 f"{grid_title(g)}: what goes with the accuracy pruning costs"
                 + (f", {what}" if what else ""), cells, numbers, notes)


@_styled
def prunability_scatter(df: pd.DataFrame, *, criterion: str, arch: str | None = None,
                        dataset: str | None = None, width: float | None = None,
                        protocol: str = "default", prune_settings: str | None = None,
                        finetune_settings: str | None = None,
                        prune_rate: float | None = None) -> Figure | None:
    """One panel per landscape quantity (:func:`landscape_quantities`): each run's value
    against the test accuracy one-shot pruning by ``criterion`` costs it at ``prune_rate``
    (default the highest rate of the procedure), in percentage points, a colour and marker
    per receptive field; the panel's title gives Spearman's rho over all runs and within
    cells (:func:`analysis.stats.stratified_correlation`; p in the table). None
    without such pruning rows or quantities."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    settings = dict(protocol=protocol, prune_settings=prune_settings,
                    finetune_settings=finetune_settings)
    rows = pruning_rows(final_epoch(g), criterion=criterion, stages=("prune",), **settings)
    rates = select(rows, metric="test_acc")["prune_rate"].dropna().astype(float)
    if rates.empty:
        return None
    rate = rates.max() if prune_rate is None else prune_rate
    cost = pruning_observations(g, criterion=criterion, prune_rate=rate, **settings)
    cost = cost.rename(columns={"difference": "value"})
    quantities = [(name, obs) for name, obs in landscape_quantities(final_epoch(g))
                  if not obs["run_id"].duplicated().any()]
    if not quantities or cost["value"].notna().sum() < 1:
        return None
    fig, axes = _panels(len(quantities), panel=(3.6, 3.0))
    levels = _levels(g)
    for ax, (name, obs) in zip(axes, quantities):
        both = obs[["run_id", "cell", "value"]].merge(cost[["run_id", "value"]], on="run_id",
                                                    suffixes=("_x", "_y")).dropna()
        for cell, label, colour, marker in levels:
            at = both[both["cell"] == cell]
            ax.scatter(at["value_x"], 100 * at["value_y"], color=colour, marker=marker, s=28,
                       label=label)
        x = both["value_x"].to_numpy(float)
        if len(x) and (x > 0).all() and x.max() / x.min() > 100:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))  # long tick labels ran together
        r = stratified_correlation(obs, cost, strata=STRATA, test=False)  # p: in the table
        ax.set_title(f"{name}\nρ {_rho(r.rho, r.n)} all runs, {_rho(r.rho_within, r.n)} "
                     "within cells", fontsize=8)
        ax.set_xlabel(name.split(": ", 1)[-1], fontsize=8)
        ax.set_ylabel("accuracy lost (points)", fontsize=8)
    legend_below(fig, axes, max_cols=4)
    _suptitle(fig, g, f"what goes with the accuracy lost to {criterion} pruning at {rate:g}"
              + settings_tag(prune_settings, finetune_settings)
              + (" (paper protocol)" if protocol == "paper" else ""))
    return fig


def _rho(value: float, n: int) -> str:
    return "n/a" if n < 3 or np.isnan(value) else f"{value:+.2f}"


def _cell(r) -> str:
    if r.n < 3:
        return MISSING
    if math.isnan(r.rho):
        return f"undefined (constant; n={r.n})"
    return f"{r.rho:+.2f} (p={format_number(r.p_holm)}; n={r.n})"
