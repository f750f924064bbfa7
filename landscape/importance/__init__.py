"""Projected-gradient importance maps and the effective receptive field.

:mod:`.maps`: our measurement on a given model (``random_input`` or ``linearised`` mode);
:mod:`.paper`: the paper's released procedure; :mod:`.at_init`: either protocol over fresh
initialisations of an architecture by name (the paper's Tables 3 and 4); :mod:`.erf`: the
ERF size of a mean map.
"""

from landscape.importance.at_init import (
    PAPER_PROBES, PROTOCOLS, PaperProbe, importance_at_init, paper_probe,
)
from landscape.importance.erf import ERFSize, erf_area, erf_size, erf_stats, mass_centre
from landscape.importance.maps import (
    AGGREGATION, BN_MODES, CENTRE_CONVENTION, MODES, ImportanceMaps, last_conv,
    linearised_copy, projected_gradient, projected_gradient_maps,
)
from landscape.importance.paper import (
    paper_centre, paper_importance, paper_maps, paper_projection,
)

__all__ = [
    "AGGREGATION", "BN_MODES", "CENTRE_CONVENTION", "ERFSize", "ImportanceMaps", "MODES",
    "PAPER_PROBES", "PROTOCOLS", "PaperProbe", "erf_area", "erf_size", "erf_stats",
    "importance_at_init", "last_conv", "linearised_copy", "mass_centre", "paper_centre",
    "paper_importance", "paper_maps", "paper_probe", "paper_projection", "projected_gradient",
    "projected_gradient_maps",
]
