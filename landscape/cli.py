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

from landscape.config import RunConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

cs = ConfigStore.instance()
cs.store(name="run_schema", node=RunConfig)

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


class GridSummary(Callback):
    """At the end of a multirun, print where the results are and a per-cell summary."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from landscape import results
        from landscape.summary import final_accuracy_table

        root = Path(config.results_root).resolve()
        df = results.load(root)
        print(f"\n[landscape] results under {root} ({df['run_id'].nunique()} runs, {len(df)} rows)")
        if len(df):
            print(final_accuracy_table(df).to_string())
        print(f"[landscape] load them with: landscape.results.load({str(root)!r})", flush=True)


if __name__ == "__main__":
    run_main()
