"""The input-size protocols of data.resize (issue 26): canvas placement and down_up on both
data paths, their validation, and image_size / resize as identity columns of every row."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from landscape.data import DataConfig, load_dataset
from landscape.data.datasets import TensorImageDataset
from landscape.data.registry import dataset_info, validate_data_config
from landscape.data.resident import Augmentation, ResidentLoader, ResidentSet, resident_bundle
from landscape.data.resize import CanvasDataset, fixed_offsets
from landscape.data.transforms import image_transforms
from landscape.device import device_settings
from landscape.train import make_loader

CPU = device_settings(torch.device("cpu"))
OBJ, CANVAS = 6, 14  # offsets uniform on 0..8 per axis
SPAN = CANVAS - OBJ


def _coded(n: int) -> torch.Tensor:
    """(n, OBJ, OBJ, 1) float images, pixel (i, j) = (1 + i * OBJ + j) / 64: all nonzero and
    distinct, so the pasted image and its offset can be read off a canvas."""
    v = (1 + torch.arange(OBJ * OBJ, dtype=torch.float32)).view(1, OBJ, OBJ, 1) / 64
    return v.expand(n, -1, -1, -1).contiguous()


def _placements(x: torch.Tensor) -> np.ndarray:
    """(top, left) of the coded image on each (un-normalised) canvas of ``x`` (B, 1, S, S),
    asserting that the whole image, unchanged, is on the canvas and the rest is black."""
    want = _coded(1)[0, :, :, 0]
    out = []
    for c in x[:, 0]:
        rows, cols = torch.nonzero(c, as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        assert len(rows) == OBJ * OBJ  # nothing cut off, nothing else non-black
        assert torch.equal(c[top:top + OBJ, left:left + OBJ], want)
        out.append((top, left))
    return np.array(out)


def _uniform_p(values: np.ndarray, k: int) -> float:
    counts = np.bincount(values, minlength=k)
    assert len(counts) == k, f"offsets outside [0, {k})"
    return stats.chisquare(counts).pvalue


def test_canvas_offsets_are_uniform_and_hold_the_whole_image_on_both_paths():
    n = 1800
    images = _coded(n)
    # the DataLoader path: per-image paste from torch's RNG
    plain = TensorImageDataset(images.permute(0, 3, 1, 2), torch.zeros(n, dtype=torch.long),
                               lambda x: TF.normalize(x, [0.0], [1.0]))
    torch.manual_seed(0)
    per_image = torch.stack([CanvasDataset(plain, CANVAS, OBJ, (0.0,), (1.0,), random=True)[i][0]
                             for i in range(n)])
    # the resident path: the epoch's offsets drawn from its generator
    rs = ResidentSet(images, torch.zeros(n), mean=(0.0,), std=(1.0,), canvas=CANVAS,
                     canvas_random=True)
    loader = ResidentLoader(rs, 256, shuffle=True, generator=torch.Generator().manual_seed(0))
    resident = torch.cat([x for x, _ in loader])
    for x in (per_image, resident):
        assert x.shape == (n, 1, CANVAS, CANVAS)
        pos = _placements(x)
        for axis in (0, 1):
            assert _uniform_p(pos[:, axis], SPAN + 1) > 1e-3
        # the two axes drawn independently: the 81 (top, left) pairs uniform too
        assert _uniform_p(pos[:, 0] * (SPAN + 1) + pos[:, 1], (SPAN + 1) ** 2) > 1e-3
    # another epoch (another generator state): other offsets
    again = torch.cat([x for x, _ in loader])
    assert not np.array_equal(_placements(again[:50]), _placements(resident[:50]))


def test_evaluation_offsets_are_fixed_per_image_and_equal_on_both_paths():
    n = 40
    images = _coded(n)
    plain = TensorImageDataset(images.permute(0, 3, 1, 2), torch.zeros(n, dtype=torch.long),
                               lambda x: TF.normalize(x, [0.0], [1.0]))
    ds = CanvasDataset(plain, CANVAS, OBJ, (0.0,), (1.0,), random=False)
    first = torch.stack([ds[i][0] for i in range(n)])
    torch.manual_seed(123)  # the global RNG plays no part
    second = torch.stack([ds[i][0] for i in range(n)])
    assert torch.equal(first, second)
    np.testing.assert_array_equal(_placements(first), fixed_offsets(n, SPAN).numpy())
    assert len(np.unique(_placements(first), axis=0)) > 10  # not one position for all
    rs = ResidentSet(images, torch.zeros(n), mean=(0.0,), std=(1.0,), canvas=CANVAS)
    resident = torch.cat([x for x, _ in make_loader(rs, 7, CPU, shuffle=False)])
    assert torch.equal(resident, first)
    # a subset keeps each image's offset
    sub = rs.subset(torch.tensor([5, 2]))
    assert torch.equal(sub.batch(torch.arange(2)), first[[5, 2]])


def test_a_canvas_dataset_trains_on_random_and_evaluates_on_fixed_offsets_on_both_paths():
    cfg = DataConfig(name="synthetic", train_subset=64, test_subset=24, resize="canvas",
                     image_size=24, object_size=12)
    b = load_dataset(cfg)
    assert b.image_size == 24 == dataset_info(cfg).image_size
    x, _ = b.test[3]
    assert x.shape == (3, 24, 24)
    black = torch.tensor([-2.0, -2.0, -2.0]).view(3, 1, 1)  # (0 - 0.5) / 0.25
    assert int((x == black).all(0).sum()) == 24 * 24 - 12 * 12  # the 12 px image, whole
    rb = resident_bundle(cfg, b, CPU)
    for ds, rs in ((b.test, rb.test), (b.train_eval, rb.train_eval)):
        xd = torch.cat([x for x, _ in make_loader(ds, 10, CPU, shuffle=False)])
        xr = torch.cat([x for x, _ in make_loader(rs, 10, CPU, shuffle=False)])
        assert torch.equal(xd, xr)
    assert rb.train.canvas_random and not rb.train_eval.canvas_random
    drawn = rb.train.draw(len(rb.train), torch.Generator().manual_seed(0))
    assert drawn["canvas"].shape == (64, 2) and 0 <= int(drawn["canvas"].min())
    assert int(drawn["canvas"].max()) <= 12


def test_down_up_equals_torchvision_resize_down_then_up_on_both_paths():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 16, 16, 3, generator=g)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)

    def reference(x):  # CHW float
        x = TF.resize(x, [7, 7], interpolation=InterpolationMode.BILINEAR, antialias=True)
        x = TF.resize(x, [16, 16], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.normalize(x, list(mean), list(std))

    cfg = DataConfig(resize="down_up", down_size=7, image_size=16)
    tf = image_transforms(cfg, train=False, size=16, mean=mean, std=std, resize=False,
                          from_pil=False)
    want = torch.stack([reference(im.permute(2, 0, 1)) for im in images])
    assert not torch.allclose(want, torch.stack([TF.normalize(im.permute(2, 0, 1), list(mean),
                                                              list(std)) for im in images]))
    assert torch.equal(torch.stack([tf(im.permute(2, 0, 1)) for im in images]), want)
    rs = ResidentSet(images, torch.arange(5), mean=mean, std=std, down_size=7)
    assert torch.equal(rs.batch(torch.arange(5)), want)
    # training: after the augmentation (a padded crop and flip), as the paper's set C
    aug = rs.with_augment(Augmentation("pad_crop", 4, True))
    params = aug.draw(5, g)
    out = aug.batch(torch.arange(5), params)
    for k in range(5):
        x = TF.crop(TF.pad(images[k].permute(2, 0, 1), [4]), int(params["dy"][k]),
                    int(params["dx"][k]), 16, 16)
        x = TF.horizontal_flip(x) if params["flip"][k] else x
        torch.testing.assert_close(out[k], reference(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(resize="bicubic"),
     "data.resize must be one of ('direct', 'down_up', 'canvas'), got 'bicubic'"),
    (dict(resize="down_up"), "data.down_size must be set for data.resize=down_up (the "
                             "intermediate size, < data.image_size=32)"),
    (dict(resize="down_up", down_size=32),
     "data.down_size must be < data.image_size=32 for data.resize=down_up, got 32"),
    (dict(resize="down_up", image_size=16, down_size=0),
     "data.down_size must be a positive integer or null, got 0"),
    (dict(down_size=8), "data.down_size is only used by data.resize=down_up, got "
                        "data.resize=direct; drop it or set data.resize=down_up"),
    (dict(object_size=8, resize="down_up", down_size=8), "data.object_size is only used by "
     "data.resize=canvas, got data.resize=down_up; drop it or set data.resize=canvas"),
    (dict(resize="canvas", image_size=16),
     "data.image_size (the canvas, 16 px) must be >= the pasted image (data.object_size, "
     "32 px) for data.resize=canvas"),
    (dict(resize="canvas", image_size=48, object_size=64),
     "data.image_size (the canvas, 48 px) must be >= the pasted image (data.object_size, "
     "64 px) for data.resize=canvas"),
    (dict(image_size=0), "data.image_size must be >= 1 or null, got 0"),
    (dict(image_size=[]), "data.image_size must be a positive integer or null, got []"),
])
def test_bad_size_settings_are_one_line_naming_the_field(changes, message):
    cfg = dataclasses.replace(DataConfig(name="digits"), **changes)
    with pytest.raises(ValueError) as e:
        validate_data_config(cfg)
    assert str(e.value) == message
    with pytest.raises(ValueError, match=r"^data\.\w+ [^\n]+$"):  # also when planning a grid
        dataset_info(cfg)


def test_an_input_below_the_architecture_minimum_names_the_smallest_that_works():
    from landscape.config import ModelConfig, RunConfig
    from landscape.identity import identify

    with pytest.raises(ValueError, match=r"larger input \(data.image_size\).*smallest square "
                                         r"input that works is 4x4"):
        identify(RunConfig(model=ModelConfig(name="small_cnn"),
                           data=DataConfig(name="digits", image_size=2)))


@pytest.mark.parametrize("loader", ["resident", "dataloader"])
def test_a_canvas_run_writes_image_size_and_resize_in_every_row(tmp_path, loader):
    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.train import TrainConfig

    cfg = RunConfig(
        model=ModelConfig(name="small_cnn", width=0.25),
        data=DataConfig(name="digits", train_subset=60, test_subset=30, resize="canvas",
                        image_size=40, loader=loader),
        train=TrainConfig(epochs=1, batch_size=32), results_root=str(tmp_path),
        device="cpu", progress=False)
    assert pipeline.run(cfg).status == "ok"
    df = results.load(tmp_path)
    assert len(df) and df["image_size"].eq(40).all() and df["resize"].eq("canvas:32").all()
    assert df.loc[df["metric"] == "resident_data", "note"].tolist() == [loader]
    cell = df["run_id"].iloc[0].split("/")[0]
    assert cell.startswith("small_cnn-w0.25-digits-s40-canvas32-pool0-")
    # the RF stage measured the 40 px canvas the network sees
    flops = df.loc[df["metric"] == "flops_per_image", "value"]
    assert len(flops) == 1 and flops.iloc[0] > 0


def _sized_rows() -> list[dict]:
    """tests/test_analysis.py's pool-1 cell at two input sizes (two cells: their own hashes),
    the dense accuracy 0.2 lower at 16 px."""
    from tests.test_analysis import synthetic_rows

    rows = []
    for size, shift in ((16, -0.2), (32, 0.0)):
        for r in synthetic_rows():
            if r["pool_level"] != 1:
                continue
            run_id = r["run_id"].replace("-0000000001", f"-{size:010d}")
            dense = r["stage"] == "train" and r["metric"] == "test_acc"
            rows.append({**r, "run_id": run_id, "image_size": size, "resize": "direct",
                         "value": r["value"] + (shift if dense else 0.0)})
    return rows


def test_two_input_sizes_of_one_pool_are_two_rows_never_pooled_as_seeds():
    from analysis.stats import summarize_cells
    from analysis.tables import pruning_table, pvalue_table, training_table
    from landscape.grid import final_accuracy_table
    from landscape.results import to_frame

    df = to_frame(_sized_rows())
    s = summarize_cells(df, metrics=["test_acc"])
    s = s[s["stage"] == "train"].sort_values("image_size")
    assert s["n"].tolist() == [3, 3]
    np.testing.assert_allclose(s["mean"], [0.735, 0.935])
    t = training_table(df).cells
    assert t["Receptive field"].tolist() == ["RF 181 px (pool 1), input 16 px",
                                             "RF 181 px (pool 1), input 32 px"]
    assert t["Test acc. (%)"].tolist() == ["73.5 ± 0.50", "93.5 ± 0.50"]
    p = pruning_table(df, finetuned=False)
    assert p.numbers["image_size"].tolist() == [16, 32]
    assert p.numbers["dense_n"].tolist() == [3, 3]
    np.testing.assert_allclose(p.numbers["dense_mean"], [73.5, 93.5])
    pv = pvalue_table(df, quantity="dense")
    assert pv.numbers[["n_a", "n_b"]].values.tolist() == [[3, 3]]
    assert pv.numbers["p_holm"].iloc[0] < 1e-3  # 73.5 vs 93.5 with std 0.5: told apart
    acc = final_accuracy_table(df)
    assert acc["seeds"].tolist() == [3, 3]
    np.testing.assert_allclose(acc["test_acc_mean"], [0.735, 0.935])


def test_input_size_is_no_variant_but_another_setting_is(tmp_path, capsys):
    from landscape import results

    def cell(name, lr, size, resize="direct"):
        ident = {"model.name": "small_cnn", "data.name": "digits", "train.lr": lr,
                 "data.image_size": size, "data.resize": resize}
        config = {"model": {"name": "small_cnn", "width": 1.0}, "data": {
            "name": "digits", "image_size": size, "resize": resize}, "train": {"lr": lr}}
        results.write_run_records(results.run_paths(tmp_path, name, 0), ident, config)

    cell("a", 0.1, 16)
    cell("b", 0.1, 32)
    cell("c", 0.1, 32, "canvas")
    cell("d", 0.01, 32)
    assert results.cell_variants(tmp_path) == {"a": "train.lr=0.1", "b": "train.lr=0.1",
                                               "c": "train.lr=0.1", "d": "train.lr=0.01"}
    # with the defaults, a field at its default is no label: lr 0.1 is the default one
    from landscape.grid.finish import cell_variants

    assert cell_variants(tmp_path) == {"a": "", "b": "", "c": "", "d": "train.lr=0.01"}
    assert results.cell_variants(tmp_path, defaults={"train": {"lr": 0.01}}) == {
        "a": "train.lr=0.1", "b": "train.lr=0.1", "c": "train.lr=0.1", "d": ""}
    # landscape-status names what the folder names (here a, b, c, d) leave out
    from landscape.commands import status_main

    assert status_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("cells told apart by settings their folder names leave out:\n"
                        "  d  train.lr=0.01\n")


def test_the_direct_protocol_keeps_run_names_and_another_one_names_itself():
    from landscape.config import ModelConfig, RunConfig
    from landscape.identity import identify, identity_dict

    def name(**data):
        return identify(RunConfig(model=ModelConfig(name="small_cnn", pool_level=1),
                                  data=DataConfig(name="digits", **data))).run_id

    # as computed by the code before data.resize existed (main at 6089a77)
    assert name() == "small_cnn-w1-digits-pool1-670d2eed9d/seed=0"
    assert name(image_size=16) == "small_cnn-w1-digits-pool1-b93e49f61f/seed=0"
    assert not any(k.startswith("data.resize") for k in identity_dict(
        RunConfig(data=DataConfig(name="digits", image_size=16))))
    assert name(resize="down_up", down_size=16).startswith(
        "small_cnn-w1-digits-s32-downup16-pool1-")
    assert name(resize="canvas", image_size=48).startswith(
        "small_cnn-w1-digits-s48-canvas32-pool1-")
    assert name(resize="canvas", image_size=48) != name(resize="canvas", image_size=48,
                                                        object_size=24)
    # a size that restates the native one (digits: 32 px) is the same cell, not a new one
    assert name(image_size=32) == name()
    assert name(resize="canvas", image_size=48, object_size=32) == name(resize="canvas",
                                                                        image_size=48)


def test_the_erf_figure_draws_each_input_size_as_its_own_line():
    from analysis.plots import erf_vs_receptive_field
    from landscape.results import to_frame

    rows = []
    for size in (16, 32):
        for level, rf in ((1, 181), (2, 359)):
            ident = {"arch": "vgg19", "dataset": "cifar10", "pool_level": level,
                     "receptive_field": rf, "width": 1.0, "image_size": size, "resize": "direct"}
            for seed in (0, 1):
                rows.append({**ident, "run_id": f"vgg19-w1-cifar10-pool{level}-{size:010d}/"
                             f"seed={seed}", "seed": seed, "stage": "importance_final",
                             "metric": "erf_size", "value": size / 2 + seed,
                             "note": f"mode=noise; input_size={size}"})
    fig = erf_vs_receptive_field(to_frame(rows))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    sized = [lab for lab in labels if "input" in lab and "px" in lab and "maps" not in lab]
    assert len(sized) == 2 and "input 16 px" in sized[0] and "input 32 px" in sized[1], labels
