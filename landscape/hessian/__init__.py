"""Hessian analysis: HVP operator, Lanczos top-k eigenvalues, SLQ spectral density, trace.

Model-level functions (:mod:`.spectrum`) build a :class:`HessianOperator` and call generic
cores that work on any symmetric ``v -> A v`` (:mod:`.lanczos`, :mod:`.density`);
:mod:`.backends` adds scipy's ARPACK and pyhessian 0.1 for comparison.
"""

from landscape.hessian.backends import EIGEN_BACKENDS, list_backends, pyhessian_top_k, scipy_top_k
from landscape.hessian.density import (
    DensityResult, TraceResult, hutchinson_trace, lanczos_tridiagonal, quadrature, slq_density,
)
from landscape.hessian.lanczos import TopEigenResult, Tridiagonal, lanczos_top_k
from landscape.hessian.operator import (
    BN_MODES, HVP_METHODS, HessianOperator, recalibrated_buffers, select_parameters,
)
from landscape.hessian.spectrum import hessian_trace, spectral_density, top_eigenvalues

__all__ = [
    "BN_MODES", "EIGEN_BACKENDS", "HVP_METHODS", "DensityResult", "HessianOperator",
    "TopEigenResult", "TraceResult", "Tridiagonal", "hessian_trace", "hutchinson_trace",
    "lanczos_top_k", "lanczos_tridiagonal", "list_backends", "pyhessian_top_k", "quadrature",
    "recalibrated_buffers", "scipy_top_k", "select_parameters", "slq_density",
    "spectral_density", "top_eigenvalues",
]
