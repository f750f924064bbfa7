"""Receptive-field table of every torchvision classification model at 224 px (or of a sample
of timm models across families).

    python -m benchmarks rf_table [--quick] [--repeats 3] [--size 224] [--tracer auto|hooks]
                                  [--source torchvision|timm|timm-modules]

Each model is built without weights on the meta device (``torchvision_model``), then
:func:`landscape.receptive_field.receptive_field_table` runs on it (median of ``--repeats``
runs; the build is timed apart). Reported per model: seconds, rows (conv / pool / linear /
attention ops), global rows, how it was traced (``fx`` or the recorded ``hooks`` fallback),
r̃ (:func:`min_feasible_input`, per axis where they differ), the largest finite r_max, and
the failure message if any (target: none). Published / rfa-toolbox r̃ values, where known,
are compared. ``--tracer hooks`` times the recorded meta-device forward (the fallback where
torch.fx fails) instead, and checks that its table equals the fx one (``same_as_fx``).
``--quick``: four small models, one run each. Target (issue 24): every model analysed, each in
under a second on this 2-core machine. ``--source timm``: the models of ``TIMM_SAMPLE`` (one or
more per family, CNNs and hybrids; no target: it measures coverage, and each refusal's message
says which op stopped it); ``--source timm-modules``: the first model of every module of
``timm.models`` (transformers and MLPs included; coverage too).
"""

from __future__ import annotations

import statistics
import time

import pandas as pd

from benchmarks.common import make_parser, parse
from landscape.receptive_field import (
    UnsupportedModelError, min_feasible_input, receptive_field_table, timm_model,
    torchvision_classifiers, torchvision_model,
)

QUICK = ("resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5")
TIMM_SAMPLE = (
    "resnet18", "resnet50d", "seresnext26d_32x4d", "efficientnet_b0", "mobilenetv3_large_100",
    "regnety_002", "convnext_atto", "densenet121", "ghostnet_100", "rexnet_100", "mixnet_s",
    "dla34", "dpn68", "hrnet_w18_small", "cspresnet50", "res2net50_26w_4s", "resnest14d",
    "skresnet18", "tresnet_m", "ese_vovnet19b_dw", "xception41", "nf_resnet26", "repvgg_a0",
    "lcnet_050", "mnasnet_100", "fbnetc_100", "tinynet_a", "efficientvit_b0", "inception_v3",
    "vgg11", "darknet53", "cspdarknet53", "selecsls42b", "gernet_s", "hardcorenas_a",
    "mobilevit_xs", "levit_128s", "coatnet_0_rw_224", "fastvit_t8", "repghostnet_050",
    "mobilenetv4_conv_small", "edgenext_xx_small", "poolformer_s12", "convmixer_768_32",
    "convnextv2_atto",
    "resnetv2_50", "bat_resnext26ts", "halonet26t", "botnet26t_256", "lambda_resnet26t")


SOURCES = ("torchvision", "timm", "timm-modules")


def zoo_arguments(parser, source: str, size: int, max_params: float | None = None):
    """``--source`` (one of :data:`SOURCES`), ``--size`` and, when given, ``--max-params``:
    the arguments of the benchmarks that run over a zoo of models."""
    parser.add_argument("--source", choices=SOURCES, default=source)
    parser.add_argument("--size", type=int, default=size)
    if max_params is not None:
        parser.add_argument("--max-params", type=float, default=max_params)


def over_zoo(names, one, shown) -> list[dict]:
    """``one(name)`` for each model, a line each (``shown(row)``) as it is measured."""
    rows = []
    for name in names:
        rows.append(one(name))
        print(f"{name:40s} {shown(rows[-1])}", flush=True)
    return rows


def qualified_names(source: str) -> list[str]:
    """``source:name`` of every model of a benchmark source: ``torchvision`` (every
    classifier), ``timm`` (:data:`TIMM_SAMPLE`) or ``timm-modules`` (the first model of every
    timm module)."""
    if source == "torchvision":
        return [f"torchvision:{n}" for n in torchvision_classifiers()]
    return [f"timm:{n}" for n in (TIMM_SAMPLE if source == "timm" else timm_module_sample())]


# r̃ at 224 px published in Richter & Pal 2022 (paper) or computed by rfa-toolbox 1.7.0's
# input_resolution_range on the same torchvision models (rfa); rfa-toolbox adds a kernel x
# jump bound that Eq. 7 has not, so it may be larger (ResNet50: 96 vs Eq. 7's 75).
REFERENCE = {
    "vgg19": (268, "paper"), "mobilenet_v3_large": (263, "paper"),
    "mobilenet_v3_small": (303, "paper"), "mnasnet1_0": (283, "paper"),
    "resnet18": (139, "rfa"), "resnet34": (139, "rfa"), "densenet121": (103, "rfa"),
    "googlenet": (123, "rfa"), "efficientnet_b0": (299, "rfa"), "convnext_tiny": (224, "rfa"),
}


def timm_module_sample() -> list[str]:
    """The first model (alphabetically) of every module of ``timm.models``: one per family,
    transformers and MLP mixers included."""
    import timm
    from timm.models._registry import list_modules

    return [sorted(timm.list_models(module=m))[0] for m in list_modules()
            if timm.list_models(module=m)]


def _one(name: str, size: int, repeats: int, tracer: str, source: str = "torchvision") -> dict:
    t0 = time.perf_counter()
    builder = torchvision_model if source == "torchvision" else timm_model
    try:  # a transformer with a fixed token grid is built for that size
        model = builder(name, img_size=size)
    except ValueError as exc:  # it cannot be (a 32 px patch on a 16 px input)
        return {"model": name, "build_seconds": None, "seconds": None, "failure": str(exc)}
    build = time.perf_counter() - t0
    row = {"model": name, "build_seconds": round(build, 3)}
    try:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            table = receptive_field_table(model, size, tracer=tracer)
            times.append(time.perf_counter() - t0)
        try:
            r_tilde = min_feasible_input(model, size, tracer=tracer).size
        except ValueError as exc:  # no local layer (e.g. a ViT whose patch embedding is a Linear)
            if isinstance(exc, UnsupportedModelError):
                raise
            r_tilde = None
    except UnsupportedModelError as exc:
        return {**row, "seconds": None, "failure": str(exc)}
    if tracer == "hooks":
        reference = receptive_field_table(model, size, tracer="fx")
        row["same_as_fx"] = _same_as_fx(table, reference)
    ref = REFERENCE.get(name) if source == "torchvision" else None  # torchvision's models
    return {**row, "seconds": round(statistics.median(times), 3), "rows": len(table),
            "global_rows": int(table["is_global"].sum()), "trace": table.attrs["trace"],
            "r_tilde": r_tilde, "r_max": None if table["r_max"].isna().all()
            else int(table["r_max"].max()), "reference": None if ref is None else
            f"{ref[0]} ({ref[1]})", "agrees": None if ref is None else r_tilde == ref[0],
            "failure": None}


def _matched(hooks: pd.DataFrame, fx: pd.DataFrame) -> list[int] | None:
    """Rows of ``hooks`` matching the rows of ``fx`` in order, by name (the fallback prefixes
    functional ops with the calling module's path) and every other column; None if any is
    missing."""
    fx = fx.reset_index(drop=True)
    picked, i = [], 0
    for j, name in enumerate(hooks["layer"]):
        if i < len(fx) and (name == fx["layer"][i] or name.endswith("." + fx["layer"][i])):
            picked.append(j)
            i += 1
    cols = [c for c in fx.columns if c != "layer"]
    if i < len(fx) or not hooks.loc[picked, cols].reset_index(drop=True).equals(fx[cols]):
        return None
    return picked


def _same_as_fx(hooks: pd.DataFrame, fx: pd.DataFrame) -> bool | str:
    """True if the fallback's table equals the fx one row for row. Where fx keeps a function
    whole that the fallback enters (Swin's attention: one attention row in fx, the linears
    inside it in the fallback), a description of the rows in only one table; else False."""
    if _matched(hooks, fx) is not None and len(hooks) == len(fx):
        return True
    rest = fx[fx["kind"] != "attention"]
    picked = _matched(hooks, rest)
    if picked is None:
        return False
    return (f"equal but for {len(fx) - len(rest)} attention rows (fx) / "
            f"{len(hooks) - len(picked)} linear rows inside them")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "four small models, one run each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tracer", choices=("auto", "hooks"), default="auto")
    parser.add_argument("--source", choices=SOURCES, default="torchvision")
    args = parse(parser, argv)
    if args.source == "timm":
        names = list(TIMM_SAMPLE[:4] if args.quick else TIMM_SAMPLE)
    elif args.source == "timm-modules":
        names = timm_module_sample()[:4 if args.quick else None]
    else:
        names = list(QUICK) if args.quick else torchvision_classifiers()
    repeats = 1 if args.quick else args.repeats
    rows = []
    for name in names:
        row = _one(name, args.size, repeats, args.tracer, args.source)
        rows.append(row)
        shown = row["failure"] or (f"{row['seconds']:.3f} s  rows {row['rows']:3d} "
                                   f"(global {row['global_rows']:3d})  {row['trace']:5s}  "
                                   f"r~ {row['r_tilde']}  r_max {row['r_max']}"
                                   + (f"  ref {row['reference']}" if row["reference"] else "")
                                   + (f"  same as fx: {row['same_as_fx']}" if "same_as_fx" in row
                                      else ""))
        print(f"{name:24s} {shown}", flush=True)
    done = [r for r in rows if r["failure"] is None]
    slow = [r["model"] for r in done if r["seconds"] >= 1.0]
    summary = {"model": "ALL", "models": len(rows), "analysed": len(done),
               "failures": len(rows) - len(done), "fallback": sum(r["trace"] == "hooks"
                                                                 for r in done),
               "max_seconds": max((r["seconds"] for r in done), default=None),
               "median_seconds": statistics.median(r["seconds"] for r in done) if done else None,
               "over_1s": slow, "disagree": [r["model"] for r in done if r["agrees"] is False],
               "differ_from_fx": [r["model"] for r in done if r.get("same_as_fx") is False],
               "target_met": (len(done) == len(rows) and not slow
                              if args.source == "torchvision" else None)}  # timm: coverage
    print(f"{summary['analysed']}/{summary['models']} analysed ({summary['fallback']} by the "
          f"fallback), {summary['failures']} failures; seconds per model: median "
          f"{summary['median_seconds']}, max {summary['max_seconds']}; >= 1 s: {slow or 'none'}; "
          f"reference r~ disagree: {summary['disagree'] or 'none'}"
          + (f"; tables differing from fx: {summary['differ_from_fx'] or 'none'}"
             if args.tracer == "hooks" else "")
          + ("; no target for the timm sample (it measures coverage)"
             if summary["target_met"] is None else "; target (all, each < 1 s): "
             f"{'met' if summary['target_met'] else 'MISSED'}"), flush=True)
    return rows + [summary]


if __name__ == "__main__":
    main()
