"""``landscape-erf``: Luo et al. (2016)'s effective-receptive-field experiments on conv stacks.

For every setting (weights, nonlinearity, dropout, subsampling, dilation, skips) and depth:
the mean ERF map of the centre output unit, its moment sigma, 95 %-mass size and the analytic
RF; then the log-log slope of sigma vs depth per setting (95 % CI) and ERF / RF vs depth.
Writes to ``out``: ``erf_rows.csv``, ``erf_slopes.csv``, ``erf_images_<setting>.png``,
``erf_size_vs_depth.png``, ``erf_ratio_vs_depth.png`` (each atomically).

    landscape-erf                                  # configs/erf.yaml: 8 settings, depths 1..32
    landscape-erf depths=[2,4,8] settings.relu.dropout=0.5 out=erf_dropout
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, get_type_hints

import pandas as pd
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from landscape.cli.compose import (
    check_no_missing, exit_on_user_error, hydra_command, schema_node,
)
from landscape.config import check_known_keys, describe_type
from landscape.storage import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROG = "landscape-erf"


@dataclass
class StackSetting:
    """One setting of the sweep (``landscape.importance.luo.StackSpec`` without depth, kernel
    and width, which the sweep shares)."""

    init: str = "gaussian"  # uniform | gaussian
    nonlinearity: str = "relu"  # none | relu | tanh
    dropout: float = 0.0  # drop probability, dropout active (train mode)
    subsample_at: list[int] = field(default_factory=list)  # 1-based layers with stride 2
    dilation: int = 1
    skip: bool = False


@dataclass
class ERFStudyConfig:
    """``landscape-erf``: every setting at every depth, on ``input_size`` x ``input_size``
    inputs, the map averaged over ``n_nets`` weight draws x ``n_inputs`` N(0, 1) inputs."""

    # name -> StackSetting fields; free-form, so a new one needs no "+": settings.mine.skip=true
    settings: dict[str, Any] = field(default_factory=dict)
    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    kernel: int = 3
    width: int = 8
    input_size: int = 129
    n_inputs: int = 8
    n_nets: int = 2
    seed: int = 0
    out: str = "erf_out"
    progress: bool = True
    num_threads: Optional[int] = None  # torch intra-op threads (None: torch's default)


_SETTING_TYPES = get_type_hints(StackSetting)
ConfigStore.instance().store(name="erf_schema", node=schema_node(ERFStudyConfig))


def _setting(name: str, entry: Any) -> StackSetting:
    """``settings.<name>`` checked against :class:`StackSetting` (keys and types)."""
    if not isinstance(entry, dict):
        raise ValueError(f"settings.{name} must be a mapping of {', '.join(_SETTING_TYPES)}; "
                         f"got {entry!r}")
    check_known_keys(entry, StackSetting, f"settings.{name}.")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StackSetting), entry))
    except ValidationError as e:
        key = re.split(r"[.\[]", e.full_key)[0]  # subsample_at[0] -> subsample_at
        raise ValueError(f"settings.{name}.{key} must be {describe_type(_SETTING_TYPES[key])}"
                         f", got {e.value!r}") from None


def _specs(study: ERFStudyConfig) -> dict:
    from landscape.importance.luo import StackSpec

    if not study.settings:
        raise ValueError("settings must name at least one setting (configs/erf.yaml has eight)")
    if study.kernel == 1:
        raise ValueError("kernel must be an odd integer >= 3: a 1x1 stack's ERF is one pixel "
                         "at every depth, so sigma vs depth has no log-log fit; got 1")
    specs = {}
    for name, entry in study.settings.items():
        s = _setting(name, entry)
        try:
            specs[name] = StackSpec(depth=1, kernel=study.kernel, width=study.width, init=s.init,
                                    nonlinearity=s.nonlinearity, dropout=s.dropout,
                                    subsample_at=tuple(s.subsample_at), dilation=s.dilation,
                                    skip=s.skip)
        except ValueError as e:
            raise ValueError(f"settings.{name}: {e}") from None
    return specs


def _write_png(path: Path, fig: Figure) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


@hydra_command(PROG, "erf", about=__doc__)
def erf_main(cfg: DictConfig) -> None:
    """Run the sweep of ``configs/erf.yaml`` and write its tables and figures to ``out``."""
    from analysis.erf import depth_slopes
    from analysis.erf_plots import erf_images, ratio_vs_depth, size_vs_depth
    from landscape.importance.luo import erf_depth_sweep

    def sweep() -> tuple[ERFStudyConfig, pd.DataFrame, dict, pd.DataFrame]:
        data = OmegaConf.to_container(cfg, resolve=False)
        check_known_keys(data, ERFStudyConfig)
        check_no_missing(data)
        study = OmegaConf.to_object(cfg)
        assert isinstance(study, ERFStudyConfig)
        if study.num_threads is not None:
            if study.num_threads < 1:
                raise ValueError(f"num_threads must be >= 1 or null, got {study.num_threads}")
            torch.set_num_threads(study.num_threads)
        rows, maps = erf_depth_sweep(_specs(study), study.depths, study.input_size,
                                     n_inputs=study.n_inputs, n_nets=study.n_nets,
                                     seed=study.seed, progress=study.progress)
        slopes = pd.concat([depth_slopes(rows, "sigma"), depth_slopes(rows, "erf_rf_ratio")],
                           ignore_index=True)
        return study, rows, maps, slopes

    study, rows, maps, slopes = exit_on_user_error(PROG, sweep)
    out = Path(study.out)
    atomic_write_text(out / "erf_rows.csv", rows.to_csv(index=False))
    atomic_write_text(out / "erf_slopes.csv", slopes.to_csv(index=False))
    for setting, g in rows.groupby("setting", sort=False):
        rf = dict(zip(g["depth"], g["theoretical_rf"]))
        _write_png(out / f"erf_images_{setting}.png",
                   erf_images({d: maps[setting, d] for d in rf}, rf, setting))
    _write_png(out / "erf_size_vs_depth.png",
               size_vs_depth(rows, slopes[slopes.measure == "sigma"]))
    _write_png(out / "erf_ratio_vs_depth.png", ratio_vs_depth(rows))
    with pd.option_context("display.width", 120):
        print("ERF sigma (px) per depth and setting:", flush=True)
        print(rows.pivot(index="depth", columns="setting", values="sigma").to_string(
            float_format="{:.2f}".format), flush=True)
        print(slopes.to_string(index=False, float_format="{:.3f}".format), flush=True)
    print(f"[landscape] wrote {out.resolve()}", flush=True)


if __name__ == "__main__":
    erf_main()
