"""Luo et al. (2016)'s conv stacks: the ERF of the centre output unit of n stacked convolutions.

A stack of ``depth`` layers, each ``conv (width -> width, k x k, no bias) -> nonlinearity ->
dropout``, optionally with an identity skip around it (``x + layer(x)``). Padding keeps the
map size ((k - 1) / 2 * dilation); the layers listed in ``subsample_at`` (1-based) have
stride 2 (their skip is the 1x1 stride-2 average pool, i.e. subsampling). Weights are either
``uniform`` (all equal, 1 / (k^2 width): n such linear layers are the n-fold box filter,
sigma^2 = n (k^2 - 1) / 12 per axis) or ``gaussian`` (N(0, gain^2 / fan_in), gain from
``torch.nn.init.calculate_gain`` of the nonlinearity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from landscape.device import progress_enabled
from landscape.importance.erf import erf_size
from landscape.importance.erf_fit import erf_fit
from landscape.importance.maps import layer_gradient_maps
from landscape.receptive_field import receptive_field_table

NONLINEARITIES = ("none", "relu", "tanh")
INITS = ("uniform", "gaussian")


@dataclass(frozen=True)
class StackSpec:
    """One conv stack (module docstring); ``dropout`` is the drop probability (train mode)."""

    depth: int
    kernel: int = 3
    width: int = 16
    init: str = "gaussian"
    nonlinearity: str = "relu"
    dropout: float = 0.0
    subsample_at: tuple[int, ...] = ()
    dilation: int = 1
    skip: bool = False

    def __post_init__(self) -> None:
        for name in ("depth", "kernel", "width", "dilation"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (a centred window), got {self.kernel}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}; "
                             f"got {self.nonlinearity!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in self.subsample_at):
            raise ValueError(f"subsample_at must hold layer numbers >= 1, got "
                             f"{list(self.subsample_at)}")


class StackLayer(nn.Module):
    """conv -> nonlinearity -> dropout, plus the input (subsampled where the conv strides)
    when ``skip``."""

    def __init__(self, spec: StackSpec, stride: int) -> None:
        super().__init__()
        k, d = spec.kernel, spec.dilation
        self.conv = nn.Conv2d(spec.width, spec.width, k, stride=stride, padding=d * (k // 2),
                              dilation=d, bias=False)
        self.act = {"none": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh}[spec.nonlinearity]()
        self.drop = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()
        self.shortcut = (None if not spec.skip else
                         nn.Identity() if stride == 1 else nn.AvgPool2d(1, stride=stride))

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop(self.act(self.conv(x)))
        return y if self.shortcut is None else self.shortcut(x) + y


def conv_stack(spec: StackSpec, *, seed: int = 0) -> nn.Sequential:
    """The stack of ``spec`` (layers named "0" .. str(depth - 1)), float64, in train mode
    (only dropout differs between modes); Gaussian weights drawn from ``seed``."""
    net = nn.Sequential(*[StackLayer(spec, 2 if i + 1 in spec.subsample_at else 1)
                          for i in range(spec.depth)]).double()
    g = torch.Generator().manual_seed(seed)
    fan_in = spec.width * spec.kernel ** 2
    gain = 1.0 if spec.nonlinearity == "none" else nn.init.calculate_gain(spec.nonlinearity)
    with torch.no_grad():
        for layer in net:
            w = layer.conv.weight
            if spec.init == "uniform":
                w.fill_(1.0 / fan_in)
            else:
                w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * gain / fan_in ** 0.5)
    return net.train()


def theoretical_rf(spec: StackSpec, input_size: int) -> tuple[int, tuple[int, int]]:
    """The analytic RF (r_max, pixels) of the stack's last conv, and the input rows (first,
    last) covered by its centre unit (the one whose ERF is measured)."""
    table = receptive_field_table(conv_stack(replace(spec, init="uniform")), input_size)
    last = table[table["kind"] == "conv"].iloc[-1]
    r_max, jump, pad = int(last["r_max"]), int(last["jump"]), int(last["effective_padding"])
    lo = (int(last["out_size"]) // 2) * jump - pad
    return r_max, (lo, lo + r_max - 1)


def check_input_size(spec: StackSpec, input_size: int) -> int:
    """The stack's analytic RF (pixels) when its centre unit's RF lies inside the
    ``input_size`` input (so no path reaches the padding); else ValueError naming the smallest
    input size for which it does."""
    r_max, (lo, hi) = theoretical_rf(spec, input_size)
    if lo >= 0 and hi <= input_size - 1:
        return r_max
    need = next(n for n in range(r_max, 4 * r_max + 8)
                if (s := theoretical_rf(spec, n)[1])[0] >= 0 and s[1] <= n - 1)
    raise ValueError(
        f"input_size={input_size} is too small for depth {spec.depth}: its centre unit's "
        f"theoretical RF ({r_max} pixels) covers rows {lo}..{hi} of 0..{input_size - 1}; "
        f"input_size={need} is the smallest that holds it")


def stack_erf_map(spec: StackSpec, input_size: int, *, n_inputs: int = 8, n_nets: int = 1,
                  seed: int = 0) -> np.ndarray:
    """Mean (H, W) ERF map (|d centre output / d input| summed over channels; module
    :mod:`~landscape.importance.maps`) of the stack's centre output unit, over ``n_nets``
    weight draws (seeds ``seed`` .. ``seed + n_nets - 1``; uniform weights need one) times
    ``n_inputs`` N(0, 1) inputs each, dropout active (masks drawn from the same seeds)."""
    for name, v in (("n_inputs", n_inputs), ("n_nets", n_nets)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    last = str(spec.depth - 1)
    total = np.zeros((input_size, input_size))
    for s in range(seed, seed + n_nets):
        net = conv_stack(spec, seed=s)
        g = torch.Generator().manual_seed(s)
        x = torch.randn(n_inputs, spec.width, input_size, input_size, generator=g,
                        dtype=torch.float64)
        with torch.random.fork_rng(devices=[]):  # dropout masks from `s`, caller's RNG kept
            torch.manual_seed(s)
            total += layer_gradient_maps(net, x, [last], keep_mode=True)[last][0].sum(0).numpy()
    return total / (n_nets * n_inputs)


SWEEP_COLUMNS = ("setting", "depth", "sigma", "sigma_y", "sigma_x", "erf_size", "erf_r2",
                 "theoretical_rf", "erf_rf_ratio")


def erf_depth_sweep(
    settings: Mapping[str, StackSpec], depths: Sequence[int], input_size: int, *,
    n_inputs: int = 8, n_nets: int = 1, seed: int = 0, progress: bool = True,
) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """Luo's depth sweep: for every setting (a :class:`StackSpec` whose ``depth`` is replaced)
    and depth, the mean ERF map of the stack (:func:`stack_erf_map`) and one row
    (``SWEEP_COLUMNS``): moment sigmas and Gaussian R^2 (:func:`erf_fit`), ``erf_size`` (side
    of the centred square holding 95 % of the mass), the analytic RF and ``erf_size /
    theoretical_rf``. Every (setting, depth) is checked against ``input_size`` first; the
    error names the stack with the largest RF that does not fit, and the input it needs."""
    if not depths:
        raise ValueError("depths must hold at least one depth, got []")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
        raise ValueError(f"depths must be integers >= 1, got {list(depths)}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be an integer >= 1, got {input_size!r}")
    specs, rfs, too_small = {}, {}, []
    for name, template in settings.items():
        for d in depths:
            specs[name, d] = spec = replace(template, depth=d)
            try:
                rfs[name, d] = check_input_size(spec, input_size)
            except ValueError as e:
                too_small.append((theoretical_rf(spec, input_size)[0], name, e))
    if too_small:  # the stack with the largest RF says the input size the sweep needs
        _, name, e = max(too_small, key=lambda t: t[0])
        raise ValueError(f"settings.{name}: {e}")
    rows, maps = [], {}
    bar = tqdm(specs.items(), desc="ERF", disable=not progress_enabled(progress))
    for (name, d), spec in bar:
        m = stack_erf_map(spec, input_size, n_inputs=n_inputs, n_nets=n_nets, seed=seed)
        try:
            fit, size = erf_fit(m), erf_size(m)
        except ValueError as e:
            raise ValueError(f"settings.{name}, depth {d}: {e} (average over more inputs or "
                             "nets: n_inputs, n_nets)") from None
        maps[name, d] = m
        rows.append({"setting": name, "depth": d, "sigma": fit.sigma, "sigma_y": fit.sigma_y,
                     "sigma_x": fit.sigma_x, "erf_size": size, "erf_r2": fit.r2,
                     "theoretical_rf": rfs[name, d], "erf_rf_ratio": size / rfs[name, d]})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS)), maps
