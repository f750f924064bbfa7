"""The Hessian on the unpruned weights (MaskedOperator) and per-block curvature, against a
float64 dense Hessian of a tiny CNN with BatchNorm in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from landscape.hessian import (
    BlockCurvature, HessianOperator, MaskedOperator, block_curvature, default_blocks,
    hessian_trace, hutchinson_trace, lanczos_quadrature, paper_spectrum, slq_density,
    spectral_density, top_eigenvalues,
)


class Net(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 1x1 -> ReLU -> GAP -> linear: 83 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(h)).mean((2, 3)))


LOSS = nn.CrossEntropyLoss()
BLOCKS = {"conv1": ["conv1.weight", "conv1.bias"], "bn": ["bn.weight", "bn.bias"],
          "conv2": ["conv2.weight", "conv2.bias"], "fc": ["fc.weight", "fc.bias"]}


def make_model() -> Net:
    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    model.train()  # the caller's mode; the Hessian is taken in eval mode
    return model


@pytest.fixture(scope="module")
def problem():
    """Model, batches (uneven) and the dense float64 Hessian of the mean loss, BN in eval."""
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    named = list(model.named_parameters())
    shapes, sizes = [p.shape for _, p in named], [p.numel() for _, p in named]
    buffers = dict(model.named_buffers())

    def loss(theta):
        parts = [t.view(s) for t, s in zip(torch.split(theta, sizes), shapes)]
        state = dict(zip([n for n, _ in named], parts)) | buffers
        return LOSS(functional_call(model, state, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for _, p in named])
    model.eval()
    hess = torch.autograd.functional.hessian(loss, theta)
    model.train()
    offsets = dict(zip([n for n, _ in named], np.cumsum([0] + sizes[:-1]).tolist()))
    ranges = {n: range(offsets[n], offsets[n] + s) for (n, _), s in zip(named, sizes)}
    return model, batches, hess, ranges


def random_masks(model: nn.Module, seed: int, names=("conv1.weight", "conv2.weight",
                                                     "fc.weight")) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=gen) < 0.5 for n in names}


def kept_index(model: nn.Module, masks) -> torch.Tensor:
    keep = [masks[n].reshape(-1) if n in masks else torch.ones(p.numel(), dtype=torch.bool)
            for n, p in model.named_parameters()]
    return torch.cat(keep).nonzero().reshape(-1)


def snapshot(model: nn.Module):
    return ([(n, m.training) for n, m in model.named_modules()],
            {n: t.clone() for n, t in model.state_dict(keep_vars=False).items()})


def assert_unchanged(model: nn.Module, before) -> None:
    modes, state = before
    assert [(n, m.training) for n, m in model.named_modules()] == modes
    after = model.state_dict()
    assert after.keys() == state.keys()
    for n, t in state.items():  # bit-identical
        assert torch.equal(after[n], t), n


def top_desc(matrix: torch.Tensor, k: int) -> np.ndarray:
    return np.sort(np.linalg.eigvalsh(matrix.numpy()))[::-1][:k]


# ------------------------------------------------------------------ MaskedOperator


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_matvec_is_the_dense_sub_matrix(problem, seed):
    model, batches, hess, _ = problem
    masks = random_masks(model, seed)
    op = HessianOperator(model, LOSS, batches)
    mop = MaskedOperator(op, masks)
    s = kept_index(model, masks)
    assert mop.dim == len(s) == sum(mop.kept) < op.dim
    assert (mop.dtype, mop.device, mop.names) == (op.dtype, op.device, op.names)
    sub = hess[s][:, s]
    v = torch.randn(mop.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(mop(v), sub @ v, rtol=1e-10, atol=1e-12)
    assert mop.num_hvp == op.num_hvp == 1


def test_scatter_gather_unflatten_round_trip(problem):
    model, batches, _, _ = problem
    masks = random_masks(model, 3)
    mop = MaskedOperator(HessianOperator(model, LOSS, batches), masks)
    v = torch.arange(1.0, mop.dim + 1, dtype=torch.float64)
    full = mop.scatter(v)
    torch.testing.assert_close(mop.gather(full), v, rtol=0, atol=0)
    parts = dict(zip(mop.names, mop.unflatten(v)))
    for name, mask in masks.items():
        assert torch.all(parts[name][~mask] == 0) and torch.all(parts[name][mask] != 0)
    assert torch.all(parts["fc.bias"] != 0)  # unmasked: kept whole
    kept = torch.cat([p.detach().reshape(-1) for p in model.parameters()])[kept_index(model, masks)]
    torch.testing.assert_close(mop.parameters_vector(), kept, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["lanczos", "scipy"])
def test_masked_top_k_equals_dense_sub_matrix_eigenvalues(problem, backend):
    model, batches, hess, _ = problem
    masks = random_masks(model, 7)
    mop = MaskedOperator(HessianOperator(model, LOSS, batches), masks)
    s = kept_index(model, masks)
    res = top_eigenvalues(mop, 3, backend=backend, tol=1e-12)
    exact = top_desc(hess[s][:, s], 3)
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-8)
    assert res.converged and res.num_hvp == mop.num_hvp
    # The sub-matrix is not the full Hessian: its top eigenvalue is strictly smaller here.
    assert exact[0] < top_desc(hess, 1)[0] * (1 - 1e-3)


def test_all_true_masks_give_the_full_hessian(problem):
    model, batches, hess, _ = problem
    op = HessianOperator(model, LOSS, batches)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    mop = MaskedOperator(op, masks)
    assert mop.dim == op.dim
    res = top_eigenvalues(mop, 4, tol=1e-12)
    np.testing.assert_allclose(res.eigenvalues, top_desc(hess, 4), rtol=1e-8)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(mop(v), op(v), rtol=0, atol=0)


def test_masked_on_a_parameter_subset_operator(problem):
    model, batches, hess, ranges = problem
    names = ["conv2.weight", "conv2.bias", "fc.weight"]
    op = HessianOperator(model, LOSS, batches, params=names)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, :2] = True
    mop = MaskedOperator(op, {"fc.weight": mask})
    full = torch.cat([torch.tensor(list(ranges[n])) for n in names])
    keep = torch.cat([torch.ones(len(ranges["conv2.weight"]) + 4, dtype=torch.bool),
                      mask.reshape(-1)])
    s = full[keep]
    v = torch.randn(mop.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(mop(v), hess[s][:, s] @ v, rtol=1e-10, atol=1e-12)


def test_trace_density_and_paper_spectrum_accept_a_masked_operator(problem):
    model, batches, hess, _ = problem
    masks = random_masks(model, 11)
    mop = MaskedOperator(HessianOperator(model, LOSS, batches), masks)
    s = kept_index(model, masks)
    sub = hess[s][:, s]

    def dense(v):
        return sub @ v

    # Same seeds, same random vectors: the results equal the dense sub-matrix's up to rounding.
    tr = hessian_trace(mop, n_samples=6, seed=4)
    ref = hutchinson_trace(dense, mop.dim, n_samples=6, seed=4)
    assert tr.estimate == pytest.approx(ref.estimate, rel=1e-10)
    assert tr.stderr == pytest.approx(ref.stderr, rel=1e-8)
    dens = spectral_density(mop, n_runs=2, n_iter=8, seed=5)
    ref_d = slq_density(dense, mop.dim, n_runs=2, n_iter=8, seed=5)
    np.testing.assert_allclose(dens.nodes, ref_d.nodes, rtol=1e-8, atol=1e-10)
    paper = paper_spectrum(mop, n_iter=mop.dim)  # a full run: the exact eigenvalues it touches
    ref_p = lanczos_quadrature(dense, torch.ones(mop.dim, dtype=torch.float64), mop.dim)
    np.testing.assert_allclose(paper.nodes, ref_p.nodes, rtol=1e-8, atol=1e-10)
    ones = torch.ones(mop.dim, dtype=torch.float64)
    assert (paper.weights * paper.nodes).sum() == pytest.approx(
        float(ones @ sub @ ones) / mop.dim, rel=1e-8)  # u^T A u for the unit all-ones u
    assert mop.num_hvp == tr.num_hvp + dens.num_hvp + paper.num_hvp


def test_masked_operator_errors(problem):
    model, batches, _, _ = problem
    op = HessianOperator(model, LOSS, batches)
    good = torch.ones(4, 1, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mask 'conv1.weight' has shape \(4, 9\)"):
        MaskedOperator(op, {"conv1.weight": good.reshape(4, 9)})
    with pytest.raises(ValueError, match="mask 'conv1.weight' must be a bool tensor, got "
                                         "torch.float64"):
        MaskedOperator(op, {"conv1.weight": good.double()})
    with pytest.raises(ValueError, match="mask 'fc.bias' must be a bool tensor, got list"):
        MaskedOperator(op, {"fc.bias": [True, True, True]})
    with pytest.raises(ValueError, match=r"\['fc.nope'\] are not parameters of the operator"):
        MaskedOperator(op, {"fc.nope": good})
    sub = HessianOperator(model, LOSS, batches, params=["fc.weight"])
    with pytest.raises(ValueError, match=r"\['conv1.weight'\] are not parameters"):
        MaskedOperator(sub, {"conv1.weight": good})
    with pytest.raises(ValueError, match="keep no coordinates"):
        MaskedOperator(sub, {"fc.weight": torch.zeros(3, 4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="op must be a HessianOperator"):
        MaskedOperator(model, {})
    with pytest.raises(TypeError, match="masks must be a mapping"):
        MaskedOperator(op, [good])
    mop = MaskedOperator(op, {"conv1.weight": good})
    with pytest.raises(ValueError, match="backend 'pyhessian' needs a HessianOperator"):
        top_eigenvalues(mop, 1, backend="pyhessian")
    with pytest.raises(ValueError, match=r"expected a reduced vector of shape \(83,\)"):
        mop(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="op must be a HessianOperator .* or a MaskedOperator"):
        top_eigenvalues(model, 1)


# ------------------------------------------------------------------ block curvature


def test_default_blocks_are_modules_in_model_order(problem):
    model = problem[0]
    assert default_blocks(model) == BLOCKS

    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2))
            self.lin = nn.Linear(2, 2)

    assert default_blocks(Root()) == {"<root>": ["scale"], "lin": ["lin.weight", "lin.bias"]}


def test_block_curvature_matches_dense_diagonal_blocks(problem):
    model, batches, hess, ranges = problem
    before = snapshot(model)
    n_samples = 300
    out = block_curvature(model, LOSS, batches, k=2, trace_samples=n_samples, seed=3,
                          tol=1e-12)
    assert_unchanged(model, before)
    assert [b.name for b in out] == list(BLOCKS)
    for b in out:
        assert isinstance(b, BlockCurvature) and b.names == tuple(BLOCKS[b.name])
        idx = torch.cat([torch.tensor(list(ranges[n])) for n in b.names])
        block = hess[idx][:, idx]
        assert b.num_params == len(idx)
        exact = top_desc(block, 2)
        np.testing.assert_allclose(b.eigenvalues, exact, rtol=1e-8, atol=1e-12)
        assert b.top_eigenvalue == b.eigenvalues[0] and b.converged
        # Same seed, same Rademacher vectors: exactly the dense block's Hutchinson estimate ...
        ref = hutchinson_trace(lambda v, a=block: a @ v, len(idx), n_samples=n_samples, seed=3)
        assert b.trace == pytest.approx(ref.estimate, rel=1e-9, abs=1e-12)
        # ... which is within 4 standard errors of the exact trace.
        exact_trace = float(block.trace())
        assert abs(b.trace - exact_trace) <= 4 * b.trace_stderr + 1e-12
        assert b.num_hvp >= n_samples + 2


def test_block_curvature_custom_blocks_and_train_mode_bn(problem):
    model, batches, _, _ = problem
    blocks = {"head": ["fc.bias", "fc.weight"], "affine": ["bn.weight", "bn.bias"]}
    before = snapshot(model)
    out = block_curvature(model, LOSS, batches, blocks, bn_mode="train", trace_samples=4,
                          tol=1e-10)
    assert_unchanged(model, before)
    assert [b.name for b in out] == ["head", "affine"]
    assert out[0].names == ("fc.weight", "fc.bias")  # model order inside a block
    for b in out:
        op = HessianOperator(model, LOSS, batches, params=list(b.names), bn_mode="train")
        ref = top_eigenvalues(op, 1, tol=1e-10)
        assert b.top_eigenvalue == pytest.approx(ref.eigenvalues[0], rel=1e-8)
    # BatchNorm's mode matters: batch statistics give another BN-affine block.
    affine_eval = block_curvature(model, LOSS, batches, blocks, trace_samples=4, tol=1e-10)[1]
    assert out[1].top_eigenvalue != pytest.approx(affine_eval.top_eigenvalue, rel=1e-3)


def test_block_curvature_errors(problem):
    model, batches, _, _ = problem
    with pytest.raises(ValueError, match="blocks must be None or a non-empty mapping"):
        block_curvature(model, LOSS, batches, {})
    with pytest.raises(ValueError, match=r"blocks\['a'\] must be a non-empty list"):
        block_curvature(model, LOSS, batches, {"a": []})
    with pytest.raises(ValueError, match=r"blocks\['a'\] must be a non-empty list"):
        block_curvature(model, LOSS, batches, {"a": "fc.bias"})
    with pytest.raises(ValueError, match="unknown parameter names"):
        block_curvature(model, LOSS, batches, {"a": ["fc.nope"]})
    with pytest.raises(ValueError, match="k=4 exceeds the 3 parameters of block 'a'"):
        block_curvature(model, LOSS, batches, {"a": ["fc.bias"]}, k=4)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 2"):
        block_curvature(model, LOSS, batches, {"a": ["fc.bias"]}, trace_samples=1)
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        block_curvature(model, LOSS, batches, bn_mode="frozen")


def test_masked_block_curvature_is_the_dense_block_on_the_kept_coordinates(problem):
    model, batches, hess, ranges = problem
    masks = random_masks(model, seed=7)
    masks["conv2.weight"] = torch.zeros_like(masks["conv2.weight"])  # conv2: only its bias left
    blocks = {**BLOCKS, "gone": ["conv2.weight"]}  # every coordinate pruned: left out
    before = snapshot(model)
    out = block_curvature(model, LOSS, batches, blocks, k=1, trace_samples=200, seed=5,
                          tol=1e-12, masks=masks)
    assert_unchanged(model, before)
    assert [b.name for b in out] == list(BLOCKS)
    for b in out:
        idx = torch.cat([torch.tensor(list(ranges[n]))[masks[n].reshape(-1)] if n in masks
                         else torch.tensor(list(ranges[n])) for n in b.names])
        block = hess[idx][:, idx]
        assert b.num_params == len(idx)
        np.testing.assert_allclose(b.eigenvalues, top_desc(block, 1), rtol=1e-8, atol=1e-12)
        ref = hutchinson_trace(lambda v, a=block: a @ v, len(idx), n_samples=200, seed=5)
        assert b.trace == pytest.approx(ref.estimate, rel=1e-9, abs=1e-12)
