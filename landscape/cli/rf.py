"""``landscape-rf``: the analytic receptive field of a model before training.

The project's own architectures (``model=vgg19`` ...) get one row per RF-pool level (r_max and
r_min at the last conv, r̃, parameters, the border layer); any other model
(``model.name=torchvision:<name>``, ``timm:<name>``, ``<module>:<function>``) gets its
per-layer table with parameters, FLOPs and r̃ at the input size. ``layers=true`` adds the
per-layer table for the own architectures, ``refine=true`` the refinement proposals,
``out=<folder>`` writes the tables as CSV and ``draw=png|svg|pdf`` the drawing of each model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from torch import nn

from landscape.cli.compose import check_no_missing, exit_on_user_error, hydra_command
from landscape.commands import print_unless_closed
from landscape.config import RFSweepConfig, check_known_keys
from landscape.storage import atomic_write_text

DRAW_FORMATS = ("png", "svg", "pdf")


def _checked(cfg: DictConfig) -> RFSweepConfig:
    from landscape.receptive_field import CONVENTIONS, SE_GATES

    data = OmegaConf.to_container(cfg, resolve=False)
    check_known_keys(data, RFSweepConfig)
    check_no_missing(data)
    sweep = OmegaConf.to_object(cfg)
    assert isinstance(sweep, RFSweepConfig)
    if sweep.convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got "
                         f"{sweep.convention!r}")
    if sweep.se_gates not in SE_GATES:
        raise ValueError(f"se_gates must be one of {', '.join(SE_GATES)}, got {sweep.se_gates!r}")
    if sweep.draw is not None and sweep.draw not in DRAW_FORMATS:
        raise ValueError(f"draw must be one of {', '.join(DRAW_FORMATS)}, got {sweep.draw!r}")
    if sweep.draw is not None and sweep.out is None:
        raise ValueError("draw needs a folder to write to: add out=<folder>")
    if sweep.out is not None and not Path(sweep.out).is_dir():
        raise ValueError(f"out={sweep.out!r} is not an existing folder")
    if sweep.model.weights is not None:
        raise ValueError("model.weights: landscape-rf analyses shapes only and loads no weights;"
                         " drop it (it is a setting of landscape-run)")
    for key in ("input_size", "num_classes"):
        value = getattr(sweep, key)
        if value is not None and value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value}")
    return sweep


class _Analysis:
    """Everything ``landscape-rf`` prints and writes, computed before anything is written."""

    def __init__(self, sweep: RFSweepConfig) -> None:
        from landscape.data import dataset_info
        from landscape.registry import import_modules

        import_modules(sweep.imports, field="imports")
        self.sweep, self.info = sweep, dataset_info(sweep.data)
        self.n = sweep.input_size or self.info.image_size
        self.num_classes = sweep.num_classes or self.info.num_classes
        self.text: list[str] = []
        self.tables: dict[str, pd.DataFrame] = {}
        self.drawings: list[tuple[str, Any]] = []

    # -- one model ---------------------------------------------------------------------------
    def model(self, label: str, model: nn.Module, slug: str,
              rebuild: Callable[[float], nn.Module] | None = None, extra: dict | None = None,
              show_layers: bool = True, table: pd.DataFrame | None = None) -> None:
        """Everything of one model; ``table``: its receptive-field table when already traced
        (with this command's convention and se_gates)."""
        from landscape.receptive_field import receptive_field_table
        from landscape.receptive_field.analytic import feasible_input_of
        from landscape.receptive_field.cost import model_cost
        from landscape.receptive_field.drawing import draw_receptive_field
        from landscape.receptive_field.refine import proposals_table, refinement_proposals
        from landscape.receptive_field.text import (
            format_layer_table, format_proposals, format_summary,
        )

        s, n = self.sweep, self.n
        if table is None:
            table = receptive_field_table(model, n, se_gates=s.se_gates,
                                          convention=s.convention)
        cost = model_cost(model, n, self.info.in_channels)
        r_tilde = feasible_input_of(table)
        if show_layers:
            self.text += [format_summary(label, table, cost, r_tilde, n, s.convention),
                          format_layer_table(table), ""]
        keys = {"model": label, **(extra or {}), "input_size": n}
        self._add("layers", table.assign(**keys))
        if s.refine:
            props = proposals_table(refinement_proposals(
                model, n, in_channels=self.info.in_channels, convention=s.convention,
                se_gates=s.se_gates, rebuild=rebuild, width=s.model.width))
            self.text += ([f"{label} is fully utilised at {n} px: nothing to refine", ""]
                          if len(props) == 1 else
                          [f"refinement proposals for {label} at {n} px "
                           f"(r\u0303 {r_tilde.size}; docs/receptive-field.md):",
                           format_proposals(props), ""])
            self._add("refine", props.assign(**keys))
        if s.draw is not None:
            self.drawings.append((f"rf_{slug}.{s.draw}", draw_receptive_field(
                table, n, r_tilde=max(r_tilde.h, r_tilde.w), title=f"{label} at {n} px")))

    def _add(self, kind: str, df: pd.DataFrame) -> None:
        self.tables[kind] = pd.concat([self.tables[kind], df]) if kind in self.tables else df

    # -- the two kinds of model --------------------------------------------------------------
    def external(self) -> None:
        from landscape.models.sources import external_model

        s = self.sweep
        if s.levels is not None:
            raise ValueError(f"levels={list(s.levels)}: RF-pool levels apply to the project's "
                             "own architectures; torchvision/timm/user models are analysed as "
                             "they are")
        model = external_model(s.model.name, num_classes=self.num_classes,
                               in_channels=self.info.in_channels, img_size=self.n)
        self.text.append(f"{s.model.name} ({self.num_classes} classes, "
                         f"{self.info.in_channels} channel(s)) at {self.n}x{self.n} px; sizes in "
                         "input pixels")
        slug = s.model.name.replace(":", "_").replace(".", "_")
        self.model(s.model.name, model, slug)

    def own(self) -> None:
        from landscape.models import create_model
        from landscape.models.spec import spec_of
        from landscape.receptive_field import format_sweep_table
        from landscape.receptive_field.sweep import rf_sweep, sweep_frame

        s, m, info = self.sweep, self.sweep.model, self.info
        spec = spec_of(m)
        levels = list(s.levels) if s.levels is not None else [0, 1, 2, 3, 4]
        try:
            analyses = rf_sweep(
                m.name, input_size=self.n, levels=tuple(levels), width=m.width,
                num_classes=self.num_classes, in_channels=info.in_channels,
                pool_kernel=m.pool_kernel, pool_stride=m.pool_stride,
                pool_padding=m.pool_padding, spec=spec, convention=s.convention,
                se_gates=s.se_gates)
        except ValueError as e:
            raise ValueError(f"model.* / levels={levels}: {e}") from None
        sweep = sweep_frame(analyses)
        knobs = f", {spec.label()}" if spec.label() else ""
        self.text += [f"{m.name} (width {m.width:g}{knobs}) on {s.data.name}: {self.n}x{self.n} input, "
                      f"{info.in_channels} channel(s); r_max/r_min at the last conv layer, "
                      "r_tilde over all layers, in pixels", format_sweep_table(sweep), ""]
        self._add("sweep", sweep.assign(model=m.name, width=m.width, input_size=self.n))
        if not (s.layers or s.refine or s.draw or s.out):
            return
        for a in analyses:
            def build(width: float, level: int = a.level) -> nn.Module:
                return create_model(m.name, num_classes=self.num_classes,
                                    in_channels=info.in_channels, pool_level=level,
                                    width=width, pool_kernel=m.pool_kernel,
                                    pool_stride=m.pool_stride, pool_padding=m.pool_padding,
                                    spec=spec)

            self.model(f"{m.name} pool level {a.level}", a.model, f"{m.name}_pool{a.level}",
                       rebuild=build, extra={"level": a.level}, show_layers=s.layers,
                       table=a.table)

    def write(self) -> list[Path]:
        from landscape.receptive_field.drawing import save_drawing

        if self.sweep.out is None:
            return []
        out, written = Path(self.sweep.out), []
        for kind, df in self.tables.items():
            atomic_write_text(out / f"rf_{kind}.csv", df.to_csv(index=False))
            written.append(out / f"rf_{kind}.csv")
        for name, fig in self.drawings:
            written.append(save_drawing(fig, out / name))
        return written


@hydra_command("landscape-rf", "rf", about=__doc__)
def rf_main(cfg: DictConfig) -> None:
    """Print (and with ``out`` write) the analytic receptive field of ``model`` (module doc)."""
    from landscape.models.sources import is_external

    def analyse() -> _Analysis:
        a = _Analysis(_checked(cfg))
        a.external() if is_external(a.sweep.model.name) else a.own()
        return a

    analysis = exit_on_user_error("landscape-rf", analyse)
    reading = print_unless_closed("\n".join(analysis.text).rstrip())
    for path in exit_on_user_error("landscape-rf", analysis.write):  # also when piped to head
        reading = reading and print_unless_closed(f"wrote {path}")
