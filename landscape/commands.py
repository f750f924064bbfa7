"""The console scripts that read a results folder (plain argparse, no Hydra):
``landscape-status`` and ``landscape-report``."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from landscape import results
from landscape.grid import format_status, status_table, write_root_report


def _silence_stdout() -> None:
    """After a BrokenPipeError: what is still buffered cannot be written either, so stdout
    points at /dev/null and the interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_unless_closed(text: str) -> bool:
    """Print ``text``; False (and quiet from then on) when the reader went away
    (``landscape-rf ... | head``), for commands whose work goes on after printing."""
    try:
        print(text, flush=True)
        return True
    except BrokenPipeError:
        _silence_stdout()
        return False


def quiet_on_closed_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """A console script whose reader went away (``landscape-status | head``) ends quietly
    instead of in a ``BrokenPipeError`` traceback."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            _silence_stdout()
            return 0
    return wrapped


def _root(value: str) -> Path:
    """A results folder argument; ``results_root=<folder>``, as the Hydra commands
    (``landscape-run``, ``landscape-cells``) spell it, is taken too."""
    return Path(value.removeprefix("results_root="))


@quiet_on_closed_pipe
def status_main(argv: Optional[Sequence[str]] = None) -> int:
    """``landscape-status [results_root] [--runs]``: the grid's state, per cell and unit."""
    from landscape.grid.finish import cell_variants
    from landscape.grid.status import run_states
    from landscape.results import read_submissions

    p = argparse.ArgumentParser(prog="landscape-status", description=status_main.__doc__)
    p.add_argument("root", nargs="?", default="results", type=_root,
                   help="results_root (default: results)")
    p.add_argument("--runs", action="store_true", help="one line per run and unit instead")
    args = p.parse_args(argv)
    root = args.root
    if not root.is_dir():
        p.error(f"no results folder at {root.resolve()}")
    print(run_states(root).to_string(index=False) if args.runs
          else format_status(status_table(root)))
    told = {c: v for c, v in cell_variants(root).items() if v}
    if told:  # folder names differ only by their hash there
        width = max(map(len, told))
        print("\ncells told apart by settings their folder names leave out:\n" + "\n".join(
            f"  {c:<{width}}  {v}" for c, v in sorted(told.items())))
    if any(s.get("backend") == "slurm" for s in read_submissions(root)):
        print(f"\nlogs of the Slurm jobs: {root / '.submitit'}/<job id>_<task>_log.out|err")
    return 0


@quiet_on_closed_pipe
def report_main(argv: Optional[Sequence[str]] = None) -> int:
    """``landscape-report RESULTS_ROOT [--out DIR] [--paper CSV]``."""
    import pandas as pd

    from analysis.report import DEFAULT_TITLE

    p = argparse.ArgumentParser(prog="landscape-report", description=(
        "Tables, figures and report.md/report.html of every finished run under RESULTS_ROOT."))
    p.add_argument("results_root", type=_root)
    p.add_argument("--out", type=Path, default=None, help="default: RESULTS_ROOT/report")
    p.add_argument("--title", default=DEFAULT_TITLE)
    p.add_argument("--paper", type=Path, default=None, help="CSV of published tables shown "
                   "labelled beside ours (default: the paper's, analysis/reference)")
    args = p.parse_args(argv)
    if not args.results_root.is_dir():
        p.error(f"results root {args.results_root} is not a directory")
    if args.paper is not None and not args.paper.is_file():
        p.error(f"--paper {args.paper}: no such file")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")
    reference = pd.read_csv(args.paper) if args.paper else None  # None: the paper's
    if not results.has_results(args.results_root):
        p.error(f"nothing to report yet: no finished stage unit under {args.results_root}")
    out = args.out if args.out is not None else args.results_root / "report"
    problem = _unwritable(out)
    if problem:
        p.error(f"cannot write the report to {out} ({problem}); pass --out DIR to write it "
                "somewhere else")
    path = write_root_report(args.results_root, args.out, title=args.title, reference=reference)
    print(f"[landscape] report: {path} and {path.with_suffix('.html')}")
    return 0


def _unwritable(folder: Path) -> Optional[str]:
    """Why no report can be written into ``folder`` (created if absent), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None
