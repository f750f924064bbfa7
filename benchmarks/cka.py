"""CKA: ours vs torch-cka, and full layerwise CKA vs the forward passes it needs.

    python -m benchmarks.cka [--quick] [--threads N] [--n 1000] [--batch-size 100]
                             [--width 0.125] [--repeats 3]

(a) Two seeds of resnet50 (width 1/8, 32x32 random inputs, pool level 0), all 53 conv layers,
the same ``n`` inputs split into the same batches: our minibatch estimator
(``layerwise_cka(..., debiased=True, batch_size=...)``) vs ``torch_cka.CKA.compare`` (PyPI
torch-cka, the same unbiased-HSIC minibatch estimator). Agreement is checked in float64 (both
sides compute in double; torch-cka needs the default dtype set for that), then each side is
timed in float32, each run in a fresh process that reports its peak resident memory above the
memory it held before the computation (models, inputs and imports excluded; ``--quick`` runs
the sides in its own process and reports no memory). torch-cka fills
its rows in execution order but labels them in registration order; rows are matched by
execution order.

(b) Full-batch linear CKA (biased HSIC, one n x n Gram per layer, every layer of seed 0 against
every layer of seed 1) vs the two forward passes alone (the floor), for resnet50 at several
``n`` and torchvision's resnet18 (20 conv layers, 512 inputs of 32x32: the anchor of the
benchmarks issue), plus the minibatch estimator. The Gram work is 2 n^2 p FLOPs for a layer
with p output features, so the expected extra work relative to a forward pass is
2 n sum(p) / forward FLOPs per image (column ``gram_vs_forward_flops``); ``gram_gflops`` is the
rate the Gram part achieved, next to the machine's float64 GEMM rate measured in the same run.

(c) The CKA stage of a cell: ``--seeds`` models, their self pairs and all seed pairs, ``--cell-n``
inputs, full-batch estimator: one ``layerwise_cka`` call per pair (2 forwards and 2 Gram sets
each) vs ``layerwise_cka_pairs`` (one forward and one Gram set per seed); same matrices checked.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from benchmarks.common import make_parser, parse, reset_peak_rss, status_kb
from landscape.activations import execution_order
from landscape.cka import layerwise_cka, layerwise_cka_pairs
from landscape.models import create_model
from landscape.stages.cka import seed_pairs

SEEDS = (0, 1)


def _models(arch: str, width: float, dtype: torch.dtype) -> tuple[list[nn.Module], list[str]]:
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        if arch == "torchvision_resnet18":
            import torchvision

            model = torchvision.models.resnet18(num_classes=10)
        else:
            model = create_model(arch, num_classes=10, width=width)
        models.append(model.to(dtype).eval())
    names = [n for n, m in models[0].named_modules() if isinstance(m, nn.Conv2d)]
    return models, names


def _inputs(n: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(n, 3, size, size, generator=gen).to(dtype)


def _run_side(side: str, arch: str, width: float, n: int, size: int, batch_size: int,
              dtype_name: str, threads: int) -> dict:
    """One side of (a) in this (fresh) process: the matrix, its seconds and peak extra memory."""
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    (m0, m1), names = _models(arch, width, dtype)
    x = _inputs(n, size, dtype)
    if side == "torch_cka":
        # torch-cka builds its ones vector and sums in the default dtype. Set only now: weights
        # initialised under a float64 default would differ from float32-initialised ones.
        torch.set_default_dtype(dtype)
    peak_known = reset_peak_rss()  # Linux only; elsewhere peak_mb is nan
    base_kb = status_kb("VmRSS") if peak_known else 0
    t0 = time.perf_counter()
    if side == "forwards":  # the floor: the same batches through both models, nothing else
        with torch.no_grad():
            for xb in torch.split(x, batch_size):
                m0(xb)
                m1(xb)
        matrix, labels = None, []
    elif side == "ours":
        res = layerwise_cka(m0, m1, x, layers=names, debiased=True, batch_size=batch_size)
        matrix, labels = res.matrix, list(res.layers_a)
    else:
        from torch.utils.data import DataLoader, TensorDataset
        from torch_cka import CKA

        loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False)
        cka = CKA(m0, m1, model1_name="seed0", model2_name="seed1", model1_layers=names,
                  model2_layers=names, device="cpu")
        try:
            cka.compare(loader, loader)
        except AssertionError as e:  # torch-cka asserts that no entry is NaN
            return {"error": f"torch-cka failed: {e}"}
        out = cka.export()
        matrix, labels = out["CKA"].double().numpy(), list(out["model1_layers"])
    seconds = time.perf_counter() - t0
    peak_mb = (status_kb("VmHWM") - base_kb) / 1024 if peak_known else float("nan")
    return {"matrix": matrix, "labels": labels, "seconds": seconds, "peak_mb": peak_mb}


@contextlib.contextmanager
def _no_tqdm():
    """TQDM_DISABLE=1 while inside (inherited by a child): torch-cka always draws a bar."""
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = saved


def _in_fresh_process(fn: Callable, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with _no_tqdm(), concurrent.futures.ProcessPoolExecutor(max_workers=1,
                                                            mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def _in_this_process(fn: Callable, *args) -> dict:
    """``fn`` here, for --quick: a fresh interpreter per side costs seconds of imports each (six
    of them took most of a minute in the test suite). Peak memory is not comparable in a
    process that has run other things, so it is reported as nan."""
    saved_dtype = torch.get_default_dtype()
    try:
        with _no_tqdm():
            return {**fn(*args), "peak_mb": float("nan")}
    finally:
        torch.set_default_dtype(saved_dtype)


def compare_torch_cka(arch: str, width: float, n: int, size: int, batch_size: int,
                      threads: int, fresh: bool = True) -> list[dict]:
    """Part (a): rows for float64 (agreement) and float32 (time, memory) runs of both sides,
    each side in a fresh process (``fresh``; else here, without memory figures)."""
    run = _in_fresh_process if fresh else _in_this_process
    (m0, _), names = _models(arch, width, torch.float32)
    x = _inputs(4, size, torch.float32)
    order = execution_order(m0, names, x)
    rows, reference = [], None
    for dtype_name in ("float64", "float32"):
        runs = {side: run(_run_side, side, arch, width, n, size, batch_size, dtype_name,
                          threads)
                for side in ("forwards", "ours", "torch_cka")}
        floor, ours, theirs = runs["forwards"], runs["ours"], runs["torch_cka"]
        row = {"benchmark": "cka", "part": "a", "arch": arch, "width": width, "n": n,
               "batch_size": batch_size, "layers": len(names), "dtype": dtype_name}
        if "error" in theirs:
            rows.append({**row, "error": theirs["error"]})
            print(f"{dtype_name}: {theirs['error']}", flush=True)
            continue
        assert ours["labels"] == order, "our layers must come in execution order"
        # torch-cka's row k is the k-th layer to run; its label k is the k-th registered.
        mislabelled = sum(a != b for a, b in zip(theirs["labels"], order))
        diff = float(np.nanmax(np.abs(ours["matrix"] - theirs["matrix"])))
        if reference is None:  # the float64 run: both sides in double
            reference = ours["matrix"]
        row.update({
            "ours_seconds": ours["seconds"], "torch_cka_seconds": theirs["seconds"],
            "speedup": theirs["seconds"] / ours["seconds"], "forwards_seconds": floor["seconds"],
            "forwards_peak_mb": floor["peak_mb"], "ours_peak_mb": ours["peak_mb"],
            "torch_cka_peak_mb": theirs["peak_mb"], "max_abs_diff": diff,
            "torch_cka_mislabelled_rows": mislabelled,
            "ours_nan": int(np.isnan(ours["matrix"]).sum()),
            "ours_err_vs_float64": float(np.nanmax(np.abs(ours["matrix"] - reference))),
            "torch_cka_err_vs_float64": float(np.nanmax(np.abs(theirs["matrix"] - reference))),
        })
        rows.append(row)
        print(f"(a) {arch} w{width:g}, {len(names)} conv layers, {n} inputs in batches of "
              f"{batch_size}, {dtype_name}: forwards alone {floor['seconds']:.2f} s / "
              f"{floor['peak_mb']:.0f} MB, ours {ours['seconds']:.2f} s / "
              f"{ours['peak_mb']:.0f} MB, torch-cka {theirs['seconds']:.2f} s / "
              f"{theirs['peak_mb']:.0f} MB ({row['speedup']:.1f}x); max |diff| {diff:.1e}; "
              f"max |error| vs the float64 result: ours {row['ours_err_vs_float64']:.1e}, torch-cka "
              f"{row['torch_cka_err_vs_float64']:.1e}; torch-cka rows mislabelled: "
              f"{mislabelled}", flush=True)
    return rows


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_gflops(n: int = 1000, p: int = 16384) -> float:
    """This machine's float64 rate for a Gram ``A @ A.T`` of an n x p matrix (median of 3)."""
    a = torch.randn(n, p, dtype=torch.float64)
    return 2 * n * n * p / _median_seconds(lambda: a @ a.T, 3) / 1e9


def _flops(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[float, int]:
    """Forward FLOPs of one example and the summed output features of the named layers."""
    from torch.utils.flop_counter import FlopCounterMode

    sizes = []
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o: sizes.append(o[0].numel()))
             for n in names]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return counter.get_total_flops(), sum(sizes)


def overhead(arch: str, width: float, n: int, size: int, repeats: int, gemm: float,
             batch_size: int | None = None) -> dict:
    """Part (b): seconds of layerwise CKA vs the two forward passes alone, one row."""
    (m0, m1), names = _models(arch, width, torch.float32)
    x = _inputs(n, size, torch.float32)
    forward_flops, features = _flops(m0, names, x)

    def forwards() -> None:
        with torch.no_grad():
            m0(x)
            m1(x)

    def cka() -> object:
        return layerwise_cka(m0, m1, x, layers=names, debiased=batch_size is not None,
                             batch_size=batch_size)

    forwards()  # warm-up
    t_fwd = _median_seconds(forwards, repeats)
    t_cka = _median_seconds(cka, repeats)
    m = n if batch_size is None else batch_size
    gram_flops = 2 * 2 * n * m * features  # both models: n/m batches of m^2 p (x2 for FMA)
    row = {"benchmark": "cka", "part": "b", "arch": arch, "width": width, "n": n,
           "estimator": "biased (full)" if batch_size is None else f"minibatch m={batch_size}",
           "layers": len(names), "forward_seconds": t_fwd, "cka_seconds": t_cka,
           "overhead": t_cka / t_fwd - 1, "target_met": t_cka / t_fwd - 1 <= 0.20,
           "forward_gflops_per_image": forward_flops / 1e9,
           "gram_vs_forward_flops": gram_flops / (2 * n * forward_flops),
           "gram_gflops": gram_flops / max(t_cka - t_fwd, 1e-9) / 1e9, "gemm_gflops": gemm}
    print(f"(b) {arch} w{width:g}, {len(names)} layers, n={n}, {row['estimator']}: two forwards "
          f"{t_fwd:.2f} s, CKA {t_cka:.2f} s (+{row['overhead']:.0%}; target <= +20%: "
          f"{'met' if row['target_met'] else 'MISSED'}); Gram/forward FLOPs "
          f"{row['gram_vs_forward_flops']:.2f}; Gram part at {row['gram_gflops']:.0f} GFLOP/s "
          f"(float64 GEMM here: {gemm:.0f})", flush=True)
    return row


def cell_stage(arch: str, width: float, n: int, size: int, seeds: int) -> dict:
    """Part (c): the CKA stage of a cell (self pairs + all seed pairs): one
    :func:`layerwise_cka` call per pair vs :func:`layerwise_cka_pairs` (Grams once per seed)."""
    models = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        models.append(create_model(arch, num_classes=10, width=width).eval())
    names = [k for k, m in models[0].named_modules() if isinstance(m, nn.Conv2d)]
    x = _inputs(n, size, torch.float32)
    pairs = seed_pairs(list(range(seeds)), "all")
    t0 = time.perf_counter()
    loop = {(a, b): layerwise_cka(models[a], models[b], x, layers=names) for a, b in pairs}
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = layerwise_cka_pairs(dict(enumerate(models)), x, pairs, layers=names)
    t_shared = time.perf_counter() - t0
    diff = max(float(np.abs(loop[p].matrix - shared[p].matrix).max()) for p in pairs)
    row = {"benchmark": "cka", "part": "c", "arch": arch, "width": width, "n": n,
           "seeds": seeds, "pairs": len(pairs), "layers": len(names),
           "per_pair_seconds": t_loop, "shared_seconds": t_shared,
           "speedup": t_loop / t_shared, "max_abs_diff": diff}
    print(f"(c) cell stage, {seeds} seeds ({len(pairs)} pairs incl. self), {arch} w{width:g}, "
          f"{len(names)} layers, n={n}: one call per pair {t_loop:.1f} s, Grams once per seed "
          f"{t_shared:.1f} s ({row['speedup']:.1f}x); max |diff| {diff:.1e}", flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "resnet18 w1/16, 64 inputs of 16x16")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cell-n", type=int, default=250, help="inputs for part (c)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for part (c)")
    args = parse(parser, argv)
    threads = torch.get_num_threads()
    if args.quick:
        arch, width, n, size, batch, repeats = "resnet18", 0.0625, 64, 16, 16, 1
    else:
        arch, width, n, size, batch, repeats = ("resnet50", args.width, args.n, 32,
                                                args.batch_size, args.repeats)
    if n % batch or batch < 4:
        parser.error(f"--n ({n}) must be a multiple of --batch-size ({batch}), which must be >= 4")
    rows = compare_torch_cka(arch, width, n, size, batch, threads, fresh=not args.quick)
    gemm = gemm_gflops(*((256, 1024) if args.quick else (1000, 16384)))
    sizes = [n] if args.quick else sorted({max(batch, n // 4), max(batch, n // 2), n})
    rows += [overhead(arch, width, k, size, repeats, gemm) for k in sizes]
    rows.append(overhead(arch, width, n, size, repeats, gemm, batch_size=batch))
    if not args.quick:
        rows.append(overhead("torchvision_resnet18", 1.0, 512, 32, repeats, gemm))
    rows.append(cell_stage(arch, width, n if args.quick else args.cell_n, size,
                           3 if args.quick else args.seeds))
    return rows


if __name__ == "__main__":
    main()
