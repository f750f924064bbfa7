"""The console scripts that take Hydra overrides (the only package that imports Hydra).

- ``landscape-run``: one run (cell + seed); with ``-m`` (or an experiment that sets
  ``hydra.mode: MULTIRUN``) a grid, one run after another in this process, then the cell-level
  stages, a summary and the report.
- ``landscape-submit``: the same grid planned and launched locally or on Slurm.
- ``landscape-cells``: cell-level stages (CKA between seeds) of every cell of a results root.
- ``landscape-rf``: the analytic receptive field per pool level.
- ``landscape-erf`` (:mod:`landscape.cli.erf`): Luo et al.'s effective receptive field vs depth.

``landscape-status`` and ``landscape-report`` read a results folder: ``landscape.commands``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from landscape.cli.compose import (
    CONFIG_DIR, RUN_ERRORS, USER_ERRORS, exit_on_user_error, hydra_command, hydra_error_line,
    schema_node, to_run_config,
)
from landscape.cli.rf import rf_main
from landscape.cli.submit import (
    expand_grid, load_launcher, split_overrides, submit, submit_main, validate_grid,
)
from landscape.config import RunConfig
from landscape.grid import finish_cells

__all__ = [
    "CONFIG_DIR", "GridSummary", "RUN_ERRORS", "USER_ERRORS", "cells_main", "exit_on_user_error",
    "expand_grid", "hydra_command", "hydra_error_line", "load_launcher", "rf_main", "run_main",
    "schema_node", "split_overrides", "submit", "submit_main", "to_run_config", "validate_grid",
]


RUN_ABOUT = """\
landscape-run: train one run (model x data x seed) and run its enabled stages (pruning,
Hessian, CKA, importance, probes, ...); results under results_root, as tidy rows
(landscape.results.load). Every setting is checked before anything is written; the same
command resumes an interrupted run, and a unit whose settings changed is recomputed. -m runs a
grid (Hydra multirun; landscape-submit runs one on Slurm or local workers).

    landscape-run model=vgg19 model.pool_level=2 data=digits seed=0 hessian.enabled=true
    landscape-run -m model=resnet18 model.pool_level=0,1,2 seed=0,1 num_threads=1
    landscape-run experiment=paper_small        # a named grid (configs/experiment/)
"""

CELLS_ABOUT = """\
landscape-cells: the cell-level stages (CKA between seeds, ...) of every cell under
results_root whose seeds have trained, with the settings given here; finished units are kept.
landscape-submit and landscape-run -m run them themselves after a grid.

    landscape-cells results_root=results cka.enabled=true
"""


@hydra_command("landscape-run", "config", about=RUN_ABOUT)
def run_main(cfg: DictConfig) -> dict[str, Any]:
    from landscape.pipeline import run, validate

    def checked() -> RunConfig:
        run_cfg = to_run_config(cfg)
        validate(run_cfg)  # every setting, before anything is written
        return run_cfg

    run_cfg = exit_on_user_error("landscape-run", checked)
    summary = exit_on_user_error("landscape-run", lambda: run(run_cfg), RUN_ERRORS)
    done = f"ran {', '.join(summary.ran)}" if summary.ran else "already done, nothing to run"
    print(f"[landscape] {summary.run_dir}: {done} (status: {summary.status})", flush=True)
    return {"run_dir": summary.run_dir, "status": summary.status}


@hydra_command("landscape-cells", "config", about=CELLS_ABOUT)
def cells_main(cfg: DictConfig) -> None:
    """Cell-level stages (CKA between seeds) for every cell under ``results_root``."""
    from landscape.pipeline import run_cells

    run_cfg = exit_on_user_error("landscape-cells", lambda: to_run_config(cfg))
    root = Path(run_cfg.results_root)
    if not root.is_dir() or not (found := exit_on_user_error(
            "landscape-cells", lambda: run_cells(root, overrides=run_cfg))):
        print(f"landscape-cells: error: no cells under {root.resolve()} (results_root="
              f"{run_cfg.results_root}); nothing to do", file=sys.stderr)
        raise SystemExit(2)
    for s in found:
        what = ", ".join(s.ran) or "nothing to do"
        print(f"[landscape] {s.cell_dir}: seeds {s.seeds}: {what}", flush=True)


def _without_hydra(config: DictConfig) -> RunConfig:
    data = OmegaConf.to_container(config, resolve=False)
    data.pop("hydra", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), data))


class GridSummary(Callback):
    """At the end of a multirun: cell-level stages (CKA between seeds), then print where the
    results are and a per-cell summary, and write the report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_cfg = _without_hydra(config)
        finish_cells(Path(run_cfg.results_root), overrides=run_cfg)
