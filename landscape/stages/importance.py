"""Importance-map stage: projected-gradient maps and ERF size (at init by default), as rows
``importance_max`` / ``importance_max_std`` / ``importance_n`` / ``erf_size`` /
``erf_size_censored`` (1 where the image cut the ERF's square) / ``erf_area`` plus the mean
map and the per-sample maxima saved as arrays for plotting.

``protocol=default`` (unit ``importance_<checkpoint>``): our measurement on the run's own
weights (``mode``: random inputs or the linearised net), at the last conv layer.
``protocol=paper`` (unit ``importance_paper_<checkpoint>``): the paper's released procedure
(:mod:`landscape.importance.paper`); at ``init`` over ``n_samples`` fresh initialisations
seeded from the run's seed (the paper's Tables 3 and 4 average 50: 10 per seed of a 5-seed
cell), at a trained checkpoint on its weights (one map).

With ``per_layer`` (protocol default), every conv layer's centre unit too: ``layer_erf_size``
/ ``layer_erf_censored`` / ``layer_erf_sigma`` / ``layer_erf_r2`` per checkpoint, and unit
``importance_rf`` (one per run) their analytic ``layer_r_max`` at ``input_size``; it records
the RF analysis's version, so a change to the analysis recomputes that unit, not the maps.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd
import torch
from torch import nn

from landscape.activations import ActivationCapture
from landscape.identity import RunIdentity
from landscape.importance import (
    MODES, ImportanceMaps, erf_square, erf_stats, paper_importance, paper_maps, paper_probe,
    paper_projection, projected_gradient_maps,
)
from landscape.importance.layer_erf import conv_sites, layer_erf_table, site_rf
from landscape.importance.maps import centre_token
from landscape.models import InputTooSmallError, check_input_size
from landscape.receptive_field import UnsupportedModelError, receptive_field_table, version
from landscape.seeds import IMPORTANCE, stream_seed
from landscape.stages.base import (
    Output, RunContext, Stage, Unit, check_checkpoints, check_counts, check_protocol,
    register_stage,
)

log = logging.getLogger("landscape")
RF_UNIT = "importance_rf"  # the analytic RF beside the per-layer ERFs (from the RF analysis)


@dataclass
class ImportanceConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["init"])  # init, final and/or best
    protocol: str = "default"  # default (ours) | paper (the released procedure)
    mode: str = "random_input"  # protocol=default: random_input | images (test) | linearised
    input_size: int = 64
    n_samples: int = 50  # random inputs (random_input) or fresh initialisations (paper, init)
    mass_fraction: float = 0.95  # ERF size: smallest centred square holding this mass
    rel_threshold: float = 0.1  # ERF area: pixels >= this fraction of the map's maximum
    per_layer: bool = False  # also the ERF of every conv layer's centre unit (protocol default)
    # the module whose centre unit receives the gradient (protocol default); None: the last
    # conv, which for a transformer is its patch embedding: name a block (a map or tokens)
    layer: Optional[str] = None


@register_stage
class ImportanceStage(Stage):
    name = "importance"
    reads_layouts = True
    config_field = "importance"

    def validate(self, config: ImportanceConfig) -> None:
        check_checkpoints("importance", config.checkpoints)
        if config.mode == "paper":
            raise ValueError("importance.mode=paper was renamed random_input (random inputs "
                             "through the model as it is); the paper's released procedure is "
                             "importance.protocol=paper (preset: importance=paper)")
        if config.mode not in MODES:
            raise ValueError(f"importance.mode must be one of {MODES}, got {config.mode!r}")
        check_protocol("importance", config, unused=("mode", "layer"))
        check_counts("importance", config, ["input_size", "n_samples"])
        for name in ("mass_fraction", "rel_threshold"):
            if not 0 < getattr(config, name) <= 1:
                raise ValueError(f"importance.{name} must be in (0, 1], got "
                                 f"{getattr(config, name)}")

    def validate_for(self, config: ImportanceConfig, identity: RunIdentity) -> None:
        if config.protocol == "paper":
            paper_probe(identity.arch)  # the paper's probe layer is known for this arch
        with torch.device("meta"):  # no memory, no init
            model = identity.build_model()
        _check_size(model, config.input_size)
        if config.layer is not None:
            _check_layer(model, config.layer, config.input_size, identity.in_channels)

    def units(self, config: ImportanceConfig) -> list[Unit]:
        tag = "paper_" if config.protocol == "paper" else ""
        return [Unit(f"importance_{tag}{c}", {"checkpoint": c}) for c in config.checkpoints
                ] + ([Unit(RF_UNIT)] if _per_layer(config) else [])

    def settings(self, config: ImportanceConfig) -> dict:
        return {**super().settings(config),
                **({"layer_r_max_rows": RF_UNIT} if _per_layer(config) else {})}

    def unit_settings(self, config: ImportanceConfig, unit: str) -> dict:
        """The analytic-RF unit depends on the input size and the RF analysis alone: a change
        to the analysis recomputes it (well under a second), not the ERF maps."""
        if unit == RF_UNIT:
            return {"input_size": config.input_size, "analysis": version.analysis_version()}
        return super().unit_settings(config, unit)

    def legacy_settings(self, config: ImportanceConfig) -> dict:
        """A per-layer unit recorded before the analytic RF had its unit holds ``layer_r_max``
        rows of the RF analysis of its day: it is recomputed, not kept."""
        return {**super().legacy_settings(config), "layer_r_max_rows": "each importance unit"}

    def run(self, ctx: RunContext, config: ImportanceConfig, unit: Unit) -> Output:
        if unit.name == RF_UNIT:
            return Output(_rf_rows(ctx, config))
        c, checkpoint = config, unit.params["checkpoint"]
        seed = stream_seed(ctx.identity.seed, IMPORTANCE)
        device = ctx.settings.device
        model = ctx.load_model(checkpoint)
        images = (_test_images(ctx, c.n_samples)
                  if c.protocol == "default" and c.mode == "images" else None)
        if c.protocol == "paper":
            maps = _paper_maps(ctx, c, checkpoint, model, seed)
            how = f"protocol=paper; n={maps.n}" + (" fresh inits" if checkpoint == "init" else "")
        else:
            maps = projected_gradient_maps(model, input_size=c.input_size,
                                           n_samples=c.n_samples, mode=c.mode, seed=seed,
                                           layer=c.layer, device=device, images=images)
            how = f"protocol=default; mode={c.mode}" + (
                f" (the first {maps.n} test images, {ctx.data.image_size} px, centred)"
                if c.mode == "images" else "")
        erf = erf_stats(maps.mean_map, mass_fraction=c.mass_fraction,
                        rel_threshold=c.rel_threshold)
        chosen = ("" if c.layer is not None and c.protocol == "default" else
                  " (the paper's probe)" if c.protocol == "paper" else " (auto: the deepest conv)")
        note = (f"checkpoint={checkpoint}; {how}; layer={maps.layer}{chosen}; "
                f"input_size={c.input_size}; bn={maps.bn_mode}; centre={maps.centre}; "
                f"mass_fraction={c.mass_fraction}; rel_threshold={c.rel_threshold}")
        values = {"importance_max": maps.max_mean, "importance_max_std": maps.max_std,
                  "importance_n": maps.n, "erf_size": erf.size,
                  "erf_size_censored": float(erf.censored), "erf_area": erf.area}
        rows = [{"stage": unit.name, "metric": k, "value": v, "layer": maps.layer,
                 "protocol": c.protocol, "note": note} for k, v in values.items()]
        if _per_layer(c):
            rows += _layer_rows(model, c, seed, device, images, unit.name, note)
        return Output(rows, {"mean_map": maps.mean_map, "maxima": maps.maxima})


def _paper_maps(ctx: RunContext, c: ImportanceConfig, checkpoint: str, model: nn.Module,
                seed: int) -> ImportanceMaps:
    """The paper's procedure: fresh initialisations at ``init``, the weights otherwise."""
    probe = paper_probe(ctx.identity.arch)
    if checkpoint == "init":  # identity.build_model draws from the RNG paper_importance seeds
        return paper_importance(ctx.identity.build_model, layer=probe.layer, keep=probe.keep,
                                n_inits=c.n_samples, input_size=c.input_size, seed=seed,
                                device=ctx.settings.device, progress=ctx.progress)
    m, centre = paper_projection(model, layer=probe.layer, keep=probe.keep,
                                 input_size=c.input_size, device=ctx.settings.device)
    return paper_maps(m[None], layer=probe.layer, centre=centre, input_size=c.input_size,
                      seed=seed)


def _layer_rows(model: nn.Module, c: ImportanceConfig, seed: int, device, images,
                stage: str, note: str) -> list[dict]:
    """Per conv layer (forward order, ``index``): the ERF of its centre unit on the same
    inputs (``landscape.importance.layer_erf_table``); its analytic RF is unit
    ``importance_rf``'s. A layer no gradient reaches the input from has no rows, and the note
    names it."""
    t = layer_erf_table(model, c.input_size, mode=c.mode, n=c.n_samples, seed=seed,
                        device=device, images=images, analytic=False, strict=False)
    none = t.loc[t["erf_size"].isna(), "layer"].tolist()
    note += f"; no ERF (no gradient reaches the input): {', '.join(none)}" if none else ""
    return [{"stage": stage, "metric": f"layer_{k}", "value": float(r[k]), "layer": r["layer"],
             "index": i, "protocol": "default", "note": note}
            for i, r in enumerate(t.to_dict("records"))
            for k in ("erf_size", "erf_censored", "erf_sigma", "erf_r2")
            if pd.notna(r[k])]  # (no ERF: no row)


def censoring_rows(df: pd.DataFrame, arrays: dict) -> list[dict]:
    """``erf_size_censored`` for the units written before it was recorded, from each unit's
    saved mean map (``arrays``: stage -> run_id -> its arrays, as ``results.load_arrays``)
    by the same :func:`~landscape.importance.erf_square` at the unit's ``mass_fraction``: the
    report marks their ERF sizes too. None for a unit that has the row or no saved map."""
    sizes = df[(df["metric"] == "erf_size") & df["stage"].astype(str).str.startswith(
        "importance_")]
    flagged = df.loc[df["metric"] == "erf_size_censored", ["run_id", "stage"]]
    have = set(zip(flagged["run_id"], flagged["stage"]))
    rows = []
    for r in sizes.to_dict("records"):
        m = arrays.get(r["stage"], {}).get(r["run_id"], {}).get("mean_map")
        if (r["run_id"], r["stage"]) in have or m is None or not m.any():
            continue
        found = re.search(r"mass_fraction=([0-9.eE-]+)", str(r["note"]))
        fraction = float(found.group(1)) if found else ImportanceConfig.mass_fraction
        _, cut = erf_square(m, mass_fraction=fraction)
        rows.append({**r, "metric": "erf_size_censored", "value": float(cut),
                     "note": f"{r['note']}; censoring read from the saved mean map"})
    return rows


def _per_layer(c: ImportanceConfig) -> bool:
    return c.per_layer and c.protocol == "default"


def _rf_rows(ctx: RunContext, c: ImportanceConfig) -> list[dict]:
    """Unit ``importance_rf``: ``layer_r_max`` of every conv layer (forward order, ``index``
    as the ERF rows') at ``importance.input_size``, from the freshly built model; a conv
    behind a global mix has no finite RF and no row, and a model the RF analysis cannot
    follow none (a warning names the op)."""
    model = ctx.build_model()
    try:
        table = receptive_field_table(model, c.input_size)
    except UnsupportedModelError as e:  # the cell's receptive_field rows say so too
        log.warning("%s: no analytic RF beside the per-layer ERFs: %s", ctx.identity.run_id,
                    str(e).splitlines()[0])
        return []
    convs = conv_sites(model, torch.zeros(2, ctx.identity.in_channels, c.input_size,
                                          c.input_size))  # as the ERF rows number them
    note = f"input_size={c.input_size}; {version.version_note()}"
    r_max = {site: r for site, (r, _) in site_rf(table, convs).items()}
    return [{"stage": RF_UNIT, "metric": "layer_r_max", "value": float(r_max[n]), "layer": n,
             "index": i, "protocol": "default", "note": note}
            for i, n in enumerate(convs) if pd.notna(r_max[n])]


def _test_images(ctx: RunContext, n: int) -> torch.Tensor:
    """The first ``n`` test images of the run's data, normalised as in training."""
    test = ctx.data.test
    return torch.stack([test[i][0] for i in range(min(n, len(test)))])  # type: ignore[arg-type]


def _check_layer(model: nn.Module, layer: str, size: int, in_channels: int) -> None:
    """``importance.layer`` names a module of ``model`` that runs once and outputs a feature
    map or a ViT's tokens with a centre token (a meta-device forward at ``size``)."""
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        near = difflib.get_close_matches(layer, names, n=3)
        raise ValueError(f"importance.layer={layer!r} is not a module of the model"
                         + (f"; did you mean {', '.join(near)}?" if near else ""))
    shapes: dict[str, tuple] = {}
    with torch.no_grad(), ActivationCapture(
            model, [layer], lambda n, out: shapes.update({n: tuple(out.shape)})) as capture:
        capture.run(torch.empty(2, in_channels, size, size, device="meta"))
    if len(shapes[layer]) == 3:
        try:
            centre_token(model, layer, shapes[layer], 2)
        except ValueError as e:
            raise ValueError(f"importance.layer={layer!r}: {e}") from None
    elif len(shapes[layer]) != 4:
        raise ValueError(f"importance.layer={layer!r} outputs shape {shapes[layer]}, neither "
                         "a feature map (n, C, h, w) nor tokens (n, L, C) with a centre unit: "
                         "name a module whose output is one")


def _check_size(model: nn.Module, size: int) -> None:
    """The input-size check of the model, naming ``importance.input_size``."""
    try:
        check_input_size(model, size)
    except InputTooSmallError as e:
        raise InputTooSmallError(f"importance.input_size={size}: {e}".replace(
            "(data.image_size)", "(importance.input_size)").replace(
            "set data.image_size", "set importance.input_size")) from None
