"""Statistics, tables, figures and the report, computed from the tidy results DataFrame only
(``landscape.results.load``; the importance maps from ``landscape.results.load_arrays``)."""

from analysis.report import write_report
from analysis.stats import (PairedTest, Summary, WelchTest, cohens_d, compare_levels,
                            final_epoch, hedges_g, holm, paired_test, pruning_observations,
                            rank_correlation, summarize, summarize_cells, welch_test)
from analysis.tables import (Table, format_mean_std, pruning_table, pvalue_table, to_latex,
                             to_markdown)

__all__ = [
    "PairedTest", "Summary", "Table", "WelchTest", "cohens_d", "compare_levels", "final_epoch",
    "format_mean_std", "hedges_g", "holm", "paired_test", "pruning_observations",
    "pruning_table",
    "pvalue_table", "rank_correlation", "summarize", "summarize_cells",
    "to_latex", "to_markdown", "welch_test", "write_report",
]
