import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.data import DataConfig, load_dataset
from landscape.device import device_settings
from landscape.models import create_model
from landscape.storage import CheckpointError, load_checkpoint, save_checkpoint
from landscape.train import (
    TrainConfig, make_optimizer, make_scheduler, step_milestones, train_model,
    validate_train_config,
)

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


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", 0.0), ("scheduler", "poly"),
                                          ("grad_clip", -1.0)])
def test_bad_train_config(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"train.{field}"):
        _train(tmp_path, cfg=TrainConfig(**{field: value}))


@pytest.mark.parametrize("settings, message", [
    ({"milestones": [0.5, 0.5]}, r"train\.milestones must be increasing fractions"),
    ({"milestones": [0.0, 0.5]}, r"train\.milestones must be increasing fractions"),
    ({"milestones": [0.5, 1.0]}, r"train\.milestones must be increasing fractions"),
    ({"milestones": []}, r"train\.milestones must be increasing fractions"),
    ({"gamma": 0.0}, r"train\.gamma must be in \(0, 1\], got 0\.0"),
    ({"gamma": 1.5}, r"train\.gamma must be in \(0, 1\]"),
])
def test_bad_step_schedule_is_a_one_line_error(settings, message):
    with pytest.raises(ValueError, match=message) as e:
        validate_train_config(TrainConfig(scheduler="step", **settings))
    assert "\n" not in str(e.value)


def test_step_settings_with_another_schedule_are_refused():
    """They would change the run's hash but not its training."""
    with pytest.raises(ValueError, match=r"train\.gamma only apply to train\.scheduler=step"):
        validate_train_config(TrainConfig(gamma=0.5))
    validate_train_config(TrainConfig(scheduler="step", gamma=0.5, milestones=[0.5]))


def _lr_sequence(cfg: TrainConfig, stop: int | None = None) -> list[float]:
    """The lr of every epoch as the training loop sets it (the scheduler stepped once per
    epoch); with ``stop``, the optimiser and scheduler are rebuilt after epoch ``stop`` from
    their state dicts, as a resumed run rebuilds them from last.pt."""
    model = torch.nn.Linear(1, 1)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for epoch in range(1, cfg.epochs + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if epoch == stop:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
            opt = make_optimizer(model, cfg)
            sched = make_scheduler(opt, cfg)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
    return lrs


def test_step_schedule_decays_at_the_milestones_and_resumes_exactly():
    cfg = TrainConfig(epochs=30, lr=0.1, scheduler="step")
    lrs = _lr_sequence(cfg)
    assert step_milestones(cfg) == [10, 20]
    assert lrs == pytest.approx([0.1] * 10 + [0.01] * 10 + [0.001] * 10, rel=1e-12)
    for stop in (1, 9, 10, 11, 25):
        assert _lr_sequence(cfg, stop=stop) == lrs
    short = TrainConfig(epochs=2, lr=0.1, scheduler="step", milestones=[0.1, 0.9], gamma=0.5)
    assert step_milestones(short) == [1, 2] and _lr_sequence(short) == [0.1, 0.05]


class _Killed(Exception):
    pass


def test_step_schedule_resumed_training_run_replays_the_lr_sequence(tmp_path):
    """A run stopped after epoch 1 (last.pt written, then killed) resumes the step schedule
    where it was: its lr sequence is the uninterrupted run's."""
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, scheduler="step", milestones=[0.5])
    _, full = _train(tmp_path / "full", cfg=cfg)

    def kill_after_first(record):
        raise _Killed

    b = _data()
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    with pytest.raises(_Killed):
        train_model(model, b.train, b.test, cfg, seed=0, settings=CPU, progress=False,
                    checkpoint_dir=tmp_path / "killed", on_epoch=kill_after_first)
    _, resumed = _train(tmp_path / "killed", cfg=cfg)
    assert resumed.resumed_from_epoch == 1
    lrs = [r.learning_rate for r in full.history]
    assert lrs == pytest.approx([0.05, 0.05, 0.005], rel=1e-12)  # milestone round(0.5 * 3) = 2
    assert [r.learning_rate for r in resumed.history] == lrs


@given(momentum=st.floats(0.01, 0.9), steps=st.integers(0, 40))
@settings(max_examples=25, deadline=None)
def test_stale_share_is_what_torch_leaves_of_the_initial_statistics(momentum, steps) -> None:
    """Batches of constant mean 3: torch's running mean after t steps is 3 (1 - share)."""
    from torch import nn

    from landscape.train import stalest_batchnorm

    net = nn.Sequential(nn.BatchNorm1d(2, momentum=momentum), nn.BatchNorm1d(2, momentum=None))
    x = torch.tensor([[2.0, 1.0], [4.0, 5.0]])  # per-feature means 3 and 3
    for _ in range(steps):
        net(x)
    stale = stalest_batchnorm(net)
    assert (stale.layer, stale.steps) == ("0", steps)  # the cumulative average is not stale
    assert stale.share == pytest.approx((1 - momentum) ** steps, rel=1e-12)
    torch.testing.assert_close(net[0].running_mean.double(),
                               torch.full((2,), 3 * (1 - stale.share), dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    assert stalest_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1))) is None
    unused = nn.ModuleDict({"used": net[0], "branch": nn.BatchNorm1d(2)})  # never ran
    pick = stalest_batchnorm(unused)  # without any step both hold all: share 1
    assert pick.layer == "used" if steps else pick.share == 1.0


def test_channels_last_placement_leaves_a_5d_weight_alone():
    """On CUDA training puts the model in channels_last; torch's ``Module.to(memory_format=
    channels_last)`` refuses a model with a 5-D weight (timm's LambdaNet: Conv3d position
    lambdas), which stopped its training there. ``place`` converts the 4-D tensors only (the
    CUDA path's logic, run on CPU)."""
    import dataclasses

    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Unflatten(1, (1, 4)),
                        nn.Conv3d(1, 1, (1, 3, 3), padding=(0, 1, 1)), nn.Flatten(1, 2))
    x = torch.randn(2, 2, 6, 6)
    expected = net.eval()(x)
    with pytest.raises(RuntimeError, match="rank 4"):
        copy.deepcopy(net).to(memory_format=torch.channels_last)
    cuda_like = dataclasses.replace(CPU, channels_last=True)
    assert cuda_like.place(net) is net
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not net[0].weight.is_contiguous()
    assert net[3].weight.is_contiguous()  # the 5-D weight as it was
    torch.testing.assert_close(net(cuda_like.to_device(x)), expected)
    assert CPU.place(net) is net  # off on CPU: nothing converted
