"""The report: every table and figure of a results DataFrame in one folder, readable top to bottom.

``write_report(df, out_dir)`` writes ``report.md`` and ``report.html`` (images referenced by
relative ``<img src="figures/...png">``, so the folder can be moved or zipped as a whole),
``figures/*.png|pdf`` and ``tables/*.md|tex|csv``. It reads nothing but what it is handed:
the DataFrame, the importance arrays, the failed units (they have no rows) and the stage order
of the registry (``landscape.grid.write_root_report`` gathers them from a results root).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib
import pandas as pd

from analysis import criteria_plots, design, dynamics_plots, geometry_plots, plots, probe_plots
from analysis.paper import importance_table, paper_table
from analysis.prunability import (landscape_quantities, procedure_units, prunability_scatter,
                                  prunability_table, pruning_costs, reference_quantities)
from analysis.plots import checkpoint_rank, present_stages, stage_title
from analysis.render import Block, html_page, markdown
from analysis.stats import (GRID_COLUMNS, SETTINGS_COLUMNS, UNIT_COLUMNS, final_epoch,
                            grid_frame, grids, pruning_procedures, rank_correlation, select,
                            shared_note, with_variants)
from analysis.geometry_tables import (barrier_table, imp_table, pruned_hessian_table,
                                      sharpness_table)
from analysis.tables import (MISSING, Table, cell_levels, format_number, grid_slug, grid_title,
                             padding_table, pruning_table, pvalue_table, settings_slug,
                             settings_tag, to_csv, to_latex, to_markdown, training_table)

DEFAULT_TITLE = "Receptive field, pruning and loss landscape: results report"
# The paper's Hessian figures smooth each Ritz node with a Gaussian of variance 0.0032 (its
# torchessian.F; docs/paper-protocol.md): std sqrt(0.0032).
PAPER_DENSITY_SIGMA = math.sqrt(0.0032)


def unit_label(stage: Any, criterion: Any, prune_rate: Any, finetuned: Any,
               protocol: Any = "default", prune_settings: Any = "",
               finetune_settings: Any = "") -> str:
    """A stage unit as text: ``"prune magnitude @ 0.9"``, ``"hessian_final"``, with the
    settings that tell it from other units of its criterion (``", finetune_lr=0.001"``) and
    ``" (paper protocol)"`` for prune and fine-tune units of the paper's procedure."""
    if pd.isna(criterion):
        return str(stage)
    return (f"{stage} {criterion} @ {prune_rate:g}"
            + settings_tag(prune_settings, finetune_settings)
            + (" (paper protocol)" if protocol == "paper" else ""))


def _stage_rank(stage: str, order: Sequence[str]) -> int:
    """Position of a row's stage label (``hessian_init`` belongs to stage ``hessian``) in the
    pipeline order; unknown stages last."""
    for i, name in enumerate(order):
        if stage == name or stage.startswith(f"{name}_"):
            return i
    return len(order)


def _units(d: pd.DataFrame, order: Sequence[str] = ()) -> pd.DataFrame:
    """The distinct stage units of ``d`` in pipeline ``order``, with their ``unit`` label."""
    u = d[list(UNIT_COLUMNS)].drop_duplicates()
    rank = u["stage"].map(lambda s: _stage_rank(s, order))
    # a stage's units by checkpoint (init, the saved epochs in epoch order, final, best), not
    # as text (epoch_10 before epoch_2)
    when = u["stage"].map(lambda s: checkpoint_rank(str(s)))
    u = u.assign(_order=rank, _when=when).sort_values(
        ["_order", "_when", "stage", "criterion", "prune_rate"])
    labels = [unit_label(*r) for r in u[list(UNIT_COLUMNS)].itertuples(index=False)]
    return u.drop(columns=["_order", "_when"]).assign(unit=labels)


def completeness(df: pd.DataFrame, stage_order: Sequence[str] = (),
                 empty: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every expected (grid, cell, seed, stage unit) with ``present`` True/False.

    Expected per-run units: every cell of a grid x every seed seen in that grid x every stage
    unit seen for any run of that grid. Cell-level units (run_id without a seed; CKA, RF
    table): every cell x every cell-level unit seen in the grid, with seed NA. A unit done
    with no rows (``empty``: run_id, unit, as ``landscape.results.empty_units`` lists them)
    is present.
    """
    done_empty = set() if empty is None else set(zip(empty["run_id"], empty["unit"]))
    rows = []
    for grid in grids(df):
        g = grid_frame(df, **dict(zip(GRID_COLUMNS, grid)))
        per_run = g["run_id"].str.contains("/seed=", regex=False).fillna(False).astype(bool)
        cells = sorted(g["cell"].unique())
        for cell_level, d in ((False, g[per_run]), (True, g[~per_run])):
            seeds = [None] if cell_level else sorted(int(x) for x in d["seed"].dropna().unique())
            keys = [unit_label(*r) for r in d[list(UNIT_COLUMNS)].itertuples(index=False)]
            have = set(zip(d["cell"], [None] * len(d) if cell_level else d["seed"], keys))
            units = list(_units(d, stage_order)["unit"])
            for cell in cells:
                for seed in seeds:
                    run_id = cell if seed is None else f"{cell}/seed={seed}"
                    for unit in units:
                        rows.append({"grid": "-".join(map(str, grid)), "cell": cell, "seed": seed,
                                     "unit": unit, "present": (cell, seed, unit) in have
                                     or (run_id, unit) in done_empty})
    out = pd.DataFrame(rows, columns=["grid", "cell", "seed", "unit", "present"])
    return out.astype({"seed": "Int64"})


# ---------------------------------------------------------------------------------------------
def _overview(g: pd.DataFrame, done: pd.DataFrame) -> Table:
    """Stage units (rows) x receptive fields (columns): seeds done out of seeds expected."""
    lv = cell_levels(g)
    labels = dict(zip(lv["cell"], lv["label"]))
    count = done.groupby(["unit", "cell"])["present"].agg(["sum", "size"])
    units = list(dict.fromkeys(done["unit"]))
    def done_of(u: str, c: str) -> str:
        return (f"{count.loc[(u, c), 'sum']}/{count.loc[(u, c), 'size']}"
                if (u, c) in count.index else MISSING)

    rows = [{"Stage unit": u, **{labels[c]: done_of(u, c) for c in labels}} for u in units]
    return Table("overview", "Finished stage units per receptive field (done / expected seeds; "
                 "cell-level units 1/1)", pd.DataFrame(rows), count.reset_index())


def _correlations(g: pd.DataFrame, stage_order: Sequence[str]) -> Table | None:
    """Spearman rho between the receptive field and per-seed metrics of the grid."""
    d = final_epoch(g)
    wanted: list[tuple[str, pd.DataFrame]] = [
        ("dense test acc.", select(d, stage="train", metric="test_acc"))]
    wanted += pruning_costs(g, _units(select(d, stage=["prune", "finetune"]), stage_order))
    wanted += landscape_quantities(d)
    for st in present_stages(select(d, metric="loss_barrier"), "connectivity"):  # per seed pair
        wanted.append((f"{st}: loss barrier", select(d, stage=st, metric="loss_barrier")))
    rows = []
    for name, obs in wanted:
        if obs["value"].notna().sum() >= 3 and obs["receptive_field"].nunique() > 1:
            r = rank_correlation(obs)
            constant = math.isnan(r.rho)  # a quantity without spread has no rank order
            rows.append({"Quantity (per seed)": name,
                         "Spearman ρ": "undefined (constant)" if constant else f"{r.rho:+.2f}",
                         "p": MISSING if constant else format_number(r.p), "n": str(r.n)})
    if not rows:
        return None
    return Table(f"{grid_slug(g)}-spearman", f"{grid_title(g)}: rank correlation of the "
                 "receptive field with each quantity", pd.DataFrame(rows), pd.DataFrame(rows),
                 "Spearman's ρ over all seeds of all receptive fields; two-sided p of the "
                 "permutation test (exact up to 8 seeds in all, else 50,000 random pairings).")


def _section(title: str, tables: Iterable[Table | None]) -> list[Block]:
    """A heading and its tables, or nothing when no table was made."""
    present = [("table", t) for t in tables if t is not None]
    return [("h3", title), *present] if present else []


def _table_blocks(g: pd.DataFrame, kw: dict[str, Any], reference: pd.DataFrame | None,
                  stage_order: Sequence[str]) -> list[Block]:
    blocks: list[Block] = []
    if len(select(g, stage="train")):
        blocks += [("h3", "Dense training"), ("table", training_table(g, **kw))]
    blocks += _section("Weights that never see the image", (padding_table(g, **kw),))
    units = _units(select(g, stage=["prune", "finetune"]))
    if len(units):
        blocks.append(("h3", "Pruned vs dense accuracy"))
    # The paper's tables go beside the one-shot magnitude tables at rate 0.9 of its protocol
    # (of ours when only ours was run).
    beside = "paper" if (units["protocol"] == "paper").any() else "default"
    for u in units.sort_values(["protocol", "finetuned", "criterion", *SETTINGS_COLUMNS,
                                "prune_rate"]).itertuples(index=False):
        ft = bool(u.finetuned)
        args = dict(**kw, criterion=u.criterion, prune_rate=u.prune_rate, finetuned=ft,
                    protocol=u.protocol, prune_settings=u.prune_settings,
                    finetune_settings=u.finetune_settings)
        blocks.append(("table", pruning_table(g, **args)))
        if (reference is not None and not ft and u.criterion == "magnitude"
                and math.isclose(u.prune_rate, 0.9) and u.protocol == beside):
            ref = paper_table(reference, arch=kw["arch"], dataset=kw["dataset"], ours=g)
            blocks += [("table", ref)] if ref is not None else []
        same = units[(units["finetuned"] == u.finetuned) & (units["protocol"] == u.protocol)
                     & (units["prune_settings"] == u.prune_settings)
                     & (units["finetune_settings"] == u.finetune_settings)]
        if math.isclose(u.prune_rate, same["prune_rate"].max()) and g["cell"].nunique() > 1:
            blocks.append(("table", pvalue_table(g, **args)))
    blocks += _section("Pruning criteria side by side", (
        table for ft in (False, True)
        for table in criteria_plots.criteria_tables(g, **kw, finetuned=ft)))
    blocks += _section("Iterative magnitude pruning", (imp_table(g, **kw),))
    blocks += _section("Curvature of the pruned networks", (
        pruned_hessian_table(g, **kw, **proc) for proc in _procedures(g)))
    blocks += _section("Mode connectivity between seeds", (
        barrier_table(g, **kw, stage=st)
        for st in present_stages(select(g, metric="loss_barrier"), "connectivity")))
    blocks += _section("Sharpness", (sharpness_table(g, **kw, checkpoint=plots.stage_checkpoint(st))
                                     for st in present_stages(g, "sharpness")))
    blocks += _section("Probes, saturation and the border layer", (
        probe_plots.border_table(g, **kw, stage=st)
        for st in present_stages(select(g, metric="probe_acc"), "probes")))
    blocks += _section("Projected-gradient importance", (
        importance_table(g, reference, stage=st,
                         protocol="paper" if "_paper_" in st else "default")
        for st in present_stages(select(g, metric="importance_max"), "importance")))
    corr = _correlations(g, stage_order)
    if corr is not None:
        blocks += [("h3", "Rank correlations with the receptive field"), ("table", corr)]
    quantities = reference_quantities(final_epoch(g))  # once for every procedure's table
    blocks += _section("What goes with prunability", (
        prunability_table(g, procedure_units(units, p), quantities, name=name, what=what)
        for p, name, what in ((p, *_procedure_name(p)) for p in _procedures(g))))
    return blocks


def _procedures(g: pd.DataFrame) -> list[dict[str, Any]]:
    """The pruning procedures of the grid as keyword arguments of the pruning figures and
    tables (criterion, protocol, prune_settings, finetune_settings)."""
    return [{k: (None if pd.isna(v) else v) for k, v in r._asdict().items()}
            for r in pruning_procedures(g).itertuples(index=False)]


def _procedure_name(proc: Mapping[str, Any]) -> tuple[str, str]:
    """(file-name part, caption part) of a pruning procedure."""
    settings = (proc["prune_settings"], proc["finetune_settings"])
    paper = proc["protocol"] == "paper"
    name = (f"{proc['criterion']}{'-paper' if paper else ''}{settings_slug(*settings)}"
            .replace(":", "-"))
    return name, (f"criterion {proc['criterion']}{settings_tag(*settings)}"
                  + (" (paper protocol)" if paper else ""))


def _figure_blocks(g: pd.DataFrame, kw: dict[str, Any], arrays: Any, out: Path) -> list[Block]:
    """Draw every figure of the grid, save it as PNG and PDF, and list the ones not drawn."""
    procedures = [(p, *_procedure_name(p)) for p in _procedures(g)]
    hessian = select(g, metric="hessian_density_node")
    ours, paper = (present_stages(select(hessian, protocol=p), "hessian")
                   for p in ("default", "paper"))
    figures: list[tuple[str, Callable[[], Any], str]] = [
        *[(f"pruning-{name}", (lambda p=p: plots.pruning_curves(g, **kw, **p)),
           f"Accuracy vs pruning rate, {what}.") for p, name, what in procedures],
        *[(f"prunability-{name}", (lambda p=p: prunability_scatter(g, **kw, **p)),
           f"Each run's landscape quantities against the test accuracy one-shot pruning "
           f"({what}) costs it at the procedure's highest rate, in points; ρ: Spearman over "
           "all runs and within receptive fields (p-values: 'What goes with prunability').")
          for p, name, what in procedures],
        ("pruning-criteria", lambda: criteria_plots.criteria_curves(g, **kw),
         "Test accuracy vs pruning rate by pruning criterion, a panel per receptive field; "
         "solid: one-shot, dashed: fine-tuned, dotted: the dense network."),
        ("hessian-eigenvalues", lambda: plots.hessian_eigenvalues(g, **kw),
         "Top Hessian eigenvalues by rank."),
        ("hessian-density", lambda: plots.spectral_density(g, **kw, stages=ours),
         "Hessian spectral density from stochastic Lanczos quadrature; each Ritz node is "
         "broadened by a Gaussian of std 1% of the node range (value in the panel)."),
        ("hessian-density-paper",
         lambda: plots.spectral_density(g, **kw, stages=paper, sigma=PAPER_DENSITY_SIGMA),
         "Hessian spectrum by the paper's procedure: one Lanczos run from the all-ones vector "
         "(its Ritz values weighted by the squared first components), each node broadened by "
         "the paper's Gaussian (variance 0.0032)."),
        *[(st.replace("_", "-"), (lambda st=st: plots.cka_matrices(g, **kw, stage=st)),
           f"Linear CKA between every layer of two seeds, {stage_title(st)}"
           + ("; ReLU outputs, upper triangle mirrored." if "_paper_" in st else "."))
          for st in present_stages(select(g, metric="cka"), "cka")],
        ("slice-1d", lambda: geometry_plots.slice_curves(g, **kw),
         "Training loss along a filter-normalised random direction (or the top Hessian "
         "eigenvector, scaled to ||w||) around the weights."),
        *[(st.replace("_", "-"), (lambda st=st: geometry_plots.slice_planes(g, **kw, stage=st)),
           ("Training loss on the plane of the top two Hessian eigenvectors (each scaled to "
            "||w||), " if "_hessian_" in st else "Training loss on the plane of two "
            "filter-normalised random directions, ") + f"{stage_title(st)}.") for st in present_stages(select(g, metric="slice_loss"),
                                                           "slice") if "_2d_" in st],
        *[(f"pruned-curvature-{name}",
           (lambda p=p: geometry_plots.pruned_curvature(g, **kw, **p)),
           f"Top Hessian eigenvalue on the unpruned weights vs pruning rate, {what}.")
          for p, name, what in procedures
          if len(select(g, metric="pruned_hessian_eigenvalue", criterion=p["criterion"],
                        protocol=p["protocol"]))],
        ("connectivity", lambda: geometry_plots.connectivity(g, **kw),
         "Loss on the linear path between two seeds and its barrier."),
        *[(st.replace("_", "-"), (lambda st=st: probe_plots.saturation_probes(g, **kw, stage=st)),
           f"Saturation (bars) and probe accuracy (line) per layer, {stage_title(st)}; dashed: "
           "the predicted border layer, dotted: where each seed's observed tail starts.")
          for st in present_stages(select(g, metric="probe_acc"), "probes")],
        *[(f"{st}-positions".replace("_", "-"),
           (lambda st=st: probe_plots.position_maps(g, **kw, stage=st)),
           f"Probe accuracy per feature-map position of every layer in "
           f"probes.position_layers, divided by the network's test accuracy, "
           f"{stage_title(st)}.")
          for st in present_stages(select(g, metric="position_probe_acc"), "probes")],
        ("lambda-trajectory", lambda: dynamics_plots.lambda_trajectory(g, **kw),
         "Top Hessian eigenvalue of the training loss after each epoch (train.track), per "
         "receptive field; dashed: 2 / lr, the stability threshold of plain gradient descent."),
        ("saturation-trajectory", lambda: dynamics_plots.saturation_trajectory(g, **kw),
         "Saturation of every layer after each epoch (train.track), per receptive field."),
        ("input-size", lambda: plots.size_curves(g, **kw),
         "Test accuracy after training at each input size (data.image_size), per pool level; "
         "points off the lines: down-then-up (set C) and canvas protocols at their input "
         "size, a marker per protocol; ticks: r̃."),
        ("cka-to-final", lambda: dynamics_plots.cka_to_final_trajectory(g, **kw),
         "Linear CKA of each layer at a saved epoch with the same layer after training "
         "(cka.to_final), per receptive field."),
        ("erf-trajectory", lambda: dynamics_plots.erf_trajectory(g, **kw),
         "ERF size of the last conv at each checkpoint the importance stage measured, per "
         "receptive field; hollow: some seed's ERF square reached past the image's edge (the "
         "image cut the ERF)."),
        ("resolution", lambda: plots.resolution_curves(g, **kw),
         "Test accuracy of the trained checkpoint evaluated at other input sizes (the "
         "resolution stage); dotted: the training size, ticks: r̃ of each level; dashed: a "
         "down_up or canvas run tested on plain resized images (resolution.resize=direct)."),
        ("importance", lambda: plots.importance_maps(g, arrays, **kw),
         "Projected-gradient importance maps (mean map over seeds; the paper protocol's rows "
         "are marked)."),
        ("layer-erf", lambda: plots.layer_erf_profile(g, **kw),
         "ERF size of every conv layer's centre unit (importance.per_layer, mean over seeds) "
         "and its analytic r_max (dashed), per receptive field and checkpoint; hollow: the "
         "image cut the layer's ERF square."),
        ("erf-vs-rf", lambda: plots.erf_vs_receptive_field(g, **kw),
         "ERF size of the last conv (importance stage, our protocol) against its analytic "
         "receptive field, per pool level, at each measured checkpoint (line: mean over seeds, "
         "band: min-max); dashed: ERF = RF; dotted: the maps' input size (the ERF square is "
         "centred on the map's mass centre, so it can pass the input side by a few px; "
         "hollow: some seed's square reached past the image's edge, the image cut the ERF)."),
        ("receptive-field", lambda: plots.receptive_field_profile(g, **kw),
         "Analytic receptive field per layer; the border layer is starred."),
        ("receptive-field-states", lambda: plots.receptive_field_states(g, **kw),
         "Each pool level as the receptive-field refinement paper draws an architecture: "
         "r_min .. r_max per layer, coloured by its state at the input size (underutilised: "
         "r_min > input; unproductive: the layer's input r_min already covers the input)."),
    ]
    blocks: list[Block] = [("h3", "Figures")]
    absent = []
    for name, make, caption in figures:
        fig = make()
        if fig is None:
            absent.append(name)
            continue
        stem = f"{grid_slug(g)}-{name}"
        save_figure(fig, out / "figures", stem)
        blocks.append(("figure", (f"figures/{stem}.png", caption)))
    if absent:
        blocks.insert(1, ("p", f"Not drawn (no data for them in this grid): {', '.join(absent)}."))
    return blocks


def save_figure(fig: Any, folder: Path, stem: str) -> None:
    """``<stem>.png`` (150 dpi) and ``<stem>.pdf``. The PDF reuses the PNG's layout: the
    constrained layout, about a third of a figure's drawing time, runs once, not twice. The
    PDF is saved with no layout engine at all (``"none"`` leaves a placeholder engine, for
    which matplotlib still draws the figure once more before printing it)."""
    fig.savefig(folder / f"{stem}.png", dpi=150)
    engine = fig.get_layout_engine()
    with matplotlib.rc_context({"figure.autolayout": False,
                                "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)  # None with both rcParams off: no engine
    try:
        fig.savefig(folder / f"{stem}.pdf", dpi=150)
    finally:
        fig.set_layout_engine(engine)


def _grid_blocks(g: pd.DataFrame, arrays: Any, reference: pd.DataFrame | None,
                 out: Path, stage_order: Sequence[str],
                 empty: pd.DataFrame | None = None) -> list[Block]:
    kw = dict(zip(GRID_COLUMNS, grids(g)[0]))
    done = completeness(g, stage_order, empty)
    seeds = ", ".join(str(s) for s in sorted(g["seed"].dropna().unique()))
    notes = g.dropna(subset=["note"]).drop_duplicates(["stage", "note", "cell", "metric"])
    blocks: list[Block] = [
        ("h2", grid_title(g)), ("table", _overview(g, done)),
        ("p", f"Seeds: {seeds}. Stage settings (from the rows' notes):"),
        ("list", [f"{st}: {shared_note(n['note'], n['cell'], n['metric'])}"  # one line per unit
                  for st, n in notes.groupby("stage", sort=False)])]
    blocks += _table_blocks(g, kw, reference, stage_order)
    blocks += _figure_blocks(g, kw, arrays, out)
    missing = done[~done["present"]]
    blocks.append(("h3", "Missing results"))
    blocks.append(("list", [f"{m.cell}, seed {'(cell-level)' if pd.isna(m.seed) else m.seed}: "
                            f"{m.unit}" for m in missing.itertuples(index=False)]
                   or ["none: every expected (cell, seed, stage unit) has results"]))
    return blocks


def _design_blocks(df: pd.DataFrame, out: Path) -> list[Block]:
    """Per dataset with cells of several architectures or variants: the design-space figure
    (``analysis.design``) and its points as a CSV table."""
    points = design.design_points(df)
    blocks: list[Block] = []
    for dataset, p in points.groupby("dataset", sort=True):
        p.attrs = dict(points.attrs)
        if p[["arch", "variant"]].drop_duplicates().shape[0] < 2:
            continue
        fig = design.design_space(p)
        if fig is None:
            continue
        if not blocks:
            blocks.append(("h2", "Receptive-field design space"))
        stem = f"design-space-{re.sub(r'[^A-Za-z0-9.]+', '_', str(dataset))}"
        save_figure(fig, out / "figures", stem)
        p.to_csv(out / "tables" / f"{stem}.csv", index=False)
        blocks.append(("figure", (
            f"figures/{stem}.png",
            f"{dataset}: one point per cell (mean over its seeds, bar: min-max), by the knob "
            f"family that changed the receptive field (colour) and the architecture (marker), "
            f"against r̃ ({p.attrs.get('r_tilde_source')}), a row per input size; the points "
            f"per seed in tables/{stem}.csv.")))
    return blocks


STALE_BN_SHARE = 0.05  # landscape.train.STALE_SHARE: the train stage warns above it
_SHOWN = 12  # caveat lines listed before "and N more"


def caveat_blocks(df: pd.DataFrame) -> list[Block]:
    """What a reader of the tables above must know about some runs: trainings that diverged
    (their later stages measured the last finite weights) and runs whose BatchNorm running
    statistics still hold over 5% of their initial values (``bn_initial_share``), so that
    every eval-mode number of theirs is measured with statistics training barely moved."""
    lines = []
    div = df[(df["metric"] == "diverged") & (df["value"] == 1)]
    for r in div.sort_values("run_id").itertuples():
        epoch = "?" if pd.isna(r.index) else int(r.index)
        lines.append(f"{r.run_id}: training diverged (non-finite loss) at epoch {epoch}")
    bn = df[(df["metric"] == "bn_initial_share") & (df["value"] > STALE_BN_SHARE)
            & ~df["note"].astype(str).str.contains("initial = model.weights", regex=False)]
    for r in bn.sort_values("run_id").itertuples():
        setting = str(r.note).split(";")[0].split(": ", 1)[-1]  # "momentum=m, steps=t"
        lines.append(f"{r.run_id}: BatchNorm {r.layer} still holds {100 * r.value:.1f}% of its "
                     f"initial running statistics ({setting})")
    if not lines:
        return []
    more = len(lines) - _SHOWN
    return [("h2", "Caveats"),
            ("p", "Runs whose numbers above need a second look: a diverged training, or "
                  "BatchNorm running statistics that training has barely moved from mean 0 / "
                  "variance 1 (every eval-mode number of that run uses them; train for more "
                  "steps)."),
            ("list", lines[:_SHOWN] + ([f"... and {more} more"] if more > 0 else []))]


def report_blocks(df: pd.DataFrame, out_dir: Path, *, arrays: Any = None,
                  title: str = DEFAULT_TITLE, results_root: str | Path | None = None,
                  failures: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
                  stage_order: Sequence[str] = (),
                  empty: pd.DataFrame | None = None) -> list[Block]:
    """The report as a list of blocks; writes figures and table files under ``out_dir``."""
    blocks: list[Block] = [("h1", title)]
    df = df if "variant" in df.columns else with_variants(df, None)
    found = [grid_frame(v, **dict(zip(GRID_COLUMNS, grid)))
             for _, v in df.groupby("variant", sort=True) for grid in grids(v)]
    blocks.append(("p", f"{len(df)} result rows; {len(found)} grid(s): "
                   + "; ".join(grid_title(g) for g in found)
                   + (f". Results root: {results_root}." if results_root else ".")
                   if found else "No finished stages found."))
    for g in found:
        blocks += _grid_blocks(g, arrays, reference, out_dir, stage_order, empty)
    blocks += _design_blocks(df, out_dir)
    blocks += caveat_blocks(df)
    blocks.append(("h2", "Failed or damaged stage units"))
    if failures is None:
        blocks.append(("p", "Not checked (no failure records given)."))
    else:
        blocks.append(("list", [f"{f.run_id}: {f.unit}: {str(f.reason)[:200]}"
                                for f in failures.itertuples()] or ["none"]))
        damaged = failures["reason"].astype(str).str.endswith("(damaged)").sum()
        if damaged:
            blocks.append(("p", f"{damaged} damaged unit(s) (their files are not those their "
                           "DONE marker recorded) are left out of every table and figure "
                           "above; running the same command again recomputes them."))
    return blocks


def write_report(df: pd.DataFrame, out_dir: str | Path, *, arrays: Any = None,
                 title: str = DEFAULT_TITLE, results_root: str | Path | None = None,
                 failures: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
                 stage_order: Sequence[str] = (),
                 variants: Mapping[str, str] | None = None,
                 empty: pd.DataFrame | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``figures/`` and ``tables/`` under ``out_dir``;
    return the path of ``report.md``. ``arrays``: stage -> ``load_arrays(root, stage)`` for
    the importance maps; ``failures``: ``landscape.results.failures(root)`` (run_id, unit,
    reason); ``reference``: the paper's tables (shown labelled, beside ours);
    ``stage_order``: stage names in pipeline order (``landscape.stages.stage_names()``);
    ``variants``: cell -> how it differs from the other cells of its model and data beyond the
    RF pool (``landscape.results.cell_variants(root)``): such cells are separate grids;
    ``empty``: the units done with no rows (``landscape.results.empty_units(root)``), which
    are then not counted missing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Built whole in a scratch folder, then swapped in: a report that fails leaves the last
    # one as it was, and a rebuilt one keeps no figure or table of the last that it did not
    # make (e.g. one pooling two fine-tune settings, before they were told apart). Other
    # files in out_dir are left alone.
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as scratch:
        new = Path(scratch)
        (new / "figures").mkdir()
        (new / "tables").mkdir()
        blocks = report_blocks(with_variants(df, variants), new, arrays=arrays, title=title,
                               results_root=results_root, failures=failures,
                               reference=reference, stage_order=stage_order, empty=empty)
        names = [t.name for kind, t in blocks if kind == "table" and t.name != "overview"]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # one table's files would overwrite the other's
            raise ValueError(f"two tables of the report are named {', '.join(twice)}")
        for kind, t in blocks:
            if kind == "table" and t.name != "overview":
                for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
                    (new / "tables" / f"{t.name}.{ext}").write_text(render(t))
        (new / "report.html").write_text(html_page(blocks, title))
        (new / "report.md").write_text(markdown(blocks))
        with open(out / ".report.lock", "w") as lock:  # one swap at a time (two grids'
            fcntl.flock(lock, fcntl.LOCK_EX)            # last jobs ending together)
            for folder in ("figures", "tables"):
                if (out / folder).exists():
                    (out / folder).rename(new / f"old-{folder}")  # removed with the scratch
                (new / folder).rename(out / folder)
            for page in ("report.html", "report.md"):
                os.replace(new / page, out / page)
    return out / "report.md"
