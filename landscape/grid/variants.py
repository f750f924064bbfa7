"""Running the variants of one run (:func:`landscape.grid.plan.group_variants`: configs of
one identity with other stage settings, e.g. ``prune.criterion=magnitude,obd``) in its job,
one after another."""

from __future__ import annotations

from typing import Sequence, TypeVar

from landscape import results
from landscape.config import RunConfig
from landscape.grid.plan import training_marker
from landscape.identity import identify
from landscape.pipeline import CellSummary, RunSummary, run

Task = tuple[RunConfig, ...]  # one run's variants, as a launcher runs them
Summary = TypeVar("Summary", RunSummary, CellSummary)


def variants_of(task: RunConfig | Sequence[RunConfig]) -> tuple[RunConfig, ...]:
    """A task's variants: a single config (a task pickled by an older version) or a tuple."""
    return (task,) if isinstance(task, RunConfig) else tuple(task)


def run_variants(task: RunConfig | Sequence[RunConfig]) -> RunSummary:
    """Each variant of one run through :func:`landscape.pipeline.run`, in order (the first
    trains; the others find the training done): one summary of every unit that ran. A variant
    that fails does not stop the ones after it once the run is trained (they need nothing of
    it); its error is raised after them. A failed training stops them (each would train
    again)."""
    summaries, error = [], None
    for c in variants_of(task):
        try:
            summaries.append(run(c))
        except Exception as e:
            error = error or e
            if not trained(c):
                break
    if error is not None:
        raise error
    return merge_summaries(summaries)


def merge_summaries(summaries: Sequence[Summary]) -> Summary:
    """One summary (run or cell) of the variants' summaries: every unit that ran in one of
    them, the others skipped, the first status other than ``ok``."""
    out = summaries[0]
    for s in summaries[1:]:
        out.ran += [u for u in s.ran if u not in out.ran]
        out.skipped += [u for u in s.skipped if u not in out.skipped]
        if getattr(out, "status", "ok") == "ok" and getattr(s, "status", "ok") != "ok":
            out.status = s.status
    out.skipped = [u for u in out.skipped if u not in out.ran]
    return out


def trained(cfg: RunConfig) -> bool:
    """The run's training finished (ok or diverged: no variant trains it again)."""
    paths = results.run_paths(cfg.results_root, identify(cfg).cell_name, cfg.seed)
    return training_marker(paths.run_dir) is not None
