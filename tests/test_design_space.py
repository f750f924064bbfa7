"""The receptive-field design space (issue 25 item 5): knob families, the per-run points
against r̃, the report's figure, and ``experiment=rf_design_small`` end to end (reduced)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.design import POOL_ONLY, design_points, design_space, knob_family
from landscape import results


@pytest.mark.parametrize("variant, family", [
    ("", POOL_ONLY), (None, POOL_ONLY), (pd.NA, POOL_ONLY),
    ("stem=imagenet", "stem"), ("skips=False,projection=drop", "skips"),
    ("stage_strides=[1, 1, 2, 2]", "strides"),
    ("stage_strides=[1, 2, 2, 1],dilation=[1, 1, 1, 2]", "dilation+strides"),
    ("stem_channels=32,depths=[1, 1, 1, 1],widths=[64, 96, 192, 384]", "depth/width+stem"),
])
def test_knob_family_reads_the_variant_label(variant, family):
    assert knob_family(variant) == family


def _rows(cell, variant, seed, *, acc, pruned, lam, r_tilde=None, rf=109):
    run = f"{cell}/seed={seed}"
    base = dict(arch="resnet18", dataset="digits", width=0.125, pool_level=0, pool_kernel=0,
                pool_stride=1, pool_padding=0, receptive_field=rf, arch_variant=variant)
    out = [dict(base, run_id=run, seed=seed, stage="train", metric="test_acc", value=a,
                index=e) for e, a in ((1, 0.1), (2, acc))]
    out += [dict(base, run_id=run, seed=seed, stage="prune", criterion="magnitude",
                 prune_rate=r, finetuned=False, metric="test_acc", value=v, protocol="default",
                 unit=f"prune_magnitude_{r}_abc")
            for r, v in ((0.5, acc - 0.01), (0.9, pruned))]
    out += [dict(base, run_id=run, seed=seed, stage="hessian_final", metric="hessian_eigenvalue",
                 value=v, index=i, protocol="default") for i, v in ((1, lam), (2, lam / 2))]
    if r_tilde is not None and seed == 0:
        out.append(dict(base, run_id=cell, seed=None, stage="receptive_field",
                        metric="rf_min_feasible_input", value=r_tilde, layer="layer4.1.conv2",
                        note="input_size=16"))
        out.append(dict(base, run_id=cell, seed=None, stage="receptive_field",
                        metric="padding_only_share", value=r_tilde / 1000,
                        note="input_size=16; of 100 conv and linear weights"))
    return out


def test_design_points_one_row_per_seed_with_the_last_epoch_the_common_rate_and_lambda_max():
    rows = []
    for s in (0, 1):
        rows += _rows("a-1", None, s, acc=0.9 + s / 100, pruned=0.5, lam=3.0 + s, r_tilde=35)
        rows += _rows("b-2", "stem=imagenet", s, acc=0.7, pruned=0.2 + s / 10, lam=1.0,
                      r_tilde=187, rf=435)
    p = design_points(pd.DataFrame(rows))
    assert len(p) == 4 and p.attrs["prune_rate"] == 0.9
    assert p.attrs["r_tilde_source"] == "rf_min_feasible_input"
    a = p[p["cell"] == "a-1"].set_index("seed")
    assert a.loc[1, "test_acc"] == pytest.approx(0.91)  # the last epoch, not the first
    assert a.loc[0, "pruned_acc"] == 0.5 and a.loc[1, "lambda_max"] == 4.0
    assert set(a["family"]) == {POOL_ONLY} and set(a["r_tilde"]) == {35.0}
    b = p[p["cell"] == "b-2"].set_index("seed")
    assert set(b["family"]) == {"stem"} and set(b["r_tilde"]) == {187.0}
    assert b.loc[1, "pruned_acc"] == pytest.approx(0.3)
    assert set(p["input_size"]) == {16.0}
    assert set(a["padding_only"]) == {0.035} and set(b["padding_only"]) == {0.187}  # per cell


def test_design_points_fall_back_to_the_last_conv_rf_and_say_so():
    rows = _rows("a-1", None, 0, acc=0.9, pruned=0.5, lam=3.0, rf=109)
    rows += _rows("b-2", "skips=False", 0, acc=0.8, pruned=0.4, lam=2.0, rf=109)
    p = design_points(pd.DataFrame(rows))
    assert set(p["r_tilde"]) == {109.0} and p["input_size"].isna().all()
    assert p.attrs["r_tilde_source"] == "analytic r_max of the last conv"
    fig = design_space(p)
    assert fig is not None and "r_max of the last conv" in fig.axes[0].get_xlabel()
    assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 3


def test_design_points_refuse_to_pick_among_several_prune_settings():
    rows = _rows("a-1", None, 0, acc=0.9, pruned=0.5, lam=3.0)
    other = [dict(r, unit=r["unit"].replace("abc", "def"), value=0.1, note="bn_recalibrated=True")
             for r in rows if r["stage"] == "prune"]
    p = design_points(pd.DataFrame(rows + other))
    assert p["pruned_acc"].isna().all()


def test_design_space_draws_nothing_for_one_cell_and_needs_a_dataset_for_several():
    p = design_points(pd.DataFrame(_rows("a-1", None, 0, acc=0.9, pruned=0.5, lam=3.0)))
    assert design_space(p) is None
    rows = _rows("a-1", None, 0, acc=0.9, pruned=0.5, lam=3.0)
    rows += [dict(r, dataset="cifar10", run_id=r["run_id"].replace("a-1", "c-3"))
             for r in _rows("a-1", None, 0, acc=0.8, pruned=0.5, lam=3.0)]
    with pytest.raises(ValueError, match="several datasets"):
        design_space(design_points(pd.DataFrame(rows)))


def test_size_matters_cifar10_plans_its_architecture_list_and_their_receptive_fields():
    from landscape.cli.submit import expand_grid
    from landscape.identity import identify
    from landscape.pipeline import validate

    cfgs = expand_grid(["experiment=size_matters_cifar10"])
    assert len(cfgs) == 30 and {c.seed for c in cfgs} == {0, 1, 2}
    rf = {}
    for c in cfgs[::3]:  # one seed of each cell
        validate(c, check_data=False)
        i = identify(c)
        rf[(i.arch, i.spec.label())] = i.receptive_field
        assert (c.train.epochs, c.train.batch_size, c.train.scheduler) == (30, 64, "step")
    assert rf[("resnet18", "")] == 109 and rf[("resnet18", "stem=imagenet")] == 435
    assert rf[("resnet18", "skips=False")] == 109
    assert rf[("vgg19", "stage_strides=[2, 2, 1],dilation=[1, 1, 1, 2]")] == 176
    assert {a for a, _ in rf} == {"vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34",
                                  "resnet50"}


def test_size_matters_imagenette_plans_every_input_size_of_every_architecture():
    from landscape.cli.submit import expand_grid
    from landscape.identity import identify
    from landscape.pipeline import validate

    cfgs = expand_grid(["experiment=size_matters_imagenette"])
    assert len(cfgs) == 120 and {c.data.image_size for c in cfgs} == {64, 96, 128, 160}
    cells, names = {}, set()
    for c in cfgs[::3]:  # one seed of each cell
        validate(c, check_data=False)
        i = identify(c)
        cells[(i.arch, i.spec.label(), c.data.image_size)] = i.receptive_field
        names.add(i.cell_name)
        assert (c.data.name, c.data.crop, c.train.epochs) == ("imagenette",
                                                              "random_resized_crop", 30)
        assert c.resolution.sizes == [64, 96, 128, 160]
    assert len(cells) == len(names) == 40
    # The receptive field is the architecture's, whatever the input size.
    assert {cells[("resnet18", "", s)] for s in (64, 96, 128, 160)} == {109}


@pytest.mark.slow
def test_experiment_rf_design_small_runs_end_to_end_and_draws_the_design_space(tmp_path, console):
    root = tmp_path / "r"
    code, out, err = console(
        "run_main", "experiment=rf_design_small", "variant=paper,imagenet_stem", "seed=0", "cka.enabled=false",
        "train.epochs=1", "data.train_subset=96", "data.test_subset=80", "hessian.n_samples=32",
        "probes.n_train=48", "probes.n_test=80", "cka.n_inputs=80", "num_threads=1",
        f"results_root={root}")
    assert code == 0, err[-3000:]
    df = results.load(root)
    train = df[df["stage"] == "train"]
    assert train["run_id"].nunique() == 2
    assert set(train["arch_variant"].fillna("")) == {"", "stem=imagenet"}
    assert {"prune", "hessian_final", "probes_final", "receptive_field"} <= set(df["stage"])
    p = design_points(df)
    assert len(p) == 2 and set(p["family"]) == {POOL_ONLY, "stem"}
    assert p["pruned_acc"].notna().all() and p["lambda_max"].notna().all()
    # r̃ of the measured RF tables: the ImageNet stem needs a larger input than the CIFAR one
    r = p.groupby("family")["r_tilde"].first()
    assert r["stem"] > r[POOL_ONLY] and math.isfinite(r[POOL_ONLY])
    md = (root / "report" / "report.md").read_text()
    assert "## Receptive-field design space" in md
    assert (root / "report" / "figures" / "design-space-digits.png").is_file()
    table = pd.read_csv(root / "report" / "tables" / "design-space-digits.csv")
    assert np.allclose(sorted(table["test_acc"]), sorted(p["test_acc"]))


def test_design_space_draws_a_cell_once_at_its_seed_mean_and_a_row_per_input_size():
    rows = []
    for s in (0, 1, 2):
        rows += _rows("a-1", None, s, acc=0.90 + s / 100, pruned=0.5, lam=3.0, r_tilde=35)
        rows += _rows("b-2", "stem=imagenet", s, acc=0.70 + s / 50, pruned=0.2, lam=1.0,
                      r_tilde=187, rf=435)
    big = [dict(r, run_id=r["run_id"].replace("a-1", "a-9"), image_size=32,
                note="input_size=32" if r["stage"] == "receptive_field" else None)
           for r in _rows("a-1", None, 0, acc=0.5, pruned=0.1, lam=9.0, r_tilde=35)]
    p = design_points(pd.DataFrame(rows + big))
    assert sorted(p["input_size"].unique()) == [16.0, 32.0]
    fig = design_space(p)
    acc16, acc32 = fig.axes[0], fig.axes[4]  # one row of four panels per input size
    assert "input 16 px" in acc16.get_title() and "input 32 px" in acc32.get_title()
    means = sorted(y for c in acc16.containers for y in c.lines[0].get_ydata())
    assert means == pytest.approx([100 * (0.70 + 0.72 + 0.74) / 3, 100 * 0.91])
    bars = [c for c in acc16.containers if "stem" in c.get_label()][0]
    low, high = bars.lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((70.0, 74.0))
    assert [y for c in acc32.containers for y in c.lines[0].get_ydata()] == [50.0]


def test_design_space_says_which_quantity_no_cell_has():
    rows = [r for s in (0, 1) for c, v in (("a-1", None), ("b-2", "skips=False"))
            for r in _rows(c, v, s, acc=0.9, pruned=0.5, lam=3.0)
            if r["stage"] != "hessian_final"]
    fig = design_space(design_points(pd.DataFrame(rows)))
    assert len(fig.axes) == 2
    assert ("not drawn, no cell has it: lambda_max (hessian_final, our protocol); the "
            "padding-only share (receptive_field unit)") in fig._suptitle.get_text()


def test_design_points_prefer_magnitude_among_criteria_and_the_panel_names_it():
    rows = []
    for s in (0, 1):
        for cell, variant in (("a-1", None), ("b-2", "skips=False")):
            mine = _rows(cell, variant, s, acc=0.9, pruned=0.5, lam=3.0, r_tilde=35)
            rows += mine + [dict(r, criterion="grasp", value=0.1, unit="prune_grasp_0.9_abc")
                            for r in mine if r["stage"] == "prune"]
    p = design_points(pd.DataFrame(rows))
    assert p.attrs["criterion"] == "magnitude" and set(p["pruned_acc"]) == {0.5}
    titles = [ax.get_title() for ax in design_space(p).axes]
    assert "pruned accuracy (%), magnitude at rate 0.9" in titles
    only = design_points(pd.DataFrame([r for r in rows if r.get("criterion") != "magnitude"]))
    assert only.attrs["criterion"] == "grasp" and set(only["pruned_acc"]) == {0.1}
