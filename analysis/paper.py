"""Our figures beside the paper's published ones (``analysis.reference.paper_tables()``).

Published values are always labelled as the paper's. The paper prints its own receptive-field
labels (ResNet50 level 1: 110); where our analytic value differs it is shown beside it.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from analysis.stats import select
from analysis.tables import (MISSING, Table, format_mean_std, format_number, grid_slug,
                             grid_title, protocol_tag)

PAPER_PRUNING = {"dense_test_acc": "Dense acc. (%)", "pruned_test_acc": "Pruned acc. (%)",
                 "difference": "Difference (pp)"}


def paper_level_label(paper_rf: object, pool_level: object, analytic: object = None) -> str:
    """``"RF 110 px (pool 1; analytic 108 px)"``: the paper's label, and ours where it differs."""
    ours = (f"; analytic {int(analytic)} px" if analytic is not None and not pd.isna(analytic)
            and int(analytic) != int(paper_rf) else "")
    return f"RF {paper_rf} px (pool {pool_level}{ours})"


def _analytic(g: pd.DataFrame | None) -> dict[int, int]:
    """pool level -> our analytic RF, from the rows of one grid (preset pools only)."""
    if g is None or g.empty:
        return {}
    lv = g[g["pool_level"].notna()].drop_duplicates("pool_level")
    return {int(p): int(r) for p, r in zip(lv["pool_level"], lv["receptive_field"])}


def paper_table(reference: pd.DataFrame, *, arch: str, dataset: str,
                ours: pd.DataFrame | None = None) -> Table | None:
    """The paper's published dense/pruned/difference figures for (arch, dataset) in the layout
    of :func:`analysis.tables.pruning_table`, or None if the reference has none. ``ours``: the
    rows of our grid, for the analytic receptive field beside the paper's label."""
    ref = reference[(reference["arch"] == arch) & (reference["dataset"] == dataset)]
    ref = ref[ref["metric"].isin(list(PAPER_PRUNING))]
    if ref.empty:
        return None
    analytic = _analytic(ours)
    note = "; ".join(str(n) for n in ref["note"].dropna().unique())
    rows = []
    for (rf, level), g in ref.groupby(["receptive_field", "pool_level"], sort=True):
        row = {"Receptive field": paper_level_label(rf, level, analytic.get(int(level)))}
        for metric, title in PAPER_PRUNING.items():
            m = g[g["metric"] == metric]
            row[title] = (format_mean_std(float(m["mean"].iloc[0]), float(m["std"].iloc[0]))
                          if len(m) else MISSING)
        rows.append(row)
    return Table(name=f"paper-{arch}-{dataset}",
                 title=f"Published values (the paper, not computed here): {arch} on {dataset}",
                 cells=pd.DataFrame(rows), numbers=ref.reset_index(drop=True),
                 notes=f"From the paper's tables. {note}")


def pooled_maxima(rows: pd.DataFrame) -> tuple[float, float, int]:
    """Mean, population std and count of the per-map maxima over every map of some runs, from
    each run's ``importance_max`` (mean), ``importance_max_std`` (population std) and
    ``importance_n``: ``var = sum n_i (s_i^2 + m_i^2) / N - mean^2``."""
    wide = rows.pivot_table(index="run_id", columns="metric", values="value", aggfunc="first")
    need = {"importance_max", "importance_max_std", "importance_n"}
    if wide.empty or not need <= set(wide.columns):
        return math.nan, math.nan, 0
    n = wide["importance_n"].to_numpy(float)
    m = wide["importance_max"].to_numpy(float)
    s = wide["importance_max_std"].to_numpy(float)
    total = n.sum()
    mean = float((n * m).sum() / total)
    var = float((n * (s ** 2 + m ** 2)).sum() / total - mean ** 2)
    return mean, math.sqrt(max(var, 0.0)), int(total)


def importance_table(g: pd.DataFrame, reference: pd.DataFrame | None, *, stage: str,
                     protocol: str) -> Table | None:
    """Per receptive field of one grid: the mean ± std over every map (all seeds) of the
    per-map maximum projected gradient of ``stage``, beside the paper's Tables 3 and 4 (at
    init, 64x64 input, 50 maps) and whether ours lies within the published mean ± 2 std."""
    d = select(g, stage=stage)
    if d.empty:
        return None
    arch, width = str(g["arch"].iloc[0]), float(g["width"].iloc[0])
    ref = (reference[(reference["arch"] == arch) & (reference["metric"] == "importance_max")]
           if reference is not None else pd.DataFrame())
    sizes = input_sizes(d["note"])
    comparable = width == 1.0 and sizes == [64] and stage.endswith("_init")
    paper = protocol == "paper" and not ref.empty  # the same quantity as the published one
    rows, numbers = [], []
    for lv in d.drop_duplicates("cell").sort_values(["receptive_field", "cell"]).itertuples():
        layers = select(d, cell=lv.cell, metric="importance_max")["layer"].dropna().unique()
        # the default layer (deepest conv) moved between the seeds' runs: nothing to pool
        mean, std, n = (pooled_maxima(select(d, cell=lv.cell)) if len(layers) <= 1 else
                        (math.nan, math.nan, 0))
        ours = (format_mean_std(mean, std, max_decimals=3) if n else
                f"not pooled: the seeds measured {', '.join(map(str, layers))}"
                if len(layers) > 1 else MISSING)
        row = {"Receptive field": f"RF {lv.receptive_field} px (pool {lv.pool_level})",
               "Ours: mean ± std of the maxima": ours,
               "Maps": str(n)}
        pub = ref[ref["pool_level"] == lv.pool_level] if paper else ref.iloc[:0]
        num = {"cell": lv.cell, "pool_level": lv.pool_level, "mean": mean, "std": std, "n": n}
        if paper:
            row["Paper (Tables 3-4)"] = MISSING
        if len(pub):
            pm, ps = float(pub["mean"].iloc[0]), float(pub["std"].iloc[0])
            # as the paper prints them: 0.322 ± 0.122, 1.24e-05 ± 2.14e-06
            row["Paper (Tables 3-4)"] = (f"{format_number(pm, max_decimals=3)} ± "
                                         f"{format_number(ps, max_decimals=3)} "
                                         f"(RF {pub['receptive_field'].iloc[0]} px)")
            if comparable:
                within = bool(abs(mean - pm) <= 2 * ps) if n else None
                row["Within 2 std"] = MISSING if within is None else ("yes" if within else "no")
                num.update(within_2_std=within)
            num.update(paper_mean=pm, paper_std=ps)
        rows.append(row)
        numbers.append(num)
    caveat = ("" if comparable or not paper else
              f" Not the paper's setting (width {width:g}, input "
              f"{'/'.join(map(str, sizes)) or '?'} px, {stage}): the published values are shown "
              "for orientation, not compared.")
    return Table(
        name=f"{grid_slug(g)}-{stage}".replace("_", "-"),
        title=f"{grid_title(g)}: maximum projected gradient, {stage}{protocol_tag(protocol)}",
        cells=pd.DataFrame(rows), numbers=pd.DataFrame(numbers),
        notes="Ours: mean and population std of the per-map maxima over every map of every "
              "seed." + (" Paper: its Tables 3 (VGG19) and 4 (ResNet50), 50 maps at init, 64x64 "
                         "input." if paper else "") + caveat)


def input_sizes(notes: pd.Series) -> list[int]:
    """The ``input_size=<n>`` values recorded in rows' notes."""
    found = notes.dropna().map(lambda s: re.search(r"input_size=(\d+)", str(s)))
    return sorted({int(m.group(1)) for m in found if m})
