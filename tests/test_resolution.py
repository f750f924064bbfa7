"""The resolution stage (issue 26 item 3): a trained checkpoint evaluated at other input sizes."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from analysis import plots
from analysis.stats import with_cell

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.data import load_dataset
from landscape.grid.finish import write_root_report
from landscape.identity import identify
from landscape.stages.resolution import Renormalised, ResolutionConfig, ResolutionStage


def _cfg(root, *extra):
    [cfg] = expand_grid(["model=small_cnn", "data=digits", "train.epochs=1",
                         "data.train_subset=120", "data.test_subset=60", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={root}", *extra])
    return cfg


def _final_model(cfg, root) -> torch.nn.Module:
    """The run's model with its final checkpoint's weights, on the CPU."""
    ident = identify(cfg)
    model = ident.build_model()
    state = torch.load(results.run_paths(root, ident.cell_name, 0).checkpoints / "final.pt",
                       map_location="cpu", weights_only=False)["model"]
    model.load_state_dict(state)
    return model


def _test_split(data) -> tuple[torch.Tensor, torch.Tensor]:
    test = data.test
    return (torch.stack([test[i][0] for i in range(len(test))]),
            torch.tensor([int(test[i][1]) for i in range(len(test))]))


def test_the_training_size_row_is_the_training_evaluation_and_other_sizes_are_renormalised(
        tmp_path):
    cfg = _cfg(tmp_path, "resolution.enabled=true", "resolution.sizes=[24,8,16]")
    pipeline.run(cfg)
    df = results.load(tmp_path)
    res = df[df["stage"] == "resolution_final"].set_index(["metric", "index"])["value"]
    assert sorted(res.loc["resolution_test_acc"].index) == [8, 16, 24]
    train = df[(df["stage"] == "train") & (df["index"] == cfg.train.epochs)]
    final = train.set_index("metric")["value"]
    assert res.loc[("resolution_test_acc", 16)] == final["test_acc"]  # digits' size is 16
    assert res.loc[("resolution_test_loss", 16)] == final["test_loss"]

    # 24 px: the digits loaded at 24 px, put in the 16 px data's normalisation, by hand
    model = _final_model(cfg, tmp_path)
    d16, d24 = load_dataset(cfg.data), load_dataset(dataclasses.replace(cfg.data, image_size=24))
    x, y = _test_split(d24)
    x = (x * d24.std[0] + d24.mean[0] - d16.mean[0]) / d16.std[0]
    with torch.no_grad():
        logits = model.eval()(x)
    assert res.loc[("resolution_test_acc", 24)] == pytest.approx(
        (logits.argmax(1) == y).sum().item() / len(y), abs=1e-12)
    assert res.loc[("resolution_test_loss", 24)] == pytest.approx(
        torch.nn.functional.cross_entropy(logits.double(), y).item(), rel=1e-5)

    report = write_root_report(tmp_path)
    assert "evaluated at other input sizes" in report.read_text()
    assert list((tmp_path / "report" / "figures").glob("*-resolution.png"))


def test_renormalised_moves_pixels_to_the_target_statistics():
    ds = [(torch.rand(3, 4, 4), 1) for _ in range(3)]
    mean, std, to_mean, to_std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), (0.4, 0.4, 0.4), (0.2, 0.3, 0.25)
    r = Renormalised(ds, mean, std, to_mean, to_std)
    x, y = r[1]
    raw = ds[1][0] * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    assert y == 1 and torch.allclose(
        x, (raw - torch.tensor(to_mean).view(-1, 1, 1)) / torch.tensor(to_std).view(-1, 1, 1),
        atol=1e-6)


@pytest.mark.parametrize("sizes, message", [
    ([], "resolution.sizes must be a non-empty list"),
    ([16, 0], "resolution.sizes must be a non-empty list"),
    ([16, 2.5], "resolution.sizes must be a non-empty list"),
])
def test_bad_size_lists_are_refused(sizes, message):
    with pytest.raises(ValueError, match=message):
        ResolutionStage().validate(ResolutionConfig(enabled=True, sizes=sizes))


def test_the_default_settings_are_valid_and_enabling_without_sizes_is_not():
    ResolutionStage().validate(ResolutionConfig())
    with pytest.raises(ValueError, match=r"resolution.sizes must be a non-empty list.*got \[\]"):
        ResolutionStage().validate(ResolutionConfig(enabled=True))


def test_a_size_too_small_for_the_architecture_names_the_smallest_that_works(tmp_path):
    cfg = _cfg(tmp_path, "model=vgg19", "model.width=0.125", "resolution.enabled=true",
               "resolution.sizes=[16,4]")
    with pytest.raises(ValueError, match=r"resolution\.sizes: vgg19 cannot be evaluated at 4 "
                                         r"px: .*smallest"):
        pipeline.validate(cfg)
    assert not any(tmp_path.iterdir())


def test_same_protocol_tests_a_canvas_run_on_its_own_canvases_at_every_size(tmp_path):
    """``resolution.resize=same``: the 16 px digits pasted on 24 and 32 px canvases, as the
    run trained; at the training size the row is the training's own evaluation."""
    cfg = _cfg(tmp_path, "data.resize=canvas", "data.object_size=16", "data.image_size=24",
               "resolution.enabled=true",
               "resolution.sizes=[32,24]", "resolution.resize=same")
    pipeline.run(cfg)
    df = results.load(tmp_path)
    res = df[df["stage"] == "resolution_final"]
    assert set(res["note"].str.extract(r"eval_resize=([^;]+)")[0]) == {"canvas:16"}
    res = res.set_index(["metric", "index"])["value"]
    final = df[(df["stage"] == "train") & (df["index"] == 1)].set_index("metric")["value"]
    assert res.loc[("resolution_test_acc", 24)] == final["test_acc"]

    model = _final_model(cfg, tmp_path)
    d24, d32 = load_dataset(cfg.data), load_dataset(dataclasses.replace(cfg.data, image_size=32))
    x, y = _test_split(d32)
    raw = x * d32.std[0] + d32.mean[0]
    ink = raw[:, 0].abs() > 1e-5  # each 16 px digit somewhere on its 32 px black canvas
    for axis in (1, 2):
        seen = ink.any(dim=3 - axis).float()
        first, last = seen.argmax(1), 31 - seen.flip(1).argmax(1)
        assert (last - first < 16).all()
    with torch.no_grad():
        logits = model.eval()((raw - d24.mean[0]) / d24.std[0])
    assert res.loc[("resolution_test_acc", 32)] == pytest.approx(
        (logits.argmax(1) == y).sum().item() / len(y), abs=1e-12)


@pytest.mark.parametrize("protocol, sizes, bad", [
    (["data.resize=down_up", "data.image_size=32", "data.down_size=12"], "[12,8,32]", r"\[12, 8\]"),
    (["data.resize=canvas", "data.object_size=16", "data.image_size=32"], "[12,16,32]",
     r"\[12\]"),
])
def test_same_protocol_refuses_sizes_the_protocol_cannot_make(tmp_path, protocol, sizes, bad):
    cfg = _cfg(tmp_path, *protocol, "resolution.enabled=true", f"resolution.sizes={sizes}",
               "resolution.resize=same")
    with pytest.raises(ValueError, match=rf"resolution.sizes {bad} cannot be loaded with this "
                                         r"run's data.resize=.*resolution.resize=direct"):
        pipeline.validate(cfg)
    assert not any(tmp_path.iterdir())


def test_an_unknown_resize_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"resolution.resize must be one of \('direct', "
                                         r"'same'\), got 'own'"):
        ResolutionStage().validate(ResolutionConfig(resize="own"))


def test_a_protocol_run_tested_on_plain_images_is_dashed_and_said_so():
    rows = [dict(run_id=f"{resize}/seed=0", arch="small_cnn", dataset="digits", width=1.0,
                 pool_level=0, pool_kernel=0, pool_stride=1, pool_padding=0,
                 receptive_field=9, image_size=32, resize=resize, seed=0,
                 stage="resolution_final", metric="resolution_test_acc", index=size,
                 value=0.5, note=f"checkpoint=final; eval_size={size}; eval_resize={tested}; "
                                 "train_size=32")
            for resize, tested in (("direct", "direct"), ("canvas:16", "direct"),
                                   ("down_up:16", "down_up:16"))
            for size in (24, 32)]
    fig = plots.resolution_curves(with_cell(pd.DataFrame(rows)))
    styles = {ln.get_label(): ln.get_linestyle() for ln in fig.axes[0].get_lines()
              if not ln.get_label().startswith("_")}
    assert sorted(styles.values()) == ["-", "-", "--"]
    [dashed] = [k for k, v in styles.items() if v == "--"]
    assert "canvas" in dashed and "(plain images)" in dashed
    assert "dashed: plain resized images" in fig._suptitle.get_text()
