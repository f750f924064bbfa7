"""Pruning criteria side by side: where a grid's networks were pruned by two or more
procedures (criteria, or one criterion with other settings), a table of their accuracies per
receptive field and rate, a table of each against a baseline (paired by seed, with a paired
t-test), and a figure with a panel per receptive field and a line per procedure. Each
procedure's numbers are those of its own tables (``analysis.tables.pruning_table``: the same
seeds, the same evaluation); nothing is pooled across settings.

Like :mod:`analysis.plots`: figures are built without pyplot and are None when the grid has no
rows for them; tables are :class:`~analysis.tables.Table` or None.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.plots import OKABE_ITO, _levels, _panels, _styled, _suptitle
from analysis.stats import (grid_frame, holm, paired_test, pruning_observations,
                            pruning_procedures, pruning_rows)
from analysis.tables import (Table, _levels_frame, format_mean_std, grid_slug, grid_title,
                             settings_tag)


def procedures(g: pd.DataFrame, finetuned: bool) -> list[dict[str, Any]]:
    """The grid's pruning procedures with rows of this kind (one-shot, or fine-tuned), as
    keyword arguments of :func:`analysis.stats.pruning_observations` plus their ``label``;
    one-shot procedures counted once whatever fine-tuning followed them."""
    out, seen = [], set()
    for r in pruning_procedures(g).itertuples(index=False):
        ft = None if pd.isna(r.finetune_settings) else r.finetune_settings
        if finetuned and ft is None:
            continue
        p = None if pd.isna(r.prune_settings) else r.prune_settings
        key = (r.criterion, r.protocol, p, ft if finetuned else None)
        if key in seen:
            continue
        seen.add(key)
        out.append(dict(criterion=r.criterion, protocol=r.protocol, prune_settings=p,
                        finetune_settings=ft,
                        label=f"{r.criterion}{settings_tag(p, ft if finetuned else None)}"
                              + (" (paper protocol)" if r.protocol == "paper" else "")))
    return out


def _observations(g: pd.DataFrame, proc: dict[str, Any], finetuned: bool) -> pd.DataFrame:
    """Per run and rate: the procedure's dense and pruned (or fine-tuned) test accuracy."""
    kw = {k: v for k, v in proc.items() if k != "label"}
    rows = pruning_rows(g, **kw)
    rates = sorted(rows.loc[rows["finetuned"] == finetuned, "prune_rate"].dropna()
                   .astype(float).unique())
    parts = [pruning_observations(g, **kw, prune_rate=r, finetuned=finetuned) for r in rates]
    return pd.concat(parts) if parts else pd.DataFrame()


def _observed(g: pd.DataFrame, finetuned: bool) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Each procedure with rows of this kind, and its observations (:func:`_observations`)."""
    out = [(p, _observations(g, p, finetuned)) for p in procedures(g, finetuned)]
    return [(p, o) for p, o in out if len(o) and o["pruned"].notna().any()]


def criteria_tables(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                    width: float | None = None, finetuned: bool = False,
                    baseline: str = "magnitude") -> list[Table]:
    """:func:`criteria_table` and :func:`criteria_tests` of one kind (those that are not
    None), the observations read once: what the report shows."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    observed = _observed(g, finetuned)
    return [t for t in (_table(g, observed, finetuned), _tests(g, observed, finetuned, baseline))
            if t is not None]


def criteria_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                   width: float | None = None, finetuned: bool = False) -> Table | None:
    """Rows = receptive field x pruning rate; columns = the dense accuracy (of the checkpoint
    pruned: one column when every procedure pruned the same one, else one per procedure) and
    each procedure's pruned (or fine-tuned) accuracy, mean ± std over seeds in %. None unless
    two procedures have such rows."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    return _table(g, _observed(g, finetuned), finetuned)


def _table(g: pd.DataFrame, observed: list, finetuned: bool) -> Table | None:
    obs = {p["label"]: o for p, o in observed}
    if len(obs) < 2:
        return None
    every = pd.concat(obs.values())
    one_dense = (every.groupby(["run_id", "prune_rate"])["dense"].nunique(dropna=True) <= 1).all()
    shown, numbers = [], []
    for lv in _levels_frame(every).itertuples(index=False):
        here = every[every["cell"] == lv.cell]
        for rate in sorted(here["prune_rate"].unique()):
            at = here[np.isclose(here["prune_rate"], rate)].drop_duplicates("run_id")
            seeds = int(at["seed"].nunique())
            row = {"Receptive field": lv.label, "Rate": f"{rate:g}"}
            num = {"cell": lv.cell, "receptive_field": lv.receptive_field,
                   "pool_level": lv.pool_level, "prune_rate": rate}
            if one_dense:
                row["Dense acc. (%)"] = _cell(at["dense"], seeds)
                num["dense_mean"] = _mean(at["dense"])
            for label, o in obs.items():
                mine = o[(o["cell"] == lv.cell) & np.isclose(o["prune_rate"], rate)]
                if not one_dense:
                    row[f"{label}: dense (%)"] = _cell(mine["dense"], seeds)
                    num[f"{label}_dense_mean"] = _mean(mine["dense"])
                row[f"{label} (%)"] = _cell(mine["pruned"], seeds)
                num[f"{label}_mean"] = _mean(mine["pruned"])
                num[f"{label}_n"] = int(mine["pruned"].notna().sum())
            shown.append(row)
            numbers.append(num)
    kind = "fine-tuned" if finetuned else "one-shot"
    return Table(
        name=f"{grid_slug(g)}-criteria-{'finetuned' if finetuned else 'pruned'}",
        title=f"{grid_title(g)}: test accuracy by pruning criterion, {kind}",
        cells=pd.DataFrame(shown), numbers=pd.DataFrame(numbers),
        notes="Mean ± std (ddof=1) over seeds, in %, as in each criterion's own pruning table "
              "((n=k): only k of the seeds have this value; —: not run); dense = the checkpoint "
              "that was pruned; " + ("after the last fine-tuning epoch." if finetuned
                                     else "no fine-tuning."))


def criteria_tests(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                   width: float | None = None, finetuned: bool = False,
                   baseline: str = "magnitude") -> Table | None:
    """Rows = receptive field x pruning rate; per procedure other than ``baseline`` (a
    procedure's label, else the first procedure of that criterion): its pruned (or fine-tuned)
    accuracy minus the baseline's, paired by run (the same trained network pruned both ways),
    mean ± std over seeds in percentage points, with the paired t-test's two-sided p
    (:func:`analysis.stats.paired_test`) Holm-adjusted over every test of the table. None
    unless the baseline and another procedure have rows."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    return _tests(g, _observed(g, finetuned), finetuned, baseline)


def _tests(g: pd.DataFrame, observed: list, finetuned: bool, baseline: str) -> Table | None:
    found = ([po for po in observed if po[0]["label"] == baseline]
             or [po for po in observed if po[0]["criterion"] == baseline])
    if not found or len(observed) < 2:
        return None
    base, ref = found[0]
    keys = ["run_id", "cell", "prune_rate"]
    pairs = {p["label"]: o[keys + ["pruned"]].merge(
                 ref[keys + ["pruned"]].rename(columns={"pruned": "base"}), on=keys)
             for p, o in observed if p is not base}
    rows, numbers = [], []
    for lv in _levels_frame(ref).itertuples(index=False):
        for rate in sorted(ref.loc[ref["cell"] == lv.cell, "prune_rate"].unique()):
            num = {"cell": lv.cell, "receptive_field": lv.receptive_field,
                   "pool_level": lv.pool_level, "prune_rate": rate}
            for label, m in pairs.items():
                at = m[(m["cell"] == lv.cell) & np.isclose(m["prune_rate"], rate)]
                t = paired_test(at["pruned"].to_numpy(float) * 100,
                                at["base"].to_numpy(float) * 100)
                num.update({f"{label}_diff_mean": t.mean, f"{label}_diff_std": t.std,
                            f"{label}_n": t.n, f"{label}_t": t.t, f"{label}_p": t.p})
            numbers.append(num)
            rows.append({"Receptive field": lv.label, "Rate": f"{rate:g}"})
    numbers = pd.DataFrame(numbers)
    pcols = [f"{label}_p" for label in pairs]
    adjusted = holm(numbers[pcols].to_numpy(float).ravel()).reshape(len(numbers), len(pcols))
    for j, label in enumerate(pairs):
        numbers[f"{label}_p_holm"] = adjusted[:, j]
    cells = pd.DataFrame(rows)
    for label in pairs:
        cells[f"{label} − {base['label']} (pp)"] = [
            _difference(r[f"{label}_diff_mean"], r[f"{label}_diff_std"], r[f"{label}_n"],
                        r[f"{label}_p_holm"]) for _, r in numbers.iterrows()]
    kind = "fine-tuned" if finetuned else "one-shot"
    return Table(
        name=f"{grid_slug(g)}-criteria-tests-{'finetuned' if finetuned else 'pruned'}",
        title=f"{grid_title(g)}: each pruning criterion against {base['label']}, {kind}",
        cells=cells, numbers=numbers,
        notes=f"Accuracy minus {base['label']}'s for the same trained network, mean ± std over "
              "seeds in percentage points; p: paired t-test, two-sided, Holm-adjusted over "
              "the table (— where fewer than 2 seeds or every difference is the same).")


def _difference(mean: float, std: float, n: int, p: float) -> str:
    if not n:
        return "—"
    text = format_mean_std(mean, std, n)
    text = text if text.startswith("-") else f"+{text}"
    return f"{text} (p {'—' if math.isnan(p) else _p(p)})"


def _p(p: float) -> str:
    return f"= {p:.2g}" if p >= 1e-3 else "< 0.001"


def _mean(x: pd.Series) -> float:
    x = x.dropna().to_numpy(float)
    return float(x.mean() * 100) if x.size else math.nan


def _cell(x: pd.Series, seeds: int) -> str:
    """Mean ± std in %, with ``(n=k)`` where only k of the cell's ``seeds`` have a value."""
    x = x.dropna().to_numpy(float) * 100
    if not x.size:
        return "—"
    text = format_mean_std(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan,
                           x.size)
    return text if x.size == seeds or "(n=" in text else f"{text} (n={x.size})"


@_styled
def criteria_curves(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                    width: float | None = None) -> Figure | None:
    """A panel per receptive field: test accuracy (%) vs pruning rate, a colour per pruning
    procedure, solid one-shot and dashed fine-tuned (mean over seeds, band ± std); the dense
    accuracy (of the checkpoint pruned) dotted: grey when every procedure pruned the same
    checkpoint, else in each procedure's colour. None unless two procedures were run."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    lines = [(p, ft) for ft in (False, True) for p in procedures(g, ft)]
    if sum(not ft for _, ft in lines) < 2:
        return None
    key = lambda p: (p["criterion"], p["protocol"], p["prune_settings"])  # noqa: E731
    names = {key(p): p["label"] for p, ft in lines if not ft}  # a procedure's one colour
    colour = {k: OKABE_ITO[i % len(OKABE_ITO)] for i, k in enumerate(names)}
    data = [(p, ft, _observations(g, p, ft)) for p, ft in lines]
    dense_of = {key(p): o.groupby("cell")["dense"].mean() * 100 for p, ft, o in data if not ft}
    same = pd.concat(dense_of.values(), axis=1).nunique(axis=1, dropna=True).le(1).all()
    levels = _levels(g)
    fig, axes = _panels(len(levels), panel=(4.0, 3.2))
    for ax, (cell, label, _, _) in zip(axes, levels):
        for p, ft, o in data:
            o = o[o["cell"] == cell]
            if o.empty:
                continue
            s = o.groupby("prune_rate")["pruned"].agg(["mean", "std"]).sort_index() * 100
            x = s.index.to_numpy(float) * 100
            c = colour[key(p)]
            ax.plot(x, s["mean"], color=c, ls="--" if ft else "-", marker="o", ms=3)
            ax.fill_between(x, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                            color=c, alpha=0.12, lw=0)
            if not ft and cell in dense_of[key(p)].index:
                ax.axhline(dense_of[key(p)][cell], color="grey" if same else c, ls=":", lw=1)
        ax.set_ylim(0, 102)
        ax.set_title(label)
        ax.set_xlabel("pruning rate (% of prunable weights)")
        ax.set_ylabel("test accuracy (%)")
    handles = [Line2D([], [], color=c, lw=2) for c in colour.values()]
    handles += [Line2D([], [], color="black", ls=ls) for ls in ("-", "--")]
    handles.append(Line2D([], [], color="grey", ls=":"))
    shown = [*names.values(), "one-shot", "fine-tuned",
             "dense" if same else "dense (its colour)"]
    fig.legend(handles, shown, loc="outside lower center", ncol=min(4, len(shown)))
    _suptitle(fig, g, "test accuracy by pruning criterion (line = mean, band = ± std over "
                      "seeds)")
    return fig
