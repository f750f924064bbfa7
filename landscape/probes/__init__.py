"""Per-layer saturation, linear probes and the tail of unproductive layers (issue 17).

Pure functions over models and tensors (no file I/O): :mod:`.saturation` (streaming float64
covariance; saturation by the papers' rule, or delve 0.1.50's), :mod:`.probes` (linear probes per layer and per
position; backends torch and scikit-learn), :mod:`.logistic` (the torch logistic regression with
scikit-learn's objective), :mod:`.border` (observed tail from probes and saturation, predicted border from the
analytic receptive field).
"""

from landscape.probes.border import ObservedTail, PredictedBorder, observed_tail, predicted_border
from landscape.probes.collect import LayerData, collect_layers
from landscape.probes.logistic import LogisticFit, fit_logistic
from landscape.probes.probes import (
    BACKENDS, DEFAULT_BACKEND, PositionProbeMap, ProbeResult, check_backend, extract_features,
    layer_probes, linear_probes, position_accuracy_map, position_probe_map, probe_accuracy,
    pool_map, probe_features,
)
from landscape.probes.saturation import (
    DEFAULT_RULE, RULES, CovarianceAccumulator, SaturationResult, accumulator_saturation,
    intrinsic_dimension, layer_accumulators, layer_saturation, samples_of,
    saturation_frame, saturation_from_covariance,
)

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "DEFAULT_RULE", "RULES", "CovarianceAccumulator", "LayerData",
    "LogisticFit", "ObservedTail", "check_backend", "fit_logistic", "layer_probes",
    "PositionProbeMap", "PredictedBorder", "ProbeResult", "SaturationResult", "accumulator_saturation", "collect_layers", "extract_features",
    "intrinsic_dimension", "layer_accumulators", "layer_saturation", "linear_probes",
    "observed_tail", "position_accuracy_map", "position_probe_map", "predicted_border",
    "pool_map", "probe_accuracy", "probe_features", "samples_of", "saturation_frame",
    "saturation_from_covariance",
]
