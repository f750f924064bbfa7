import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from landscape import pipeline, results
from landscape.cli import CONFIG_DIR, to_run_config
from landscape.stages import Stage, register_stage, registered_stages
from landscape.stages.base import STAGES
from landscape.config import ModelConfig, RunConfig
from landscape.data import DataConfig
from landscape.device import device_settings, resolve_device
from landscape.identity import identify
from landscape.models import InputTooSmallError
from landscape.train import TrainConfig


def tiny_cfg(root: Path, **kw) -> RunConfig:
    base = dict(
        model=ModelConfig(name="small_cnn", width=0.25, pool_level=1),
        data=DataConfig(name="synthetic", image_size=8, train_subset=64, test_subset=32),
        train=TrainConfig(epochs=2, batch_size=32, lr=0.05),
        results_root=str(root), device="cpu", progress=False,
    )
    return RunConfig(**{**base, **kw})


def test_run_writes_tidy_rows_and_rerun_does_nothing(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path)
    first = pipeline.run(cfg)
    assert first.ran == ["receptive_field", "train"] and first.status == "ok"
    df = results.load(tmp_path)
    acc = df[df.metric == "test_acc"]
    assert acc["index"].tolist() == [1, 2]
    row = acc.iloc[0]
    assert (row.arch, row.dataset, row.pool_level, row.pool_kernel, row.pool_stride, row.seed) == (
        "small_cnn", "synthetic", 1, 2, 1, 0)
    # conv3 (3), pool k2 s1 (4), conv3 (6), maxpool k2 s2 (7, jump 2), conv3 (7 + 2*2 = 11)
    assert row.receptive_field == 11
    assert df[df.metric == "num_params"]["value"].iloc[0] > 0
    path = df[df.metric == "resident_data"].iloc[0]  # data.loader=auto: resident on the CPU
    assert (path.value, path.note) == (1.0, "resident")
    assert df[df.metric == "compiled"]["value"].tolist() == [0.0]
    bn = df[df.metric == "bn_initial_share"].iloc[0]  # 64 images in 32s x 2 epochs: 4 steps
    assert (bn.value, bn.layer) == (pytest.approx(0.9 ** 4), "features.2")
    assert "momentum=0.1, steps=4" in bn.note
    assert "BatchNorm features.2 (momentum 0.1) still hold 65.6% of their initial values " \
        "(mean 0, variance 1) after 4 training step(s)" in caplog.text
    rf = df[df.stage == "receptive_field"]  # written once per cell, without a seed
    assert rf["seed"].isna().all() and rf["run_id"].nunique() == 1
    r_max = rf[rf.metric == "rf_r_max"].set_index("layer")["value"]
    assert r_max.to_dict() == {"features.0": 3, "features.1": 4, "features.4": 6,
                               "features.7": 7, "features.8": 11, "features.11": 13}
    assert rf[(rf.metric == "rf_border") & (rf.value == 1)]["layer"].tolist() == ["features.11"]
    r_tilde = rf[rf.metric == "rf_min_feasible_input"]  # no skips: the largest r_max
    assert r_tilde[["value", "layer"]].values.tolist() == [[13.0, "features.11"]]
    # 2 x MACs: conv 3->4 on 8x8, (pool 2/1: 7x7) conv 4->8, (pool 2: 3x3) conv 8->16, linear
    macs = 8 * 8 * 4 * 27 + 7 * 7 * 8 * 36 + 3 * 3 * 16 * 72 + 16 * 10
    assert rf[rf.metric == "flops_per_image"]["value"].tolist() == [2.0 * macs]
    mtime = (Path(first.run_dir) / "checkpoints" / "final.pt").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="landscape"):
        second = pipeline.run(cfg)
    assert second.ran == [] and second.skipped == ["train"]
    assert "nothing to do" in caplog.text
    assert (Path(first.run_dir) / "checkpoints" / "final.pt").stat().st_mtime_ns == mtime


def test_a_table_of_another_rf_analysis_is_recomputed(tmp_path, caplog, monkeypatch):
    """The RF unit records the digest of the analysis's source: a store written by another
    version of the analysis (or before it was recorded) gets the cell's table again."""
    import json

    from landscape.receptive_field import version as stage

    cfg = tiny_cfg(tmp_path, train=TrainConfig(epochs=1, batch_size=32, lr=0.05))
    pipeline.run(cfg)
    (marker,) = tmp_path.rglob("receptive_field/DONE*")
    assert json.loads(marker.read_text())["settings"] == {"analysis": stage.analysis_version()}
    assert len(stage.analysis_version()) == 12 and pipeline.run(cfg).ran == []
    current = stage.analysis_version()
    monkeypatch.setattr(stage, "analysis_version", lambda: "0123456789ab")
    with caplog.at_level("WARNING", logger="landscape"):
        assert pipeline.run(cfg).ran == ["receptive_field"]
    assert f"settings changed: analysis {current!r} -> '0123456789ab'" in caplog.text
    done = json.loads(marker.read_text())
    marker.write_text(json.dumps({**done, "settings": {}}))  # written before it was recorded
    caplog.clear()
    with caplog.at_level("WARNING", logger="landscape"):
        assert pipeline.run(cfg).ran == ["receptive_field"]
    assert "settings changed: analysis None -> '0123456789ab'" in caplog.text
    rf = results.load(tmp_path).query("stage == 'receptive_field'")
    assert rf.query("metric == 'rf_r_max'")["layer"].is_unique  # replaced, not appended


@pytest.fixture
def own_registry(monkeypatch):
    """Stages registered in a test (or by tests/user_stage.py) are gone afterwards."""
    monkeypatch.setattr(STAGES, "_items", dict(STAGES._items))
    sys.modules.pop("tests.user_stage", None)
    yield
    sys.modules.pop("tests.user_stage", None)


def test_failed_stage_is_recorded_and_later_stages_wait(tmp_path, own_registry):
    calls = []

    @register_stage
    class Boom(Stage):
        name = "boom"

        def run(self, ctx, config, unit):
            raise RuntimeError("stage exploded")

    @register_stage
    class After(Stage):
        name = "after"

        def run(self, ctx, config, unit):
            calls.append(ctx.identity.run_id)
            return [{"metric": "num_params", "value": 1}]

    assert [s.name for s in registered_stages("run")][-2:] == ["boom", "after"]
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(RuntimeError, match="stage exploded"):
        pipeline.run(cfg)
    run_dir = next(Path(tmp_path).glob("*/seed=0"))
    assert "stage exploded" in (run_dir / "stages" / "boom" / "FAILED").read_text()
    assert not results.is_done(run_dir, "boom") and results.is_done(run_dir, "train")
    assert calls == []
    with pytest.raises(ValueError, match="already registered"):
        register_stage(After)
    with pytest.raises(ValueError, match="level must be one of"):
        register_stage(type("Odd", (Stage,), {"name": "odd", "level": "grid"}))


def test_a_user_stage_is_one_module_and_writes_rows_with_identity(tmp_path, own_registry):
    """README's example (tests/user_stage.py): one module, one registration, loaded through
    ``imports``; rows get the identity columns; units are marked done on their own."""
    mod = "tests.user_stage"
    off = pipeline.run(tiny_cfg(tmp_path, imports=[mod],
                                stages={"weight_norm": {"enabled": False}}))
    assert off.ran == ["receptive_field", "train"]  # disabled by its own settings
    assert "weight_norm" in [s.name for s in registered_stages("run")]
    with pytest.raises(ValueError, match="stages.weight_norm: unknown WeightNormConfig field"):
        pipeline.run(tiny_cfg(tmp_path, imports=[mod], stages={"weight_norm": {"checkpoint": 1}}))
    with pytest.raises(ModuleNotFoundError, match="listed in imports.*PYTHONPATH"):
        pipeline.run(tiny_cfg(tmp_path, imports=["tests.no_such_module"]))
    cfg = tiny_cfg(tmp_path, imports=[mod])
    second = pipeline.run(cfg)
    assert second.ran == ["weight_norm_init", "weight_norm_final"]
    df = results.load(tmp_path)
    norms = df[df.metric == "weight_norm"].set_index("stage")
    assert norms.loc["weight_norm_init", "run_id"].endswith("/seed=0")
    assert norms.loc["weight_norm_final", "receptive_field"] == 11
    assert norms.loc["weight_norm_init", "value"] != norms.loc["weight_norm_final", "value"]
    assert pipeline.run(cfg).ran == []


def test_a_user_stage_from_the_command_line(tmp_path):
    cmd = [sys.executable, "-m", "landscape.cli", "model=small_cnn", "model.width=0.25",
           "data=synthetic", "data.image_size=8", "data.train_subset=64", "data.test_subset=32",
           "train.epochs=1", "device=cpu", f"results_root={tmp_path}",
           "imports=[tests.user_stage]", "+stages.weight_norm.checkpoints=[final]"]
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    df = results.load(tmp_path)
    assert df[df.metric == "weight_norm"]["stage"].tolist() == ["weight_norm_final"]


def test_diverged_run_is_recorded_not_silent(tmp_path, own_registry):
    ran = []

    @register_stage
    class After(Stage):
        name = "after"

        def run(self, ctx, config, unit):
            ran.append(1)
            return []

    cfg = tiny_cfg(tmp_path, train=TrainConfig(epochs=3, batch_size=32, lr=1e12, momentum=0.0))
    summary = pipeline.run(cfg)
    assert summary.status == "diverged" and ran == []
    df = results.load(tmp_path)
    assert df[df.metric == "diverged"]["value"].tolist() == [1.0]
    assert results.read_done(Path(summary.run_dir), "train")["status"] == "diverged"


def test_impossible_pool_for_the_data_fails_before_training(tmp_path):
    cfg = tiny_cfg(tmp_path, model=ModelConfig(name="vgg19", width=0.125, pool_level=4))
    with pytest.raises(InputTooSmallError, match="pool level 4.*8x8"):
        pipeline.run(cfg)
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_stage_settings_fail_before_anything_is_written(tmp_path):
    from landscape.stages.prune import PruneConfig

    with pytest.raises(ValueError, match="prune.scope"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, scope="local")))
    assert not list(tmp_path.iterdir())


def test_device_selection_logic_without_a_gpu():
    cpu = device_settings(torch.device("cpu"))
    assert cpu.amp_dtype is None and not cpu.channels_last and not cpu.pin_memory
    cuda = device_settings(torch.device("cuda"))  # only the selection logic, nothing runs
    assert cuda.amp_dtype == torch.bfloat16 and cuda.channels_last and cuda.pin_memory
    assert cuda.memory_format == torch.channels_last and cuda.non_blocking
    assert device_settings(torch.device("cuda"), amp=False).amp_dtype is None
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_measurements_run_without_tf32_on_cuda(tmp_path, monkeypatch):
    from contextlib import contextmanager

    from landscape.device import full_precision
    from landscape.stages.prune import PruneConfig

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, conv.allow_tf32
    try:  # the flags can be set without a GPU: only the selection logic runs here
        matmul.allow_tf32 = conv.allow_tf32 = True
        with full_precision(torch.device("cuda")):
            assert not matmul.allow_tf32 and not conv.allow_tf32
        assert matmul.allow_tf32 and conv.allow_tf32
        with full_precision(torch.device("cpu")):
            assert matmul.allow_tf32 and conv.allow_tf32
    finally:
        matmul.allow_tf32, conv.allow_tf32 = saved
    assert {s.name for s in registered_stages() if s.trains} == {"train", "finetune", "imp"}
    entered = []

    @contextmanager
    def recording(device):
        entered.append(device.type)
        yield

    monkeypatch.setattr(pipeline, "full_precision", recording)
    prune = PruneConfig(enabled=True, rates=[0.5], finetune=True, finetune_epochs=1)
    summary = pipeline.run(tiny_cfg(tmp_path, prune=prune))
    # rf, train, prune, finetune: the two measuring units (rf, prune), not the training ones
    assert len(summary.ran) == 4 and entered == ["cpu", "cpu"]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_experiment_configs_compose_to_the_documented_values():
    demo = _compose(["experiment=demo"])
    assert demo.hydra.mode.name == "MULTIRUN"
    assert dict(demo.hydra.sweeper.params) == {
        "model.name": "resnet18,vgg19", "model.pool_level": "0,2", "seed": "0,1"}
    paper = _compose(["experiment=paper_cifar10"])
    cfg = to_run_config(_strip_hydra(paper))
    t = cfg.train
    assert (t.lr, t.momentum, t.weight_decay, t.epochs, t.batch_size, t.scheduler) == (
        0.1, 0.9, 5e-4, 200, 128, "cosine")
    assert (cfg.data.name, cfg.data.crop_padding, cfg.data.hflip) == ("cifar10", 4, True)
    assert paper.hydra.sweeper.params["model.pool_level"] == "1,2,3,4"
    text = to_run_config(_strip_hydra(_compose(["train=paper_text"]))).train
    assert (text.lr, text.weight_decay, text.grad_clip) == (1e-4, 5e-5, 0.1)
    sm = to_run_config(_strip_hydra(_compose(["train=size_matters"]))).train
    assert (sm.lr, sm.batch_size, sm.epochs, sm.scheduler, sm.milestones, sm.gamma) == (
        0.1, 64, 30, "step", [1 / 3, 2 / 3], 0.1)
    tiny = to_run_config(_strip_hydra(_compose(["experiment=paper_tinyimagenet"])))
    assert tiny.data.name == "tiny_imagenet"


def _strip_hydra(cfg):
    from omegaconf import OmegaConf, open_dict
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra")
    from landscape.config import RunConfig as RC
    return OmegaConf.merge(OmegaConf.structured(RC), cfg)


def test_bad_config_names_the_field():
    with pytest.raises(Exception, match="model.widht|widht"):
        _compose(["model.widht=2"])
    with pytest.raises(Exception, match="experiment"):
        _compose(["experiment=nope"])


def test_cli_grid_and_idempotent_rerun(tmp_path):
    cmd = [sys.executable, "-m", "landscape.cli", "-m", "model=small_cnn", "model.width=0.25",
           "data=synthetic", "data.image_size=8", "data.train_subset=64", "data.test_subset=32",
           "train.epochs=1", "train.batch_size=32", "device=cpu", "seed=0,1",
           f"results_root={tmp_path}"]
    env = {**os.environ, "CI": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"results under {tmp_path}" in out.stdout and "(2 runs in 1 cells" in out.stdout
    assert results.load(tmp_path)["seed"].nunique() == 2
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and again.stdout.count("already done, nothing to run") == 2
    # one cell folder and the report; no timestamped Hydra folders (multirun/, outputs/)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 3 and entries[:2] == [".hydra", "report"], entries
    assert entries[2].startswith("small_cnn-w0.25-synthetic-pool0-")
    assert (tmp_path / ".hydra" / "multirun.yaml").is_file()
    assert (tmp_path / "report" / "report.md").is_file()
    assert "report.md" in out.stdout


def test_rf_cli_prints_the_paper_vgg19_column(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "from landscape.cli import rf_main; rf_main()", "model=vgg19",
         "data=cifar10", "levels=[1,2,3,4]", "model.width=0.125"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "CI": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln.split() for ln in out.stdout.splitlines()[2:]]
    assert [int(ln[4]) for ln in lines] == [181, 359, 537, 715]  # r_max, DESIGN.md §2
    assert [int(ln[0]) for ln in lines] == [1, 2, 3, 4]
    assert [int(ln[6]) for ln in lines] == [181, 359, 537, 715]  # r_tilde: the last conv's
    assert len({ln[7] for ln in lines}) == 1  # the parameter count does not change


def test_importance_stage_rows_and_maps(tmp_path):
    from landscape.stages.importance import ImportanceConfig

    cfg = tiny_cfg(tmp_path, importance=ImportanceConfig(
        enabled=True, checkpoints=["init", "final"], n_samples=4, input_size=24))
    summary = pipeline.run(cfg)
    assert summary.ran == ["receptive_field", "train", "importance_init", "importance_final"]
    df = results.load(tmp_path)
    imp = df[df.metric == "importance_max"].set_index("stage")
    assert set(imp.index) == {"importance_init", "importance_final"}
    assert (imp["value"] > 0).all() and (imp["layer"] == "features.8").all()
    n = df[(df.metric == "importance_n") & (df.stage == "importance_init")]["value"]
    assert n.tolist() == [4.0]
    maps = results.load_arrays(tmp_path, "importance_init")
    (run_maps,) = maps.values()
    assert run_maps["mean_map"].shape == (24, 24) and run_maps["maxima"].shape == (4,)
    assert run_maps["maxima"].mean() == pytest.approx(imp.loc["importance_init", "value"])
    # changing the analysis settings does not retrain
    again = pipeline.run(tiny_cfg(tmp_path, importance=ImportanceConfig(
        enabled=True, checkpoints=["init"], n_samples=4, input_size=24)))
    assert again.ran == [] and "train" in again.skipped
    with pytest.raises(ValueError, match="importance.checkpoints"):
        pipeline.run(tiny_cfg(tmp_path, importance=ImportanceConfig(enabled=True,
                                                                   checkpoints=["last"])))


def test_cka_cell_stage_over_finished_seeds(tmp_path):
    from landscape.stages.cka import CKAConfig

    cka = CKAConfig(enabled=True, n_inputs=16)
    for seed in (0, 1):
        pipeline.run(tiny_cfg(tmp_path, seed=seed, cka=cka))
    (summary,) = pipeline.run_cells(tmp_path)
    assert summary.seeds == [0, 1] and summary.ran == ["cka_final"]
    df = results.load(tmp_path)
    c = df[df.metric == "cka"]
    layers = ["features.0", "features.4", "features.8", "classifier"]
    assert len(c) == 3 * len(layers) ** 2  # (0,0), (1,1), (0,1)
    for s in (0, 1):
        self_pair = c[(c.seed == s) & (c.seed_b == s) & (c.layer == c.layer_b)]
        assert self_pair["value"].to_numpy() == pytest.approx(1.0)
    cross = c[(c.seed == 0) & (c.seed_b == 1)]
    assert ((cross.value >= 0) & (cross.value <= 1 + 1e-9)).all()
    assert cross.value.max() < 1  # different seeds are not identical
    assert (c.run_id == c.run_id.iloc[0]).all() and "/seed=" not in c.run_id.iloc[0]
    assert pipeline.run_cells(tmp_path)[0].ran == []  # idempotent
    pipeline.run(tiny_cfg(tmp_path, seed=2, cka=cka))
    (again,) = pipeline.run_cells(tmp_path)
    assert again.seeds == [0, 1, 2] and again.ran == ["cka_final"]  # a new seed: recomputed
    assert len(results.load(tmp_path).query("metric == 'cka'")) == 6 * len(layers) ** 2


def test_prune_and_finetune_stages(tmp_path):
    from landscape.stages.prune import PruneConfig

    prune_cfg = PruneConfig(enabled=True, rates=[0.5, 0.9], finetune=True, finetune_epochs=1,
                            finetune_lr=0.01)
    cfg = tiny_cfg(tmp_path, prune=prune_cfg)
    summary = pipeline.run(cfg)
    assert [u.split("_")[0] for u in summary.ran] == [
        "receptive", "train", "prune", "prune", "finetune", "finetune"]
    df = results.load(tmp_path)
    p = df[df.stage.isin(["prune", "finetune"]) & df.layer.isna() & df["index"].isna()]
    sp = p[p.metric == "sparsity"].set_index(["prune_rate", "finetuned"])["value"]
    # exact counts: the prunable set of small_cnn(width 0.25) is conv + linear weights
    model = identify(cfg).build_model()
    n = sum(m.weight.numel() for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    for rate in (0.5, 0.9):
        assert sp[(rate, False)] == sp[(rate, True)] == round(rate * n) / n
    acc = p[p.metric == "test_acc"]
    assert set(zip(acc.prune_rate, acc.finetuned)) == {(0.5, False), (0.9, False), (0.5, True),
                                                       (0.9, True)}
    assert (acc.criterion == "magnitude").all()
    unit = next(u for u in summary.ran if u.startswith("prune_magnitude_0.9"))
    masks = results.read_arrays(Path(summary.run_dir), unit)
    assert set(masks) == {k for k in model.state_dict() if k.endswith("weight")
                          and model.state_dict()[k].dim() > 1}
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * n)
    # the fine-tuned weights keep the mask exactly (checked via the per-run sparsity rows)
    layers = df[(df.metric == "layer_sparsity") & (df.prune_rate == 0.9)]
    assert len(layers) == len(masks)
    # new rates add units without retraining; finished units are skipped
    again = pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(
        enabled=True, rates=[0.5, 0.7], finetune=True, finetune_epochs=1, finetune_lr=0.01)))
    assert [u.split("_")[0] for u in again.ran] == ["prune", "finetune"]
    assert "train" in again.skipped


def test_user_criterion_from_the_command_line_and_bad_prune_config(tmp_path):
    cmd = [sys.executable, "-m", "landscape.cli", "model=small_cnn", "model.width=0.25",
           "data=synthetic", "data.image_size=8", "data.train_subset=64", "data.test_subset=32",
           "train.epochs=1", "device=cpu", f"results_root={tmp_path}", "prune.enabled=true",
           "prune.imports=[tests.pruning_user_criterion]", "prune.criterion=test_largest_first",
           "prune.rates=[0.5]"]
    env = {**os.environ, "CI": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    df = results.load(tmp_path)
    assert (df[df.stage == "prune"].criterion == "test_largest_first").all()
    from landscape.stages.prune import PruneConfig
    with pytest.raises(ValueError, match="prune.rates"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, rates=[1.0])))
    with pytest.raises(KeyError, match="unknown pruning criterion 'nope'"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, criterion="nope")))


def test_hessian_stage_rows(tmp_path):
    from landscape.stages.hessian import HessianConfig

    h = HessianConfig(enabled=True, checkpoints=["final"], k=5, n_samples=40, batch_size=16,
                      density_runs=2, density_iter=12, trace_samples=4)
    summary = pipeline.run(tiny_cfg(tmp_path, hessian=h))
    assert summary.ran[-1] == "hessian_final"
    df = results.load(tmp_path).query("stage == 'hessian_final'")
    eig = df[df.metric == "hessian_eigenvalue"].sort_values("index")
    assert eig["index"].tolist() == [1, 2, 3, 4, 5]
    assert (eig["value"].diff().dropna() <= 0).all()  # descending
    assert df[df.metric == "hessian_converged"]["value"].item() == 1.0
    res = df[df.metric == "hessian_residual"]["value"]
    assert (res <= 1e-4 * eig["value"].abs().max() * 1.0001).all()
    w = df[df.metric == "hessian_density_weight"].sort_values("index")["value"].to_numpy()
    assert w.reshape(2, 12).sum(axis=1) == pytest.approx([1.0, 1.0])
    assert "bn_mode=eval" in df["note"].iloc[0] and "n_samples=40" in df["note"].iloc[0]
    with pytest.raises(ValueError, match="hessian.bn_mode"):
        pipeline.run(tiny_cfg(tmp_path, hessian=HessianConfig(enabled=True, bn_mode="batch")))
