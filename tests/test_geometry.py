"""Loss-landscape geometry against closed forms: filter norms, the parabola of a quadratic loss,
the slice at the origin, exact restoration of the weights, barriers."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.geometry import (
    WeightShift, check_same_architecture, direction_from_vector, direction_parameters,
    evaluate_batches, linear_path, loss_barrier, loss_slice, normalise, random_direction,
)
from landscape.hessian import HessianOperator
from landscape.models import create_model
from landscape.pruning import recalibrate_bn


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=4, in_channels=1, width=0.5).double()
    for m in model.modules():  # BN statistics away from their init: eval differs from train
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def batches(seed: int = 1, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 12, 12, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_filter_normalised_directions_have_the_filter_norms_of_the_weights():
    model = small_cnn()
    d = random_direction(model, seed=3)
    params = dict(model.named_parameters())
    assert set(d) == {n for n, p in params.items() if p.dim() >= 2}  # no bias, no BN
    for name, t in d.items():
        np.testing.assert_allclose(t.flatten(1).norm(dim=1).numpy(),
                                   params[name].detach().flatten(1).norm(dim=1).numpy(),
                                   rtol=1e-12)
    layer = normalise(d, model, "layer")
    for name, t in layer.items():
        assert float(t.norm()) == pytest.approx(float(params[name].detach().norm()), rel=1e-12)
    with_bn = random_direction(model, seed=3, include_bn_bias=True)
    assert set(with_bn) == set(params)
    assert torch.equal(random_direction(model, seed=3)[next(iter(d))], d[next(iter(d))])


def test_the_slice_at_the_origin_is_the_evaluated_loss_and_the_weights_come_back_exactly():
    model, data = small_cnn(), batches()
    before = state(model)
    d1, d2 = random_direction(model, seed=1), random_direction(model, seed=2)
    s = loss_slice(model, data, [d1, d2], [[-1.0, 0.0, 0.5], [0.0, 0.25]])
    loss, acc = evaluate_batches(model, data)
    assert s.loss.shape == (3, 2) and s.loss[1, 0] == loss and s.accuracy[1, 0] == acc
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    one = loss_slice(model, data, [d1], [[-1.0, 0.0, 0.5]])
    np.testing.assert_array_equal(one.loss, s.loss[:, 0])  # the b = 0 column of the plane
    rec = loss_slice(model, data, [d1], [[0.5]], bn="recalibrated", bn_batches=data)
    # the statistics were recomputed at the point, on bn_batches...
    point = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in point.named_parameters():
            if name in d1:
                p.add_(0.5 * d1[name])
    assert evaluate_batches(point, data)[0] == pytest.approx(s.loss[2, 0], rel=1e-12)
    recalibrate_bn(point, data)
    assert rec.loss[0] == pytest.approx(evaluate_batches(point, data)[0], rel=1e-12)
    assert rec.loss[0] != pytest.approx(s.loss[2, 0], rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # ...and put back


class Regression(nn.Module):
    """Linear map, MSE loss: quadratic in the weights with Hessian 2/(n q) X^T X per output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.lin(x)


def test_a_quadratic_losss_slice_is_the_parabola_of_its_hessian_along_the_direction():
    torch.manual_seed(0)
    model = Regression().double()
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(16, 5, generator=g, dtype=torch.float64),
             torch.randn(16, 3, generator=g, dtype=torch.float64)) for _ in range(2)]
    d = random_direction(model, seed=4, normalisation="none")
    alphas = np.linspace(-2, 2, 9)
    s = loss_slice(model, data, [d], [alphas], loss_fn=F.mse_loss)
    op = HessianOperator(model, F.mse_loss, data)
    v = torch.cat([d[n].reshape(-1) for n in op.names])
    l0, grad = op.loss(), op.gradient()
    curvature = float(v @ op(v))
    expected = l0 + alphas * float(grad @ v) + 0.5 * alphas ** 2 * curvature
    np.testing.assert_allclose(s.loss, expected, rtol=1e-10)
    assert np.isnan(s.accuracy).all()  # regression targets: no accuracy


def test_a_hessian_eigenvector_becomes_a_direction():
    model, data = small_cnn(), batches()
    names = direction_parameters(model)
    op = HessianOperator(model, F.cross_entropy, data, params=names)
    vec = torch.randn(op.dim, dtype=torch.float64)
    d = direction_from_vector(model, names, vec)
    assert torch.equal(torch.cat([d[n].reshape(-1) for n in names]), vec)
    with pytest.raises(ValueError, match="flat with"):
        direction_from_vector(model, names, vec[:-1])


def test_barrier_of_a_network_with_itself_is_zero_and_the_ends_are_the_networks():
    a, b, data = small_cnn(0), small_cnn(1), batches()
    for bn in ("recalibrated", "interpolated"):
        same = linear_path(a, a, data, np.linspace(0, 1, 5), bn=bn, bn_batches=data)
        assert same.barrier == pytest.approx(0.0, abs=1e-12)
    path = linear_path(a, b, data, [0.0, 0.5, 1.0], bn="interpolated")
    assert path.loss[0] == evaluate_batches(a, data)[0]
    assert path.loss[2] == evaluate_batches(b, data)[0]
    mid = copy.deepcopy(a)  # the midpoint by hand: weights and BN buffers averaged
    sb = b.state_dict()
    mid.load_state_dict({k: 0.5 * (v + sb[k]) if v.is_floating_point() else v
                         for k, v in a.state_dict().items()})
    assert path.loss[1] == pytest.approx(evaluate_batches(mid, data)[0], rel=1e-12)
    recal = linear_path(a, b, data, [0.5], bn="recalibrated", bn_batches=data[:2])
    recalibrate_bn(mid, data[:2])  # ...or its statistics recomputed on the bn batches
    assert recal.loss[0] == pytest.approx(evaluate_batches(mid, data)[0], rel=1e-12)
    excess = path.loss[1] - 0.5 * (path.loss[0] + path.loss[2])
    assert path.barrier == pytest.approx(max(0.0, excess))  # the ends count: never below 0


def test_loss_barrier_closed_form_and_errors():
    assert loss_barrier([0, 0.25, 0.5, 1], [1.0, 2.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert loss_barrier([0, 1], [2.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="both ends"):
        loss_barrier([0.1, 1.0], [1.0, 1.0])


def test_bad_inputs_are_clear_errors():
    model, data = small_cnn(), batches()
    d = random_direction(model, seed=1)
    wrong = {k: v[..., :1] for k, v in d.items()}
    with pytest.raises(ValueError, match=r"direction\[.*\] has shape"):
        loss_slice(model, data, [wrong], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="range of zero width"):
        loss_slice(model, data, [d], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="not a parameter"):
        loss_slice(model, data, [{"nope": torch.zeros(1)}], [[0.0]])
    with pytest.raises(ValueError, match="needs bn_batches"):
        loss_slice(model, data, [d], [[0.0]], bn="recalibrated")
    other = create_model("small_cnn", num_classes=4, in_channels=1, width=1.0).double()
    with pytest.raises(ValueError, match="different architectures"):
        check_same_architecture(model, other)
    with pytest.raises(ValueError, match="normalisation must be one of"):
        random_direction(model, seed=0, normalisation="unit")


def test_weight_shift_restores_bit_identically_after_many_points():
    model = small_cnn()
    before = state(model)
    d1, d2 = random_direction(model, seed=5), random_direction(model, seed=6)
    with WeightShift(model, [d1, d2]) as shift:
        for a in np.linspace(-1, 1, 7):
            shift.set((a, 1 - a))
        shift.set((0.0, 0.0))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        shift.set((0.3, -0.2))
        moved = copy.deepcopy(model.state_dict())
    assert not all(torch.equal(before[k], moved[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the stages ---------------------------------------------------------------------------------
def test_slice_and_connectivity_stages_write_coordinates_and_barriers(tmp_path):
    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.stages.connectivity import ConnectivityConfig
    from landscape.stages.sharpness import SharpnessConfig
    from landscape.stages.slices import SliceConfig
    from landscape.train import TrainConfig

    def cfg(seed: int, **kw) -> RunConfig:
        return RunConfig(model=ModelConfig(name="small_cnn", width=0.25, pool_level=1),
                         data=DataConfig(name="synthetic", train_subset=64, test_subset=32),
                         train=TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=seed,
                         results_root=str(tmp_path), device="cpu", num_threads=1,
                         progress=False, report=False, **kw)

    sl = SliceConfig(enabled=True, points_1d=5, points_2d=3, n_samples=48, batch_size=16)
    conn = ConnectivityConfig(enabled=True, points=5, n_samples=48, batch_size=16)
    sharp = SharpnessConfig(enabled=True, steps=3, n_samples=48, batch_size=16)
    for seed in (0, 1):
        summary = pipeline.run(cfg(seed, slice=sl, connectivity=conn, sharpness=sharp))
        assert {"slice_1d_final", "slice_2d_final", "sharpness_final"} <= set(summary.ran)
    (cell,) = pipeline.run_cells(tmp_path, overrides=cfg(0, slice=sl, connectivity=conn))
    assert cell.ran == ["connectivity_final"]
    df = results.load(tmp_path)
    one = df[(df.stage == "slice_1d_final") & (df.metric == "slice_loss") & (df.seed == 0)]
    assert one["coord_x"].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0] and one["coord_y"].isna().all()
    two = df[(df.stage == "slice_2d_final") & (df.metric == "slice_loss") & (df.seed == 0)]
    assert len(two) == 9 and set(two["coord_y"]) == {-1.0, 0.0, 1.0}
    origin = two[(two.coord_x == 0) & (two.coord_y == 0)]["value"].item()
    assert origin == one[one.coord_x == 0]["value"].item()  # the same weights, the same data
    barrier = df[df.metric == "loss_barrier"]
    assert len(barrier) == 1 and (barrier["seed"].item(), barrier["seed_b"].item()) == (0, 1)
    assert barrier["value"].item() >= 0
    path = df[df.metric == "path_loss"].sort_values("coord_x")
    assert path["coord_x"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    ends = path["value"].to_numpy()
    assert barrier["value"].item() == pytest.approx(
        max(0.0, (ends - (ends[0] + (ends[-1] - ends[0]) * path["coord_x"].to_numpy())).max()))
    sh = df[df.stage == "sharpness_final"].set_index(["seed", "metric"])["value"]
    assert len(sh) == 10 and (sh >= 0).all()
    for seed in (0, 1):  # the measured losses are rows; the notes hold settings only
        for kind in ("adaptive", "standard"):
            assert sh[seed, f"{kind}_perturbed_loss"] - sh[seed, "sharpness_loss"] == \
                pytest.approx(sh[seed, f"{kind}_sharpness"], rel=1e-6)
    notes = df[df.metric == "adaptive_sharpness"]["note"]
    assert "rho=0.5" in notes.iloc[0] and notes.nunique() == 1 and "loss" not in notes.iloc[0]
    from landscape.grid import write_root_report

    md = write_root_report(tmp_path).read_text()
    assert "loss barrier between seeds" in md and "worst-case sharpness" in md
    assert "small_cnn-w0.25-synthetic-slice-2d-final.png" in md
    with pytest.raises(ValueError, match="needs 2601 loss evaluations, over slice.max_points"):
        pipeline.run(cfg(2, slice=SliceConfig(enabled=True, points_2d=51, max_points=2600)))


def test_pruned_network_geometry_in_the_prune_and_finetune_units(tmp_path):
    """The pruned Hessian of a prune unit is the masked operator of the checkpoint pruned by
    its saved masks; the dense -> pruned path starts at the checkpoint; fine-tuned networks get
    the same rows; changing only the geometry settings recomputes the units visibly."""
    from torch.nn import functional as F

    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.geometry import evaluate_batches
    from landscape.hessian import HessianOperator, MaskedOperator, top_eigenvalues
    from landscape.identity import identify
    from landscape.pruning import recalibrate_bn
    from landscape.stages.prune import PruneConfig
    from landscape.storage import load_checkpoint
    from landscape.train import TrainConfig

    def cfg(prune: PruneConfig) -> RunConfig:
        return RunConfig(model=ModelConfig(name="small_cnn", width=0.25, pool_level=1),
                         data=DataConfig(name="synthetic", train_subset=64, test_subset=32),
                         train=TrainConfig(epochs=1, batch_size=32, lr=0.05),
                         results_root=str(tmp_path), device="cpu", num_threads=1,
                         progress=False, report=False, prune=prune)

    geometry = dict(hessian_k=3, hessian_blocks=True, hessian_trace_samples=3,
                    hessian_tol=1e-5, path_points=3, geometry_samples=40,
                    geometry_batch_size=16)
    p = PruneConfig(enabled=True, rates=[0.0, 0.8], finetune=True, finetune_epochs=1,
                    finetune_lr=0.01, **geometry)
    summary = pipeline.run(cfg(p))
    df = results.load(tmp_path)
    df = df[df.stage.isin(["prune", "finetune"])].astype({"finetuned": bool})
    eig = df[df.metric == "pruned_hessian_eigenvalue"]
    assert set(zip(eig.prune_rate, eig.finetuned)) == {(0.0, False), (0.8, False), (0.0, True),
                                                       (0.8, True)}
    assert (eig.groupby(["prune_rate", "finetuned"])["index"].apply(list) == [[1, 2, 3]] * 4).all()
    # oracle: the checkpoint, pruned by the unit's saved masks, on the same 40 images
    run_dir = Path(summary.run_dir)
    unit = next(u for u in summary.ran if u.startswith("prune_magnitude_0.8"))
    masks = {k: torch.from_numpy(v) for k, v in results.read_arrays(run_dir, unit).items()}
    model = identify(cfg(p)).build_model()
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"])
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for k, m in masks.items():
            model.state_dict()[k].mul_(m)
    from landscape.data import load_dataset
    data = load_dataset(cfg(p).data)
    x = torch.stack([data.train_eval[i][0] for i in range(40)])
    y = torch.tensor([int(data.train_eval[i][1]) for i in range(40)])
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    f64 = copy.deepcopy(model).double()
    mop = MaskedOperator(HessianOperator(f64, F.cross_entropy,
                                         [(a.double(), b) for a, b in batches]), masks)
    ref = top_eigenvalues(mop, 3, tol=1e-10).eigenvalues
    ours = eig[(eig.prune_rate == 0.8) & ~eig.finetuned].sort_values("index")
    np.testing.assert_allclose(ours["value"].to_numpy(), ref, rtol=1e-4)
    dim = df[(df.metric == "pruned_hessian_dim") & (df.prune_rate == 0.8)
             & ~df.finetuned]["value"].item()
    assert dim == mop.dim == sum(p.numel() for p in model.parameters()) - sum(
        int((~m).sum()) for m in masks.values())
    blocks = df[(df.metric == "block_hessian_eigenvalue") & (df.prune_rate == 0.8)]
    assert set(blocks.layer) <= {n for n, _ in model.named_modules()} and len(blocks) == 2 * len(
        set(blocks.layer))
    # the path: alpha 0 is the dense checkpoint (BN recalibrated on the same images), alpha 1
    # the pruned network; at rate 0 the two ends are the same network
    path = df[(df.metric == "dense_path_loss") & (df.prune_rate == 0.8)
              & ~df.finetuned].sort_values("coord_x")
    assert path["coord_x"].tolist() == [0.0, 0.5, 1.0]
    model.load_state_dict(dense_state)
    recalibrate_bn(model, batches, "cpu")
    assert path["value"].iloc[0] == pytest.approx(evaluate_batches(model, batches)[0], rel=1e-5)
    zero = df[(df.metric == "dense_path_barrier") & (df.prune_rate == 0.0)
              & ~df.finetuned]["value"].item()
    assert zero == pytest.approx(0.0, abs=1e-6)
    assert "Hessians: BN in eval mode" in df[df.metric == "pruned_hessian_dim"]["note"].iloc[0]
    from landscape.grid import write_root_report

    md = write_root_report(tmp_path).read_text()
    assert "curvature of the pruned networks, criterion magnitude" in md
    assert "small_cnn-w0.25-synthetic-pruned-curvature-magnitude.png" in md
    # geometry settings are not in the unit names: a change recomputes the same units
    again = pipeline.run(cfg(PruneConfig(**{**p.__dict__, "hessian_k": 2})))
    assert sorted(u.split("_")[0] for u in again.ran) == ["finetune"] * 2 + ["prune"] * 2
    with pytest.raises(ValueError, match="prune.path_points must be 0"):
        pipeline.run(cfg(PruneConfig(enabled=True, path_points=1)))
    with pytest.raises(ValueError, match="prune.path_points needs unstructured pruning"):
        pipeline.run(cfg(PruneConfig(enabled=True, structured=True, path_points=3)))


def test_model_normalisation_keeps_the_direction_and_takes_the_weights_norm():
    model = create_model("small_cnn", width=0.25, pool_level=1, num_classes=3)
    d = random_direction(model, seed=3, normalisation="none", include_bn_bias=True)
    out = normalise(d, model, "model")
    params = dict(model.named_parameters())
    w_norm = torch.sqrt(sum(params[n].detach().double().square().sum() for n in d))
    o_norm = torch.sqrt(sum(t.double().square().sum() for t in out.values()))
    assert float(o_norm) == pytest.approx(float(w_norm), rel=1e-6)
    ratio = {n: float((out[n].double() / d[n].double()).flatten()[0]) for n in d}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-6)  # parallel


def test_slices_along_the_saved_hessian_eigenvectors(tmp_path):
    """The saved rows are unit eigenvectors of the Hessian of the slice's own loss (same
    images, BN in eval mode): H v = lambda v; the slice moves the weights along ||w|| v.
    (A second difference of the loss is no oracle for lambda here: ReLU and max-pool kinks
    add a curvature that does not vanish as the step shrinks.)"""
    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.stages.hessian import HessianConfig
    from landscape.stages.slices import SliceConfig
    from landscape.train import TrainConfig

    def cfg(**kw) -> RunConfig:
        return RunConfig(model=ModelConfig(name="small_cnn", width=0.25, pool_level=1),
                         data=DataConfig(name="synthetic", train_subset=64, test_subset=32),
                         train=TrainConfig(epochs=1, batch_size=32, lr=0.05),
                         results_root=str(tmp_path), device="cpu", num_threads=1,
                         progress=False, report=False, **kw)

    h = HessianConfig(enabled=True, checkpoints=["final"], k=2, n_samples=48, batch_size=16,
                      density_runs=0, trace_samples=0, tol=1e-6, save_eigenvectors=2)
    sl = SliceConfig(enabled=True, directions=["random", "hessian"], hessian_span=0.001,
                     points_1d=3, points_2d=3, n_samples=48, batch_size=16)
    summary = pipeline.run(cfg(hessian=h, slice=sl))
    assert {"slice_1d_final", "slice_2d_final", "slice_hessian_1d_final",
            "slice_hessian_2d_final"} <= set(summary.ran)
    run_dir = Path(summary.run_dir)
    saved = results.read_arrays(run_dir, "hessian_final")
    assert saved["eigenvectors"].shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(saved["eigenvectors"], axis=1), 1, rtol=1e-5)
    df = results.load(tmp_path)
    lam = df[(df.metric == "hessian_eigenvalue")].sort_values("index")["value"].to_numpy()
    from landscape.data import load_dataset
    from landscape.identity import identify
    from landscape.storage import load_checkpoint

    model = identify(cfg()).build_model()
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"])
    data = load_dataset(cfg().data)
    x = torch.stack([data.train_eval[i][0] for i in range(48)])
    y = torch.tensor([int(data.train_eval[i][1]) for i in range(48)])
    batches = [(x[i:i + 16], y[i:i + 16]) for i in (0, 16, 32)]
    names = [str(n) for n in saved["names"]]
    op = HessianOperator(model, F.cross_entropy, batches, params=names)
    for i in range(2):
        v = torch.from_numpy(saved["eigenvectors"][i]).to(op.dtype)
        assert float((op(v) - lam[i] * v).norm()) <= 1e-3 * abs(lam[0])
    one = df[(df.stage == "slice_hessian_1d_final") & (df.metric == "slice_loss")]
    loss = one.sort_values("coord_x")["value"].to_numpy(float)
    d = normalise(direction_from_vector(model, names, torch.from_numpy(
        saved["eigenvectors"][0])), model, "model")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in d:
                p.add_(0.001 * d[n])
    model.eval()
    assert loss[2] == pytest.approx(evaluate_batches(model, batches)[0], rel=1e-6)
    assert "hessian eigenvectors 1..1" in one["note"].iloc[0] and "span=0.001" in one["note"].iloc[0]
    from landscape.grid import write_root_report

    md = write_root_report(tmp_path).read_text()
    assert "small_cnn-w0.25-synthetic-slice-hessian-2d-final.png" in md
    # eigenvectors missing: one clear error naming the settings to change
    with pytest.raises(ValueError, match="hessian.save_eigenvectors>=1"):
        pipeline.run(cfg(seed=1, slice=SliceConfig(enabled=True, directions=["hessian"],
                                                   dims=[1], points_1d=3, n_samples=16)))
    with pytest.raises(ValueError, match="slice.directions must be a non-empty subset"):
        pipeline.run(cfg(seed=1, slice=SliceConfig(enabled=True, directions=["hesian"])))
    with pytest.raises(ValueError, match="hessian.save_eigenvectors must be in 0..hessian.k=2"):
        pipeline.run(cfg(seed=1, hessian=HessianConfig(enabled=True, k=2, save_eigenvectors=3)))


@pytest.mark.parametrize("stage_name, fields, sizes", [
    ("slice", {"bn": "recalibrated"}, ("n_samples", "batch_size")),
    ("connectivity", {}, ("n_samples", "batch_size")),
    ("prune", {"path_points": 3}, ("geometry_samples", "geometry_batch_size")),
])
def test_a_recalibrating_unit_of_unequal_batches_written_before_is_recomputed(
        tmp_path, stage_name, fields, sizes):
    """BN recalibration weighted every batch alike before it became example-weighted (as the
    Hessian's): a unit whose batches were equal measured the same statistics and is kept; one
    whose last batch was smaller is recomputed (its marker lacks ``bn_recalibration``)."""
    import dataclasses

    from landscape import results
    from landscape.config import RunConfig
    from landscape.stages.base import STAGES

    stage = STAGES.get(stage_name)
    out_dir = tmp_path / "cell-a" / "seed=0"
    n, batch = sizes
    for (n_value, batch_value), marked in (((64, 32), False), ((100, 32), True)):
        config = dataclasses.replace(getattr(RunConfig(), stage.config_field), **fields,
                                     **{n: n_value, batch: batch_value})
        now = stage.recorded_settings(config)
        assert ("bn_recalibration" in now) == marked
        old = {k: v for k, v in now.items() if k != "bn_recalibration"}
        results.write_stage(out_dir, "unit", [], info={"settings": old})
        reason = stage.stale_reason(config, out_dir, "unit")
        assert reason == ("settings changed: bn_recalibration None -> 'per example'"
                          if marked else None)
        results.write_stage(out_dir, "unit", [], info={"settings": now})
        assert stage.stale_reason(config, out_dir, "unit") is None
    if stage_name == "prune":  # its recalibration on the whole training split, of any size
        config = dataclasses.replace(config, path_points=0, recalibrate_bn=True)
        assert stage.recorded_settings(config)["bn_recalibration"] == "per example"
    else:  # no recalibration, nothing recorded
        off = "eval" if stage_name == "slice" else "interpolated"
        config = dataclasses.replace(config, bn=off)
        assert "bn_recalibration" not in stage.recorded_settings(config)
