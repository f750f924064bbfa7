"""Which torchvision / timm models the pipeline can train and measure at a small input size.

For each model, as ``landscape-run model.name=<source>:<name> data.image_size=<size>`` builds
it (one input channel, 10 classes, pool level 0, checked at the input size, a transformer
built for that size): its run identity's ``receptive_field`` / ``global_mixing`` (the r_max
of its deepest local features at that size, :func:`~landscape.receptive_field.feature_field`;
"unknown" with the op the RF analysis cannot follow, which the run survives), one training
step (forward and backward on 4 random images) and one Hessian-vector product of the
cross-entropy (the operator of the Hessian, pruned-Hessian and lambda_max-tracking stages),
which must be finite and, in float64 at slightly perturbed parameters, the same for the 4
images as one batch or as two of 2 (:func:`split_gap`: nothing in eval mode may carry over
from one batch to the next), and a model built afresh with its ``state_dict`` loaded must
give its outputs (:func:`reload_gap`: the checkpoint holds the whole model), as must its
copy in channels_last memory format, CUDA's default (:func:`channels_last_gap`). Each refusal
says in one line which step stopped it.
``--source torchvision`` (every classifier), ``timm`` (the RF benchmark's sample),
``timm-modules`` (the first model of every timm module); models over ``--max-params`` are
left out (listed). No target: it measures coverage, and the seconds of each step.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from benchmarks.common import make_parser, parse
from benchmarks.rf_table import over_zoo, qualified_names, zoo_arguments
from landscape.device import DeviceSettings
from landscape.hessian import HessianOperator
from landscape.models import build_model, resolve_pool
from landscape.receptive_field import UnsupportedModelError, feature_field

QUICK = ("torchvision:resnet18", "torchvision:swin_v2_t", "timm:test_vit", "timm:test_coatnet")
SPLIT_TOL = 1e-9  # float64 round-off of a few thousand terms is ~1e-14
RELOAD_TOL = 1e-6  # the same float32 ops on the same weights: 0 but for kernel choice
CHANNELS_LAST_TOL = 1e-3  # other float32 kernels, same maths


def _one(name: str, size: int, max_params: float) -> dict:
    row: dict = {"model": name, "params": None, "build_s": None, "rf": None,
                 "global_mixing": None, "rf_unknown": None, "step_s": None, "hvp_s": None,
                 "split_gap": None, "reload_gap": None, "channels_last_gap": None,
                 "failure": None, "skipped": False}
    step = "build"
    try:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        def build():
            return build_model(name, resolve_pool(0), num_classes=10, in_channels=1,
                               input_size=size, image_size=size)

        model = build()
        row["params"] = sum(p.numel() for p in model.parameters())
        row["build_s"] = round(time.perf_counter() - t0, 3)
        if row["params"] > max_params:
            row["skipped"] = True
            return row
        step = "receptive field"
        try:  # as the run's identity computes its receptive_field column
            row["rf"], row["global_mixing"] = feature_field(model, size)
        except UnsupportedModelError as e:
            row["rf_unknown"] = str(e).splitlines()[0][:200]
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(4, 1, size, size, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        step, t0 = "training step", time.perf_counter()
        F.cross_entropy(model.train()(x), y).backward()
        row["step_s"] = round(time.perf_counter() - t0, 3)
        step, t0 = "Hessian-vector product", time.perf_counter()
        op = HessianOperator(model.eval(), F.cross_entropy, [(x, y)])
        op(torch.ones(op.dim) / op.dim ** 0.5)  # a non-finite product raises, naming the op
        row["hvp_s"] = round(time.perf_counter() - t0, 3)
        checks = (  # (step, row key, gap, tolerance, what a gap above it means)
            ("split invariance", "split_gap", lambda: split_gap(model, x, y), SPLIT_TOL,
             "the HVP of one batch of 4 and of two batches of 2 differ: the model keeps state "
             "from one batch to the next in eval mode"),
            ("channels_last", "channels_last_gap", lambda: channels_last_gap(model, x, y),
             CHANNELS_LAST_TOL, "its outputs differ in channels_last memory format (CUDA's "
             "default)"),
            ("checkpoint round trip", "reload_gap", lambda: reload_gap(model, build, x),
             RELOAD_TOL, "a model built afresh with its state_dict loaded gives other "
             "outputs: the checkpoint does not hold the whole model"))
        for step, key, gap, tol, meaning in checks:
            row[key] = gap()
            if row[key] > tol:
                raise ValueError(f"{meaning} (relative gap {row[key]:.1e})")
    except Exception as e:  # noqa: BLE001 - coverage: every refusal is a row
        first = str(e).splitlines()[0] if str(e) else ""
        row["failure"] = f"{step}: {type(e).__name__}: {first[:300]}"
    return row


def split_gap(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """|H v - H' v| / |H v| in float64, H the Hessian of the mean loss over ``x`` as one batch,
    H' over its two halves (equal halves: the same mean loss), at slightly perturbed
    parameters (timm zero-initialises gains that hide paths) and a random ``v``. In eval mode
    nothing may depend on how the batch is split: a gap above float64 round-off means state
    kept between forwards (a cache of a parameter-derived tensor read with other
    parameters), which every measurement that perturbs the parameters would inherit."""
    net = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype), alpha=0.02)
    x = x.double()
    whole = HessianOperator(net, F.cross_entropy, [(x, y)])
    halves = HessianOperator(net, F.cross_entropy, [(x[:2], y[:2]), (x[2:], y[2:])])
    v = torch.randn(whole.dim, generator=gen, dtype=torch.float64)
    a, b = whole(v), halves(v)
    return float((a - b).norm() / a.norm().clamp_min(1e-300))


def channels_last_gap(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """max |f(x) - f_cl(x_cl)| / max |f(x)| in eval mode, ``f_cl`` a copy of the model in
    channels_last memory format on a channels_last input, as training on CUDA places them
    (``DeviceSettings.place``, ``train.channels_last``); its training step (forward and
    backward) must run too. Only the kernels differ: the gap is float32 round-off, an error a
    layout the model cannot take (a ``view`` of a permuted map)."""
    cuda_like = DeviceSettings(torch.device("cpu"), amp_dtype=None, channels_last=True,
                               pin_memory=False, non_blocking=False)
    net = cuda_like.place(copy.deepcopy(model))  # as training places it on CUDA
    xc = cuda_like.to_device(x)
    with torch.no_grad():
        a, b = model.eval()(x), net.eval()(xc)
    F.cross_entropy(net.train()(xc), y).backward()  # (after: it moves BN's statistics)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def reload_gap(model: torch.nn.Module, build, x: torch.Tensor) -> float:
    """max |f(x) - g(x)| / max |f(x)| in eval mode, ``f`` the model (after a training step,
    its BatchNorm statistics moved), ``g`` one built afresh by ``build`` from another seed
    with ``f``'s ``state_dict`` loaded, as every stage loads a run's checkpoint. Above
    round-off the checkpoint does not hold the whole model (a buffer left out of the state
    dict, an attribute set in training): the stages would measure another network than the
    one trained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        fresh = build()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model.eval()(x), fresh.eval()(x)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def _rf_label(row: dict) -> str:
    """The receptive-field label the analysis tables would give the run."""
    if row["rf"] is None:
        return f"RF unknown ({row['rf_unknown']})"
    return f"RF {row['rf']} px" + (", then global" if row["global_mixing"] else "")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "four small models (torchvision and timm test models)")
    zoo_arguments(parser, "torchvision", 32, max_params=60e6)
    args = parse(parser, argv)
    rows = over_zoo(
        list(QUICK) if args.quick else qualified_names(args.source),
        lambda name: _one(name, args.size, args.max_params),
        lambda row: (f"left out: {row['params'] / 1e6:.0f}M parameters" if row["skipped"]
                     else row["failure"] or f"step {row['step_s']:.2f} s  HVP "
                     f"{row['hvp_s']:.2f} s  split gap {row['split_gap']:.0e}  reload gap "
                     f"{row['reload_gap']:.0e}  channels_last gap "
                     f"{row['channels_last_gap']:.0e}  "
                     f"{row['params'] / 1e6:.1f}M parameters  {_rf_label(row)}"))
    tried = [r for r in rows if not r["skipped"]]
    ok = [r for r in tried if r["failure"] is None]
    summary = {"model": "ALL", "models": len(rows), "tried": len(tried), "ok": len(ok),
               "rf_known": sum(r["rf"] is not None for r in ok),
               "rf_then_global": sum(bool(r["global_mixing"]) for r in ok),
               "rf_unknown": [r["model"] for r in ok if r["rf_unknown"]],
               "left_out": [r["model"] for r in rows if r["skipped"]],
               "failures": [r["model"] for r in tried if r["failure"] is not None],
               "max_split_gap": max((r["split_gap"] for r in ok), default=None),
               "max_reload_gap": max((r["reload_gap"] for r in ok), default=None),
               "max_channels_last_gap": max((r["channels_last_gap"] for r in ok),
                                            default=None),
               "size": args.size}
    print(f"{len(ok)}/{len(tried)} train a step and give a finite HVP, the same for any split "
          f"of the batch (largest gap {summary['max_split_gap'] or 0:.0e}) and reloaded alike "
          f"(largest gap {summary['max_reload_gap'] or 0:.0e}) and in channels_last (largest "
          f"gap {summary['max_channels_last_gap'] or 0:.0e}), at {args.size} px "
          f"({len(rows) - len(tried)} over {args.max_params / 1e6:.0f}M parameters left out); "
          f"receptive field known for {summary['rf_known']} ({summary['rf_then_global']} then "
          f"mixing globally), unknown for {len(summary['rf_unknown'])}", flush=True)
    return rows + [summary]


if __name__ == "__main__":
    main()
