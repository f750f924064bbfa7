"""What every benchmark's command line shares: ``--quick`` and ``--threads``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

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
