"""What the benchmarks share: the ``--quick`` / ``--threads`` command line, and timing with
the peak extra resident memory of a call."""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def make_parser(doc: str, quick_help: str, *, threads: int | None = None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc`` with ``--quick`` and ``--threads``
    (``threads``: the default; None leaves torch's own)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads``."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (Linux)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM); Linux >= 4.0. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), seconds, peak extra resident MB)``; the MB is NaN where it cannot be read."""
    known = reset_peak_rss()
    base = status_kb("VmRSS") if known else 0
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = (status_kb("VmHWM") - base) / 1024 if known else float("nan")
    return out, seconds, peak


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int
                ) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Run every side ``repeats`` times, interleaved (side a, b, ..., then again): the first
    output of each side, its median seconds and its largest peak extra resident MB."""
    values: dict[str, Any] = {}
    times: dict[str, list[float]] = {k: [] for k in sides}
    peaks: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            out, seconds, peak = timed(fn)
            values.setdefault(name, out)
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0.0), peak)
    return values, {k: statistics.median(v) for k, v in times.items()}, peaks


def epoch_seconds(loader, repeats: int) -> float:
    """The best of ``repeats`` full passes over ``loader``, in seconds (a loader with a
    ``generator`` reseeded with the pass number)."""
    best = float("inf")
    for r in range(repeats):
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(r)
        t0 = time.perf_counter()
        for _ in loader:
            pass
        best = min(best, time.perf_counter() - t0)
    return best
