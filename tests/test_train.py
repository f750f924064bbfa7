import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from landscape.data import DataConfig, load_dataset
from landscape.device import device_settings
from landscape.models import create_model
from landscape.storage import CheckpointError, load_checkpoint, save_checkpoint
from landscape.seeds import derive_seed, seed_everything
from landscape.train import TrainConfig, train_model

CPU = device_settings(torch.device("cpu"))
CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05)


def _data():
    return load_dataset(DataConfig(name="synthetic", image_size=8, train_subset=96, test_subset=32))


def _train(tmp: Path, seed: int = 0, cfg: TrainConfig = CFG, model_seed: int = 0):
    b = _data()
    torch.manual_seed(model_seed)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    out = train_model(model, b.train, b.test, cfg, seed=seed, settings=CPU, checkpoint_dir=tmp,
                      progress=False)
    return model, out


def _same_state(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_same_seed_same_weights_and_metrics(tmp_path):
    m1, o1 = _train(tmp_path / "a")
    m2, o2 = _train(tmp_path / "b")
    assert _same_state(m1.state_dict(), m2.state_dict())
    assert [r.test_acc for r in o1.history] == [r.test_acc for r in o2.history]
    m3, _ = _train(tmp_path / "c", seed=1)
    assert not _same_state(m1.state_dict(), m3.state_dict())  # data order/augmentation differ


def test_writes_init_last_final_and_learns(tmp_path):
    b = _data()
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_model(model, b.train, b.test, TrainConfig(epochs=6, batch_size=8, lr=0.05),
                      seed=0, settings=CPU, checkpoint_dir=tmp_path, progress=False)
    assert _same_state(load_checkpoint(tmp_path / "init.pt")["model"], init)
    assert _same_state(load_checkpoint(tmp_path / "final.pt")["model"], model.state_dict())
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 6
    assert [r.epoch for r in out.history] == list(range(1, 7))
    assert out.history[-1].train_loss < out.history[0].train_loss
    assert max(r.test_acc for r in out.history) > 0.3  # 10 classes: chance is 0.1
    lrs = [r.learning_rate for r in out.history]
    assert lrs[0] == pytest.approx(0.05) and all(a > b for a, b in zip(lrs, lrs[1:]))


CHILD = r"""
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.test_train import _train, TrainConfig
from pathlib import Path
_train(Path(sys.argv[1]), cfg=TrainConfig(epochs=int(sys.argv[2]), batch_size=32, lr=0.05))
"""


def _child(ckpt: Path, epochs: int) -> subprocess.Popen:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, "-c", code, str(ckpt), str(epochs)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL a training process mid-run; the resumed run equals an uninterrupted one."""
    epochs = 6
    full = _child(tmp_path / "full", epochs)
    killed = _child(tmp_path / "killed", epochs)
    deadline = time.time() + 120
    last = tmp_path / "killed" / "last.pt"
    while time.time() < deadline:
        if last.exists() and load_checkpoint(last)["epoch"] >= 2:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = load_checkpoint(last)["epoch"]
    assert stopped_at < epochs, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "final.pt").exists()
    resumed = _child(tmp_path / "killed", epochs)
    assert resumed.wait(timeout=300) == 0 and full.wait(timeout=300) == 0
    a = load_checkpoint(tmp_path / "full" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "final.pt")["model"]
    assert _same_state(a, b)
    ha = load_checkpoint(tmp_path / "full" / "last.pt")["history"]
    hb = load_checkpoint(tmp_path / "killed" / "last.pt")["history"]
    assert [r["test_acc"] for r in ha] == [r["test_acc"] for r in hb]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]


def test_nan_loss_stops_and_reports_diverged(tmp_path):
    _, out = _train(tmp_path, cfg=TrainConfig(epochs=4, batch_size=32, lr=1e12, momentum=0.0))
    assert out.diverged and out.diverged_epoch is not None
    assert len(out.history) == out.diverged_epoch - 1
    assert not (tmp_path / "final.pt").exists()


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    _train(tmp_path, cfg=TrainConfig(epochs=1, batch_size=32))
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"(?s)last\.pt is corrupted.*Delete it"):
        _train(tmp_path, cfg=TrainConfig(epochs=2, batch_size=32))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoints_load_with_weights_only(tmp_path):
    save_checkpoint(tmp_path / "x.pt", {"model": {"w": torch.ones(2)}, "epoch": 3})
    assert load_checkpoint(tmp_path / "x.pt")["epoch"] == 3
    torch.save({"bad": object.__new__(TrainConfig)}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError):  # arbitrary pickles are refused
        load_checkpoint(tmp_path / "y.pt")


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", 0.0), ("scheduler", "step"),
                                          ("grad_clip", -1.0)])
def test_bad_train_config(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"train.{field}"):
        _train(tmp_path, cfg=TrainConfig(**{field: value}))


def test_grad_clip_changes_the_trajectory(tmp_path):
    m1, _ = _train(tmp_path / "a", cfg=TrainConfig(epochs=1, batch_size=32, lr=0.05))
    m2, _ = _train(tmp_path / "b", cfg=TrainConfig(epochs=1, batch_size=32, lr=0.05, grad_clip=0.01))
    assert not _same_state(m1.state_dict(), m2.state_dict())


def test_derive_seed_is_stable():
    assert derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
    assert derive_seed(3, 7) == 6137255848933647565  # fixed across processes and versions
    seed_everything(derive_seed(0, 1))


def test_evaluate_and_input_check_keep_mixed_module_modes():
    from landscape.train import evaluate, make_loader

    model = create_model("small_cnn", num_classes=10, width=0.25).train()
    model.features[2].eval()  # a frozen BatchNorm inside a training model
    before = [m.training for m in model.modules()]
    b = _data()
    evaluate(model, make_loader(b.test, 16, CPU, shuffle=False), CPU)  # also runs the input check
    assert [m.training for m in model.modules()] == before


def test_compile_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, caplog):
    """train.compile: a torch.compile that fails when called (or when asked) leaves one
    warning line and an eager run with the same weights as train.compile=false."""
    m_eager, _ = _train(tmp_path / "eager")

    def compiled_but_broken(model, **kw):
        def fn(x):
            raise RuntimeError("no C++ compiler\nsecond line")
        return fn

    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, compile=True)
    for fake, where in ((compiled_but_broken, "call"), (None, "creation")):
        if fake is None:
            def fake(model, **kw):
                raise RuntimeError("no C++ compiler")
        monkeypatch.setattr(torch, "compile", fake)
        caplog.clear()
        with caplog.at_level("WARNING", logger="landscape"):
            m, out = _train(tmp_path / where, cfg=cfg)
        warnings = [r for r in caplog.records if "train.compile" in r.getMessage()]
        assert len(warnings) == 1 and "\n" not in warnings[0].getMessage(), where
        assert not out.compiled and out.compile_note == "RuntimeError: no C++ compiler"
        assert _same_state(m.state_dict(), m_eager.state_dict())


def test_compile_is_used_where_it_works_and_not_identity(tmp_path, monkeypatch):
    from landscape.identity import identity_dict

    calls = []

    def fake_compile(model, **kw):
        def fn(x):
            calls.append(len(x))
            return model(x)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    m, out = _train(tmp_path, cfg=TrainConfig(epochs=1, batch_size=32, lr=0.05, compile=True))
    assert out.compiled and out.compile_note == "" and calls == [32, 32, 32]
    assert identity_dict(TrainConfig(compile=True)) == {}
