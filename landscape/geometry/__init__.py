"""Loss-landscape geometry: directions, 1D/2D slices, linear paths and barriers between
networks, worst-case sharpness. Pure functions over models and tensors (no file I/O)."""

from landscape.geometry.directions import (
    NORMALISATIONS, Direction, check_direction, direction_from_vector, direction_parameters,
    normalise, random_direction,
)
from landscape.geometry.interpolation import (
    PATH_BN, Path, check_same_architecture, linear_path, loss_barrier,
)
from landscape.geometry.sharpness import Sharpness, sharpness_ratio, worst_case_sharpness
from landscape.geometry.slices import BN_MODES, Slice, evaluate_batches, loss_slice
from landscape.geometry.weights import WeightShift

__all__ = [
    "BN_MODES", "NORMALISATIONS", "PATH_BN", "Direction", "Path", "Sharpness", "Slice",
    "WeightShift",
    "check_direction", "check_same_architecture", "direction_from_vector",
    "direction_parameters", "evaluate_batches", "linear_path", "loss_barrier", "loss_slice",
    "normalise", "random_direction", "sharpness_ratio", "worst_case_sharpness",
]
