"""Grids of runs: planning what is unfinished, the local and Slurm backends behind one
launcher interface, where a grid stands, and the end-of-grid work (cell stages, report)."""

from landscape.grid import local, slurm  # noqa: F401  (register the backends)
from landscape.grid.finish import final_accuracy_table, finish_cells, write_root_report
from landscape.grid.launcher import (
    BACKENDS, LauncherConfig, LocalRunResult, Submission, SubmissionError, describe, launch,
    validate_launcher,
)
from landscape.grid.plan import GridPlan, PendingRun, pending_units, plan_grid
from landscape.grid.status import format_status, run_states, status_table

__all__ = [
    "BACKENDS", "GridPlan", "LauncherConfig", "LocalRunResult", "PendingRun", "Submission",
    "SubmissionError", "describe", "final_accuracy_table", "finish_cells", "format_status",
    "launch", "pending_units", "plan_grid", "run_states", "status_table", "validate_launcher",
    "write_root_report",
]
