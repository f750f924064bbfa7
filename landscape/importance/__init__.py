"""Projected-gradient importance maps and the effective receptive field.

:mod:`.maps`: our measurement on a given model (``random_input`` or ``linearised`` mode);
:mod:`.paper`: the paper's released procedure; :mod:`.at_init`: either protocol over fresh
initialisations of an architecture by name (the paper's Tables 3 and 4); :mod:`.erf`: the
ERF size of a mean map; :mod:`.erf_fit`: its moments, Gaussian fit and high-contribution
ratio; :mod:`.layer_erf`: the ERF of every conv layer beside its analytic RF; :mod:`.luo`: Luo
et al.'s conv stacks and their depth sweep.
"""

from landscape.importance.at_init import (
    PAPER_PROBES, PROTOCOLS, PaperProbe, importance_at_init, paper_probe,
)
from landscape.importance.erf import (ERFSize, erf_area, erf_size, erf_square, erf_stats,
                                      mass_centre)
from landscape.importance.erf_fit import RATIO_THRESHOLDS, ERFFit, erf_fit, high_contribution_ratio
from landscape.importance.layer_erf import (
    LAYER_ERF_COLUMNS, conv_layers, layer_erf_maps, layer_erf_table,
)
from landscape.importance.maps import (
    AGGREGATION, BN_MODES, CENTRE_CONVENTION, MODES, ImportanceMaps, last_conv,
    layer_gradient_maps, linearised_copy, projected_gradient, projected_gradient_maps,
)
from landscape.importance.paper import (
    paper_centre, paper_importance, paper_maps, paper_projection,
)

__all__ = [
    "AGGREGATION", "BN_MODES", "CENTRE_CONVENTION", "ERFFit", "ERFSize", "ImportanceMaps",
    "LAYER_ERF_COLUMNS", "MODES", "PAPER_PROBES", "PROTOCOLS", "PaperProbe", "RATIO_THRESHOLDS",
    "conv_layers", "erf_area", "erf_fit", "erf_size", "erf_square", "erf_stats",
    "high_contribution_ratio",
    "importance_at_init", "last_conv", "layer_erf_maps", "layer_erf_table",
    "layer_gradient_maps", "linearised_copy", "mass_centre", "paper_centre",
    "paper_importance", "paper_maps", "paper_probe", "paper_projection", "projected_gradient",
    "projected_gradient_maps",
]
