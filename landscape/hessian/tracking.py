"""lambda_max during training, cheaply: Lanczos warm-started from the previous epoch's top
eigenvector.

Between two epochs the weights move a little and so does the Hessian's top eigenvector; a
Lanczos run that starts from the previous one converges in a few Hessian-vector products where
a random start needs a full Krylov sweep (``python -m benchmarks lambda_tracking`` measures
both at the same tolerance). Cohen et al. (2021) follow lambda_max rising to 2 / lr (the edge
of stability) this way.

:class:`LambdaTracker` keeps the previous eigenvector; :meth:`LambdaTracker.update` measures the
Hessian of the mean loss over fixed batches (BN in eval mode, float64 Krylov basis) at the
model's current weights and returns a :class:`TrackedLambda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from landscape.hessian.lanczos import lanczos_top_k
from landscape.hessian.operator import HessianOperator

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrackedLambda:
    """One measurement: ``value`` (lambda_max), its Ritz ``residual``, the HVPs it cost, whether
    it started from the previous eigenvector (``warm``) and converged to ``tol``."""

    value: float
    residual: float
    num_hvp: int
    warm: bool
    converged: bool


class LambdaTracker:
    """lambda_max of the training loss at the end of each epoch, warm-started.

    ``batches``: the fixed (inputs, targets) it is measured on (e.g. the first n training
    images without augmentation); ``tol``: Ritz residual relative to |lambda_max|; ``ncv``:
    Krylov basis size (a warm start rarely needs more than a few vectors); ``max_iter``: cap on
    HVPs per measurement; ``warm=False`` starts every measurement from a random vector (the
    cold baseline)."""

    def __init__(self, batches: Sequence[tuple[Tensor, Tensor]], *,
                 loss_fn: LossFn = nn.functional.cross_entropy, tol: float = 1e-3,
                 ncv: int = 20, max_iter: int = 400, seed: int = 0, warm: bool = True,
                 device: str | torch.device = "cpu") -> None:
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        self.batches, self.loss_fn, self.tol = list(batches), loss_fn, tol
        self.ncv, self.max_iter, self.seed, self.warm = ncv, max_iter, seed, warm
        self.device = torch.device(device)
        self.vector: Optional[Tensor] = None  # the last top eigenvector (float64, device)
        self.calls = 0

    def update(self, model: nn.Module) -> TrackedLambda:
        """lambda_max at ``model``'s current weights (its modes are restored)."""
        op = HessianOperator(model, self.loss_fn, self.batches, bn_mode="eval",
                             device=self.device)
        start = self.vector if (self.warm and self.vector is not None
                                and self.vector.numel() == op.dim) else None
        res = lanczos_top_k(op, op.dim, 1, which="LA", tol=self.tol,
                            ncv=min(self.ncv, op.dim), max_iter=max(self.max_iter, self.ncv),
                            seed=self.seed + self.calls, return_eigenvectors=True,
                            device=self.device, start_vector=start)
        self.calls += 1
        self.vector = res.eigenvectors[0]
        return TrackedLambda(value=float(res.eigenvalues[0]), residual=float(res.residuals[0]),
                             num_hvp=res.num_hvp, warm=start is not None,
                             converged=res.converged)
