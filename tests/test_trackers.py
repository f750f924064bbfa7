"""Measurements after training epochs (issue 28 item 3): lambda_max warm-started, saturation,
the gradient norm; rows per epoch, weights untouched, kept across a kill and resume."""

from __future__ import annotations

import pytest
import torch

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.hessian import lanczos_top_k
from landscape.hessian.operator import HessianOperator
from landscape.identity import identify
from landscape.tracking import EpochTrackers

TRACK = ["train.track.lambda_max=true", "train.track.saturation=true",
         "train.track.grad_norm=true", "train.track.n_samples=32", "train.track.tol=1e-4"]


def _cfg(root, *extra):
    [cfg] = expand_grid(["model=small_cnn", "data=digits", "train.epochs=2", "model.width=0.5",
                         "data.train_subset=96", "data.test_subset=40", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={root}", *extra])
    return cfg


def _final(root, cfg):
    ident = identify(cfg)
    path = results.run_paths(root, ident.cell_name, cfg.seed).checkpoints / "final.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["model"], ident


def _tracked(root):
    df = results.load(root)
    return df[df["metric"].astype(str).str.startswith("track_")]


def test_trackers_give_rows_per_epoch_measure_the_weights_and_change_nothing(tmp_path):
    plain, tracked = tmp_path / "plain", tmp_path / "tracked"
    pipeline.run(_cfg(plain))
    cfg = _cfg(tracked, *TRACK)
    pipeline.run(cfg)
    a, _ = _final(plain, _cfg(plain))
    b, ident = _final(tracked, cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the trackers change no weight
    assert identify(cfg).run_id == identify(_cfg(plain)).run_id  # and no identity
    rows = _tracked(tracked)
    lam = rows[rows["metric"] == "track_lambda_max"].set_index("index")
    assert list(lam.index) == [1, 2]
    assert lam["note"].str.contains("warm=True").tolist() == [False, True]
    assert set(rows.loc[rows["metric"] == "track_grad_norm", "index"]) == {1, 2}
    assert rows.loc[rows["metric"] == "track_grad_norm", "value"].nunique() == 2
    sat = rows[rows["metric"] == "track_saturation"]
    assert sat.groupby("index")["layer"].nunique().tolist() == [4, 4]  # 3 convs + linear
    assert ((sat["value"] > 0) & (sat["value"] <= 1)).all()

    # the last epoch's lambda_max is that of final.pt, as a cold Lanczos run finds it
    model = ident.build_model()
    model.load_state_dict(b)
    data = pipeline_data(cfg)
    op = HessianOperator(model, torch.nn.functional.cross_entropy, data, bn_mode="eval")
    cold = lanczos_top_k(op, op.dim, 1, tol=1e-8)
    assert lam.loc[2, "value"] == pytest.approx(cold.eigenvalues[0], rel=1e-3)
    # and its gradient norm that of the mean loss on the same images, in eval mode
    model.eval()
    [(x, y)] = data
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y),
                                list(model.parameters()))
    norm = torch.sqrt(sum(g.double().square().sum() for g in grads)).item()
    gn = rows[rows["metric"] == "track_grad_norm"].set_index("index")
    assert gn.loc[2, "value"] == pytest.approx(norm, rel=1e-5) and norm > 0


def pipeline_data(cfg):
    from landscape.data import load_dataset
    ds = load_dataset(cfg.data).train_eval
    x = torch.stack([ds[i][0] for i in range(32)])
    y = torch.tensor([int(ds[i][1]) for i in range(32)])
    return [(x, y)]


def test_a_killed_and_resumed_run_keeps_every_epochs_rows(tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    pipeline.run(_cfg(whole, *TRACK))
    measure = EpochTrackers.measure

    def dies_after_epoch_2(self, model, epoch):
        rows = measure(self, model, epoch)
        if epoch == 2:  # its rows are written, its resume checkpoint is not: epoch 2 replays
            raise KeyboardInterrupt
        return rows

    monkeypatch.setattr(EpochTrackers, "measure", dies_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(_cfg(killed, *TRACK))
    monkeypatch.setattr(EpochTrackers, "measure", measure)
    cfg = _cfg(killed, *TRACK)
    paths = results.run_paths(killed, identify(cfg).cell_name, 0)
    assert torch.load(paths.checkpoints / "last.pt", weights_only=False)["epoch"] == 1
    assert (paths.checkpoints / "trackers.jsonl").read_text().count("\n") == 2
    pipeline.run(cfg)
    assert (paths.checkpoints / "trackers.jsonl").read_text().count("\n") == 3  # 2 replayed
    a, b = _tracked(whole), _tracked(killed)
    key = ["metric", "index", "layer"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    exact = a["metric"] != "track_lambda_max"  # the same weights: the same numbers
    assert a.loc[exact, "value"].tolist() == b.loc[exact, "value"].tolist()
    lam = ~exact  # warm vs cold started after the resume: equal to the tolerance
    assert b.loc[lam, "value"].to_numpy() == pytest.approx(a.loc[lam, "value"].to_numpy(),
                                                           rel=1e-3)


def test_saturation_leaves_out_layers_with_no_more_samples_than_channels(tmp_path, caplog):
    """6 images give a 16-channel 1 x 1 map 6 samples: its covariance has rank <= 5, the
    saturation at most 5/16 whatever the weights. No row for it, one warning per run; the
    other layers' rows are those of layer_saturation."""
    from torch import nn

    from landscape.probes import layer_saturation
    from landscape.tracking import TrackConfig

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 16, 1),
                        nn.Flatten(), nn.Linear(16, 4))
    batches = [(torch.randn(6, 3, 6, 6), torch.arange(6) % 4)]
    trackers = EpochTrackers(TrackConfig(saturation=True), batches, epochs=2,
                             checkpoint_dir=tmp_path, device=torch.device("cpu"))
    with caplog.at_level("WARNING", logger="landscape"):
        rows = trackers.measure(net, 1) + trackers.measure(net, 2)
    assert [(r["layer"], r["index"]) for r in rows] == [("0", 1), ("4", 1), ("0", 2), ("4", 2)]
    expected = layer_saturation(net, [batches[0][0]], layers=["0", "4"])
    assert [r["value"] for r in rows[:2]] == [expected[n].saturation for n in ("0", "4")]
    assert caplog.text.count("train.track.saturation leaves out 1 layer(s) with no more "
                             "samples than channels") == 1
    assert "2 (6 samples, 16 channels)" in caplog.text


def test_bad_tracker_settings_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"train\.track\.every must be an integer >= 1, got 0"):
        pipeline.validate(_cfg(tmp_path, "train.track.every=0"))
    with pytest.raises(ValueError, match=r"train\.track\.tol must be in \(0, 1\)"):
        pipeline.validate(_cfg(tmp_path, "train.track.tol=2"))


def test_the_report_draws_the_trajectories(tmp_path):
    import pandas as pd

    from analysis import dynamics_plots
    from analysis.stats import with_cell

    rows = []
    base = dict(arch="resnet18", dataset="digits", width=0.125, pool_kernel=0, pool_stride=1,
                pool_padding=0, stage="train")
    for pool, rf in ((0, 109), (2, 200)):
        for seed in (0, 1):
            b = dict(base, run_id=f"c{pool}/seed={seed}", seed=seed, pool_level=pool,
                     receptive_field=rf)
            for e in (1, 2, 3):
                rows += [dict(b, metric="track_lambda_max", index=e, value=e * (pool + 1.0)),
                         dict(b, metric="learning_rate", index=e, value=0.1 / e)]
                rows += [dict(b, metric="track_saturation", index=e, layer=f"l{i}",
                              value=0.1 * (i + e)) for i in range(3)]
    df = with_cell(pd.DataFrame(rows))
    fig = dynamics_plots.lambda_trajectory(df)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "2 / lr" in ax.get_legend_handles_labels()[1] + [
        t.get_text() for t in ax.get_legend().get_texts()]
    threshold = [line for line in ax.get_lines() if line.get_linestyle() == "--"][0]
    assert list(threshold.get_ydata()) == pytest.approx([20.0, 40.0, 60.0])
    assert list(ax.get_xticks()) == [0, 1, 2, 3, 4]  # whole epochs only (was 1.0, 1.5, ...)
    fig = dynamics_plots.saturation_trajectory(df)
    images = [a for a in fig.axes if a.get_images()]
    assert len(images) == 2 and all(list(a.get_xticks()) == [0, 1, 2, 3, 4] for a in images)
    arr = images[0].get_images()[0].get_array()
    assert arr.shape == (3, 3) and arr[2, 0] == pytest.approx(0.3)  # layer l2, epoch 1
    assert dynamics_plots.lambda_trajectory(df[df["metric"] == "learning_rate"]) is None
