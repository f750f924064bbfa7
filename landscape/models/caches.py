"""Tensors a model derives from its parameters and keeps between forwards, recomputed instead.

timm's LeViT, TinyViT, EfficientFormer (V1 and V2) and EfficientViT (MSRA) gather, in eval
mode, their attention-bias table from the ``attention_biases`` parameter once per device and
keep it (``attention_bias_cache``) until ``train()``, ``eval()`` or ``.to()`` clears it. A
measurement that changes the parameters, or differentiates with respect to them, between two
forwards in eval mode without one of those calls reads the table of the first forward's
parameters. The Hessian-vector product does: it evaluates every batch with fresh parameter
tensors (``functional_call``) inside one ``eval()``, so from its second batch on the attention
biases were constants (a LeViT attention block's Hessian column had norm 4.5e-4 where the
float64 dense Hessian has 3.1e-4; the forward-over-reverse product stopped with a functorch
error), and so could a sharpness perturbation or any user code. (Connectivity's interpolated
weights were read right: the BatchNorm recalibration at every point calls ``train()``.)

:func:`recompute_parameter_caches` makes each such module gather its table on every call (a
gather of a few thousand numbers per attention block). Every model the framework builds
gets it (:func:`~landscape.models.registry.build_model`).
"""

from __future__ import annotations

import types

from torch import nn

# the attribute pairs of a per-module cache and the method that fills it (timm's
# ``get_attention_biases(device)`` and its ``attention_bias_cache``)
CACHES = (("get_attention_biases", "attention_bias_cache"),)


def _recomputed(method: str, cache: str):
    def call(self: nn.Module, *args, **kwargs):
        try:
            return getattr(type(self), method)(self, *args, **kwargs)
        finally:
            getattr(self, cache).clear()  # nothing kept that a parameter change would stale

    call.__name__ = method
    return call


def recompute_parameter_caches(model: nn.Module) -> list[str]:
    """Make every module of ``model`` that caches a tensor derived from its parameters
    (:data:`CACHES`) recompute it on every call, and return their names. The module's own
    method still computes the tensor; the cache is emptied here and after each call. The
    instance method follows the module through ``copy.deepcopy``; ``state_dict`` is
    unchanged."""
    patched = []
    for name, module in model.named_modules():
        for method, cache in CACHES:
            if (isinstance(getattr(module, cache, None), dict)
                    and callable(getattr(type(module), method, None))
                    and method not in vars(module)):
                getattr(module, cache).clear()
                setattr(module, method, types.MethodType(_recomputed(method, cache), module))
                patched.append(name)
    return patched
