"""Saved epochs (train.save_epochs) and stages measured at them (checkpoints epoch_<n>)."""

import copy
import dataclasses
import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from landscape import pipeline, results
from landscape.config import stage_config
from landscape.context import RunResources
from landscape.data import DataConfig, load_dataset
from landscape.device import configure_backends, device_settings, resolve_device
from landscape.identity import identify, identity_dict
from landscape.models import create_model
from landscape.stages import Unit
from landscape.stages.base import STAGES, check_checkpoints, checkpoint_epoch_number
from landscape.stages.hessian import HessianConfig, HessianStage
from landscape.stages.prune import PruneConfig
from landscape.storage import load_checkpoint
from landscape.train import TrainConfig, saved_epochs, train_model, validate_train_config
from tests.test_pipeline import tiny_cfg

CPU = device_settings(torch.device("cpu"))


def _epochs(spec, epochs):
    return saved_epochs(TrainConfig(epochs=epochs, save_epochs=spec))


def test_spacing_rules_give_sorted_unique_epochs_in_range():
    for epochs in range(1, 70):
        for n in (1, 2, 3, 5, 8, 20, 100):
            got = _epochs(f"log:{n}", epochs)
            assert got == sorted(set(got)) and len(got) == min(n, epochs), (epochs, n, got)
            assert got[-1] == epochs and (n == 1 or got[0] == 1)
        for k in range(1, epochs + 1):
            got = _epochs(f"every:{k}", epochs)
            assert got == list(range(k, epochs + 1, k))
        assert _epochs("all", epochs) == list(range(1, epochs + 1))
    # log-spaced: round(200 ** (i / 7)), i = 0..7
    assert _epochs("log:8", 200) == [1, 2, 5, 10, 21, 44, 94, 200]
    # rounding makes 1, 1, 2, 3, 5, 10: the repeats move up to the next free epoch
    assert _epochs("log:6", 10) == [1, 2, 3, 4, 6, 10]
    assert _epochs([5, 1, 5], 10) == [1, 5] and _epochs([], 10) == []
    assert _epochs(None, 10) == []


@pytest.mark.parametrize("spec, match", [
    ([0, 2], r"train.save_epochs must list epochs in 1..train.epochs=3 \(epoch 0 is the "
             r"checkpoint init"),
    ([4], r"train.save_epochs must list epochs in 1..train.epochs=3"),
    ([True], r"train.save_epochs must list epochs"),
    ([1.5], r"train.save_epochs must list epochs"),
    ("every:4", r"train.save_epochs=every:4 saves no epoch: k=4 exceeds train.epochs=3"),
    ("every:0", r"train.save_epochs must be a list of epochs or one of"),
    ("log:x", r"train.save_epochs must be a list of epochs or one of"),
    ("last", r"train.save_epochs must be a list of epochs or one of"),
    (3, r"train.save_epochs must be a list of epochs or one of"),
])
def test_bad_save_epochs_are_refused_naming_the_field(spec, match):
    with pytest.raises(ValueError, match=match):
        validate_train_config(TrainConfig(epochs=3, save_epochs=spec))


def test_save_optimizer_epochs_needs_saved_epochs():
    with pytest.raises(ValueError, match="train.save_optimizer_epochs=true .* train.save_epochs "
                                         "saves none"):
        validate_train_config(TrainConfig(epochs=3, save_optimizer_epochs=True))


def test_checkpoint_names():
    assert [checkpoint_epoch_number(c) for c in ("epoch_5", "epoch_0", "epoch_05", "epoch_",
                                                  "epoch_-1", "epoch_x", "final", 5)] == \
        [5, 0, None, None, None, None, None, None]
    check_checkpoints("hessian", ["init", "saved", "epoch_3", "best"])
    with pytest.raises(ValueError, match=r"hessian.checkpoints must be a non-empty list of "
                                         r"\('init', 'final', 'best', 'saved'\) or epoch_<n>"):
        check_checkpoints("hessian", ["epoch_x"])


def _validate(tmp_path, **kw):
    return pipeline.validate(tiny_cfg(tmp_path, **kw), check_data=False)


def test_stages_asking_for_unsaved_epochs_are_refused(tmp_path):
    train = TrainConfig(epochs=3, batch_size=32, lr=0.05, save_epochs=[1, 2])
    cases = [
        (HessianConfig(enabled=True, checkpoints=["epoch_3"]),
         r"hessian.checkpoints asks for epoch_3, which train.save_epochs=\[1, 2\] does not save "
         r"\(it saves \[1, 2\]\): add 3 to train.save_epochs"),
        (HessianConfig(enabled=True, checkpoints=["epoch_0"]),
         "hessian.checkpoints: epoch_0 is the weights before training: name that checkpoint "
         "'init'"),
        (HessianConfig(enabled=True, checkpoints=["epoch_9"]),
         r"hessian.checkpoints: epoch_9 is outside the training's epochs 1..train.epochs=3"),
    ]
    for hessian, match in cases:
        with pytest.raises(ValueError, match=match):
            _validate(tmp_path, train=train, hessian=hessian)
    with pytest.raises(ValueError, match=r"prune.checkpoint asks for epoch_3, which "
                                         r"train.save_epochs=\[1, 2\] does not save"):
        _validate(tmp_path, train=train, prune=PruneConfig(enabled=True, checkpoint="epoch_3"))
    from landscape.stages.imp import ImpConfig
    with pytest.raises(ValueError, match=r"imp.rewind asks for epoch_3, which "
                                         r"train.save_epochs=\[1, 2\] does not save"):
        _validate(tmp_path, train=train, imp=ImpConfig(enabled=True, rewind="epoch_3"))
    _validate(tmp_path, train=train, imp=ImpConfig(enabled=True, rewind="epoch_2"))
    with pytest.raises(ValueError, match="hessian.checkpoints includes 'saved' .* but "
                                         "train.save_epochs saves none"):
        _validate(tmp_path, train=dataclasses.replace(train, save_epochs=[]),
                  hessian=HessianConfig(enabled=True, checkpoints=["saved"]))
    # 'saved' expands to the saved epochs, in order; units are named by checkpoint
    cfg = tiny_cfg(tmp_path, train=dataclasses.replace(train, save_epochs="every:1"),
                   hessian=HessianConfig(enabled=True, checkpoints=["init", "saved", "epoch_2"]))
    pipeline.validate(cfg, check_data=False)
    assert stage_config(cfg, STAGES.get("hessian")).checkpoints == [
        "init", "epoch_1", "epoch_2", "epoch_3"]
    assert [u.name for _, _, u in pipeline.stage_units(cfg, "run") if u.name != "train"] == [
        "hessian_init", "hessian_epoch_1", "hessian_epoch_2", "hessian_epoch_3"]
    # with final named too, the last saved epoch is final's weights: measured once, as final
    both = dataclasses.replace(cfg, hessian=HessianConfig(enabled=True, checkpoints=[
        "saved", "final"]))
    assert stage_config(both, STAGES.get("hessian")).checkpoints == [
        "epoch_1", "epoch_2", "final"]
    last = dataclasses.replace(both, train=dataclasses.replace(train, save_epochs=[3]))
    assert stage_config(last, STAGES.get("hessian")).checkpoints == ["final"]
    # each cka.to_final checkpoint is compared with final: its last saved epoch too would be
    # final compared with itself (a CKA of 1 in every layer); cka.checkpoints keeps it
    from landscape.stages.cka import CKAConfig
    cka = dataclasses.replace(cfg, cka=CKAConfig(enabled=True, checkpoints=["saved"],
                                                 to_final=["init", "saved"]))
    expanded = stage_config(cka, STAGES.get("cka"))
    assert expanded.to_final == ["init", "epoch_1", "epoch_2"]
    assert expanded.checkpoints == ["epoch_1", "epoch_2", "epoch_3"]
    with pytest.raises(ValueError, match=r"cka.to_final includes 'saved', each compared with "
                                         r"the final weights, but train.save_epochs saves only "
                                         r"the last epoch \(3\)"):
        stage_config(dataclasses.replace(cka, train=dataclasses.replace(train, save_epochs=[3])),
                     STAGES.get("cka"))


def test_saved_epochs_leave_the_run_ids_unchanged(tmp_path):
    # The ids of these configs before train.save_epochs existed (commit 6089a77).
    base = tiny_cfg(tmp_path)
    assert identify(base).run_id == "small_cnn-w0.25-synthetic-pool1-52e97bf087/seed=0"
    saving = tiny_cfg(tmp_path, train=dataclasses.replace(base.train, save_epochs="log:8",
                                                          save_optimizer_epochs=True))
    assert identify(saving).run_id == identify(base).run_id
    assert not any("save" in k for k in identity_dict(saving))


# ---------------------------------------------------------------------------------------------
class _Killed(Exception):
    pass


def _data():
    return load_dataset(DataConfig(name="synthetic", image_size=8, train_subset=96,
                                   test_subset=32))


def _train(ckpt: Path, cfg: TrainConfig, on_epoch=None):
    b = _data()
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    return train_model(model, b.train, b.test, cfg, seed=0, settings=CPU, checkpoint_dir=ckpt,
                       progress=False, on_epoch=on_epoch)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_and_resumed_run_saves_the_same_epochs_bit_identical(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, save_epochs="every:1",
                      save_optimizer_epochs=True)
    _train(tmp_path / "full", cfg)

    def kill_after(epoch):
        def hook(record):
            if record.epoch == epoch:
                raise _Killed
        return hook

    killed = tmp_path / "killed"
    with pytest.raises(_Killed):  # killed after epoch 1 (its epoch_1.pt and last.pt written)
        _train(killed, cfg, on_epoch=kill_after(1))
    last_1 = (killed / "last.pt").read_bytes()
    with pytest.raises(_Killed):  # resumed, killed again after epoch 2 ...
        _train(killed, cfg, on_epoch=kill_after(2))
    # ... as if between epoch_2.pt and last.pt: epoch 2 is replayed, epoch_2.pt written again
    (killed / "last.pt").write_bytes(last_1)
    assert _train(killed, cfg).resumed_from_epoch == 1
    names = sorted(p.name for p in (tmp_path / "full").glob("epoch_*.pt"))
    assert names == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    assert sorted(p.name for p in (tmp_path / "killed").glob("epoch_*.pt")) == names
    for name in names:
        a, b = (load_checkpoint(tmp_path / d / name) for d in ("full", "killed"))
        assert a.keys() == b.keys() == {"model", "optimizer", "scheduler", "epoch", "test_acc",
                                        "format"}
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert _digest(tmp_path / "full" / name) == _digest(tmp_path / "killed" / name)
    last = load_checkpoint(tmp_path / "full" / "epoch_3.pt")
    final = load_checkpoint(tmp_path / "full" / "final.pt")
    assert all(torch.equal(last["model"][k], final["model"][k]) for k in final["model"])
    assert last["optimizer"]["state"] and last["scheduler"]["last_epoch"] == 3
    first = load_checkpoint(tmp_path / "full" / "epoch_1.pt")["model"]
    assert not all(torch.equal(first[k], final["model"][k]) for k in final["model"])


def test_without_save_optimizer_epochs_only_the_weights_are_kept(tmp_path):
    _train(tmp_path, TrainConfig(epochs=2, batch_size=32, lr=0.05, save_epochs=[2]))
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_2.pt"]
    assert "optimizer" not in load_checkpoint(tmp_path / "epoch_2.pt")


# ---------------------------------------------------------------------------------------------
def _values(df):
    keep = df[df.metric != "hessian_seconds"].astype({"index": "Int64"}).fillna({"index": -1})
    keep = keep.sort_values(["metric", "index"])
    return [(m, int(i), float(v)) for m, i, v in zip(keep.metric, keep["index"], keep.value)]


def test_a_stage_at_epoch_n_measures_that_epochs_weights(tmp_path):
    hessian = HessianConfig(enabled=True, checkpoints=["epoch_1", "final"], k=2,
                            density_runs=0, trace_samples=2, n_samples=32, batch_size=32)
    cfg = tiny_cfg(tmp_path / "results", hessian=hessian,
                   train=TrainConfig(epochs=2, batch_size=32, lr=0.05, save_epochs=[1]))
    summary = pipeline.run(cfg)
    assert summary.ran == ["receptive_field", "train", "hessian_epoch_1", "hessian_final"]
    df = results.load(tmp_path / "results")
    at_1, final = (df[df.stage == f"hessian_{c}"] for c in ("epoch_1", "final"))
    assert set(at_1["epoch"]) == {1} and set(final["epoch"]) == {2}
    assert df[df.stage == "train"]["epoch"].isna().all()
    assert at_1["note"].str.startswith("checkpoint=epoch_1; ").all()

    # The weights of epoch 1 saved by hand: the train stage's training, with a hook
    identity = identify(cfg)
    settings = device_settings(resolve_device("cpu"), amp=False, channels_last=False)
    configure_backends(settings.device, deterministic=False)
    ctx = RunResources(cfg, identity, results.run_paths(tmp_path / "hand", identity.cell_name,
                                                        cfg.seed), settings)
    model = ctx.build_model()
    data = ctx.resident if ctx.data_path(None) == "resident" else ctx.data
    hand = {}
    train_model(model, data.train, data.test, dataclasses.replace(cfg.train, save_epochs=[]),
                seed=cfg.seed, settings=settings, checkpoint_dir=tmp_path / "hand", progress=False,
                on_epoch=lambda r: hand.setdefault(r.epoch, copy.deepcopy(model.state_dict())))
    saved = load_checkpoint(Path(summary.run_dir) / "checkpoints" / "epoch_1.pt")["model"]
    assert all(torch.equal(saved[k], hand[1][k]) for k in hand[1])

    def load_hand(checkpoint):
        assert checkpoint == "epoch_1"
        m = ctx.build_model()
        m.load_state_dict(hand[1])
        return m.to(settings.device)

    ctx.load_model = load_hand
    out = HessianStage().run(ctx, hessian, Unit("hessian_epoch_1", {"checkpoint": "epoch_1"}))
    assert _values(pd.DataFrame(out.rows)) == _values(at_1)
    assert _values(at_1) != _values(final)


# ---------------------------------------------------------------------------------------------
def _reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. for centred features), float64."""
    x = x.reshape(len(x), -1).double()
    y = y.reshape(len(y), -1).double()
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


def _outputs(model, inputs):
    """The output of every Conv2d and Linear of ``model`` on ``inputs``, by module name."""
    out, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(
                lambda _m, _i, o, name=name: out.__setitem__(name, o.detach())))
    model.eval()
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return out


def test_cka_to_final_compares_each_saved_epoch_with_the_same_runs_final(tmp_path):
    from landscape.stages.batches import test_batches
    from landscape.stages.cka import CKAConfig

    # checkpoints=[]: no between-seed units, only the cka_to_final ones
    cka = CKAConfig(enabled=True, checkpoints=[], to_final=["init", "saved"], n_inputs=24)
    with pytest.raises(ValueError, match="cka.checkpoints must be a non-empty list"):
        _validate(tmp_path, cka=dataclasses.replace(cka, to_final=[]))
    with pytest.raises(ValueError, match="cka.to_final includes 'saved' .* train.save_epochs "
                                         "saves none"):
        _validate(tmp_path, cka=cka)
    with pytest.raises(ValueError, match=r"cka.to_final asks for epoch_2, .* add 2 to "
                                         r"train.save_epochs"):
        _validate(tmp_path, cka=dataclasses.replace(cka, to_final=["epoch_2"]),
                  train=TrainConfig(epochs=2, save_epochs=[1]))
    with pytest.raises(ValueError, match="cka.to_final lists checkpoints to compare with final"):
        _validate(tmp_path, cka=dataclasses.replace(cka, to_final=["final"]))

    root = tmp_path / "results"
    cfg = tiny_cfg(root, cka=cka, train=TrainConfig(epochs=2, batch_size=32, lr=0.05,
                                                     save_epochs=[1, 2]))  # 2 is final
    pipeline.run(cfg)
    identity = identify(cfg)
    summary = pipeline.run_cell(root, identity.cell_name)
    assert summary.ran == ["cka_to_final_init", "cka_to_final_epoch_1"]
    df = results.load(root)
    rows = df[df.metric == "cka_to_final"]
    assert set(rows.unit) == {"cka_to_final_init", "cka_to_final_epoch_1"}
    assert rows.groupby("unit")["epoch"].unique().map(list).to_dict() == {
        "cka_to_final_init": [0], "cka_to_final_epoch_1": [1]}
    assert set(rows.seed) == {0} and rows["layer_b"].isna().all()

    settings = device_settings(resolve_device("cpu"), amp=False, channels_last=False)
    ctx = RunResources(cfg, identity.with_seed(None), results.run_paths(root, identity.cell_name),
                       settings, [0])
    inputs = torch.cat([x for x, _ in test_batches(ctx, 24, 500)])
    final = _outputs(ctx.load_models("final")[0], inputs)
    for checkpoint in ("init", "epoch_1"):
        at = _outputs(ctx.load_models(checkpoint)[0], inputs)
        got = rows[rows.unit == f"cka_to_final_{checkpoint}"].set_index("layer")["value"]
        assert sorted(got.index) == sorted(final)
        for layer, value in got.items():
            assert value == pytest.approx(_reference_cka(at[layer], final[layer]), abs=1e-9)
    assert (rows.value < 1 - 1e-6).any()  # the weights moved: not every layer is at 1


def test_an_epoch_saved_after_training_names_the_files_to_delete_and_that_works(tmp_path):
    from landscape.storage import CheckpointError

    cfg = tiny_cfg(tmp_path)  # trained without saved epochs
    summary = pipeline.run(cfg)
    ckpt = Path(summary.run_dir) / "checkpoints"
    final = load_checkpoint(ckpt / "final.pt")["model"]
    later = tiny_cfg(tmp_path, train=dataclasses.replace(cfg.train, save_epochs=[1]))
    assert identify(later).run_id == identify(cfg).run_id
    ctx = RunResources(later, identify(later), results.run_paths(
        tmp_path, identify(later).cell_name, later.seed), CPU)
    with pytest.raises(CheckpointError, match=r"epoch_1.pt. .* delete .*last.pt and "
                                              r".*final.pt to train it again"):
        ctx.load_model("epoch_1")
    (ckpt / "last.pt").unlink()
    (ckpt / "final.pt").unlink()
    assert pipeline.run(later).ran == ["train"]
    assert (ckpt / "epoch_1.pt").exists()
    again = load_checkpoint(ckpt / "final.pt")["model"]
    assert all(torch.equal(final[k], again[k]) for k in final)  # the same training (CPU)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=30 train.save_epochs=every:50",
     "train.save_epochs=every:50 saves no epoch: k=50 exceeds train.epochs=30"),
    ("train.epochs=3 train.save_epochs=[1,2] hessian.enabled=true hessian.checkpoints=[epoch_3]",
     "hessian.checkpoints asks for epoch_3, which train.save_epochs=[1, 2] does not save"),
])
def test_bad_saved_epochs_on_the_command_line_are_one_line(tmp_path, override, message,
                                                          console):
    code, _, err = console("run_main", "data=synthetic", f"results_root={tmp_path / 'r'}",
                           *override.split())
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "r").exists()
