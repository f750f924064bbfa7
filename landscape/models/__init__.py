"""Architectures with the receptive-field pool; see DESIGN.md §2."""

from landscape.models import resnet, small, vgg  # noqa: F401  (register the architectures)
from landscape.models.base import InputTooSmallError, RFNet, check_input_size
from landscape.models.registry import build_model, create_model, list_models, register_model
from landscape.models.rf_pool import PoolSpec, make_rf_pool, pool_preset, resolve_pool

__all__ = [
    "InputTooSmallError", "PoolSpec", "RFNet", "build_model", "check_input_size", "create_model",
    "list_models", "make_rf_pool", "pool_preset", "register_model", "resolve_pool",
]
