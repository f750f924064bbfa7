"""The Hessian restricted to the unpruned weights, and per-block curvature.

:class:`MaskedOperator` wraps a :class:`HessianOperator` ``H`` (over the selected parameters)
and keep-masks (bool, ``True`` = kept, as in :mod:`landscape.pruning`): it is the exact
sub-matrix ``H[S, S]`` for ``S`` = the kept coordinates, applied as
``v -> (H scatter_S(v))[S]`` (one HVP of ``H`` per call). Its eigenvalues are those of the
Hessian of the loss as a function of the kept weights only, the pruned ones held at their
current values (zero after :func:`~landscape.pruning.apply_masks`).

:func:`block_curvature` reports, per parameter block (default: per module), the top
eigenvalue and the Hutchinson trace of the diagonal Hessian block ``H[B, B]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.hessian.density import hutchinson_trace
from landscape.hessian.lanczos import lanczos_top_k
from landscape.hessian.operator import Batches, HessianOperator, LossFn


class MaskedOperator:
    """``v -> H[S, S] v`` for the kept coordinates ``S`` of ``op``'s parameters.

    ``masks`` maps parameter names (a subset of ``op.names``) to bool tensors of the
    parameter's shape; parameters without a mask are kept whole. ``dim = |S|``; ``dtype`` and
    ``device`` are ``op``'s; ``num_hvp`` counts calls (each is one HVP of ``op``).
    ``index`` holds the positions of ``S`` in ``op``'s flat vectors; :meth:`scatter`,
    :meth:`gather` and :meth:`unflatten` map between reduced and full vectors.
    """

    def __init__(self, op: HessianOperator, masks: Mapping[str, Tensor]) -> None:
        if not isinstance(op, HessianOperator):
            raise TypeError(f"op must be a HessianOperator, got {type(op).__name__}")
        if not isinstance(masks, Mapping):
            raise TypeError(
                f"masks must be a mapping parameter name -> bool tensor, got "
                f"{type(masks).__name__}"
            )
        unknown = [n for n in masks if n not in op.names]
        if unknown:
            raise ValueError(
                f"masks: {unknown} are not parameters of the operator; its parameters: "
                f"{op.names}"
            )
        keep = []
        for name, shape in zip(op.names, op.shapes):
            mask = masks.get(name)
            if mask is None:
                keep.append(torch.ones(shape.numel(), dtype=torch.bool, device=op.device))
                continue
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                got = getattr(mask, "dtype", type(mask).__name__)
                raise ValueError(f"mask '{name}' must be a bool tensor, got {got}")
            if mask.shape != shape:
                raise ValueError(
                    f"mask '{name}' has shape {tuple(mask.shape)}, the parameter has "
                    f"{tuple(shape)}"
                )
            keep.append(mask.reshape(-1).to(op.device))
        flat = torch.cat(keep)
        self.op = op
        self.names = list(op.names)
        self.masks = {n: m.view(s) for n, m, s in
                      zip(op.names, torch.split(flat, op.numels), op.shapes)}
        self.index = flat.nonzero().reshape(-1)
        self.dim = int(self.index.numel())
        if self.dim == 0:
            raise ValueError("masks keep no coordinates (every selected weight is pruned)")
        self.dtype, self.device = op.dtype, op.device
        self.kept = [int(m.sum()) for m in keep]  # kept coordinates per parameter
        self.num_hvp = 0

    def scatter(self, vector: Tensor) -> Tensor:
        """The full flat vector (length ``op.dim``) with ``vector`` on ``S`` and 0 elsewhere."""
        if vector.shape != (self.dim,):
            raise ValueError(
                f"expected a reduced vector of shape ({self.dim},), got {tuple(vector.shape)}"
            )
        full = torch.zeros(self.op.dim, dtype=self.dtype, device=self.device)
        full[self.index] = vector.to(dtype=self.dtype, device=self.device)
        return full

    def gather(self, full: Tensor) -> Tensor:
        """The ``S`` coordinates of a full flat vector (length ``op.dim``)."""
        if full.shape != (self.op.dim,):
            raise ValueError(
                f"expected a full vector of shape ({self.op.dim},), got {tuple(full.shape)}"
            )
        return full[self.index]

    def unflatten(self, vector: Tensor) -> tuple[Tensor, ...]:
        """A reduced vector as one tensor per parameter of ``names`` (0 at pruned entries)."""
        return self.op.unflatten(self.scatter(vector))

    def parameters_vector(self) -> Tensor:
        """The kept weights as one flat vector (a copy)."""
        return self.gather(self.op.parameters_vector())

    def __call__(self, vector: Tensor) -> Tensor:
        out = self.gather(self.op(self.scatter(vector)))
        self.num_hvp += 1
        return out


@dataclass(frozen=True)
class BlockCurvature:
    """Curvature of one diagonal Hessian block ``H[B, B]`` (units of the loss / weight^2).

    top_eigenvalue: its largest (algebraic) eigenvalue; eigenvalues: the k largest, descending.
    trace: Hutchinson estimate of ``tr H[B, B]``; trace_stderr: its standard error.
    converged: Lanczos met ``tol``. num_hvp: HVPs spent on this block (Lanczos + Hutchinson).
    """

    name: str
    names: tuple[str, ...]
    num_params: int
    top_eigenvalue: float
    eigenvalues: tuple[float, ...]
    trace: float
    trace_stderr: float
    converged: bool
    num_hvp: int


def default_blocks(model: nn.Module) -> dict[str, list[str]]:
    """One block per module that owns parameters directly, in model order: module name ->
    its parameter names (the root module's own parameters are block ``"<root>"``)."""
    blocks: dict[str, list[str]] = {}
    for mod_name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own:
            prefix = f"{mod_name}." if mod_name else ""
            blocks[mod_name or "<root>"] = [prefix + n for n in own]
    return blocks


def block_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    blocks: Mapping[str, Sequence[str]] | None = None,
    *,
    k: int = 1,
    trace_samples: int = 100,
    bn_mode: str = "eval",
    device: str | torch.device = "cpu",
    seed: int = 0,
    tol: float = 1e-6,
    masks: Mapping[str, Tensor] | None = None,
) -> list[BlockCurvature]:
    """Top-k eigenvalues (thick-restart Lanczos, residual ``<= tol * |lambda_max|``) and the
    Hutchinson trace (``trace_samples`` Rademacher vectors) of each diagonal Hessian block
    ``H[B, B]`` of the mean loss over ``batches``: the Hessian w.r.t. the block's parameters
    with every other parameter fixed (a :class:`HessianOperator` with ``params=`` the block).

    ``blocks``: name -> parameter names, in the order wanted (default :func:`default_blocks`).
    Lanczos and Hutchinson use ``seed`` in every block. The model is never changed.

    ``masks`` (keep-masks by parameter name, as for :class:`MaskedOperator`): each block is
    restricted to its unpruned coordinates, ``H[B & S, B & S]``, and ``num_params`` counts
    them; a block whose every coordinate is pruned is left out of the result.
    """
    if blocks is None:
        blocks = default_blocks(model)
    if not isinstance(blocks, Mapping) or not blocks:
        raise ValueError("blocks must be None or a non-empty mapping block name -> parameter "
                         f"names; got {blocks!r}")
    out = []
    for name, params in blocks.items():
        if isinstance(params, str) or not isinstance(params, Sequence) or not params:
            raise ValueError(f"blocks[{name!r}] must be a non-empty list of parameter names, "
                             f"got {params!r}")
        full = HessianOperator(model, loss_fn, batches, params=list(params), bn_mode=bn_mode,
                               device=device)
        sub = {n: m for n, m in (masks or {}).items() if n in full.names}
        if sub and not any(bool(m.any()) for m in sub.values()) and len(sub) == len(full.names):
            continue  # the whole block is pruned: an empty sub-matrix
        op = MaskedOperator(full, sub) if sub else full
        if isinstance(k, int) and not isinstance(k, bool) and k > op.dim:
            raise ValueError(f"k={k} exceeds the {op.dim} parameters of block {name!r}")
        top = lanczos_top_k(op, op.dim, k, dtype=op.dtype, device=op.device, which="LA",
                            tol=tol, seed=seed)
        trace = hutchinson_trace(op, op.dim, n_samples=trace_samples, seed=seed,
                                 dtype=op.dtype, device=op.device)
        values = tuple(float(v) for v in np.asarray(top.eigenvalues))
        out.append(BlockCurvature(
            name=str(name), names=tuple(op.names), num_params=op.dim,
            top_eigenvalue=values[0], eigenvalues=values, trace=trace.estimate,
            trace_stderr=trace.stderr, converged=top.converged, num_hvp=full.num_hvp,
        ))
    return out
