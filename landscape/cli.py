"""Hydra entry points (the only module that imports Hydra).

``landscape-run`` runs one run (cell + seed); with ``-m`` (or an experiment that sets
``hydra.mode: MULTIRUN``) a grid, one run after another in this process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from landscape.config import RFSweepConfig, RunConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

cs = ConfigStore.instance()
cs.store(name="run_schema", node=RunConfig)
cs.store(name="rf_schema", node=RFSweepConfig)

log = logging.getLogger("landscape")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config against the schema and return plain dataclasses."""
    run_cfg = OmegaConf.to_object(cfg)
    if not isinstance(run_cfg, RunConfig):
        raise TypeError(f"expected a RunConfig, got {type(run_cfg).__name__}")
    return run_cfg


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def run_main(cfg: DictConfig) -> dict[str, Any]:
    from landscape.pipeline import run

    summary = run(to_run_config(cfg))
    done = f"ran {', '.join(summary.ran)}" if summary.ran else "already done, nothing to run"
    print(f"[landscape] {summary.run_dir}: {done} (status: {summary.status})", flush=True)
    return {"run_dir": summary.run_dir, "status": summary.status}


@hydra.main(config_path=CONFIG_DIR, config_name="rf", version_base="1.3")
def rf_main(cfg: DictConfig) -> None:
    """Print the analytic receptive field of ``model`` at each pool level for ``data``'s input."""
    from landscape.data import dataset_info
    from landscape.receptive_field import format_sweep_table, rf_sweep_table

    sweep = OmegaConf.to_object(cfg)
    assert isinstance(sweep, RFSweepConfig)
    m, info = sweep.model, dataset_info(sweep.data)
    df = rf_sweep_table(
        m.name, input_size=info.image_size, levels=tuple(sweep.levels), width=m.width,
        num_classes=info.num_classes, in_channels=info.in_channels, pool_kernel=m.pool_kernel,
        pool_stride=m.pool_stride, pool_padding=m.pool_padding,
    )
    print(f"{m.name} (width {m.width:g}) on {sweep.data.name}: {info.image_size}x{info.image_size} "
          f"input, {info.in_channels} channel(s); r_max/r_min at the last conv layer, in pixels")
    print(format_sweep_table(df), flush=True)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def cells_main(cfg: DictConfig) -> None:
    """Cell-level stages (CKA between seeds) for every cell under ``results_root``."""
    from landscape.pipeline import run_cells

    run_cfg = to_run_config(cfg)
    for s in run_cells(Path(run_cfg.results_root), overrides=run_cfg):
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
        from landscape.summary import finish_grid

        run_cfg = _without_hydra(config)
        _, failed = finish_grid(Path(run_cfg.results_root), run_cfg)
        if failed:
            raise RuntimeError(f"cell-level stages failed for {failed} (tracebacks above)")


if __name__ == "__main__":
    run_main()
