"""Statistics over the tidy results DataFrame: summaries over seeds and tests between RF levels.

Everything here takes the DataFrame of ``landscape.results.load`` (or a slice of it) and
returns DataFrames or small frozen dataclasses; nothing reads files. Distributions come from
``scipy.stats``; only Holm's step-down correction and the effect sizes are written out.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

# A cell is every config value except the seed; its id is the run folder without "/seed=<s>".
CELL_COLUMNS = ("cell", "arch", "dataset", "width", "pool_level", "pool_kernel", "pool_stride",
                "pool_padding", "receptive_field", "image_size", "resize")
# The input size and its protocol (data.resize): a study axis within a grid, like the pool;
# cells that differ in them are never pooled as seeds (every grouping is per cell).
SIZE_COLUMNS = ("image_size", "resize")
# One stage unit of a run; ``protocol`` tells the paper's procedure from ours, and the
# settings labels (:func:`with_settings`) prune and fine-tune units of other settings: never
# pooled.
SETTINGS_COLUMNS = ("prune_settings", "finetune_settings")
UNIT_COLUMNS = ("stage", "criterion", "prune_rate", "finetuned", "protocol", *SETTINGS_COLUMNS)
PRUNING_STAGES = ("prune", "finetune")
PROTOCOLS = ("default", "paper")
SUMMARY_KEYS = CELL_COLUMNS + UNIT_COLUMNS + ("metric", "index", "layer")
GRID_COLUMNS = ("arch", "dataset", "width")  # cells of one grid differ only in the RF pool
EPOCH_METRICS = frozenset({"train_loss", "train_acc", "test_loss", "test_acc", "learning_rate",
                           "epoch_seconds"})
# Metrics that are matrices or node lists, not one number per seed: plotted, not summarised.
NOT_SUMMARISED = frozenset({"cka", "hessian_density_node", "hessian_density_weight"})


def cell_ids(run_id: pd.Series) -> pd.Series:
    """``"<cell>/seed=<s>"`` or ``"<cell>"`` -> ``"<cell>"``."""
    return run_id.astype("string").str.split("/seed=", n=1).str[0]


def with_cell(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``cell`` column (the run folder's cell part), added once, ``protocol``
    filled (rows without one: training, the receptive field, and rows written before the
    column existed, are ``"default"``) and the settings labels of :func:`with_settings`."""
    if "cell" not in df.columns:
        protocol = (df["protocol"].fillna("default") if "protocol" in df.columns
                    else pd.Series("default", index=df.index, dtype="string"))
        df = df.assign(cell=cell_ids(df["run_id"]), protocol=protocol)
    if not set(SIZE_COLUMNS) <= set(df.columns) or df["resize"].isna().any():
        df = with_sizes(df)
    return df if set(SETTINGS_COLUMNS) <= set(df.columns) else with_settings(df)


def with_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``image_size`` (missing: NA) and ``resize``: rows written before the
    columns existed were made by the only protocol there was, ``"direct"``."""
    size = df["image_size"] if "image_size" in df.columns else pd.Series(
        pd.NA, index=df.index, dtype="Int64")
    resize = (df["resize"] if "resize" in df.columns
              else pd.Series(pd.NA, index=df.index, dtype="string"))
    return df.assign(image_size=size.astype("Int64"),
                     resize=resize.astype("string").fillna("direct"))


def _unit_hashes(stage: object, unit: object) -> tuple[str, str]:
    """The settings hashes in a prune unit's name (``prune_<label>_<rate>_<h>``: ``(h, "")``)
    or a fine-tune unit's (``finetune_<label>_<rate>_<h>_<f>``: ``(h, f)``); ``("", "")`` for
    other rows and rows without a unit."""
    if pd.isna(unit) or stage not in PRUNING_STAGES:
        return "", ""
    parts = str(unit).split("_")
    if stage == "prune":
        return (parts[-1], "") if len(parts) >= 4 else ("", "")
    return (parts[-2], parts[-1]) if len(parts) >= 5 else ("", "")


def note_fields(note: object) -> dict[str, str]:
    """``"k=v; k=v"`` (a row's note) -> ``{k: v}``; parts without ``=`` are left out."""
    if pd.isna(note):
        return {}
    return dict(p.split("=", 1) for p in str(note).split("; ") if "=" in p)


def shared_note(notes: Iterable[object], cells: Sequence[object] | None = None,
                metrics: Sequence[object] | None = None) -> str:
    """One note for rows of several cells (a table's footnote, a unit's settings): each
    ``k=v`` part once, and a free-text part only when every note has it. A part whose value
    differs is ``k=v1 / v2`` with where it differs: ``(per cell)`` when each cell of
    ``cells`` (parallel to ``notes``) has one value (``input_size=24`` had been shown under a
    table of 16, 24 and 32 px cells), else each value with the ``metrics`` it belongs to when
    each metric has one (the sharpness unit's ``rho=0.5 (adaptive_sharpness) / 0.05
    (standard_sharpness)``: it had been labelled per cell), else ``(differs between rows)``."""
    rows = [(str(n), c, m) for n, c, m in zip(
        notes, repeat(None) if cells is None else cells,
        repeat(None) if metrics is None else metrics) if not pd.isna(n)]
    parts = [n.split("; ") for n, _, _ in rows]
    fields = [note_fields(n) for n, _, _ in rows]
    out, seen = [], set()
    for part in dict.fromkeys(x for p in parts for x in p):
        key = part.split("=", 1)[0] if "=" in part else None
        if key is None and all(part in p for p in parts):
            out.append(part)
        elif key is not None and key not in seen:
            seen.add(key)
            have = [(f[key], c, m) for f, (_, c, m) in zip(fields, rows) if key in f]
            v = list(dict.fromkeys(x for x, _, _ in have))
            out.append(f"{key}={v[0]}" if len(v) == 1 else _varying(key, v, have,
                                                                     cells is not None,
                                                                     metrics is not None))
    return "; ".join(out)


def _varying(key: str, values: list[str], have: list[tuple], by_cell: bool,
             by_metric: bool) -> str:
    """``k=v1 / v2 (where)`` for :func:`shared_note`."""
    def one_each(i: int) -> bool:
        seen: dict = {}
        return all(seen.setdefault(h[i], h[0]) == h[0] for h in have)

    if by_cell and one_each(1):
        return f"{key}={' / '.join(values)} (per cell)"
    if by_metric and one_each(2):
        owners = {v: list(dict.fromkeys(str(m) for x, _, m in have if x == v)) for v in values}
        return f"{key}=" + " / ".join(f"{v} ({', '.join(owners[v])})" for v in values)
    return f"{key}={' / '.join(values)} (differs between rows)"


def _settings_labels(notes: Mapping[str, object], skip: str = "") -> dict[str, str]:
    """Hash -> label of each setting among ``notes`` (hash -> one note of its rows): ``""``
    when there is one, else the note fields whose values differ (``"finetune_lr=0.001"``) or
    that some notes lack (named by the notes that have them), fields starting with ``skip``
    left out; the hash where the notes cannot tell them apart."""
    if len(notes) <= 1:
        return {h: "" for h in notes}
    fields = {h: {k: v for k, v in note_fields(n).items() if not (skip and k.startswith(skip))}
              for h, n in notes.items()}
    keys = sorted(set().union(*fields.values()))
    varying = [k for k in keys if len({f.get(k) for f in fields.values()}) > 1]
    # a field some notes lack (a recipe's own settings, one added since) names only theirs
    labels = {h: ", ".join(f"{k}={f[k]}" for k in varying if k in f) for h, f in fields.items()}
    clash = {lab for lab in labels.values() if list(labels.values()).count(lab) > 1}
    return {h: (f"{lab}, settings {h}" if lab else f"settings {h}") if lab in clash else lab
            for h, lab in labels.items()}


def with_settings(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``prune_settings`` and ``finetune_settings``: which settings made a prune
    or fine-tune row, as a label that is ``""`` where a (criterion, protocol) was pruned with
    one setting only and otherwise names the settings that differ (``"bn_recalibrated=True"``,
    ``"finetune_lr=0.001"``; from the units' names and notes). A fine-tune row has both: the
    pruning it started from and its own. Other rows get ``""`` in both. Units of different
    settings are different groups everywhere in ``analysis``: never pooled as seeds."""
    n = len(df)
    stage = df["stage"] if "stage" in df.columns else pd.Series([pd.NA] * n, index=df.index)
    unit = df["unit"] if "unit" in df.columns else pd.Series([pd.NA] * n, index=df.index)
    hashes = [_unit_hashes(s, u) for s, u in zip(stage, unit)]
    ph = pd.Series([h[0] for h in hashes], index=df.index, dtype=object)
    fh = pd.Series([h[1] for h in hashes], index=df.index, dtype=object)
    prune_label = pd.Series("", index=df.index, dtype=object)
    ft_label = pd.Series("", index=df.index, dtype=object)
    pruned = ph != ""
    if pruned.any():
        d = df[pruned].assign(_ph=ph[pruned], _fh=fh[pruned])
        note = d["note"] if "note" in d.columns else pd.Series(pd.NA, index=d.index)
        # the unit's own note: a geometry row's note adds its measurement's fields (picking
        # it for one setting and not another labelled them by fields they share)
        d = d.assign(_note=note, _prune=d["stage"] == "prune",
                     _len=note.astype("string").str.len().fillna(0))
        for _, grp in d.groupby(["criterion", "protocol"], dropna=False, sort=False):
            # a prune unit's note where there is one (a fine-tune's carries its own fields too)
            first = grp.sort_values(["_prune", "_len"], ascending=[False, True],
                                    kind="stable").drop_duplicates("_ph")
            labels = _settings_labels(dict(zip(first["_ph"], first["_note"])), skip="finetune_")
            prune_label[grp.index] = grp["_ph"].map(labels)
            ft = grp[grp["stage"] == "finetune"]
            for _, sub in ft.groupby("_ph", sort=False):
                one = sub.sort_values("_len", kind="stable").drop_duplicates("_fh")
                ft_label[sub.index] = sub["_fh"].map(
                    _settings_labels(dict(zip(one["_fh"], one["_note"]))))
    return df.assign(prune_settings=prune_label.astype("string"),
                     finetune_settings=ft_label.astype("string"))


def with_variants(df: pd.DataFrame, variants: Mapping[str, str] | None) -> pd.DataFrame:
    """``df`` with a ``variant`` column: per cell, how it differs from the other cells of its
    (arch, dataset, width) in settings other than the RF pool (``"train.lr=0.01"``; "" when
    only the pool differs), from ``landscape.results.cell_variants(root)``. Cells of different
    variants are different grids: never pooled as seeds of one RF level."""
    df = with_cell(df)
    labels = df["cell"].astype(object).map(dict(variants or {}))
    return df.assign(variant=labels.where(labels.notna(), "").astype("string"))


def select(df: pd.DataFrame, **filters: Any) -> pd.DataFrame:
    """Rows where every ``column=value`` holds. ``None`` skips a filter, a list/tuple/set means
    "any of", ``pd.NA`` means "missing"; an unknown column raises ``ValueError``."""
    mask = pd.Series(True, index=df.index)
    for col, want in filters.items():
        if col not in df.columns:
            raise ValueError(f"select: unknown column {col!r}; valid: {list(df.columns)}")
        if want is None:
            continue
        if want is pd.NA:
            mask &= df[col].isna()
        elif isinstance(want, (list, tuple, set, frozenset)):
            mask &= df[col].isin(list(want)).fillna(False).astype(bool)
        else:
            mask &= (df[col] == want).fillna(False).astype(bool)
    return df[mask]


def grids(df: pd.DataFrame) -> list[tuple[str, str, float]]:
    """The (arch, dataset, width) grids in ``df``, sorted."""
    g = df[list(GRID_COLUMNS)].dropna().drop_duplicates()
    return sorted((str(a), str(d), float(w)) for a, d, w in g.itertuples(index=False))


def grid_frame(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
               width: float | None = None) -> pd.DataFrame:
    """The rows of exactly one grid; ``ValueError`` naming the choices if the filters leave
    zero or several grids."""
    sub = select(df, arch=arch, dataset=dataset, width=width)
    found = grids(sub)
    if len(found) != 1:
        what = "no grid matches" if not found else "several grids match"
        raise ValueError(f"{what} arch={arch!r}, dataset={dataset!r}, width={width!r}; "
                         f"grids in the data (arch, dataset, width): {grids(df)}")
    if "variant" in sub.columns and sub["variant"].nunique() > 1:
        raise ValueError(f"the cells of {found[0]} differ in more than the RF pool: "
                         f"{sorted(sub['variant'].unique())}; select(df, variant=...) one")
    return with_cell(sub)


def final_epoch(df: pd.DataFrame) -> pd.DataFrame:
    """Keep only the last epoch of every per-epoch metric (``EPOCH_METRICS`` with an index);
    all other rows pass unchanged. The last epoch is the max index per run, unit and metric."""
    epoch = df["metric"].isin(list(EPOCH_METRICS)).fillna(False) & df["index"].notna()
    ep = df[epoch]
    # the unit (where known) tells apart units of one stage with other settings
    keys = ["run_id", *(c for c in ("unit", *UNIT_COLUMNS) if c in df.columns), "metric"]
    last = ep["index"] == ep.groupby(keys, dropna=False)["index"].transform("max")
    return pd.concat([df[~epoch], ep[last]]).sort_index()


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1), count and two-sided t confidence interval of a sample.

    ``ci_low, ci_high = mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n)``; std and the CI
    are NaN for n = 1.
    """

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    confidence: float


def _ci_half_width(std: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = stats.t.ppf((1.0 + confidence) / 2.0, np.where(n > 1, n - 1, np.nan))
        return q * np.asarray(std, dtype=float) / np.sqrt(n)


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Summary of one sample (NaNs, e.g. the loss of a diverged run, are left out)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("summarize: no finite values")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    h = float(_ci_half_width(np.array([std]), np.array([x.size]), confidence)[0])
    return Summary(mean, std, int(x.size), mean - h, mean + h, confidence)


def summarize_cells(df: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                    by: Sequence[str] = SUMMARY_KEYS, confidence: float = 0.95,
                    final: bool = True) -> pd.DataFrame:
    """One row per group of ``by`` (default: cell, stage unit, metric, index, layer) with
    ``mean, std (ddof=1), n, ci_low, ci_high`` over seeds.

    Per-epoch metrics are reduced to their final epoch first (``final=True``). ``cka`` and the
    SLQ density rows are not summarised (see ``analysis.plots``). A group holding two rows of
    one seed raises ``ValueError``: a column that tells them apart is missing from ``by``.
    """
    d = with_cell(df)
    if final:
        d = final_epoch(d)
    d = d[~d["metric"].isin(list(NOT_SUMMARISED)).fillna(False)]
    if metrics is not None:
        d = d[d["metric"].isin(list(metrics)).fillna(False)]
    d = d[d["value"].notna()]
    unknown = set(by) - set(d.columns)
    if unknown:
        raise ValueError(f"summarize_cells: unknown column(s) in by: {sorted(unknown)}")
    by = list(by)
    dup = d.duplicated(by + ["seed"], keep=False) & d["seed"].notna()
    if dup.any():
        raise ValueError("summarize_cells: several rows per seed in one group, e.g. "
                         f"{d[dup].iloc[0][by + ['seed']].to_dict()}; add the column that "
                         "distinguishes them to `by`")
    g = d.groupby(by, dropna=False, sort=True)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    h = _ci_half_width(out["std"].to_numpy(), out["n"].to_numpy(), confidence)
    return out.assign(ci_low=out["mean"] - h, ci_high=out["mean"] + h)


# ---------------------------------------------------------------------------------------------
def _choose(d: pd.DataFrame, column: str, want: str | None, what: str) -> pd.DataFrame:
    """Rows of ``d`` with ``column == want``; with ``want=None`` the one value present
    (``ValueError`` listing them when there are several: never pooled)."""
    present = sorted(d[column].dropna().unique())
    if want is None:
        if len(present) > 1:
            raise ValueError(f"{what} was run with {len(present)} settings: {present}; choose "
                             f"one with {column}=... (they are never pooled as seeds)")
        return d
    return d[d[column] == want]


def pruning_rows(df: pd.DataFrame, *, criterion: str, protocol: str = "default",
                 prune_settings: str | None = None, finetune_settings: str | None = None,
                 stages: Sequence[str] = PRUNING_STAGES) -> pd.DataFrame:
    """The rows of ``stages`` (prune and fine-tune) of one pruning procedure: ``criterion``
    and ``protocol``, the prune settings (label of :func:`with_settings`) and the
    fine-tuning settings of the fine-tune rows. ``None`` selects the only settings present;
    ``ValueError`` when there are several (they must be chosen, never pooled)."""
    d = select(with_cell(df), stage=list(stages), criterion=criterion, protocol=protocol)
    d = _choose(d, "prune_settings", prune_settings, f"pruning by {criterion}")
    ft = select(d, stage="finetune")
    if len(ft):
        ft = _choose(ft, "finetune_settings", finetune_settings,
                     f"fine-tuning after pruning by {criterion}")
    return pd.concat([select(d, stage="prune"), ft]).sort_index()


def pruning_procedures(df: pd.DataFrame) -> pd.DataFrame:
    """The distinct pruning procedures in ``df``: ``criterion, protocol, prune_settings,
    finetune_settings`` (NA for a pruning without fine-tuning rows), sorted."""
    d = select(with_cell(df), stage=list(PRUNING_STAGES))
    cols = ["criterion", "protocol", "prune_settings", "finetune_settings"]
    ft = select(d, stage="finetune")[cols].drop_duplicates()
    pr = select(d, stage="prune")[cols[:3]].drop_duplicates()
    pr = pr.merge(ft[cols[:3]].drop_duplicates(), how="left", indicator=True)
    alone = pr[pr["_merge"] == "left_only"].drop(columns="_merge").assign(
        finetune_settings=pd.NA)
    out = pd.concat([ft, alone]).dropna(subset=["criterion"])
    return out.astype({"finetune_settings": "string"}).sort_values(
        cols, na_position="first").reset_index(drop=True)


def pruning_observations(df: pd.DataFrame, *, criterion: str, prune_rate: float,
                         finetuned: bool = False, metric: str = "test_acc",
                         protocol: str = "default", prune_settings: str | None = None,
                         finetune_settings: str | None = None) -> pd.DataFrame:
    """Per run: ``dense`` (the ``dense_test_acc`` of the prune unit: the accuracy of the
    checkpoint it pruned; for results made before that row existed, the final-epoch test
    accuracy of training), ``pruned`` (``metric`` of the prune, or fine-tune if ``finetuned``,
    unit at ``criterion``/``prune_rate``/``protocol`` and the settings of
    :func:`pruning_rows`: ``test_acc``, or ``best_test_acc`` for the best fine-tuning epoch)
    and ``difference = dense - pruned``. Runs lacking one side keep NaN there (never zero).
    One row per run: ``ValueError`` if two units of one run would be paired."""
    d = with_cell(final_epoch(df))
    rows = pruning_rows(d, criterion=criterion, protocol=protocol,
                        prune_settings=prune_settings, finetune_settings=finetune_settings,
                        stages=PRUNING_STAGES if finetuned else ("prune",))
    at_rate = lambda x: x[np.isclose(x["prune_rate"].astype(float), prune_rate)]  # noqa: E731
    pruned = at_rate(select(rows, stage="finetune" if finetuned else "prune",
                            finetuned=finetuned, metric=metric))
    pruned = pruned[pruned["index"].isna() | (metric == "best_test_acc")]  # not per-epoch rows
    dense = at_rate(select(rows, stage="prune", metric="dense_test_acc"))
    if finetuned:  # the dense accuracy of the pruning that was fine-tuned
        dense = dense[dense["prune_settings"].isin(list(pruned["prune_settings"].unique()))]
    if dense.empty:
        dense = select(d, stage="train", metric="test_acc")
    cols = ["run_id", *CELL_COLUMNS, "seed"]
    for side, name in ((dense, "dense"), (pruned, "pruned")):
        if side["run_id"].duplicated().any():
            run = side.loc[side["run_id"].duplicated(), "run_id"].iloc[0]
            raise ValueError(f"pruning_observations: two {name} values for run {run} "
                             f"({criterion} @ {prune_rate:g}, finetuned={finetuned}); the "
                             "units that wrote them differ in a setting no column shows")
    out = dense[cols + ["value"]].rename(columns={"value": "dense"}).merge(
        pruned[cols + ["value"]].rename(columns={"value": "pruned"}), on=cols, how="outer")
    out = out.assign(difference=out["dense"] - out["pruned"], criterion=criterion,
                     prune_rate=float(prune_rate), finetuned=bool(finetuned), protocol=protocol)
    return out.sort_values(["receptive_field", "pool_level", "cell", "seed"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean_a - mean_b) / s_p with the pooled sample std
    s_p^2 = ((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"cohens_d needs >= 2 values per group, got {a.size} and {b.size}")
    sp2 = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((a.mean() - b.mean()) / np.sqrt(sp2))


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d times the exact small-sample correction
    J(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)), m = n_a + n_b - 2 (J ~ 1 - 3/(4m - 1))."""
    m = len(a) + len(b) - 2
    j = math.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / math.sqrt(m / 2)
    return cohens_d(a, b) * j


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of a vs b: statistic ``t``, Welch-Satterthwaite degrees
    of freedom ``dof``, two-sided ``p``, and effect sizes (a - b) ``cohen_d``, ``hedges_g``."""

    t: float
    dof: float
    p: float
    cohen_d: float
    hedges_g: float
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchTest:
    """Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) with effect sizes; all
    statistics are NaN when both samples are constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"welch_test needs >= 2 values per group, got {a.size} and {b.size}")
    if all(x.std() <= 1e-12 * max(1.0, abs(x.mean())) for x in (a, b)):
        nan = math.nan  # both samples constant: t is undefined (not +-inf from rounding noise)
        return WelchTest(nan, nan, nan, nan, nan, a.size, b.size, float(a.mean()), float(b.mean()))
    with warnings.catch_warnings():  # one constant sample (e.g. all at chance) is a valid case
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        r = stats.ttest_ind(a, b, equal_var=False)
    return WelchTest(float(r.statistic), float(r.df), float(r.pvalue), cohens_d(a, b),
                     hedges_g(a, b), a.size, b.size, float(a.mean()), float(b.mean()))


@dataclass(frozen=True)
class PairedTest:
    """The paired t-test of ``a - b``: ``t``, ``dof`` = n - 1, two-sided ``p``, and the
    differences' ``mean`` and sample ``std``."""

    t: float
    dof: float
    p: float
    mean: float
    std: float
    n: int


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """The paired t-test (``scipy.stats.ttest_rel``) of ``a`` against ``b``, observation i of
    each paired (the same trained network pruned two ways); pairs with a NaN are dropped.
    ``t``, ``dof`` and ``p`` are NaN below two pairs or when every difference is the same
    (t undefined: e.g. both at chance in every seed)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test needs pairs, got {a.size} and {b.size} values")
    ok = ~(np.isnan(a) | np.isnan(b))
    d = a[ok] - b[ok]
    mean = float(d.mean()) if d.size else math.nan
    std = float(d.std(ddof=1)) if d.size > 1 else math.nan
    if d.size < 2 or np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):
        return PairedTest(math.nan, math.nan, math.nan, mean, std, int(d.size))
    r = stats.ttest_rel(a[ok], b[ok])
    return PairedTest(float(r.statistic), float(d.size - 1), float(r.pvalue), mean, std,
                      int(d.size))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: sort ascending, p_(i) * (m - i + 1) for i = 1..m,
    running maximum, clipped at 1. NaNs stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def compare_levels(obs: pd.DataFrame, *, value: str = "value", level: str = "receptive_field",
                   pairs: str = "all", correction: str | None = "holm") -> pd.DataFrame:
    """Welch's t-test between every two levels (``pairs="all"``) or neighbouring levels
    (``"adjacent"``) of ``obs``, one observation (seed) per row.

    Columns: ``level_a, level_b, n_a, n_b, mean_a, mean_b, diff (a - b), t, dof, p, p_holm``
    (with ``correction="holm"``, over all rows returned), ``cohen_d, hedges_g``. Levels with
    fewer than two finite values get NaN statistics.
    """
    if pairs not in ("all", "adjacent"):
        raise ValueError(f"pairs must be 'all' or 'adjacent', got {pairs!r}")
    if correction not in (None, "holm"):
        raise ValueError(f"correction must be None or 'holm', got {correction!r}")
    if "seed" in obs.columns and obs.dropna(subset=[value]).duplicated([level, "seed"]).any():
        raise ValueError(f"compare_levels: several rows per ({level}, seed); select one metric "
                         "and stage unit of one grid first")
    groups = {k: g[value].dropna().to_numpy(float) for k, g in obs.groupby(level, sort=True)}
    levels = list(groups)
    todo = ([(levels[i], levels[i + 1]) for i in range(len(levels) - 1)] if pairs == "adjacent"
            else [(a, b) for i, a in enumerate(levels) for b in levels[i + 1:]])
    rows = []
    for a, b in todo:
        x, y = groups[a], groups[b]
        row = {"level_a": a, "level_b": b, "n_a": x.size, "n_b": y.size,
               "mean_a": x.mean() if x.size else np.nan, "mean_b": y.mean() if y.size else np.nan}
        if x.size >= 2 and y.size >= 2:
            w = welch_test(x, y)
            row.update(t=w.t, dof=w.dof, p=w.p, cohen_d=w.cohen_d, hedges_g=w.hedges_g)
        rows.append(row)
    cols = ["level_a", "level_b", "n_a", "n_b", "mean_a", "mean_b", "t", "dof", "p",
            "cohen_d", "hedges_g"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out.insert(6, "diff", out["mean_a"] - out["mean_b"])
    if correction == "holm":
        out.insert(out.columns.get_loc("p") + 1, "p_holm", holm(out["p"].to_numpy(float)))
    return out


# Spearman's p by permutation of the values: exact (every pairing) up to 8 observations,
# else this many seeded random pairings (p resolution ~2e-5)
PERMUTATIONS = 50_000


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho between a level column and a value over all observations, its two-sided
    permutation p-value and the number of observations."""

    rho: float
    p: float
    n: int


def rank_correlation(obs: pd.DataFrame, *, value: str = "value",
                     x: str = "receptive_field") -> RankCorrelation:
    """Spearman's rho (average ranks for ties) and its two-sided p from the permutation
    distribution of rho under independence (``scipy.stats.permutation_test``): exact for up to
    8 observations, else from :data:`PERMUTATIONS` seeded pairings. The asymptotic p that
    ``spearmanr`` gives is 0 whenever |rho| = 1, also for 3 observations (exactly 1/3) or a
    level column with two values."""
    d = obs[[x, value]].dropna()
    if len(d) < 3:
        raise ValueError(f"rank_correlation needs >= 3 observations, got {len(d)}")
    xs, ys = d[x].to_numpy(float), d[value].to_numpy(float)
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:  # undefined for a constant input (e.g. all 0.1)
        return RankCorrelation(float("nan"), float("nan"), len(d))
    rx = stats.rankdata(xs)
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())

    def rho(ry: np.ndarray, axis: int = -1) -> np.ndarray:  # ry: ranks of y, permuted
        c = ry - ry.mean(axis=axis, keepdims=True)
        return (c * rx).sum(axis=axis) / np.linalg.norm(c, axis=axis)

    res = stats.permutation_test((stats.rankdata(ys),), rho, permutation_type="pairings",
                                 vectorized=True, n_resamples=PERMUTATIONS,
                                 alternative="two-sided", rng=np.random.default_rng(0))
    return RankCorrelation(float(res.statistic), float(min(res.pvalue, 1.0)), len(d))


@dataclass(frozen=True)
class StratifiedCorrelation:
    """Spearman's rho between two per-run quantities over all runs (``rho``, ``p``: as
    :func:`rank_correlation`) and within strata (``rho_within``, ``p_within``: e.g. within each
    cell, whose runs differ in their seed only, so that what the cell's receptive field drives
    in both does not count; see :func:`within_rank_correlation`); ``n`` runs with both values
    in ``strata`` strata."""

    rho: float
    p: float
    rho_within: float
    p_within: float
    n: int
    strata: int


def within_rank_correlation(x: Sequence[float], y: Sequence[float], strata: Sequence[Any],
                            *, test: bool = True) -> tuple[float, float]:
    """(rho, two-sided p) of the rank correlation of ``x`` and ``y`` within ``strata``: in each
    stratum both are ranked (average ranks for ties) and centred on the stratum's mean rank;
    rho is the correlation of those centred ranks over all strata (Spearman's rho when there
    is one stratum; a stratum of one observation adds nothing). p from the permutation
    distribution of rho when ``y`` is shuffled within each stratum only (independence given
    the stratum): twice the smaller one-sided p, as :func:`rank_correlation`
    (``scipy.stats.permutation_test``), over every within-stratum permutation up to
    :data:`PERMUTATIONS` of them, else over that many seeded random ones (each one-sided p
    then (1 + hits) / (1 + PERMUTATIONS); ``test=False``: rho only, p NaN). NaN when neither
    varies within any stratum."""
    x, y, s = np.asarray(x, float), np.asarray(y, float), pd.factorize(pd.Series(list(strata)))[0]
    if not (x.shape == y.shape == s.shape) or x.ndim != 1:
        raise ValueError("x, y and strata must be 1-D sequences of the same length")
    if (s < 0).any() or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x, y and strata must hold no NaN (leave those observations out)")
    groups = [np.flatnonzero(s == k) for k in range(s.max() + 1)] if s.size else []
    cx, cy = np.zeros_like(x), np.zeros_like(y)
    for idx in groups:
        for values, centred in ((x, cx), (y, cy)):
            r = stats.rankdata(values[idx])
            centred[idx] = r - r.mean()
    norm = float(np.linalg.norm(cx) * np.linalg.norm(cy))
    if norm == 0:
        return math.nan, math.nan
    observed = float(cx @ cy) / norm
    if not test:
        return observed, math.nan
    sizes = [len(idx) for idx in groups]
    total = math.prod(math.factorial(n) for n in sizes)
    if total <= PERMUTATIONS:  # every within-stratum permutation
        perms = np.array([np.concatenate([idx[list(p)] for idx, p in zip(groups, choice)])
                          for choice in itertools.product(
                              *(itertools.permutations(range(n)) for n in sizes))])
    else:
        rng = np.random.default_rng(0)
        perms = np.concatenate([idx[np.argsort(rng.random((PERMUTATIONS, len(idx))), axis=1)]
                                for idx in groups], axis=1)
    order = np.concatenate(groups)
    rhos = (cy[perms] @ cx[order]) / norm  # y moved within strata, x in place
    tail = min(np.sum(rhos >= observed - 1e-12), np.sum(rhos <= observed + 1e-12))
    extra = 0 if total <= PERMUTATIONS else 1  # a sample counts the observed pairing too
    return observed, min(2 * (int(tail) + extra) / (len(rhos) + extra), 1.0)


def stratified_correlation(x: pd.DataFrame, y: pd.DataFrame, *, on: str = "run_id",
                           strata: str = "cell", value: str = "value", test: bool = True
                           ) -> StratifiedCorrelation:
    """Spearman's rho of the ``value`` of ``x`` against that of ``y`` (one row per run each,
    joined ``on`` the run; e.g. lambda_max against the accuracy lost to pruning), over all
    runs and within each level of ``x``'s column ``strata`` (:func:`within_rank_correlation`;
    the cell by default: its runs differ in the seed only). Runs missing a value on either
    side are left out; fewer than 3 runs give NaN statistics. ``test=False``: the two rhos
    only (no permutation tests; the p values NaN)."""
    for name, frame in (("x", x), ("y", y)):
        if frame[on].duplicated().any():
            raise ValueError(f"stratified_correlation: {name} holds two values for run "
                             f"{frame.loc[frame[on].duplicated(), on].iloc[0]}")
    d = x[[on, strata, value]].merge(y[[on, value]], on=on, suffixes=("_x", "_y")).dropna()
    n, levels = len(d), d[strata].nunique()
    if n < 3:
        return StratifiedCorrelation(math.nan, math.nan, math.nan, math.nan, n, levels)
    xs, ys = d[f"{value}_x"], d[f"{value}_y"]
    if test:
        pooled = rank_correlation(d, value=f"{value}_y", x=f"{value}_x")
        rho, p = pooled.rho, pooled.p
    else:  # the same rho, as rank_correlation's, without its permutations
        constant = np.ptp(xs.to_numpy(float)) == 0 or np.ptp(ys.to_numpy(float)) == 0
        rho, p = (math.nan if constant else float(stats.spearmanr(xs, ys).statistic)), math.nan
    rho_w, p_w = within_rank_correlation(xs, ys, d[strata], test=test)
    return StratifiedCorrelation(rho, p, rho_w, p_w, n, levels)
