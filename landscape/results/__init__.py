"""Tidy results: the row schema, where files live, atomic stage output and its integrity
check, records, the loader.

This package is the only code that reads or writes files under a results root (checkpoints
are written by the trainer into the folder :class:`RunPaths` gives it).
``landscape.results.load(root)`` returns one long DataFrame, one observation per row.
"""

from landscape.results.integrity import DamagedUnitError, is_done, read_done, unit_damage
from landscape.results.layout import (
    ARRAYS, CELL_DIR, DONE, FAILED, ROWS, SUBMISSIONS, ResultsRootError, RunPaths, check_lengths,
    cell_of, check_root, results_folder, run_paths, stage_dir,
)
from landscape.results.lock import LOCK, UnitLock, try_lock
from landscape.results.records import (
    cell_names, cell_variants, empty_units, read_submissions, record_submission, run_configs,
    trained_seeds, write_run_records,
)
from landscape.results.derived import DerivedColumnsWarning
from landscape.results.schema import (
    COLUMNS, DTYPES, ID_COLUMNS, METRICS, OPTIONAL_COLUMNS, VALUE_COLUMNS, SchemaError,
    register_metric, to_frame, validate_rows,
)
from landscape.results.store import (
    DamagedResultsWarning, clear_done, damaged, failures, has_results, jsonable, load,
    load_arrays, read_arrays, read_failure, read_stage, stale_reason, write_failure,
    write_stage,
)
from landscape.storage import clean_temp

__all__ = [
    "ARRAYS", "CELL_DIR", "COLUMNS", "DONE", "DTYPES", "FAILED", "ID_COLUMNS", "LOCK", "METRICS",
    "OPTIONAL_COLUMNS", "ROWS", "SUBMISSIONS", "VALUE_COLUMNS", "DamagedResultsWarning",
    "DerivedColumnsWarning",
    "DamagedUnitError", "ResultsRootError", "RunPaths", "SchemaError", "UnitLock",
    "cell_names", "cell_of", "cell_variants", "check_lengths", "check_root", "clean_temp", "clear_done",
    "damaged", "empty_units", "failures", "has_results", "is_done", "jsonable", "load",
    "load_arrays", "read_arrays", "read_done", "read_failure", "read_stage", "read_submissions",
    "record_submission", "register_metric", "results_folder", "run_configs", "run_paths",
    "stage_dir", "stale_reason", "to_frame", "trained_seeds", "try_lock", "unit_damage",
    "validate_rows",
    "write_failure", "write_run_records", "write_stage",
]
