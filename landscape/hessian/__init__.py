"""Hessian analysis: HVP operator, Lanczos top-k eigenvalues, SLQ spectral density, trace.

Build one :class:`HessianOperator` (``v -> H v``) and pass it to :func:`top_eigenvalues`
(settings in a :class:`SolverOptions`), :func:`spectral_density` and :func:`hessian_trace`
(:mod:`.spectrum`). Those call generic cores that work on any symmetric ``v -> A v``
(:mod:`.lanczos`, :mod:`.density`); :mod:`.backends` adds scipy's ARPACK and pyhessian 0.1
for comparison. :mod:`.masked`: the Hessian on the unpruned weights (:class:`MaskedOperator`,
accepted by the functions above) and per-block curvature (:func:`block_curvature`).
``journal=`` (:mod:`landscape.journal`): saved progress, so that a stopped computation goes on.
"""

from landscape.hessian.backends import EIGEN_BACKENDS, list_backends, pyhessian_top_k, scipy_top_k
from landscape.hessian.density import (
    DensityResult, TraceResult, hutchinson_trace, lanczos_quadrature, lanczos_tridiagonal,
    quadrature, slq_density,
)
from landscape.hessian.lanczos import TopEigenResult, Tridiagonal, lanczos_top_k
from landscape.hessian.masked import (
    BlockCurvature, MaskedOperator, block_curvature, default_blocks,
)
from landscape.hessian.operator import (
    BN_MODES, HVP_METHODS, HessianOperator, NoSecondDerivativeError, recalibrated_buffers,
    select_parameters,
)
from landscape.hessian.options import SolverOptions, solver_options
from landscape.hessian.spectrum import (
    hessian_trace, paper_spectrum, spectral_density, top_eigenvalues,
)
from landscape.journal import Journal, MemoryJournal

__all__ = [
    "BN_MODES", "EIGEN_BACKENDS", "HVP_METHODS", "BlockCurvature", "DensityResult",
    "HessianOperator", "Journal", "MaskedOperator", "MemoryJournal", "NoSecondDerivativeError",
    "SolverOptions", "TopEigenResult", "TraceResult", "Tridiagonal", "block_curvature",
    "default_blocks",
    "hessian_trace", "hutchinson_trace", "lanczos_quadrature", "lanczos_top_k",
    "lanczos_tridiagonal", "list_backends", "paper_spectrum", "pyhessian_top_k", "quadrature",
    "recalibrated_buffers", "scipy_top_k", "select_parameters", "slq_density",
    "solver_options", "spectral_density", "top_eigenvalues",
]
