"""Where the tail of unproductive layers starts: observed (from probes and saturation) and
predicted (from the analytic receptive field).

Observed tail (Richter et al. 2021, "Size Matters": layers after the border keep probe
accuracy flat and show low saturation). For layers 0..L-1 in forward order with probe
accuracies a and saturations s, and s_bar = mean(s) over all L layers, the tail starts at the
first layer i such that

* a_j - a_i < epsilon for every later layer j > i (accuracy improves by less than epsilon
  from i to anywhere after it), and
* s_k < s_bar for every layer k >= i (saturation stays below the mean from i on), and
* the tail i..L-1 has at least ``min_length`` layers.

Both comparisons are strict. No such layer: no tail (``start is None``).

Predicted border: the first of the probed layers whose input's minimum receptive field already
covers the input (``unproductive`` in :func:`landscape.receptive_field.receptive_field_table`,
rfa-toolbox's test); a probed block counts by its first op, element-wise modules are passed
over (:func:`predicted_border`). The RF table's border may be an op that is not probed (a
max-pool); the predicted border among the probed layers is then the first probed layer from
there on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from landscape.activations import select_modules
from landscape.receptive_field import receptive_field_table


@dataclass(frozen=True)
class ObservedTail:
    """``start``: index of the first tail layer (None: no tail); ``layer``: its name;
    ``mean_saturation``: s_bar; ``epsilon``, ``min_length`` as used."""

    start: int | None
    layer: str | None
    mean_saturation: float
    epsilon: float
    min_length: int


def _numbers(values: Sequence[float], arg: str, layers: Sequence[str]) -> list[float]:
    out = []
    for name, v in zip(layers, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{arg} of layer {name!r} must be a finite number, got {v!r}")
        out.append(float(v))
    return out


def observed_tail(
    layers: Sequence[str],
    accuracies: Sequence[float],
    saturations: Sequence[float],
    *,
    epsilon: float = 0.01,
    min_length: int = 2,
) -> ObservedTail:
    """Start of the observed tail; see the module docstring. ``accuracies`` in [0, 1] (or any
    consistent unit, with ``epsilon`` in it), ``saturations`` in (0, 1], one per layer of
    ``layers`` in forward order."""
    layers = list(layers)
    if not layers or isinstance(layers, str):
        raise ValueError("layers must be a non-empty sequence of layer names")
    if len(accuracies) != len(layers) or len(saturations) != len(layers):
        raise ValueError(f"accuracies ({len(accuracies)}) and saturations ({len(saturations)}) "
                         f"need one value per layer ({len(layers)} layers)")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or \
            not 0 <= epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"min_length must be an integer >= 1, got {min_length!r}")
    acc = _numbers(accuracies, "accuracy", layers)
    sat = _numbers(saturations, "saturation", layers)
    mean = sum(sat) / len(sat)
    start = None
    for i in range(len(layers) - min_length + 1):
        flat = all(acc[j] - acc[i] < epsilon for j in range(i + 1, len(layers)))
        if flat and all(s < mean for s in sat[i:]):
            start = i
            break
    return ObservedTail(start=start, layer=None if start is None else layers[start],
                        mean_saturation=mean, epsilon=float(epsilon), min_length=min_length)


@dataclass(frozen=True)
class PredictedBorder:
    """``layer`` / ``index``: the first probed layer (forward order among ``layers``) that is
    unproductive, or None; ``rf_border``: the RF table's border op (any conv/pool/linear),
    or None when no op is unproductive; ``input_size`` in pixels."""

    layer: str | None
    index: int | None
    rf_border: str | None
    input_size: int


def predicted_border(
    model: nn.Module,
    input_size: int | tuple[int, int],
    layers: Sequence[str] | None = None,
) -> PredictedBorder:
    """Predicted border among the probed ``layers`` (glob patterns as for probes; None: every
    Conv2d and Linear) for square inputs of ``input_size`` pixels.

    A probed conv, pool or linear module is its row of the RF table. A probed container (a
    ResNet block, a VGG ``features`` slice) is unproductive when its first op is (that op reads
    the container's input) and comes after its last op in forward order. Modules without an
    op of their own (ReLU, BatchNorm: no RF of their own) are passed over; when no probed
    module is or holds a row, a ValueError names them. ``index`` counts the probed modules
    that take part, in forward order.
    """
    names = select_modules(model, layers, arg="layers")
    table = receptive_field_table(model, input_size)
    rows = {name: i for i, name in enumerate(table["layer"])}
    span = {}  # probed module -> (its first row, its last row, 1 for a container)
    for name in names:
        if name in rows:
            span[name] = (rows[name], rows[name], 0)
        else:
            inside = [i for layer, i in rows.items() if layer.startswith(name + ".")]
            if inside:
                span[name] = (min(inside), max(inside), 1)
    if not span:
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} layers)" if len(names) > 4 else "")
        raise ValueError(f"no probed layer is or holds a conv/pool/linear op of the "
                         f"receptive-field table: {shown} (its layers: "
                         f"{', '.join(table['layer'][:6])}{', ...' if len(table) > 6 else ''})")
    probed = sorted(span, key=lambda n: span[n][1:])  # forward order of their outputs
    unproductive = table["unproductive"].to_numpy()
    hit = next((i for i, n in enumerate(probed) if bool(unproductive[span[n][0]])), None)
    border = table.loc[table["border"], "layer"]
    return PredictedBorder(layer=None if hit is None else probed[hit], index=hit,
                           rf_border=border.iloc[0] if len(border) else None,
                           input_size=int(input_size[0] if isinstance(input_size, (tuple, list))
                                          else input_size))
