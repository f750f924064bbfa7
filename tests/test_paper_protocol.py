"""The paper protocol through the stages: best checkpoint, pruning of it, fine-tuning last and
best, the Hessian, CKA and importance procedures, the presets' consistency checks, the
experiments (paper_small end to end, paper_cifar10's dry run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landscape import pipeline, results
from landscape.cli import submit
from landscape.config import ModelConfig, RunConfig
from landscape.data import DataConfig, load_dataset
from landscape.models import create_model
from landscape.stages.cka import CKAConfig, cka_rows
from landscape.stages.hessian import HessianConfig
from landscape.stages.importance import ImportanceConfig
from landscape.stages.prune import PruneConfig
from landscape.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
PAPER_PRUNE = dict(enabled=True, protocol="paper", checkpoint="best", rates=[0.5],
                   exclude_first_conv=True, exclude_classifier=True)


def tiny(root: Path, seed: int = 0, **kw) -> RunConfig:
    base = dict(model=ModelConfig(name="vgg19", width=0.0625, pool_level=1),
                data=DataConfig(name="synthetic", train_subset=96, test_subset=48),
                train=TrainConfig(epochs=3, batch_size=32, lr=0.05), seed=seed,
                results_root=str(root), device="cpu", num_threads=1, progress=False,
                report=False)
    return RunConfig(**{**base, **kw})


def rows(root: Path, **where) -> "object":
    df = results.load(root)
    for k, v in where.items():
        df = df[df[k] == v]
    return df


def test_best_checkpoint_is_kept_and_pruned_with_its_own_dense_accuracy(tmp_path):
    cfg = tiny(tmp_path, prune=PruneConfig(**PAPER_PRUNE, finetune=True, finetune_epochs=2))
    with pytest.raises(ValueError, match=r"prune.protocol=paper is the released procedure, "
                                         r"which needs prune.finetune_epochs=10 \(got 2\)"):
        pipeline.run(cfg)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    cfg = tiny(tmp_path, prune=PruneConfig(**PAPER_PRUNE, finetune=True))
    pipeline.run(cfg)
    train = rows(tmp_path, stage="train")
    acc = train[train.metric == "test_acc"].set_index("index")["value"]
    (best,) = train[train.metric == "best_test_acc"].itertuples()
    assert best.value == acc.max() and best.index == acc.idxmax()  # first epoch of the max
    ckpt = next(tmp_path.glob("*/seed=0/checkpoints"))
    assert torch.load(ckpt / "best.pt", weights_only=True)["epoch"] == best.index
    prune = rows(tmp_path, stage="prune").set_index("metric")["value"]
    assert prune["dense_test_acc"] == best.value  # the same weights, the same evaluation
    ft = rows(tmp_path, stage="finetune")
    per_epoch = ft[(ft.metric == "test_acc") & ft["index"].notna()].set_index("index")["value"]
    assert list(per_epoch.index) == list(range(1, 11))
    (last,) = ft[(ft.metric == "test_acc") & ft["index"].isna()]["value"]
    (ft_best,) = ft[ft.metric == "best_test_acc"].itertuples()
    assert last == per_epoch[10] and ft_best.value == per_epoch.max()
    assert set(rows(tmp_path, stage="prune")["protocol"]) == {"paper"}
    assert "checkpoint=best" in rows(tmp_path, stage="prune")["note"].iloc[0]


def test_a_final_checkpoint_prune_reports_the_last_epochs_accuracy_as_dense(tmp_path):
    pipeline.run(tiny(tmp_path, prune=PruneConfig(enabled=True, rates=[0.3])))
    train = rows(tmp_path, stage="train")
    last = train[(train.metric == "test_acc") & (train["index"] == 3)]["value"].item()
    prune = rows(tmp_path, stage="prune")
    assert prune[prune.metric == "dense_test_acc"]["value"].item() == last
    assert set(prune["protocol"]) == {"default"}


def test_paper_hessian_and_importance_units_with_their_own_names(tmp_path):
    h = HessianConfig(enabled=True, checkpoints=["init", "best"], protocol="paper",
                      n_samples=40, batch_size=10, augment=True, bn_mode="train",
                      density_iter=12)
    imp = ImportanceConfig(enabled=True, protocol="paper", input_size=32, n_samples=3)
    summary = pipeline.run(tiny(tmp_path, hessian=h, importance=imp))
    assert {"hessian_paper_init", "hessian_paper_best", "importance_paper_init"} <= set(
        summary.ran)
    for unit in ("hessian_paper_init", "hessian_paper_best"):
        d = rows(tmp_path, stage=unit)
        w = d[d.metric == "hessian_density_weight"]["value"]
        assert len(w) == 12 and w.sum() == pytest.approx(1.0) and set(d["protocol"]) == {"paper"}
        assert d[d.metric == "hessian_num_hvp"]["value"].item() == 12
        assert "augment=True" in d["note"].iloc[0] and "bn_mode=train" in d["note"].iloc[0]
    imp_rows = rows(tmp_path, stage="importance_paper_init").set_index("metric")
    assert imp_rows.loc["importance_n", "value"] == 3 and imp_rows.loc["importance_max",
                                                                       "layer"] == "features"
    # the same run's default protocol is another unit, kept beside the paper's
    again = pipeline.run(tiny(tmp_path, importance=ImportanceConfig(enabled=True, input_size=32,
                                                                    n_samples=2)))
    assert again.ran == ["importance_init"]
    assert {"importance_init", "importance_paper_init"} <= set(results.load(tmp_path)["stage"])


def test_the_paper_hessian_sees_one_fixed_draw_of_augmented_batches(tmp_path):
    """Every HVP sees the same augmented batches: the operator is one symmetric matrix."""
    from landscape.context import RunResources
    from landscape.device import device_settings
    from landscape.identity import identify
    from landscape.stages.batches import evaluation_batches

    cfg = tiny(tmp_path)
    ctx = RunResources(cfg, identify(cfg), results.run_paths(tmp_path, "x", 0),
                       device_settings(torch.device("cpu")))
    a = evaluation_batches(ctx, 40, 10, augment=True, seed=3)
    b = evaluation_batches(ctx, 40, 10, augment=True, seed=3)
    c = evaluation_batches(ctx, 40, 10, augment=True, seed=4)
    plain = evaluation_batches(ctx, 40, 10)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, plain))
    assert [len(y) for _, y in a] == [10] * 4


def test_train_mode_batchnorm_gets_equal_batches_only(tmp_path, monkeypatch):
    """With bn_mode=train each batch is normalised by its own statistics: a partial last batch
    (32 images in batches of 10: 3 + 2) is another network, whose deep 1 x 1 maps have almost
    no variance (eigenvalues ~1e11 were measured so). The config is refused, the operator
    warns of unequal batches, a training set under n_samples gives its full batches only, and
    a unit written before with a partial batch is recomputed."""
    import warnings

    from landscape.hessian import HessianOperator
    from landscape.hessian.operator import UnequalBatchesWarning
    from landscape.identity import identify
    from landscape.stages.base import STAGES

    paper = dict(enabled=True, protocol="paper", batch_size=10, augment=True, bn_mode="train",
                 density_iter=6)
    with pytest.raises(ValueError, match=r"hessian.n_samples=32 leaves a last batch of 2.*"
                                         r"e.g. hessian.n_samples=30"):
        pipeline.validate(tiny(tmp_path, hessian=HessianConfig(n_samples=32, **paper)))
    model = create_model("small_cnn", num_classes=3, width=0.25)
    x, y = torch.randn(12, 3, 8, 8), torch.arange(12) % 3
    with pytest.warns(UnequalBatchesWarning, match=r"these batches differ in size \(\[10, 2\]\)"):
        HessianOperator(model, nn.functional.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])],
                        bn_mode="train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eval mode: batches of any size are one network
        HessianOperator(model, nn.functional.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])])

    cfg = tiny(tmp_path, hessian=HessianConfig(checkpoints=["init"], n_samples=100, **paper))
    pipeline.run(cfg)  # 96 training images: 9 full batches of 10
    note = rows(tmp_path, stage="hessian_paper_init")["note"].iloc[0]
    assert "n_samples=90; batch_size=10" in note
    run_dir = results.run_paths(tmp_path, identify(cfg).cell_name, 0).run_dir
    stage = STAGES.get("hessian")
    assert stage.stale_reason(cfg.hessian, run_dir, "hessian_paper_init") is None
    written = results.read_stage(run_dir, "hessian_paper_init")
    monkeypatch.setattr(results, "read_stage", lambda *a: written.assign(
        note=written["note"].str.replace("n_samples=90", "n_samples=96")))
    assert stage.stale_reason(cfg.hessian, run_dir, "hessian_paper_init") == (
        "bn_mode=train on 96 images in batches of 10: a partial last batch of 6 was "
        "normalised by its own statistics")


def test_paper_protocol_settings_are_checked_against_the_released_procedure(tmp_path):
    with pytest.raises(ValueError, match=r"hessian.bn_mode='train' \(got 'eval'\).*"
                                         r"hessian.batch_size=10 \(got 250\)"):
        pipeline.run(tiny(tmp_path, hessian=HessianConfig(enabled=True, protocol="paper")))
    with pytest.raises(ValueError, match=r"cka.layers=None \(got \['features.\*'\]\)"):
        pipeline.run(tiny(tmp_path, cka=CKAConfig(enabled=True, protocol="paper",
                                                  layers=["features.*"])))
    with pytest.raises(ValueError, match="defined for resnet18, resnet50, vgg19.*small_cnn"):
        pipeline.run(tiny(tmp_path, model=ModelConfig(name="small_cnn"),
                          importance=ImportanceConfig(enabled=True, protocol="paper")))
    with pytest.raises(ValueError, match="importance.input_size=8: pool level 4"):
        pipeline.run(tiny(tmp_path, model=ModelConfig(name="vgg19", width=0.0625, pool_level=4),
                          data=DataConfig(name="synthetic", image_size=32),
                          importance=ImportanceConfig(enabled=True, input_size=8)))
    with pytest.raises(ValueError, match="importance.mode=paper was renamed random_input"):
        pipeline.run(tiny(tmp_path, importance=ImportanceConfig(enabled=True, mode="paper")))
    with pytest.raises(ValueError, match="protocol must be one of"):
        pipeline.run(tiny(tmp_path, prune=PruneConfig(enabled=True, protocol="papr")))
    assert not any(tmp_path.iterdir())


def test_paper_cka_on_resnet50_is_symmetric_over_the_49_relu_outputs():
    torch.manual_seed(0)
    models = {s: create_model("resnet50", num_classes=10, pool_level=1, width=1 / 16).eval()
              for s in (0, 1)}
    x = torch.randn(12, 3, 16, 16)
    out = cka_rows(models, x, CKAConfig(protocol="paper"), torch.device("cpu"))
    cross = [r for r in out if (r["seed"], r["seed_b"]) == (0, 1)]
    layers = list(dict.fromkeys(r["layer"] for r in cross))
    relus = [n for n, m in models[0].named_modules() if isinstance(m, nn.ReLU)]
    assert len(layers) == 49 and layers == relus  # the stem, then 3 per bottleneck, in order
    assert layers[:4] == ["relu", "layer1.0.relu1", "layer1.0.relu2", "layer1.0.relu3"]
    m = np.array([r["value"] for r in cross]).reshape(49, 49)
    np.testing.assert_array_equal(m, m.T)
    full = cka_rows(models, x, CKAConfig(layers=["*relu*"]), torch.device("cpu"))
    full = np.array([r["value"] for r in full if (r["seed"], r["seed_b"]) == (0, 1)])
    full = full.reshape(49, 49)
    iu = np.triu_indices(49)
    np.testing.assert_allclose(m[iu], full[iu], rtol=1e-12)  # the upper triangle is computed
    assert not np.allclose(full, full.T)  # ...and the lower one mirrored, not CKA(a_j, b_i)
    assert {r["protocol"] for r in out} == {"paper"}


def test_tiny_imagenet_paper_data_holds_out_5000_style_and_resized_crops(tmp_path):
    from test_data import make_tiny_imagenet_tree

    make_tiny_imagenet_tree(tmp_path, per_class=4)
    cfg = DataConfig(name="tiny_imagenet", root=str(tmp_path), crop="random_resized_crop",
                     holdout=3)
    b = load_dataset(cfg)
    assert (len(b.train), len(b.holdout), len(b.train_eval)) == (9, 3, 9)
    kept, held = set(b.train.indices), set(b.holdout.indices)
    assert not kept & held and len(kept | held) == 12
    assert set(load_dataset(cfg).holdout.indices) == held  # the same choice in every run
    ops = [type(t).__name__ for t in b.train.dataset.transform.transforms]
    assert "RandomResizedCrop" in ops and "RandomCrop" not in ops
    with pytest.raises(ValueError, match="data.holdout=12 leaves no training images"):
        load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path), holdout=12))
    with pytest.raises(ValueError, match="data.crop must be one of"):
        load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path), crop="center"))


def test_paper_cifar10_dry_run_lists_every_stage_of_every_run(tmp_path, capsys):
    from test_data import make_cifar10_tree

    make_cifar10_tree(tmp_path / "data")
    root = tmp_path / "r"
    plan, _, sub = submit(["experiment=paper_cifar10", "launcher=slurm", f"results_root={root}",
                           f"data.root={tmp_path / 'data'}", "data.verify_md5=false"],
                          dry_run=True)
    out = capsys.readouterr().out
    assert sub is None and not root.exists() and len(plan.runs) == 40
    assert "40 runs in 8 cells" in out and "40 to run" in out
    for p in plan.pending:
        units = p.units
        assert units[0] == "train"
        assert {"hessian_paper_init", "hessian_paper_best", "importance_paper_init"} <= set(units)
        assert sum(u.startswith("prune_magnitude_") for u in units) == 5
        assert sum(u.startswith("finetune_magnitude_") for u in units) == 5
    assert "cell-level work (cka_paper_best, the report) for 8 cells" in out


@pytest.mark.slow
def test_experiment_paper_small_runs_end_to_end(tmp_path):
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    args = ["experiment=paper_small", "model.name=vgg19", "model.pool_level=1", "seed=0,1",
            "train.epochs=2", "data.train_subset=300", "data.test_subset=100",
            "hessian.n_samples=40", "hessian.density_iter=10",
            f"results_root={tmp_path}", "num_threads=1"]
    out = subprocess.run([sys.executable, "-c", "from landscape.cli import run_main; run_main()",
                          *args], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    df = results.load(tmp_path)
    assert df["run_id"].str.contains("/seed=").sum() > 0
    paper = df[df["protocol"] == "paper"]
    assert set(paper["stage"]) >= {"prune", "finetune", "hessian_paper_init",
                                   "hessian_paper_best", "importance_paper_init",
                                   "cka_paper_best"}
    cka = paper[paper["stage"] == "cka_paper_best"]
    assert cka["layer"].nunique() == 16  # VGG19's ReLU outputs
    assert set(paper.loc[paper["stage"] == "prune", "prune_rate"]) == {0.5, 0.9}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "rate 0.9 (paper protocol)" in md and "Hessian spectrum by the paper's procedure" in md
    assert "maximum projected gradient, importance_paper_init (paper protocol)" in md
    assert list((tmp_path / "report" / "figures").glob("*hessian-density-paper.png"))
