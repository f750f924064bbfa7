"""Statistics, tables, figures and the report, computed from the tidy results DataFrame only
(``landscape.results.load``; the importance maps from ``landscape.results.load_arrays``)."""

from analysis.prunability import prunability_table
from analysis.report import write_report
from analysis.stats import (PairedTest, StratifiedCorrelation, Summary, WelchTest, cohens_d,
                            compare_levels, final_epoch, hedges_g, holm, paired_test,
                            pruning_observations, rank_correlation, stratified_correlation,
                            summarize, summarize_cells, welch_test, within_rank_correlation)
from analysis.tables import (Table, format_mean_std, pruning_table, pvalue_table, to_latex,
                             to_markdown)

__all__ = [
    "PairedTest", "StratifiedCorrelation", "Summary", "Table", "WelchTest", "cohens_d",
    "compare_levels", "final_epoch", "format_mean_std", "hedges_g", "holm", "paired_test",
    "prunability_table", "pruning_observations", "pruning_table", "pvalue_table",
    "rank_correlation", "stratified_correlation", "summarize", "summarize_cells", "to_latex",
    "to_markdown", "welch_test", "within_rank_correlation", "write_report",
]
