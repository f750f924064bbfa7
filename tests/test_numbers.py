"""Numbers that never lie (issue 22): settings are never pooled as seeds, a backend computes
what its rows say, every setting is refused before training, nothing is written where it
must not be."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import write_report
from analysis.stats import pruning_observations, pruning_procedures, summarize_cells, with_settings
from analysis.tables import pruning_table
from landscape import pipeline, results
from landscape.config import ModelConfig, RunConfig, stage_config
from landscape.data import DataConfig
from landscape.identity import identify
from landscape.results import ResultsRootError, to_frame
from landscape.stages import registered_stages
from landscape.stages.cka import CKAConfig
from landscape.stages.hessian import HessianConfig
from landscape.stages.prune import PruneConfig
from landscape.stages.sharpness import SharpnessConfig
from landscape.stages.slices import SliceConfig
from landscape.train import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_analysis import synthetic_rows  # noqa: E402
from test_reliability import REPO, tiny  # noqa: E402


def _stage(name: str):
    return next(s for s in registered_stages() if s.name == name)


# 1. different settings are never pooled as seeds -----------------------------------------------
def _two_finetunings() -> pd.DataFrame:
    """The synthetic grid plus a second fine-tuning (another lr) of the same pruned networks,
    as the pipeline names and notes them."""
    rows = synthetic_rows()
    note = "checkpoint=final; scope=global; finetune_epochs=10; finetune_lr={lr}"
    out = []
    for r in rows:
        if r["stage"] == "prune":
            out.append({**r, "unit": "prune_magnitude_0.9_1a2b3c4d",
                        "note": "checkpoint=final; scope=global"})
            out.append({**r, "metric": "dense_test_acc", "value": 0.9,
                        "unit": "prune_magnitude_0.9_1a2b3c4d"})
        elif r["stage"] == "finetune":
            out.append({**r, "unit": "finetune_magnitude_0.9_1a2b3c4d_0000aaaa",
                        "note": note.format(lr=0.0001)})
            out.append({**r, "value": r["value"] - 0.5,
                        "unit": "finetune_magnitude_0.9_1a2b3c4d_0000bbbb",
                        "note": note.format(lr=0.001)})
        else:
            out.append(r)
    return to_frame(out)


def test_two_finetune_settings_are_separate_groups_never_seeds():
    df = _two_finetunings()
    labelled = with_settings(df)
    ft = labelled[labelled.stage == "finetune"]
    assert set(ft["finetune_settings"]) == {"finetune_lr=0.0001", "finetune_lr=0.001"}
    assert set(labelled.loc[labelled.stage == "prune", "prune_settings"]) == {""}
    with pytest.raises(ValueError, match=r"2 settings: \['finetune_lr=0.0001', "
                                         r"'finetune_lr=0.001'\]; choose one"):
        pruning_table(df, prune_rate=0.9, finetuned=True)
    for lr, shift in (("0.0001", 0.0), ("0.001", 0.5)):
        t = pruning_table(df, prune_rate=0.9, finetuned=True, finetune_settings=f"finetune_lr={lr}")
        assert t.title.endswith(f"rate 0.9, finetune_lr={lr}")
        assert (t.numbers["pruned_n"] == 3).all() and (t.cells["Seeds"] == "3").all()
        obs = pruning_observations(df, criterion="magnitude", prune_rate=0.9, finetuned=True,
                                   finetune_settings=f"finetune_lr={lr}")
        assert len(obs) == 6 and obs["run_id"].is_unique
        assert obs.set_index("seed").query("pool_level == 1")["pruned"].tolist() == pytest.approx(
            [v - shift for v in (0.80, 0.82, 0.81)])
    s = summarize_cells(df, metrics=["test_acc"])  # one group per setting: n counts seeds
    assert set(s.loc[s.stage == "finetune", "n"]) == {3}
    assert len(s[s.stage == "finetune"]) == 4  # 2 cells x 2 settings
    procs = pruning_procedures(df)
    assert procs["finetune_settings"].tolist() == ["finetune_lr=0.0001", "finetune_lr=0.001"]


def test_the_report_shows_each_setting_in_its_own_table(tmp_path):
    path = write_report(_two_finetunings(), tmp_path)
    text = path.read_text()
    assert text.count("dense vs fine-tuned test accuracy, criterion magnitude, rate 0.9, "
                      "finetune_lr=") == 2
    assert "± 0.00 (n=" not in text
    assert "finetune magnitude @ 0.9, finetune_lr=0.001" in text  # the overview's unit label


@pytest.mark.slow
def test_a_rerun_with_another_finetune_lr_adds_a_setting_not_seeds(tmp_path):
    """The pipeline end to end: the issue's case (``prune.finetune_lr`` changed on a finished
    run) gives two labelled settings of one seed, each n=1."""
    for lr in (0.01, 0.001):
        prune = PruneConfig(enabled=True, rates=[0.5], finetune=True, finetune_epochs=1,
                            finetune_lr=lr)
        pipeline.run(tiny(tmp_path, prune=prune))
    df = results.load(tmp_path)
    assert set(df.loc[df.stage == "finetune", "unit"].str.len()) == {len(
        "finetune_magnitude_0.5_12345678_12345678")}
    for lr in ("0.01", "0.001"):
        t = pruning_table(df, prune_rate=0.5, finetuned=True, finetune_settings=f"finetune_lr={lr}")
        assert t.cells["Seeds"].tolist() == ["1"] and t.numbers["pruned_n"].tolist() == [1]
        assert "±" not in t.cells.to_string()


def test_settings_labels_read_each_units_own_note_not_a_geometry_rows():
    """Two prune settings whose units also hold geometry rows (their notes add the Hessian's
    fields): labelled by the field that tells them apart, whichever row comes first."""
    base = dict(stage="prune", criterion="grasp", protocol="default", prune_rate=0.5,
                run_id="c/seed=0", finetuned=False)
    own = "checkpoint=final; scope=global; data_batches=1"
    other = "checkpoint=final; scope=global; data_per_class=10"
    geometry = "; Hessians: BN in eval mode; tol=0.01"
    df = to_frame([
        {**base, "unit": "prune_grasp_0.5_aaaaaaaa", "metric": "pruned_hessian_lambda_max",
         "value": 1.0, "note": own + geometry},  # a geometry row first in one unit
        {**base, "unit": "prune_grasp_0.5_aaaaaaaa", "metric": "test_acc", "value": 0.1,
         "note": own},
        {**base, "unit": "prune_grasp_0.5_bbbbbbbb", "metric": "test_acc", "value": 0.2,
         "note": other},
        {**base, "unit": "prune_grasp_0.5_bbbbbbbb", "metric": "pruned_hessian_lambda_max",
         "value": 2.0, "note": other + geometry}])
    labelled = with_settings(df)
    labels = {u: sorted(set(map(str, g))) for u, g in labelled.groupby("unit")["prune_settings"]}
    assert labels == {"prune_grasp_0.5_aaaaaaaa": ["data_batches=1"],
                      "prune_grasp_0.5_bbbbbbbb": ["data_per_class=10"]}


def test_repeated_list_settings_are_one_setting():
    cfg = RunConfig(sharpness=SharpnessConfig(enabled=True, kinds=["adaptive", "adaptive"],
                                              checkpoints=["final", "final"]),
                    prune=PruneConfig(enabled=True, rates=[0.5, 0.5, 0.7]))
    sharp = _stage("sharpness")
    config = stage_config(cfg, sharp)
    assert config.kinds == ["adaptive"] and [u.name for u in sharp.units(config)] == [
        "sharpness_final"]
    single = stage_config(RunConfig(sharpness=SharpnessConfig(kinds=["adaptive"])), sharp)
    assert sharp.recorded_settings(config) == sharp.recorded_settings(single)
    assert len(_stage("prune").units(stage_config(cfg, _stage("prune")))) == 2


# 2. a backend computes what the row says ----------------------------------------------------
def test_pyhessian_is_refused_for_largest_algebraic():
    with pytest.raises(ValueError, match="hessian.backend=pyhessian finds the eigenvalues of "
                                         "largest magnitude .* set hessian.which=LM"):
        _stage("hessian").validate(HessianConfig(enabled=True, backend="pyhessian"))
    _stage("hessian").validate(HessianConfig(enabled=True, backend="pyhessian", which="LM"))


# 4. every setting refused before training -----------------------------------------------------
BAD = [
    (dict(prune=PruneConfig(enabled=True, include=["conv", "lstm"])),
     r"prune.include must be a non-empty subset of \['conv', 'linear', 'bias', 'batchnorm'\], "
     r"got \['conv', 'lstm'\]"),
    (dict(prune=PruneConfig(enabled=True, include=[])), r"prune.include must be a non-empty"),
    (dict(prune=PruneConfig(enabled=True, include=["linear"], exclude_classifier=True)),
     r"prune.include / prune.exclude_\*: the prunable set of SmallCNN is empty"),
    (dict(prune=PruneConfig(enabled=True, criterion="random", options={"seed": "abc"})),
     r"prune.options: option 'seed' of pruning criterion 'random' takes an int \(default 0\), "
     r"got 'abc'"),
    (dict(prune=PruneConfig(enabled=True, options={"bogus": 1})),
     r"prune.options: pruning criterion 'magnitude' got unknown option\(s\) \['bogus'\]; its "
     r"options are: \(none\)"),
    (dict(prune=PruneConfig(enabled=False, finetune=True)),
     r"prune.finetune=true fine-tunes the pruned networks, but prune.enabled=false"),
    (dict(slice=SliceConfig(enabled=True, directions=["hessian"], dims=[1])),
     r"slice.directions=\[hessian\] .* hessian.save_eigenvectors>=1 .* the hessian stage is off"),
    (dict(slice=SliceConfig(enabled=True, directions=["hessian"], dims=[2]),
          hessian=HessianConfig(enabled=True, checkpoints=["final"], save_eigenvectors=1)),
     r"hessian.save_eigenvectors>=2 .* got hessian.protocol=default, "
     r"hessian.save_eigenvectors=1"),
    (dict(data=DataConfig(name="synthetic", image_size=8, train_subset=64, holdout=64)),
     r"data.holdout=64 leaves no training images \(the training split has 64\); use at most 63"),
    (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*63 - 1"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63 - 1"),
    (dict(cka=CKAConfig(enabled=True, layers=["nothing*"])),
     r"cka.layers pattern 'nothing\*' matches no module; module names are: "),
    (dict(train=TrainConfig(epochs=1, batch_size=32, momentum=1.5)),
     r"train.momentum must be in \[0, 1\)"),
    (dict(prune=PruneConfig(enabled=True, finetune=True, finetune_momentum=1.0)),
     r"prune.finetune_momentum must be in \[0, 1\)"),
    (dict(hessian=HessianConfig(enabled=True, trace_samples=1)),
     r"hessian.trace_samples must be 0 \(no trace\) or >= 2"),
    (dict(prune=PruneConfig(enabled=True, hessian_blocks=True, hessian_trace_samples=1)),
     r"prune.hessian_trace_samples must be >= 2, got 1"),
    (dict(hessian=HessianConfig(enabled=True, k=100_000_000)),
     r"hessian.k=100000000 exceeds the \d+ parameters of small_cnn"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        pipeline.run(tiny(tmp_path / "r", **changes))
    assert not (tmp_path / "r").exists()


def test_holdout_sizes_agree_with_the_loaders():
    from landscape.data import load_dataset
    from landscape.data.registry import _TRAIN_SIZES

    for cfg in (DataConfig(name="digits"), DataConfig(name="digits", train_subset=100),
                DataConfig(name="synthetic", image_size=8, train_subset=40)):
        assert _TRAIN_SIZES[cfg.name](cfg) == len(load_dataset(cfg).train)


# 5. a results root inside (or around) the data folder -----------------------------------------
@pytest.mark.parametrize("where", ["tiny-imagenet-200/train", "tiny-imagenet-200", "."])
def test_a_results_root_overlapping_the_dataset_folder_is_refused(tmp_path, where):
    data = DataConfig(name="tiny_imagenet", root=str(tmp_path / "data"))
    root = tmp_path / "data" / where
    with pytest.raises(ResultsRootError, match=r"results_root=.* lies (inside|around) the "
                                               r"dataset folder .*tiny-imagenet-200"):
        pipeline.run(tiny(root, data=data))
    assert not (tmp_path / "data").exists()


# 6. read-only and odd paths -------------------------------------------------------------------
def test_a_finished_run_rerun_writes_nothing(tmp_path):
    cfg = tiny(tmp_path)
    pipeline.run(cfg)
    before = {p.relative_to(tmp_path): (p.stat().st_mtime_ns, p.stat().st_ino)
              for p in tmp_path.rglob("*")}
    assert pipeline.run(cfg).ran == []
    after = {p.relative_to(tmp_path): (p.stat().st_mtime_ns, p.stat().st_ino)
             for p in tmp_path.rglob("*")}
    assert after == before


def test_names_longer_than_the_file_system_allows_are_refused(tmp_path):
    with pytest.raises(ResultsRootError, match=r"longer than the file system allows \(255\)"):
        pipeline.run(tiny(tmp_path / ("r" * 300)))
    deep = tmp_path.joinpath(*["d" * 200] * 21)  # > 4096 bytes in all
    with pytest.raises(ResultsRootError, match=r"longer than the file system allows \(4096\)"):
        pipeline.run(tiny(deep))
    assert list(tmp_path.iterdir()) == []


def _console(main: str, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    code = f"import sys; from landscape.commands import {main}; sys.exit({main}())"
    return subprocess.run([sys.executable, "-c", code, *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=300)


def test_report_and_status_say_what_to_do_instead_of_a_traceback(tmp_path):
    pipeline.run(tiny(tmp_path / "r"))
    (tmp_path / "r" / "report").write_text("a file where the report would go")
    out = _console("report_main", str(tmp_path / "r"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot write the report to" in out.stderr and "pass --out DIR" in out.stderr
    out = _console("report_main", str(tmp_path / "r"), "--out", "/proc/no-report-here")
    assert out.returncode == 2 and "cannot write the report to /proc/no-report-here" in out.stderr
    # a reader that goes away before the table is printed (`landscape-status root | head`)
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as closed:
        out = _console("status_main", str(tmp_path / "r"), stdout=closed)
    assert out.returncode == 0 and out.stderr == ""


# minor: one cell for one pool ------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [
    (dict(pool_level=0, pool_kernel=0), dict(pool_level=0)),
    (dict(pool_level=0, pool_kernel=0, pool_stride=1, pool_padding=0), dict(pool_level=0)),
    (dict(pool_level=3, pool_stride=3), dict(pool_level=3)),
    (dict(pool_level=2, pool_kernel=3, pool_stride=2, pool_padding=1), dict(pool_level=2)),
])
def test_a_pool_that_restates_its_preset_is_the_same_cell(a, b):
    ident = [identify(RunConfig(model=ModelConfig(name="small_cnn", **kw),
                                data=DataConfig(name="synthetic"))) for kw in (a, b)]
    assert ident[0].cell_name == ident[1].cell_name and not ident[0].custom_pool
    other = identify(RunConfig(model=ModelConfig(name="small_cnn", pool_level=0, pool_kernel=4,
                                                 pool_stride=1), data=DataConfig(name="synthetic")))
    assert other.custom_pool and other.cell_name != ident[1].cell_name


def test_one_quantity_measured_by_two_stages_is_one_number(tmp_path):
    """Stages that measure the same thing on the same data agree: the test accuracy of the
    final checkpoint (training's last epoch, the prune unit's dense accuracy, its rate-0
    network), its training loss on the first 64 images (the slice's origin, sharpness's
    start) and the top Hessian eigenvalue (the hessian stage, the pruned geometry at rate 0)."""
    cfg = RunConfig(
        model=ModelConfig(name="small_cnn", width=0.5),
        data=DataConfig(name="digits", train_subset=96, test_subset=40),
        train=TrainConfig(epochs=2, batch_size=32), results_root=str(tmp_path), device="cpu",
        num_threads=1, progress=False, report=False,
        prune=PruneConfig(enabled=True, rates=[0.0, 0.5], hessian_k=1, geometry_samples=64,
                          geometry_batch_size=32),
        hessian=HessianConfig(enabled=True, checkpoints=["final"], k=1, n_samples=64,
                              batch_size=32, density_runs=0, trace_samples=0, tol=1e-8),
        slice=SliceConfig(enabled=True, checkpoints=["final"], dims=[1], points_1d=3,
                          n_samples=64, batch_size=32),
        sharpness=SharpnessConfig(enabled=True, checkpoints=["final"], n_samples=64,
                                  batch_size=32, steps=1))
    pipeline.run(cfg)
    df = results.load(tmp_path)

    def one(**where):
        d = df
        for k, v in where.items():
            d = d[d[k] == v]
        assert len(d) == 1, where
        return float(d["value"].iloc[0])

    last = one(stage="train", metric="test_acc", index=2)
    prune = df[(df["stage"] == "prune") & (df["prune_rate"] == 0.0)]
    assert prune.loc[prune["metric"] == "dense_test_acc", "value"].item() == last
    assert prune.loc[prune["metric"] == "test_acc", "value"].item() == last
    origin = df[(df["metric"] == "slice_loss") & (df["coord_x"] == 0.0)]["value"]
    assert len(origin) == 1
    assert one(metric="sharpness_loss") == pytest.approx(origin.item(), rel=1e-6)
    lam = one(stage="hessian_final", metric="hessian_eigenvalue", index=1)
    pruned = prune.loc[prune["metric"] == "pruned_hessian_eigenvalue", "value"]
    assert pruned.item() == pytest.approx(lam, rel=1e-4)
