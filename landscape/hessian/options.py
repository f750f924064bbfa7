"""Settings shared by every top-k eigensolver: one frozen :class:`SolverOptions`.

Convergence of a Ritz pair ``(theta, x)``: ``||A x - theta x|| <= tol * max|theta|``, i.e. the
residual tolerance is relative to the spectral-norm estimate |lambda_max|. ``which="LA"`` asks
for the k largest eigenvalues (algebraically), ``"LM"`` for the k of largest magnitude.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from landscape.hessian.operator import check_choice

WHICH = ("LA", "LM")


@dataclass(frozen=True)
class SolverOptions:
    """Top-k solver settings (validated on construction).

    which: ``"LA"`` largest algebraic | ``"LM"`` largest magnitude.
    tol: residual tolerance relative to |lambda_max| (``>= 0``; Lanczos needs ``> 0``,
        scipy reads 0 as machine precision).
    max_iter: cap on matvecs (None: the solver's default).
    ncv: Krylov basis size (None: ARPACK's ``min(dim, max(2k + 1, 20))``).
    seed: seed of the start vector (and of pyhessian's random vectors).
    return_eigenvectors: also return the (k, dim) unit eigenvectors.
    check_residuals: compute explicit residuals (k more matvecs) for the backends that do not
        have free Ritz estimates (scipy, pyhessian); otherwise their residuals are NaN.
    progress: show a progress bar (never under ``CI``).
    """

    which: str = "LA"
    tol: float = 1e-6
    max_iter: int | None = None
    ncv: int | None = None
    seed: int = 0
    return_eigenvectors: bool = False
    check_residuals: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        check_choice("which", self.which, WHICH)
        if (isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real)
                or not self.tol >= 0):
            raise ValueError(f"tol must be a real number >= 0, got {self.tol!r}")
        for name in ("max_iter", "ncv"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise ValueError(f"{name} must be None or an integer, got {value!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


FIELDS = tuple(f.name for f in dataclasses.fields(SolverOptions))


def solver_options(options: SolverOptions | None = None, **overrides: object) -> SolverOptions:
    """``options`` (default ``SolverOptions()``) with the fields in ``overrides`` replaced.

    An unknown keyword is a TypeError naming it and listing the valid field names.
    """
    if options is None:
        options = SolverOptions()
    elif not isinstance(options, SolverOptions):
        raise TypeError(f"options must be a SolverOptions or None, got {type(options).__name__}")
    unknown = [name for name in overrides if name not in FIELDS]
    if unknown:
        raise TypeError(
            f"unknown solver option(s) {', '.join(map(repr, unknown))}; valid options: "
            f"{', '.join(FIELDS)}"
        )
    return dataclasses.replace(options, **overrides) if overrides else options
