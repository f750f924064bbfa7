"""Layer saturation: ours (streamed float64 covariance) vs PyPI delve 0.1.50's SaturationTracker
and a store-everything numpy reference.

    python -m benchmarks saturation [--quick] [--threads N] [--n N] [--batch B]

vgg19 at width 1/4 on 1024 digits images at 32x32 in batches of 128 (``--quick``: small_cnn at
width 1/2, 64 images in batches of 16), eval mode, float32 forwards, every Conv2d and Linear,
threshold 0.99, delve's rule. Sides:

* ours: :func:`landscape.probes.layer_saturation` (one forward per batch, float64 GEMM per
  batch and layer);
* delve, one batch: ``SaturationTracker`` (channelwise, cpu) on ONE forward of all images,
  then delve's ``compute_saturation`` on each layer's ``fix()`` covariance. One batch because
  delve 0.1.50's tracker keeps only the last batch's covariance (it starts a new
  ``TorchCovarianceMatrix`` on every forward while recording);
* delve, streamed: the same tracker fed the same batches as ours: it reports the saturation
  of the last batch (``delve_streamed_samples`` shows how many samples it kept);
* reference: every activation stored, ``np.cov(bias=True)`` in float64, ``np.linalg.eigvalsh``
  and the rule written out.

Reported: max |saturation difference| of ours vs each side, the layers where delve's value
differs (with ours, the reference's and the layer's rms std / rms mean: delve's raw sums
cancel when it is small), max |covariance difference| relative to the largest entry (ours vs
delve one batch); median time of 3 interleaved runs per side (1 with ``--quick``) and peak extra resident
memory (``/proc/self/clear_refs``; NaN where unsupported).
"""

from __future__ import annotations

import copy
import tempfile

import numpy as np
import torch

from benchmarks.common import interleaved, make_parser, parse
from landscape.activations import ActivationCapture, select_modules
from landscape.data import DataConfig, load_dataset
from landscape.models import create_model
from landscape.probes import accumulator_saturation, layer_accumulators

THRESHOLD = 0.99


def _ours(model, batches):
    accs = layer_accumulators(model, batches)
    return {n: (accumulator_saturation(a, THRESHOLD, rule="delve").saturation, a.covariance(),
                a.count, a.mean()) for n, a in accs.items()}


def _spread(cov: torch.Tensor, mean: torch.Tensor) -> float:
    """rms standard deviation / rms mean of a layer's dimensions: small values make
    ``E[xx^T] - mu mu^T`` from raw sums cancel (delve's formula)."""
    return float(cov.diagonal().mean().sqrt() / mean.square().mean().sqrt())


def _delve(model, batches):
    import logging

    from delve import SaturationTracker
    from delve.metrics import compute_saturation

    logging.getLogger("delve.logger").setLevel(logging.WARNING)  # it logs every layer

    model = copy.deepcopy(model)  # its hooks cannot be removed
    with tempfile.TemporaryDirectory() as tmp:
        tracker = SaturationTracker(tmp, save_to="csv", modules=model, device="cpu",
                                    stats=["lsat"])
        with torch.no_grad():
            for x in batches:
                model(x)
        logs = tracker.logs["eval-covariance-matrix"]
        out = {}
        for name, cov in logs.items():
            fixed = cov.fix()
            out[name.replace("-", ".")] = (compute_saturation(fixed, THRESHOLD), fixed,
                                           cov._tlen)
        return out


def _reference(model, batches):
    names = select_modules(model, None)
    store: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def keep(name, out):
        x = out.detach()
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.dim() == 4 else x
        store[name].append(x.numpy().copy())

    with torch.no_grad(), ActivationCapture(model, names, keep) as cap:
        for x in batches:
            cap.run(x)
    out = {}
    for name, parts in store.items():
        cov = np.cov(np.concatenate(parts).astype(np.float64), rowvar=False, bias=True)
        eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
        below = int(np.sum(np.cumsum(eig) / eig.sum() < THRESHOLD))  # delve's count
        out[name] = below / cov.shape[0]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "small_cnn, 64 images, batches of 16")
    parser.add_argument("--n", type=int, default=None, help="images (default 1024)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 128)")
    args = parse(parser, argv)
    arch, width, n, batch = ("small_cnn", 0.5, 64, 16) if args.quick else \
        ("vgg19", 0.25, 1024, 128)
    n, batch = args.n or n, args.batch or batch
    data = load_dataset(DataConfig(name="digits", image_size=32, augment=False))
    x = torch.stack([data.train_eval[i % len(data.train_eval)][0] for i in range(n)])
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1, width=width).eval()
    batches = list(torch.split(x, batch))
    with torch.no_grad():  # warm-up: the first forward and float64 GEMM pay one-off costs
        model(batches[0])
        torch.ones(64, 8, dtype=torch.float64).T @ torch.ones(64, 8, dtype=torch.float64)
    try:
        import delve  # noqa: F401
        has_delve = True
    except ImportError:
        has_delve = False
    sides = {"ours": lambda: _ours(model, batches), "reference": lambda: _reference(model, batches)}
    if has_delve:
        sides["delve_one_batch"] = lambda: _delve(model, [x])
        sides["delve_streamed"] = lambda: _delve(model, batches)
    values, med, peaks = interleaved(sides, 1 if args.quick else 3)
    ours = {k: v[0] for k, v in values["ours"].items()}
    row = {"benchmark": "saturation", "arch": arch, "width": width, "images": n,
           "batch": batch, "layers": len(ours), "threshold": THRESHOLD, "delve": has_delve,
           "max_abs_diff_vs_reference": max(abs(ours[k] - values["reference"][k]) for k in ours),
           "saturation_ours": [round(v, 6) for v in ours.values()],
           **{f"{k}_seconds": v for k, v in med.items()},
           **{f"{k}_peak_mb": v for k, v in peaks.items()}}
    if has_delve:
        one, streamed = values["delve_one_batch"], values["delve_streamed"]
        assert set(one) == set(ours), (sorted(one), sorted(ours))
        row["max_abs_diff_vs_delve_one_batch"] = max(abs(ours[k] - one[k][0]) for k in ours)
        row["layers_differing_vs_delve_one_batch"] = {
            k: {"ours": ours[k], "delve": one[k][0], "reference": values["reference"][k],
                "std_over_mean": _spread(values["ours"][k][1], values["ours"][k][3])}
            for k in ours if ours[k] != one[k][0]}
        row["max_rel_cov_diff_vs_delve"] = max(
            float((values["ours"][k][1] - one[k][1]).abs().max() / one[k][1].abs().max())
            for k in ours)
        row["max_abs_diff_vs_delve_streamed"] = max(abs(ours[k] - streamed[k][0]) for k in ours)
        first = next(iter(ours))
        row["ours_samples_first_layer"] = values["ours"][first][2]
        row["delve_streamed_samples_first_layer"] = streamed[first][2]
        for side in ("delve_one_batch", "delve_streamed"):
            row[f"time_ratio_{side}_over_ours"] = med[side] / med["ours"]
            row[f"peak_ratio_{side}_over_ours"] = peaks[side] / peaks["ours"] \
                if peaks["ours"] > 0 else float("nan")
    print(_summary(row), flush=True)
    return [row]


def _summary(row: dict) -> str:
    parts = [f"{row['arch']} width {row['width']}, {row['images']} images in batches of "
             f"{row['batch']}, {row['layers']} layers: ours {row['ours_seconds']:.2f} s, "
             f"reference {row['reference_seconds']:.2f} s; max |ours - reference| "
             f"{row['max_abs_diff_vs_reference']:.1e}"]
    if row["delve"]:
        parts.append(
            f"delve one batch {row['delve_one_batch_seconds']:.2f} s "
            f"({row['time_ratio_delve_one_batch_over_ours']:.2f}x ours), max |diff| "
            f"{row['max_abs_diff_vs_delve_one_batch']:.1e}, covariance rel diff "
            f"{row['max_rel_cov_diff_vs_delve']:.1e}; delve streamed "
            f"{row['delve_streamed_seconds']:.2f} s "
            f"({row['time_ratio_delve_streamed_over_ours']:.2f}x), keeps "
            f"{row['delve_streamed_samples_first_layer']} of "
            f"{row['ours_samples_first_layer']} samples, max |diff| "
            f"{row['max_abs_diff_vs_delve_streamed']:.1e}")
    else:
        parts.append("delve not installed: compared with the reference only")
    peaks = ", ".join(f"{k[:-8]} {v:.0f}" for k, v in row.items() if k.endswith("_peak_mb"))
    return "; ".join(parts) + f"; peak extra RSS MB: {peaks}"


if __name__ == "__main__":
    main()
