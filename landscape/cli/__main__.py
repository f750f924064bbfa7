"""``python -m landscape.cli [overrides...]``: ``landscape-run``."""

from landscape.cli import run_main

run_main()
