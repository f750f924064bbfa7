"""Whether the activation capture reads every map with the layout the RF analysis tracks.

Probes, saturation, CKA and importance read module outputs through
:class:`landscape.activations.ActivationCapture`, which decides at run time, by rules, whether
a 4-D output is channels-last (``Layouts``). The receptive-field analysis tracks, statically on
the fx trace, where H and W lie in every tensor. For each model (built on the CPU without
weights, for ``--size``), every module that runs once and outputs a 4-D map the RF analysis
reads as (N, C, H, W) or (N, H, W, C) is captured in one forward, and the two readings are
compared. A disagreement is a wrong probe / CKA / importance input (one of them is wrong; the
RF one is exact against input gradients). ``--source torchvision | timm | timm-modules`` as
for ``rf_table``. No target: every disagreement is listed.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.common import make_parser, parse
from benchmarks.rf_table import over_zoo, qualified_names, zoo_arguments
from landscape.activations import ActivationCapture
from landscape.models.sources import external_model
from landscape.receptive_field import layout as L
from landscape.receptive_field.analytic import trace
from landscape.receptive_field.geometry import Geometry
from landscape.receptive_field.graph import propagate

QUICK = ("torchvision:convnext_tiny", "timm:mambaout_femto")


def rf_layouts(model: nn.Module, size: int) -> dict[str, str]:
    """Per module run once whose output the RF analysis reads as a map: "first" (N, C, H, W)
    or "last" (N, H, W, C)."""
    traced = trace(model, size)
    states, _ = propagate(traced, size)
    seen: dict[str, list[str]] = {}
    for node in (n for n in traced.graph.nodes if n.op == "call_module"):
        s, kind = states.get(node.name), "other"
        if isinstance(s, Geometry) and s.is_local and s.layout is not None and \
                len(s.layout) == 4:
            whole = set(L.intact(s.layout).values())
            kind = "first" if {2, 3} <= whole and not L.is_spatial(s.layout[1]) else \
                "last" if {1, 2} <= whole and not L.is_spatial(s.layout[3]) else "other"
        seen.setdefault(node.target, []).append(kind)
    return {k: v[0] for k, v in seen.items() if len(v) == 1 and v[0] != "other"}


def captured_layouts(model: nn.Module, size: int, names: list[str]) -> dict[str, str]:
    """How the capture reads each of ``names``: "last" where it hands the output over moved
    to (N, C, H, W), else "first"."""
    raw: dict[str, tuple] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: raw.__setitem__(n, tuple(o.shape))) for n in names]
    read: dict[str, tuple] = {}
    try:
        with torch.no_grad(), ActivationCapture(
                model, names, lambda n, o: read.__setitem__(n, tuple(o.shape))) as capture:
            capture.run(torch.randn(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return {n: "last" if read[n] != raw[n] else "first" for n in names}


def _one(name: str, size: int) -> dict:
    row: dict = {"model": name, "compared": None, "channels_last": None, "disagree": None,
                 "seconds": None, "failure": None}
    t0 = time.perf_counter()
    try:
        model = external_model(name, device="cpu", img_size=size).eval()
        rf = rf_layouts(model, size)
        read = captured_layouts(model, size, list(rf))
    except Exception as e:  # noqa: BLE001 - a model that cannot be compared is listed
        row["failure"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        return row
    row.update(compared=len(rf), channels_last=sum(k == "last" for k in rf.values()),
               disagree={n: f"rf {rf[n]}, capture {read[n]}" for n in rf if rf[n] != read[n]},
               seconds=round(time.perf_counter() - t0, 3))
    return row


def main(argv=None) -> list[dict]:
    parser = make_parser(__doc__, "two models (convnext_tiny, mambaout_femto)", threads=2)
    zoo_arguments(parser, "timm-modules", 64)
    args = parse(parser, argv)
    rows = over_zoo(
        list(QUICK) if args.quick else qualified_names(args.source),
        lambda name: _one(name, args.size),
        lambda row: row["failure"] or (f"{row['compared']:4d} maps ({row['channels_last']} "
                                       f"channels-last)  disagree {len(row['disagree'])}"
                                       + (f": {sorted(row['disagree'])[:3]}"
                                          if row["disagree"] else "")))
    ok = [r for r in rows if r["failure"] is None]
    summary = {"model": "ALL", "models": len(rows), "compared": len(ok),
               "maps": sum(r["compared"] for r in ok),
               "channels_last": sum(r["channels_last"] for r in ok),
               "disagreeing": [r["model"] for r in ok if r["disagree"]],
               "failures": [r["model"] for r in rows if r["failure"]], "size": args.size}
    print(f"{len(ok)}/{len(rows)} models compared at {args.size} px: {summary['maps']} maps "
          f"({summary['channels_last']} channels-last); models with a disagreement: "
          f"{len(summary['disagreeing'])} {summary['disagreeing']}", flush=True)
    return rows + [summary]


if __name__ == "__main__":
    main()
