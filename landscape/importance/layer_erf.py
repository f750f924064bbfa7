"""The effective receptive field of every conv layer, beside its analytic receptive field.

For each selected ``Conv2d``, the projected-gradient map of its centre unit
(:func:`~landscape.importance.maps.layer_gradient_maps`: one forward, one backward per layer,
every layer on the same inputs), averaged over the inputs, then its moments and Gaussian fit
(:func:`~landscape.importance.erf_fit.erf_fit`) and its 95 %-mass size
(:func:`~landscape.importance.erf.erf_size`), with the layer's analytic r_max / r_min
(:func:`~landscape.receptive_field.receptive_field_table`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch
from torch import nn

from landscape.activations import check_on_device, select_modules, split_call
from landscape.importance.erf import erf_square
from landscape.importance.erf_fit import erf_fit
from landscape.importance.maps import MODES, layer_gradient_maps, probe_inputs
from landscape.receptive_field import receptive_field_table

LAYER_ERF_COLUMNS = ("layer", "erf_sigma", "sigma_y", "sigma_x", "erf_size", "erf_censored",
                     "erf_r2", "r_max", "r_min", "erf_size_over_r_max")


def conv_layers(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """``layers`` checked against the model's ``Conv2d`` names (all of them by default), in
    registration order; ValueError listing the valid names for one that matches nothing."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    if layers is None:
        return convs
    unknown = [n for n in layers if n not in convs]
    if unknown or not layers:
        what = f"layers {unknown} match no" if unknown else "layers=[] selects no"
        raise ValueError(f"{what} Conv2d of {type(model).__name__}; valid: {', '.join(convs)}")
    return [n for n in convs if n in layers]


def conv_sites(model: nn.Module, example: torch.Tensor, layers: list[str] | None = None
               ) -> list[str]:
    """The selected ``Conv2d`` layers (:func:`conv_layers`) as one forward of ``example`` runs
    them, in forward order: a conv called several times (CoaT's positional conv, shared by
    the blocks of a stage) is one site per call (``name@k``); one that never runs, or whose
    output does not hold one row per image (a conv on windows folded into the batch), is left
    out with a warning (:func:`~landscape.activations.select_modules`)."""
    names = set(conv_layers(model, layers))
    return [site for site in select_modules(model, None, arg="layers", types=(nn.Conv2d,),
                                            example=example)
            if split_call(site)[0] in names]


def site_rf(table: pd.DataFrame, sites: list[str]) -> dict[str, tuple]:
    """``(r_max, r_min)`` of each conv call site (:func:`conv_sites`) from a
    :func:`~landscape.receptive_field.receptive_field_table` (one row per call, forward
    order): a conv called once is its row, the ``k``-th call of a conv called several times
    (``name@k``) the ``k``-th of its rows. NA for a site behind a global mix, one the image
    does not reach (no row), or a conv whose rows the sites do not match one to one."""
    calls = Counter(split_call(s)[0] for s in sites)
    rows = {name: g[["r_max", "r_min"]].to_numpy(dtype=object)
            for name, g in table.groupby("layer", sort=False)}
    out = {}
    for site in sites:
        name, k = split_call(site)
        found = rows.get(name)
        out[site] = (tuple(found[k or 0]) if found is not None and len(found) == calls[name]
                     else (pd.NA, pd.NA))
    return out


def layer_erf_maps(model: nn.Module, input_size: int, *, layers: list[str] | None = None,
                   mode: str = "random_input", n: int = 16, seed: int = 0,
                   in_channels: int | None = None,
                   device: str | torch.device = "cpu",
                   images: torch.Tensor | None = None) -> dict[str, np.ndarray | None]:
    """Mean (H, W) float64 ERF map of the centre unit of each selected conv layer, in forward
    order (a shortcut's conv, often registered before its block's convs, runs after them),
    per call site of a conv called several times (:func:`conv_sites`).

    None for a layer whose output does not depend on the input (a positional encoding's
    conv). ``mode="random_input"``: the model in eval mode on ``n`` N(0, 1) inputs drawn from
    ``seed``; ``"linearised"``: :func:`~landscape.importance.maps.linearised_copy` on one
    input of ones (the map does not depend on the input). ``in_channels``: default the
    model's (``model.in_channels``, else the first conv's). ``model`` must already be on ``device``; it is left as it was.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    check_on_device(model, device)
    conv_layers(model, layers)  # checked before the inputs are drawn
    x, net = probe_inputs(model, mode, n, input_size, in_channels, seed, device, images=images)
    maps = layer_gradient_maps(net, x, conv_sites(net, x, layers))
    return {name: None if m is None else m.mean(dim=0).cpu().numpy()  # forward order
            for name, (m, _) in maps.items()}


def layer_erf_table(model: nn.Module, input_size: int, *, layers: list[str] | None = None,
                    mode: str = "random_input", n: int = 16, seed: int = 0,
                    in_channels: int | None = None,
                    device: str | torch.device = "cpu",
                    images: torch.Tensor | None = None,
                    analytic: bool = True, strict: bool = True) -> pd.DataFrame:
    """One row per selected conv layer (forward order), columns
    ``LAYER_ERF_COLUMNS``: ``erf_sigma`` the mean of ``sigma_y`` and ``sigma_x`` (moment
    sigmas, pixels), ``erf_size`` the side of the centred square holding 95 % of the map's
    mass (``erf_censored`` 1.0 where that square reaches past the image's edge: the image cut
    the ERF), ``erf_r2`` the Gaussian fit's R^2, ``r_max`` / ``r_min`` the call site's analytic
    RF (:func:`site_rf`; NA for a conv behind a global mix, e.g. a head conv after global
    pooling) and ``erf_size_over_r_max`` their ratio (NaN there). A layer whose output does
    not depend on the input has NaN ERF columns; so, with ``strict=False``, does one whose map is all zero
    (no gradient reached the input: a dead layer, or a conv on attention probabilities, whose
    sum over a row is constant, as EfficientFormer-V2's talking heads), an error otherwise.
    ``analytic=False`` leaves r_max, r_min and their ratio NA without running the RF analysis
    (for a model it cannot follow, whose
    :class:`~landscape.receptive_field.UnsupportedModelError` it raises otherwise). Other
    arguments as for :func:`layer_erf_maps`."""
    maps = layer_erf_maps(model, input_size, layers=layers, mode=mode, n=n, seed=seed,
                          in_channels=in_channels, device=device, images=images)
    rf = (site_rf(receptive_field_table(model, input_size), list(maps)) if analytic else
          dict.fromkeys(maps, (pd.NA, pd.NA)))
    rows = []
    for name, m in maps.items():
        r_max, r_min = rf[name]  # NA behind a global mix, or where the image does not reach
        row = {"layer": name, "r_max": r_max, "r_min": r_min, "erf_size_over_r_max": np.nan}
        if m is not None and (strict or m.any()):  # else no gradient reaches the input
            try:
                fit, (size, censored) = erf_fit(m), erf_square(m)
            except ValueError as e:
                raise ValueError(f"layer {name!r}: {e}") from None
            row.update(erf_sigma=fit.sigma, sigma_y=fit.sigma_y, sigma_x=fit.sigma_x,
                       erf_size=size, erf_censored=float(censored), erf_r2=fit.r2)
            if not pd.isna(r_max):
                row["erf_size_over_r_max"] = size / int(r_max)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(LAYER_ERF_COLUMNS)).astype(
        {"r_max": "Int64", "r_min": "Int64"})
