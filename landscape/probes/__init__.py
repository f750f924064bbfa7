"""Per-layer saturation, linear probes and the tail of unproductive layers (issue 17).

Pure functions over models and tensors (no file I/O): :mod:`.saturation` (streaming float64
covariance, saturation as in delve 0.1.50), :mod:`.probes` (linear probes per layer and per
position), :mod:`.border` (observed tail from probes and saturation, predicted border from the
analytic receptive field).
"""

from landscape.probes.saturation import (
    RULES, CovarianceAccumulator, SaturationResult, accumulator_saturation,
    intrinsic_dimension, layer_accumulators, layer_saturation, samples_of,
    saturation_frame, saturation_from_covariance,
)

__all__ = [
    "RULES", "CovarianceAccumulator", "SaturationResult", "accumulator_saturation",
    "intrinsic_dimension", "layer_accumulators", "layer_saturation", "samples_of",
    "saturation_frame", "saturation_from_covariance",
]
