"""The ERF of trained networks in the pipeline (issue 27 item 4): importance maps on real test
images at init and after training, and the report's ERF-vs-RF figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis import plots
from analysis.stats import with_cell
from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.importance import projected_gradient_maps
from landscape.importance.maps import centre_on_canvas


@pytest.mark.parametrize("h, w, size", [(16, 16, 32), (5, 8, 9), (12, 12, 12), (20, 7, 10)])
def test_centre_on_canvas_keeps_the_image_at_the_centre(h, w, size):
    x = torch.rand(2, 3, h, w) + 1  # strictly positive: the image's pixels are found again
    out = centre_on_canvas(x, size)
    assert out.shape == (2, 3, size, size)
    rows, cols = torch.nonzero(out[0, 0] > 0, as_tuple=True)
    top, left = (size - min(h, size)) // 2, (size - min(w, size)) // 2
    assert (rows.min().item(), cols.min().item()) == (top, left)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (min(h, size),
                                                                         min(w, size))
    # cropped sides keep the central pixels
    ch, cw = max(0, (h - size) // 2), max(0, (w - size) // 2)
    assert torch.equal(out[:, :, top:top + min(h, size), left:left + min(w, size)],
                       x[:, :, ch:ch + min(h, size), cw:cw + min(w, size)])


def test_images_mode_of_a_linear_net_gives_its_kernel_footprint():
    """For one conv the map is |kernel| summed over input channels at the centre, whatever
    the images: the gradient of a linear map does not depend on its input."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    net = nn.Sequential(conv)
    images = torch.randn(4, 2, 7, 7)
    m = projected_gradient_maps(net, input_size=9, n_samples=4, mode="images", images=images,
                                in_channels=2)
    expected = np.abs(conv.weight.detach().sum(0).numpy()).sum(0)
    assert m.n == 4 and m.mean_map.shape == (9, 9)
    np.testing.assert_allclose(m.mean_map[3:6, 3:6], expected, rtol=1e-6)
    assert m.mean_map.sum() == pytest.approx(expected.sum(), rel=1e-6)
    with pytest.raises(ValueError, match="needs images="):
        projected_gradient_maps(net, input_size=9, mode="images", in_channels=2)
    with pytest.raises(ValueError, match="images have 3 channels, the model takes 2"):
        projected_gradient_maps(net, input_size=9, mode="images", in_channels=2,
                                images=torch.randn(1, 3, 5, 5))


def test_erf_before_and_after_training_in_the_pipeline_and_its_figure(tmp_path):
    cfgs = expand_grid(["model=small_cnn", "data=digits", "train.epochs=1",
                        "data.train_subset=120", "data.test_subset=40", "device=cpu",
                        "num_threads=1", "progress=false", "model.pool_level=0,2",
                        "importance.enabled=true", "importance.mode=images",
                        "importance.checkpoints=[init,final]", "importance.input_size=32",
                        "importance.n_samples=8", f"results_root={tmp_path}"])
    for cfg in cfgs:
        pipeline.run(cfg)
    df = results.load(tmp_path)
    erf = df[df["metric"] == "erf_size"]
    assert set(erf["stage"]) == {"importance_init", "importance_final"}
    assert erf["note"].str.contains("mode=images (the first 8 test images, 16 px", regex=False).all()
    assert ((erf["value"] > 0) & (erf["value"] <= 32)).all()
    assert erf["note"].str.contains(r"; layer=features\.\d+ \(auto: the deepest conv\); ").all()
    # a store written before erf_size_censored: the report reads it from the saved mean maps,
    # equal to what the units record now
    from landscape.stages.importance import censoring_rows

    cut = df[df["metric"] == "erf_size_censored"].set_index(["run_id", "stage"])["value"]
    arrays = {st: results.load_arrays(tmp_path, st) for st in set(erf["stage"])}
    older = df[df["metric"] != "erf_size_censored"]
    again = {(r["run_id"], r["stage"]): r["value"] for r in censoring_rows(older, arrays)}
    assert again == cut.to_dict() and len(again) == len(erf)
    assert censoring_rows(df, arrays) == []  # nothing to add where the units have it
    (stage, run), = list(cut.index[:1].swaplevel())  # a map that fills the whole input
    arrays[stage][run] = {**arrays[stage][run], "mean_map": np.ones((32, 32))}
    again = {(r["run_id"], r["stage"]): r["value"] for r in censoring_rows(older, arrays)}
    assert again[run, stage] == 1.0 and sum(again.values()) == 1.0 + cut.drop((run, stage)).sum()
    fig = plots.erf_vs_receptive_field(with_cell(df))
    assert fig is not None
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert any(lab.startswith("after training (images)") for lab in labels)
    assert any(lab.startswith("at initialisation") for lab in labels)
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")


def test_per_layer_erf_rows_beside_the_analytic_rf_and_their_figure(tmp_path):
    [cfg] = expand_grid(["model=small_cnn", "data=digits", "train.epochs=1",
                         "data.train_subset=64", "data.test_subset=16", "device=cpu",
                         "num_threads=1", "progress=false", "importance.enabled=true",
                         "importance.mode=images", "importance.per_layer=true",
                         "importance.input_size=24", "importance.n_samples=4",
                         f"results_root={tmp_path}"])
    pipeline.run(cfg)
    df = with_cell(results.load(tmp_path))
    size = df[df["metric"] == "layer_erf_size"].sort_values("index")
    r_max = df[df["metric"] == "layer_r_max"].sort_values("index")
    assert list(size["layer"]) == list(r_max["layer"]) and len(size) == 3  # small_cnn's convs
    assert r_max["value"].iloc[0] == 3 and r_max["value"].is_monotonic_increasing
    assert size["value"].iloc[0] <= 3  # the first conv's ERF is inside its 3x3 kernel
    # inside the analytic RF: a centred square has an odd side, so an even r_max allows + 1
    assert (size["value"].to_numpy() <= r_max["value"].to_numpy() + 1).all()
    assert set(r_max["stage"]) == {"importance_rf"} and set(size["stage"]) == {"importance_init"}
    fig = plots.layer_erf_profile(df)
    assert fig is not None and fig.axes[0].get_yscale() == "log"
    ticks = fig.axes[0].get_xticks()
    assert (ticks == ticks.round()).all()  # conv layers 0..2, no 0.25-steps between them
    dashed = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    hull = [r + 1 - r % 2 for r in r_max["value"]]  # drawn as the ERF's odd squares
    assert [list(line.get_ydata()) for line in dashed] == [hull]
    assert (size["value"].to_numpy() <= np.array(hull)).all()
    # the analytic RF records the analysis's version: another recomputes it, not the maps
    import json

    from landscape.receptive_field import version
    from landscape.stages.importance import ImportanceStage

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(version, "analysis_version", lambda: "0123456789ab")
        assert pipeline.run(cfg).ran == ["receptive_field", "importance_rf"]
    assert pipeline.run(cfg).ran == ["receptive_field", "importance_rf"]
    from landscape.identity import identify

    run_dir = results.run_paths(tmp_path, identify(cfg).cell_name, cfg.seed).run_dir
    done = results.stage_dir(run_dir, "importance_init") / "DONE"
    marker = json.loads(done.read_text())
    del marker["settings"]["layer_r_max_rows"]  # written when each unit held its r_max rows
    done.write_text(json.dumps(marker))
    assert ImportanceStage().stale_reason(cfg.importance, run_dir, "importance_init") == (
        "settings changed: layer_r_max_rows 'each importance unit' -> 'importance_rf'")
