"""A masked training (an IMP round, a pruned network retrained with the run's recipe) or a
fine-tuning stopped on the way goes on from its last epoch, to the weights of an
uninterrupted one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.identity import identify
from landscape.stages import masked_training
from landscape.stages.masked_training import start_digest
from landscape.stages.scratch import START
from landscape.storage import load_checkpoint


class Preempted(BaseException):
    """What submitit's signal handler does to a task it requeues: leave by an exception."""


def _cfg(root, *extra):
    [cfg] = expand_grid(["model=small_cnn", "model.width=0.5", "data=digits", "train.epochs=4",
                         "data.train_subset=96", "data.test_subset=40", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={root}", *extra])
    return cfg


def _recording(monkeypatch, stop_after=None):
    """``masked_training.train_model`` recording each call's outcome; with ``stop_after`` the
    first call leaves (Preempted) once that epoch's checkpoint is written."""
    calls = []
    train_model = masked_training.train_model

    def wrapped(model, *args, **kwargs):
        if stop_after is not None and not calls:
            def stop(record):
                if record.epoch == stop_after:
                    raise Preempted
            kwargs["on_epoch"] = stop
        calls.append((kwargs["checkpoint_dir"], None))
        out = train_model(model, *args, **kwargs)
        calls[-1] = (kwargs["checkpoint_dir"], out)
        return out

    monkeypatch.setattr(masked_training, "train_model", wrapped)
    return calls


@pytest.mark.parametrize("what", ["imp", "retrain"])
def test_a_stopped_masked_training_goes_on_to_the_uninterrupted_weights(tmp_path, monkeypatch,
                                                                        what):
    extra = (["imp.enabled=true", "imp.rounds=1", "imp.rate=0.5"] if what == "imp" else
             ["prune.enabled=true", "prune.rates=[0.5]", "prune.finetune=true",
              "prune.finetune_recipe=train", "prune.checkpoint=init"])
    full = _cfg(tmp_path / "full", *extra)
    pipeline.run(full)
    stopped = _cfg(tmp_path / "stopped", *extra)

    calls = _recording(monkeypatch, stop_after=2)
    with pytest.raises(Preempted):
        pipeline.run(stopped)
    [(work, _)] = calls
    assert load_checkpoint(work / "last.pt")["epoch"] == 2 and (work / START).exists()

    calls = _recording(monkeypatch)
    pipeline.run(stopped)
    [(again, outcome)] = calls
    assert again == work and outcome.resumed_from_epoch == 2
    assert [e.epoch for e in outcome.history] == [1, 2, 3, 4]  # the whole history is kept
    assert not work.exists()  # removed once the training returned

    a, b = results.load(tmp_path / "full"), results.load(tmp_path / "stopped")
    stage = "imp" if what == "imp" else "finetune"
    cols = ["unit", "metric", "index", "value"]
    rows_a = a.loc[a["stage"].str.startswith(stage), cols].sort_values(cols[:3])
    rows_b = b.loc[b["stage"].str.startswith(stage), cols].sort_values(cols[:3])
    assert len(rows_a) > 0
    assert rows_a.reset_index(drop=True).equals(rows_b.reset_index(drop=True))
    if what == "imp":
        ident = identify(full)
        ra, rb = (load_checkpoint(results.run_paths(root, ident.cell_name, 0).checkpoints
                                  / "imp" / "round_1.pt")["model"]
                  for root in (tmp_path / "full", tmp_path / "stopped"))
        assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_another_start_empties_the_scratch_folder_and_trains_from_its_start(tmp_path,
                                                                            monkeypatch):
    """The scratch folder of a stopped round, then the round's settings changed (another
    mask): the round trains from its start epoch, not from the stale checkpoint."""
    cfg = _cfg(tmp_path, "imp.enabled=true", "imp.rounds=1", "imp.rate=0.5")
    calls = _recording(monkeypatch, stop_after=2)
    with pytest.raises(Preempted):
        pipeline.run(cfg)
    calls = _recording(monkeypatch)
    pipeline.run(_cfg(tmp_path, "imp.enabled=true", "imp.rounds=1", "imp.rate=0.6"))
    [(_, outcome)] = calls
    assert outcome.resumed_from_epoch == 0 and len(outcome.history) == 4


def test_the_start_digest_sees_every_bit_of_the_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    masks = {"0.weight": torch.rand(2, 1, 3, 3) > 0.5}
    base = start_digest(model, masks, 0, False)
    assert base == start_digest(model, {k: v.clone() for k, v in masks.items()}, 0, False)
    assert start_digest(model, masks, 1, False) != base
    assert start_digest(model, masks, 0, True) != base
    flipped = masks["0.weight"].clone()
    flipped[1, 0, 2, 2] ^= True
    assert start_digest(model, {"0.weight": flipped}, 0, False) != base
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = torch.nextafter(model[0].weight[0, 0, 0, 0],
                                                      torch.tensor(2.0))
    one_ulp = start_digest(model, masks, 0, False)
    assert one_ulp != base  # one ulp of one weight
    model[1].num_batches_tracked += 1  # a 0-d buffer too
    assert start_digest(model, masks, 0, False) != one_ulp


def test_finetune_resumed_from_an_epochs_state_equals_the_uninterrupted_one():
    """``finetune(on_epoch=..., resume=...)``: the state after epoch 2 of 4, taken up by a fresh
    copy of the start, gives the same weights and results bit for bit; the batches and the
    dropout draw from the forked global RNG (as transforms in the main process do), so its
    state must be carried."""
    from landscape.pruning import finetune

    torch.manual_seed(0)
    start = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3))
    masks = {"1.weight": torch.rand(16, 8) > 0.5}
    x, y = torch.randn(24, 8), torch.randint(0, 3, (24,))

    def batches(epoch):  # a random "augmentation" from the global RNG
        return [(x[i:i + 8] + 0.1 * torch.randn(8, 8), y[i:i + 8]) for i in range(0, 24, 8)]

    def run(**kw):
        model = copy.deepcopy(start)
        states = []
        out = finetune(model, masks, batches, epochs=4, lr=0.05, seed=3,
                       eval_fn=lambda m: {"w": float(m[4].weight.detach().sum())},
                       on_epoch=states.append, **kw)
        return model, out, states

    model, full, states = run()
    assert [s["epoch"] for s in states] == [1, 2, 3, 4]
    assert all(t.device.type == "cpu" for t in states[1]["model"].values())
    resumed, out, later = run(resume=states[1])
    assert out == full and [s["epoch"] for s in later] == [3, 4]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 resumed.state_dict().values()))
    assert not resumed[1].weight[~masks["1.weight"]].any()
    without_rng = {**states[1], "rng": torch.manual_seed(99).get_state()}
    assert run(resume=without_rng)[1] != full  # the RNG state is what makes them equal
    with pytest.raises(ValueError, match=r"resume holds 2 epoch\(s\) up to epoch 2, not a "
                                         r"state of this 1-epoch fine-tuning"):
        finetune(copy.deepcopy(start), masks, batches, epochs=1, resume=states[1])


def test_a_preempted_finetune_unit_goes_on_from_its_last_epoch(tmp_path, monkeypatch):
    """The fine-tune stage saves each epoch's state in a scratch folder: stopped after epoch 2
    of 3, the unit goes on from epoch 3 and its rows equal an uninterrupted unit's."""
    from landscape.stages import finetune as stage

    extra = ["prune.enabled=true", "prune.rates=[0.5]", "prune.finetune=true",
             "prune.finetune_epochs=3", "prune.finetune_lr=0.01"]
    pipeline.run(_cfg(tmp_path / "full", *extra))
    stopped = _cfg(tmp_path / "stopped", *extra)
    real, calls = stage.finetune, []

    def wrapped(*args, on_epoch, resume, **kw):
        calls.append(resume)

        def save_then_stop(state):
            on_epoch(state)
            if len(calls) == 1 and state["epoch"] == 2:
                raise Preempted

        return real(*args, on_epoch=save_then_stop, resume=resume, **kw)

    monkeypatch.setattr(stage, "finetune", wrapped)
    with pytest.raises(Preempted):
        pipeline.run(stopped)
    [work] = [p for p in (tmp_path / "stopped").rglob("finetune_magnitude_*")
              if p.parent.name == "finetune"]
    assert (work / START).exists() and load_checkpoint(work / "last.pt")["epoch"] == 2
    pipeline.run(stopped)
    assert calls[0] is None and calls[1]["epoch"] == 2 and not work.parent.exists()
    a, b = results.load(tmp_path / "full"), results.load(tmp_path / "stopped")
    cols = ["unit", "metric", "index", "value"]
    rows_a, rows_b = (d.loc[d["stage"].str.startswith("finetune"), cols]
                      .sort_values(cols[:3]).reset_index(drop=True) for d in (a, b))
    assert len(rows_a) > 0 and rows_a.equals(rows_b)


@pytest.mark.parametrize("recipe", ["finetune", "train"])
def test_a_unit_stopped_while_measuring_its_finetuned_network_does_not_finetune_again(
        tmp_path, monkeypatch, recipe):
    """The fine-tuned weights stay in the scratch folder until the unit's measurements (here
    the pruned Hessian) are done: stopped in them, the rerun trains no epoch and writes the
    uninterrupted unit's rows."""
    from landscape.stages import finetune as stage
    from landscape.stages import pruned_geometry

    extra = ["prune.enabled=true", "prune.rates=[0.5]", "prune.finetune=true",
             "prune.finetune_epochs=2", "prune.finetune_lr=0.01", "train.epochs=2",
             f"prune.finetune_recipe={recipe}", "prune.hessian_k=2",
             "prune.geometry_samples=32", "prune.geometry_batch_size=32"]
    pipeline.run(_cfg(tmp_path / "full", *extra))
    stopped = _cfg(tmp_path / "stopped", *extra)
    top, solves = pruned_geometry.top_eigenvalues, []

    def stop_in_the_finetuned_networks_hessian(*args, **kwargs):
        solves.append(1)
        if len(solves) == 2:  # 1: the prune unit's; 2: the fine-tune unit's
            raise Preempted
        return top(*args, **kwargs)

    monkeypatch.setattr(pruned_geometry, "top_eigenvalues",
                        stop_in_the_finetuned_networks_hessian)
    with pytest.raises(Preempted):
        pipeline.run(stopped)
    folder = "retrain" if recipe == "train" else "finetune"
    [work] = [p for p in (tmp_path / "stopped").rglob("finetune_magnitude_*")
              if p.parent.name == folder]
    assert load_checkpoint(work / "last.pt")["epoch"] == 2

    epochs = []
    if recipe == "train":
        calls = _recording(monkeypatch)
    else:
        real = stage.finetune
        monkeypatch.setattr(stage, "finetune", lambda *a, resume, **kw: (
            epochs.append(resume["epoch"]), real(*a, resume=resume, **kw))[1])
    pipeline.run(stopped)
    if recipe == "train":
        [(again, outcome)] = calls
        assert again == work and outcome.resumed_from_epoch == 2  # of 2: nothing trained
    else:
        assert epochs == [2]  # resumed after its last epoch: nothing fine-tuned
    assert not work.parent.exists()  # removed once the unit returned
    a, b = results.load(tmp_path / "full"), results.load(tmp_path / "stopped")
    cols = ["unit", "metric", "index", "value"]
    rows_a, rows_b = (d.loc[d["stage"].str.startswith("finetune"), cols]
                      .sort_values(cols[:3]).reset_index(drop=True) for d in (a, b))
    assert (rows_a["metric"] == "pruned_hessian_eigenvalue").sum() == 2
    assert rows_a.equals(rows_b)
