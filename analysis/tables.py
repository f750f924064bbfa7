"""Tables in the paper's layout, rendered as markdown, LaTeX (booktabs) and CSV.

Rounding rule (matches the paper's "93.5 ± 0.11", "0.07 ± 0.04", "56 ± 20.7"): the mean and
the std are each rounded to 3 significant figures, with at most 2 decimals. Accuracies are
shown in percent; the difference (dense - pruned) is in percentage points. A value that is
missing is shown as "missing", never as a number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats import (CELL_COLUMNS, compare_levels, grid_frame, pruning_observations,
                            select, summarize_cells, with_cell)

MISSING = "missing"


@dataclass(frozen=True)
class Table:
    """A table to show: ``cells`` holds the display strings (one row per table row),
    ``numbers`` the values behind them (written to CSV), ``notes`` a caption sentence."""

    name: str
    title: str
    cells: pd.DataFrame
    numbers: pd.DataFrame
    notes: str = ""


def format_number(x: float, *, sig: int = 3, max_decimals: int = 2) -> str:
    """Round to ``sig`` significant figures but at most ``max_decimals`` decimals; numbers
    that would print as zero use scientific notation (``1.24e-05``)."""
    if x is None or not math.isfinite(x):
        return MISSING if x is None or math.isnan(x) else str(x)
    if x == 0:
        return f"{0:.{max_decimals}f}"
    # would print as 0.00 (at exactly half the last place too: 0.5 with no decimals is "0",
    # rounded half to even): scientific instead
    if abs(x) <= 0.5 * 10.0 ** -max_decimals:
        return f"{x:.{sig - 1}e}"
    decimals = min(max(sig - 1 - math.floor(math.log10(abs(x))), 0), max_decimals)
    rounded = round(x, decimals)
    if rounded != 0:  # rounding up gained a digit: 99.96 -> "100", not "100.0"; but
        # 0.0063 at 2 decimals stays "0.01" (it is the cap that sets its decimals, not sig)
        decimals = min(decimals, max(sig - 1 - math.floor(math.log10(abs(rounded))), 0))
    return f"{x:.{decimals}f}"


def format_mean_std(mean: float, std: float, n: int | None = None, *, sig: int = 3,
                    max_decimals: int = 2) -> str:
    """``"93.5 ± 0.11"``; ``"93.5 (n=1)"`` when there is no std; ``"missing"`` for no data."""
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    m = format_number(mean, sig=sig, max_decimals=max_decimals)
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{m} (n={n})" if n is not None else m
    return f"{m} ± {format_number(std, sig=sig, max_decimals=max_decimals)}"


def rf_label(receptive_field: object, global_mixing: object = None) -> str:
    """``"RF 181 px"``; ``"RF 16 px, then global"`` for a network that mixes every position
    with every other after its convs (``global_mixing``: a ViT, whose conv is its patch
    embedding); ``"RF unknown"`` where the RF analysis could not follow the model."""
    if receptive_field is None or pd.isna(receptive_field):
        return "RF unknown"  # a model the RF analysis cannot follow (rf_unsupported)
    mixing = global_mixing is not None and not pd.isna(global_mixing) and bool(global_mixing)
    return f"RF {receptive_field} px" + (", then global" if mixing else "")


def level_label(receptive_field: object, pool_level: object, cell: str = "",
                global_mixing: object = None) -> str:
    """``"RF 181 px (pool 1)"``, or with the pool's kernel/stride/padding for custom pools;
    :func:`rf_label` says when the network then mixes globally."""
    rf = rf_label(receptive_field, global_mixing)
    if "-poolk" in cell:
        return f"{rf} ({cell.split('-poolk')[1].split('-')[0]})"
    return f"{rf} (pool {pool_level})"


def grid_slug(g: pd.DataFrame) -> str:
    """``"vgg19-w1-cifar10"`` (plus the variant, file-name safe): the stem of file names."""
    variant = str(g["variant"].iloc[0]) if "variant" in g.columns else ""
    tail = "-" + re.sub(r"[^A-Za-z0-9.=]+", "_", variant) if variant else ""
    arch = re.sub(r"[^A-Za-z0-9._-]", "-", str(g["arch"].iloc[0]))  # torchvision:x -> torchvision-x
    return f"{arch}-w{g['width'].iloc[0]:g}-{g['dataset'].iloc[0]}{tail}"


def grid_title(g: pd.DataFrame) -> str:
    """``"vgg19 (width 1) on cifar10"`` for the rows of one grid, plus its variant (how its
    cells differ from another grid of the same model and data, e.g. ``", train.lr=0.01"``)."""
    variant = str(g["variant"].iloc[0]) if "variant" in g.columns else ""
    return (f"{g['arch'].iloc[0]} (width {g['width'].iloc[0]:g}) on {g['dataset'].iloc[0]}"
            + (f", {variant}" if variant else ""))


def size_label(image_size: object, resize: object) -> str:
    """``"input 32 px"``, ``"input 64 px (canvas:32)"``: a cell's input size and protocol."""
    size = "?" if pd.isna(image_size) else f"{int(image_size)}"
    kind = "direct" if pd.isna(resize) else str(resize)
    return f"input {size} px" + ("" if kind == "direct" else f" ({kind})")


def cell_levels(g: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of ``g`` (its ``CELL_COLUMNS``) with its ``label``: by input size and
    protocol, then receptive field; the label is :func:`level_label`, plus
    :func:`size_label` when the cells have several input sizes or protocols (size is an axis
    of the grid, and two cells of one pool are two rows, never pooled)."""
    g = with_cell(g)
    mixing = [c for c in ("global_mixing",) if c in g.columns]  # not in rows before it existed
    lv = g[list(CELL_COLUMNS) + mixing].drop_duplicates("cell")
    lv = lv.sort_values(["image_size", "resize", "receptive_field", "pool_level", "pool_kernel",
                         "cell"], na_position="first")
    several = len(lv[["image_size", "resize"]].astype(object).drop_duplicates()) > 1
    mixes = lv[mixing[0]] if mixing else [None] * len(lv)
    labels = [level_label(r, p, c, m) + (f", {size_label(s, z)}" if several else "")
              for c, r, p, s, z, m in zip(lv["cell"], lv["receptive_field"], lv["pool_level"],
                                           lv["image_size"], lv["resize"], mixes)]
    return lv.assign(label=labels)


def _levels_frame(obs: pd.DataFrame) -> pd.DataFrame:
    return cell_levels(obs)


# ---------------------------------------------------------------------------------------------
def protocol_tag(protocol: str) -> str:
    """``" (paper protocol)"`` for the paper's procedure, ``""`` for ours."""
    return " (paper protocol)" if protocol == "paper" else ""


def settings_tag(*labels: object) -> str:
    """``", finetune_lr=0.001"``: the settings labels (``analysis.stats.with_settings``) of a
    pruning procedure that was also run with other settings; ``""`` when there are none."""
    shown = [str(x) for x in labels if isinstance(x, str) and x]
    return "".join(f", {x}" for x in shown)


def settings_slug(*labels: object) -> str:
    """:func:`settings_tag` made file-name safe (``"_finetune_lr=0.001"``)."""
    tag = settings_tag(*labels)
    return "_" + re.sub(r"[^A-Za-z0-9.=]+", "_", tag[2:]) if tag else ""


def pruning_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                  width: float | None = None, criterion: str = "magnitude",
                  prune_rate: float = 0.9, finetuned: bool = False,
                  protocol: str = "default", prune_settings: str | None = None,
                  finetune_settings: str | None = None) -> Table:
    """Rows = receptive field (pool level) of one grid; columns = dense accuracy (of the
    checkpoint that was pruned), pruned (or fine-tuned, after the last epoch) accuracy and
    their per-seed difference, each mean ± std over seeds, in %; fine-tuned tables add the
    best epoch's accuracy where it was recorded.

    ``ValueError`` if the grid is ambiguous, has no such pruning unit at all, or has units of
    several settings and none was chosen (``prune_settings`` / ``finetune_settings``: the
    labels of ``analysis.stats.with_settings``).
    """
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    unit = dict(criterion=criterion, prune_rate=prune_rate, finetuned=finetuned,
                protocol=protocol, prune_settings=prune_settings,
                finetune_settings=finetune_settings)
    tag = settings_tag(prune_settings, finetune_settings if finetuned else None)
    slug = settings_slug(prune_settings, finetune_settings if finetuned else None)
    obs = pruning_observations(g, **unit)
    if obs["pruned"].notna().sum() == 0:
        raise ValueError(f"no {'finetune' if finetuned else 'prune'} results for criterion "
                         f"{criterion!r} at rate {prune_rate} (protocol {protocol}) in this grid")
    pr = "Fine-tuned" if finetuned else "Pruned"
    cols = {"dense": "Dense acc. (%)", "pruned": f"{pr} acc. (%)", "difference": "Difference (pp)"}
    if finetuned:
        best = pruning_observations(g, **unit, metric="best_test_acc")
        if best["pruned"].notna().any():
            obs = obs.merge(best[["run_id", "pruned"]].rename(columns={"pruned": "best"}),
                            on="run_id", how="left")
            cols["best"] = "Best epoch acc. (%)"
    shown, numbers = [], []
    for lv in _levels_frame(obs).itertuples(index=False):
        o = obs[obs["cell"] == lv.cell]
        row = {"Receptive field": lv.label}
        num = {"cell": lv.cell, "receptive_field": lv.receptive_field, "pool_level": lv.pool_level,
               "image_size": lv.image_size, "resize": lv.resize}
        seeds = int(o["seed"].nunique())
        for key, title in cols.items():
            x = o[key].dropna().to_numpy(float) * 100.0
            mean = float(x.mean()) if x.size else math.nan
            std = float(x.std(ddof=1)) if x.size > 1 else math.nan
            text = format_mean_std(mean, std, x.size)
            row[title] = text if x.size in (0, seeds) or "(n=" in text else f"{text} (n={x.size})"
            num.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_n": x.size})
        row["Seeds"] = str(seeds)
        shown.append(row)
        numbers.append(num)
    stem = (f"{'finetuned' if finetuned else 'pruned'}_{criterion}_{prune_rate:g}"
            + ("_paper" if protocol == "paper" else "") + slug)
    what = ("fine-tuned after one-shot pruning (after the last epoch; best epoch beside it)"
            if finetuned else "one-shot pruned, no fine-tuning")
    return Table(
        name=f"{grid_slug(g)}-{stem}".replace(":", "-"),
        title=f"{grid_title(g)}: dense vs {pr.lower()} test accuracy, "
              f"criterion {criterion}, rate {prune_rate:g}{tag}{protocol_tag(protocol)}",
        cells=pd.DataFrame(shown), numbers=pd.DataFrame(numbers),
        notes=f"Mean ± std (ddof=1) over seeds ((n=k): only k of the seeds have this value); "
              f"{what}; dense = the checkpoint that was pruned; difference = dense - "
              f"{pr.lower()} per seed, in percentage points; 3 significant figures, at most "
              "2 decimals.")


def padding_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                  width: float | None = None) -> Table | None:
    """Rows = receptive field (pool level); columns = the share of the conv and linear weights
    that only ever multiply zero padding at the cell's input size (``padding_only_share`` of
    its ``receptive_field`` unit), how many weights and in how many conv layers. None unless
    some cell has such weights."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    share = g[g["metric"] == "padding_only_share"]
    if share.empty or not (share["value"] > 0).any():
        return None
    layers = g[g["metric"] == "padding_only_weights"]
    shown, numbers = [], []
    for lv in _levels_frame(share).itertuples(index=False):
        value = float(share.loc[share["cell"] == lv.cell, "value"].iloc[0])
        mine = layers[layers["cell"] == lv.cell]
        dead = int(mine["value"].sum())
        shown.append({"Receptive field": lv.label, "Padding-only share (%)":
                      format_number(100 * value) if value else "0",
                      "Padding-only weights": f"{dead:,}",
                      "Conv layers with some": str(mine["layer"].nunique())})
        numbers.append({"cell": lv.cell, "receptive_field": lv.receptive_field,
                        "pool_level": lv.pool_level, "share": value, "weights": dead,
                        "layers": int(mine["layer"].nunique())})
    return Table(
        name=f"{grid_slug(g)}-padding-only", title=f"{grid_title(g)}: weights that never see "
        "the image", cells=pd.DataFrame(shown), numbers=pd.DataFrame(numbers),
        notes="Conv weights whose every output position reads zero padding at the cell's "
              "input size (a map smaller than the kernel's reach: no path to the input, a "
              "gradient of exactly 0, removable without changing the output), as a share of "
              "all conv and linear weights (the default prunable set); from the architecture "
              "alone (landscape.receptive_field.padding).")


def training_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                   width: float | None = None) -> Table:
    """Rows = receptive field; final-epoch test accuracy (%) and training loss, mean ± std over
    seeds, and the number of runs that diverged."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = summarize_cells(select(g, stage="train"), metrics=["test_acc", "train_loss", "diverged"])
    rows = []
    for lv in _levels_frame(g).itertuples(index=False):
        c = s[s["cell"] == lv.cell].set_index("metric")

        def shown(metric: str, scale: float = 1.0) -> str:
            if metric not in c.index:
                return MISSING
            return format_mean_std(c.at[metric, "mean"] * scale, c.at[metric, "std"] * scale,
                                   int(c.at[metric, "n"]))

        div = (f"{int(round(c.at['diverged', 'mean'] * c.at['diverged', 'n']))}/"
               f"{c.at['diverged', 'n']}" if "diverged" in c.index else MISSING)
        rows.append({"Receptive field": lv.label,
                     "Test acc. (%)": shown("test_acc", 100.0),
                     "Final train loss": shown("train_loss"), "Diverged runs": div})
    return Table(f"{grid_slug(g)}-training", f"{grid_title(g)}: dense training at the last epoch",
                 pd.DataFrame(rows), s, "Mean ± std (ddof=1) over seeds at the last epoch; "
                 "NaN losses (diverged runs) are left out of the mean.")


def pvalue_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                 width: float | None = None, criterion: str = "magnitude",
                 prune_rate: float = 0.9, finetuned: bool = False, protocol: str = "default",
                 quantity: str = "difference", correction: str | None = "holm",
                 prune_settings: str | None = None,
                 finetune_settings: str | None = None) -> Table:
    """Square matrix of Welch-test p-values of ``quantity`` (dense, pruned or difference per
    seed) between every two receptive-field levels; Holm-adjusted over the matrix by default."""
    if quantity not in ("dense", "pruned", "difference"):
        raise ValueError(f"quantity must be dense, pruned or difference, got {quantity!r}")
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    obs = pruning_observations(g, criterion=criterion, prune_rate=prune_rate, finetuned=finetuned,
                               protocol=protocol, prune_settings=prune_settings,
                               finetune_settings=finetune_settings)
    chosen = (prune_settings, finetune_settings if finetuned else None)
    lv = _levels_frame(obs)
    labels = dict(zip(lv["cell"], lv["label"]))
    obs = obs.assign(level=obs["cell"].map(list(labels).index))
    cmp = compare_levels(obs, value=quantity, level="level", correction=correction)
    pcol = "p_holm" if correction == "holm" else "p"
    names = list(labels.values())
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for r in cmp.itertuples(index=False):
        a, b = names[int(r.level_a)], names[int(r.level_b)]
        mat.loc[a, b] = mat.loc[b, a] = getattr(r, pcol)
    cells = mat.map(lambda p: "—" if math.isnan(p) else f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")
    for n in names:
        cells.loc[n, n] = ""
    stem = (f"{'finetuned' if finetuned else 'pruned'}_{criterion}_{prune_rate:g}"
            + ("_paper" if protocol == "paper" else "") + settings_slug(*chosen))
    return Table(
        name=f"{grid_slug(g)}-pvalues-{quantity}-{stem}".replace(":", "-"),
        title=f"{grid_title(g)}: p-values between receptive fields of the "
              f"{quantity} ({'fine-tuned' if finetuned else 'one-shot'}, {criterion}, "
              f"rate {prune_rate:g}{settings_tag(*chosen)}){protocol_tag(protocol)}",
        cells=cells.reset_index(names=""),
        numbers=cmp,
        notes="Welch's t-test (unequal variances), two-sided"
              + (", Holm-adjusted over the matrix" if correction == "holm" else "")
              + "; — = fewer than 2 seeds on a side or zero variance.")


# ---------------------------------------------------------------------------------------------
def display_cells(table: Table) -> pd.DataFrame:
    """The table's cells as strings; a cell that is absent (NaN/None) reads "missing"."""
    cells = table.cells.astype(object)
    return cells.where(cells.notna(), MISSING).astype(str)


def to_markdown(table: Table) -> str:
    """GitHub-flavoured markdown with a title line and the notes below the table."""
    t = display_cells(table)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"**{table.title}**", "", line(list(t.columns)),
           "|" + "|".join([":--"] + ["--:"] * (t.shape[1] - 1)) + "|"]
    out += [line(list(r)) for r in t.itertuples(index=False)]
    if table.notes:
        out += ["", f"*{table.notes}*"]
    return "\n".join(out) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "---"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and write ± as ``$\\pm$``)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    t = display_cells(table)
    spec = "l" + "r" * (t.shape[1] - 1)
    body = [" & ".join(latex_escape(c) for c in r) + r" \\" for r in t.itertuples(index=False)]
    caption = latex_escape(table.title + (". " + table.notes if table.notes else ""))
    return "\n".join([
        r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
        f"\\label{{tab:{re.sub(r'[^A-Za-z0-9.:-]', '-', table.name)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule", " & ".join(latex_escape(c) for c in t.columns) + r" \\", r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def to_csv(table: Table) -> str:
    """The numbers behind the table (means, stds, n; or the test statistics) as CSV."""
    return table.numbers.to_csv(index=False)
