"""Grid expansion, skip-before-submit, dry runs, local parallel execution and the status table
(no Slurm needed; tests/test_slurm.py runs the same paths against a real Slurm)."""

import dataclasses
import itertools
import json
import os
from multiprocessing import forkserver
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from landscape import pipeline, results
from landscape.cli import (CONFIG_DIR, expand_grid, load_launcher, split_overrides, submit,
                           submit_main, to_run_config)
from landscape.commands import status_main
from landscape.config import ModelConfig, RunConfig
from landscape.data import DataConfig
from landscape.grid import LauncherConfig, launch, plan_grid, status_table, validate_launcher
from landscape.grid.launcher import describe
from landscape.grid import slurm
from landscape.grid.local import _cpu_context, usable_cpus
from landscape.grid.sbatch import explain_sbatch_error
from landscape.storage import save_checkpoint
from landscape.grid.status import format_status
from landscape.identity import identify
from landscape.stages.cka import CKAConfig
from landscape.stages.hessian import HessianConfig, HessianStage
from landscape.stages.importance import ImportanceConfig
from landscape.train import TrainConfig


def run_id(cfg: RunConfig) -> str:
    return identify(cfg).run_id


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.results_root) / run_id(cfg)


def cell_name(cfg: RunConfig) -> str:
    return identify(cfg).cell_name


def tiny(root: Path, seed: int = 0, pool: int = 0, **kw) -> RunConfig:
    base = dict(
        model=ModelConfig(name="small_cnn", width=0.25, pool_level=pool),
        data=DataConfig(name="synthetic", image_size=8, train_subset=64, test_subset=32),
        train=TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=seed,
        results_root=str(root), device="cpu", num_threads=1, progress=False, report=False,
    )
    return RunConfig(**{**base, **kw})


def grid(root: Path, **kw) -> list[RunConfig]:
    return [tiny(root, s, p, **kw) for p, s in itertools.product((0, 1), (0, 1))]


TINY_ARGS = ["model=small_cnn", "model.width=0.25", "data=synthetic", "data.image_size=8",
             "data.train_subset=64", "data.test_subset=32", "train.epochs=1", "device=cpu",
             "num_threads=1", "progress=false", "report=false", "seed=0,1", "model.pool_level=0,1"]


# --------------------------------------------------------------------------- grid expansion
def test_expand_grid_is_the_experiment_sweep_times_command_line_sweeps():
    runs = expand_grid(["experiment=demo"])
    keys = [(c.model.name, c.model.pool_level, c.seed) for c in runs]
    assert sorted(keys) == sorted(itertools.product(("resnet18", "vgg19"), (0, 2), (0, 1)))
    # Every run is the config a `landscape-run` job of that grid point composes.
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        job = to_run_config(compose("config", overrides=[
            "experiment=demo", "model.name=vgg19", "model.pool_level=2", "seed=1"]))
    point = [c for c in runs if (c.model.name, c.model.pool_level, c.seed) == ("vgg19", 2, 1)]
    assert point == [job]
    assert job.data.name == "digits" and job.prune.enabled  # i.e. the experiment was applied
    # A command-line value replaces the experiment's sweep of that key; new sweeps multiply.
    runs = expand_grid(["experiment=demo", "seed=4", "model.width=0.125,0.25", "train.epochs=1"])
    assert len(runs) == 2 * 2 * 2 and {c.seed for c in runs} == {4}
    assert {c.model.width for c in runs} == {0.125, 0.25} and {c.train.epochs for c in runs} == {1}
    one = expand_grid(["model=small_cnn", "seed=3"])  # no sweep at all: one run
    assert [(c.model.name, c.seed) for c in one] == [("small_cnn", 3)]


def _composed_one_by_one(overrides):
    """The grid as Hydra's multirun composes it: every combination composed whole."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        params = compose("config", overrides=fixed, return_hydra_config=True
                         ).hydra.sweeper.get("params") or {}
        sweep = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
        return [to_run_config(compose("config", overrides=list(c)))
                for c in BasicSweeper.split_arguments(sweep, max_batch_size=None)[0]]


@pytest.mark.parametrize("overrides", [
    ["experiment=demo", "prune.criterion=magnitude,obd"],
    ["experiment=rf_design_small"],  # a sweep of a config group (variant)
    ["model=small_cnn", "data=digits,synthetic", "seed=0,7", "prune.rates=[0.5],[0.9]",
     "train.lr=0.1,1e-2", "model.pool_stride=null", "prune.options.labels=3",
     "+prune.options.chunk=4", "model.name='vgg19'"],
])
def test_expand_grid_equals_composing_every_combination(overrides):
    """One composition per shape (groups, +/~, lists), then the plain values set as Hydra's
    last step sets them: the same configs, in the same order, as a composition of each."""
    assert expand_grid(overrides) == _composed_one_by_one(overrides)


def test_expand_grid_errors_are_hydras():
    for bad in (["model=small_cnn", "seed=0,abc"], ["model=small_cnn", "model.widht=1,2"]):
        with pytest.raises(Exception) as fast:
            expand_grid(bad)
        with pytest.raises(Exception) as slow:
            _composed_one_by_one(bad)
        assert (type(fast.value), str(fast.value)) == (type(slow.value), str(slow.value))


def test_launcher_configs_and_overrides():
    assert split_overrides(["seed=0,1", "launcher=slurm", "launcher.time=5",
                            "+launcher.sbatch_extra.qos=high"]) == (
        ["seed=0,1"], "slurm", ["launcher.time=5", "+launcher.sbatch_extra.qos=high"])
    slurm = load_launcher("slurm")
    assert (slurm.backend, slurm.gpus_per_node, slurm.partition) == ("slurm", 1, None)
    lc = load_launcher("slurm", ["launcher.gpus_per_node=null", "launcher.partition=gpu",
                                 "+launcher.sbatch_extra.qos=high"])
    assert (lc.gpus_per_node, lc.partition, lc.sbatch_extra) == (None, "gpu", {"qos": "high"})
    assert load_launcher("local").backend == "local"
    with pytest.raises(ValueError, match="unknown launcher field.*partiton.*valid: backend"):
        load_launcher("slurm", ["launcher.partiton=gpu"])
    with pytest.raises(ValueError, match=r"unknown launcher 'pbs'.*\['local', 'slurm'\]"):
        load_launcher("pbs")
    with pytest.raises(ValueError, match="launcher.local_workers must be >= 1"):
        validate_launcher(LauncherConfig(local_workers=0))
    with pytest.raises(ValueError, match="launcher.backend must be one of"):
        validate_launcher(LauncherConfig(backend="lsf"))


def test_sbatch_errors_name_the_field_to_change():
    lc = LauncherConfig(backend="slurm", time=600, gpus_per_node=8, cpus_per_task=4)
    sbatch = ("sbatch: error: Batch job submission failed: Requested time limit is invalid "
              "(missing or exceeds some limit)")
    msg = explain_sbatch_error(sbatch, lc, "runs")
    assert sbatch in msg and "launcher.time=600" in msg and "run array" in msg
    assert "launcher.cell_time=120" in explain_sbatch_error(sbatch, lc, "cells")
    msg = explain_sbatch_error("sbatch: error: Batch job submission failed: Requested node "
                               "configuration is not available", lc, "runs")
    assert "launcher.gpus_per_node=8" in msg and "launcher.cpus_per_task=4" in msg
    msg = explain_sbatch_error("sbatch: error: invalid partition specified: nope", lc, "runs")
    assert "launcher.partition=null" in msg and "launcher.time" not in msg  # as typed


@pytest.mark.parametrize("sbatch, fields", [
    ("Batch job submission failed: Invalid account or account/partition combination "
     "specified", "launcher.partition=gpu, launcher.account=null"),
    ("Batch job submission failed: Invalid qos specification", "launcher.sbatch_extra.qos=low"),
    ("Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
     "user's size and/or time limits)", "launcher.time=600, launcher.sbatch_extra.qos=low"),
    ("sbatch: error: Invalid --mem specification", "launcher.mem_gb=2.5"),
    ("Batch job submission failed: Invalid generic resource (gres) specification",
     "launcher.gpus_per_node=8"),
    ("Batch job submission failed: Invalid feature specification", "launcher.constraint=null"),
    ("Batch job submission failed: Access/permission denied",
     "launcher.partition=gpu, launcher.account=null, launcher.sbatch_extra={qos:low}"),
])
def test_sbatch_hints_name_the_launcher_fields_behind_the_complaint(sbatch, fields):
    lc = LauncherConfig(backend="slurm", time=600, gpus_per_node=8, partition="gpu",
                        mem_gb=2.5, sbatch_extra={"qos": "low"})
    assert f"\nChange {fields} (configs/launcher/slurm.yaml" in explain_sbatch_error(
        sbatch, lc, "runs")


def fake_slurm(bin_dir: Path, refuse_from: int) -> Path:
    """``srun`` (submitit looks for it) and an ``sbatch`` that accepts its first
    ``refuse_from - 1`` submissions (job ids 41, 42, ...) and refuses the others."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    count = bin_dir / "count"
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}
if [ $n -ge {refuse_from} ]; then
  echo "sbatch: error: Batch job submission failed: Invalid account or account/partition \
combination specified" >&2
  exit 1
fi
echo "Submitted batch job $((40 + n))"
""")
    for f in ("srun", "sbatch"):
        (bin_dir / f).chmod(0o755)
    return bin_dir


def test_a_refused_submission_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    from landscape.grid.launcher import SubmissionError

    monkeypatch.setenv("PATH", f"{fake_slurm(tmp_path / 'bin', 1)}:{os.environ['PATH']}")
    lc = LauncherConfig(backend="slurm", gpus_per_node=None, partition="gpu")
    root = tmp_path / "fresh"  # the submission creates <root>/.submitit, then sbatch refuses
    with pytest.raises(SubmissionError, match="launcher.partition=gpu, launcher.account=null"):
        launch(plan_grid(grid(root)), lc)
    assert not root.exists()
    assert "sbatch: error" not in capsys.readouterr().err  # said once, in the error
    # A folder with earlier submissions: only this submission's files are removed.
    root = tmp_path / "used"
    earlier = [root / ".submitit" / n for n in ("7_0_submitted.pkl", "7_0_0_log.out",
                                                 "0123456789abcdef0123456789abcdef.pkl")]
    for f in earlier:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("earlier")
    with pytest.raises(SubmissionError):
        launch(plan_grid(grid(root)), lc)
    assert sorted((root / ".submitit").iterdir()) == sorted(earlier)
    assert not results.read_submissions(root)


def test_a_refused_cell_job_keeps_the_submitted_array(tmp_path, monkeypatch):
    from landscape.grid.launcher import SubmissionError

    monkeypatch.setenv("PATH", f"{fake_slurm(tmp_path / 'bin', 2)}:{os.environ['PATH']}")
    cfgs = grid(tmp_path / "r", cka=CKAConfig(enabled=True, n_inputs=16))
    with pytest.raises(SubmissionError, match=r"refused the cell-level job(.|\n)*array 41 was"):
        launch(plan_grid(cfgs), LauncherConfig(backend="slurm", gpus_per_node=None))
    folder = tmp_path / "r" / ".submitit"
    kept = sorted(p.name for p in folder.iterdir() if p.suffix == ".pkl")
    assert kept == [f"41_{i}_submitted.pkl" for i in range(4)]  # the array's; no cell pickle
    scripts = list(folder.glob(".submission_file_*"))  # submitit links the array's to its own
    assert len(scripts) == 1 and scripts[0].resolve() == folder / "41_submission.sh"
    [sub] = results.read_submissions(tmp_path / "r")
    assert len(sub["runs"]) == 4 and sub.get("cell_job_id") is None


# --------------------------------------------------------------------------- skip before submit
def test_a_sweep_of_training_settings_or_of_one_units_settings_is_refused_not_dropped(
        tmp_path):
    c = grid(tmp_path)[0]
    epochs = dataclasses.replace(c, train=dataclasses.replace(c.train, save_epochs=[1]))
    assert run_id(epochs) == run_id(c)  # save_epochs is no part of the identity
    with pytest.raises(ValueError, match=r"two configs of the grid are one run \(.*seed=0\) "
                       r"trained with different settings \(train\.save_epochs\): a run trains "
                       r"once"):
        plan_grid([c, epochs])
    # hessian_init's name does not carry n_samples: the second would replace the first's rows
    a, b = (dataclasses.replace(c, hessian=HessianConfig(enabled=True, n_samples=n))
            for n in (64, 128))
    with pytest.raises(ValueError, match=r"run-level unit 'hessian_init' would be written "
                       r"with different settings \(n_samples; the configs differ in "
                       r"hessian\.n_samples\).*prune\.criterion"):
        plan_grid([a, b])


def test_a_grid_is_validated_once_per_cell_and_settings_and_every_seed_checked(tmp_path,
                                                                               monkeypatch):
    from landscape.cli.submit import validate_grid

    calls, real = [], pipeline.validate
    monkeypatch.setattr(pipeline, "validate", lambda c, **kw: calls.append(c) or real(c, **kw))
    cfgs = [tiny(tmp_path, s, p) for s in (0, 1, 2) for p in (0, 1)] + [tiny(tmp_path, 10, 0)]
    validate_grid(cfgs)  # seed 10: a longer folder name, checked again
    assert [(c.seed, c.model.pool_level) for c in calls] == [(0, 0), (0, 1), (10, 0)]
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63 - 1"):
        validate_grid(cfgs + [tiny(tmp_path, -1, 0)])


def test_stage_settings_of_one_run_are_its_variants_run_in_its_task(tmp_path):
    """Configs of one run that add other units (another criterion, another stage) are one
    pending run: its units are every variant's, its task runs them one after another."""
    c = grid(tmp_path)[0]
    erf = dataclasses.replace(c, importance=ImportanceConfig(enabled=True))
    plan = plan_grid([c, erf, c])  # a config given twice is one variant
    [p] = plan.pending
    assert p.variants == (c, erf) and p.cfg == c and len(plan.runs) == 1
    assert p.units == ("train", "importance_init")
    assert "(2 settings, one after another)" in describe(plan, LauncherConfig())
    task, args = slurm._array_tasks(plan, LauncherConfig())
    assert isinstance(task, slurm.RunTask) and args == [(c, erf)]


def test_plan_skips_finished_runs_and_units(tmp_path):
    cfgs = grid(tmp_path)
    plan = plan_grid(cfgs + cfgs[:1])  # a duplicate run is planned once
    assert len(plan.runs) == 4 and len(plan.pending) == 4 and len(plan.cells) == 2
    assert all(p.units == ("train",) for p in plan.pending) and not plan.needs_cell_job
    assert plan_grid([dataclasses.replace(c, report=True) for c in cfgs]).needs_cell_job
    pipeline.run(cfgs[0])
    pipeline.run(cfgs[1])
    plan = plan_grid(cfgs)
    assert [p.run_id for p in plan.pending] == [run_id(c) for c in cfgs[2:]]
    # A newly enabled stage is pending only as that unit for the finished runs.
    imp = ImportanceConfig(enabled=True, input_size=16, n_samples=2)
    plan = plan_grid([dataclasses.replace(c, importance=imp) for c in cfgs])
    assert [p.units for p in plan.pending] == [("importance_init",)] * 2 + [
        ("train", "importance_init")] * 2
    # Failed runs are retried; a diverged run is finished for good (later stages never run).
    results.write_failure(run_dir(cfgs[2]), "train", "Traceback...\nValueError: boom")
    diverged = run_dir(cfgs[3])
    results.write_stage(diverged, "train", [], status="diverged")
    plan = plan_grid([dataclasses.replace(c, importance=imp) for c in cfgs])
    assert [p.run_id for p in plan.pending] == [run_id(c) for c in cfgs[:3]]
    assert plan.pending[2].units == ("train", "importance_init")


def test_cell_job_only_when_cell_stages_are_missing_or_stale(tmp_path):
    cka = CKAConfig(enabled=True, n_inputs=16)
    cfgs = [tiny(tmp_path, s, 0, cka=cka) for s in (0, 1)]
    assert plan_grid(cfgs).needs_cell_job  # runs pending, CKA enabled
    pipeline.run(cfgs[0])
    pipeline.run_cell(tmp_path, cell_name(cfgs[0]), overrides=cfgs[0])  # over seed 0 only
    pipeline.run(cfgs[1])
    plan = plan_grid(cfgs)
    assert not plan.pending and plan.stale_cells == (cell_name(cfgs[0]),)
    assert plan.needs_cell_job
    pipeline.run_cell(tmp_path, cell_name(cfgs[0]), overrides=cfgs[0])
    plan = plan_grid(cfgs)
    assert not plan.pending and not plan.stale_cells and not plan.needs_cell_job


def test_runs_held_by_live_jobs_are_not_submitted_twice(tmp_path, monkeypatch):
    cfgs = grid(tmp_path)
    ids = [run_id(c) for c in cfgs]
    results.record_submission(tmp_path, "slurm", [(r, f"7_{i}", {}) for i, r in enumerate(ids)])
    monkeypatch.setattr(slurm, "squeue_states", lambda job_ids: {"7_0": "RUNNING",
                                                                 "7_2": "PENDING"})
    plan = plan_grid(cfgs, active_jobs=slurm.active_jobs(tmp_path))
    assert plan.active == (ids[0], ids[2]) and [p.run_id for p in plan.pending] == [ids[1], ids[3]]
    assert len(plan_grid(cfgs).pending) == 4


# --------------------------------------------------------------------------- dry run, CLI
def test_dry_run_prints_the_plan_and_submits_nothing(tmp_path, capsys):
    root = tmp_path / "r"
    args = TINY_ARGS + [f"results_root={root}", "cka.enabled=true", "launcher=slurm",
                        "launcher.partition=gpu", "launcher.array_parallelism=3"]
    plan, _, sub = submit(args, dry_run=True)
    out = capsys.readouterr().out
    assert sub is None and not root.exists()  # nothing written, not even the log folder
    assert "4 runs in 2 cells" in out and "4 to run" in out
    assert all(f"{run_id(c)}: train" in out for c in plan.runs)
    assert "1 array of 4 tasks (at most 3 at once)" in out and "'slurm_partition': 'gpu'" in out
    assert "afterany on the array" in out and "cell-level work (cka_final) for 2 cells" in out
    pipeline.run(plan.runs[0])
    submit(args, dry_run=True)
    out = capsys.readouterr().out
    assert "1 finished, 0 queued/running from an earlier submission, 3 to run" in out
    assert submit_main(args + ["--dry-run"]) == 0
    assert submit_main(["launcher=pbs", "--dry-run"]) == 2
    assert "unknown launcher 'pbs'" in capsys.readouterr().err


# --------------------------------------------------------------------------- local execution
def test_cpu_runs_fork_from_a_server_that_imported_landscape_and_cuda_runs_spawn(monkeypatch):
    cpu = [tiny(Path("/unused"), 0, 0)]
    assert [c.device for c in cpu] == ["cpu"]
    context = _cpu_context(cpu)
    assert context.get_start_method() == "forkserver"
    assert forkserver._forkserver._preload_modules == ["landscape.grid.local"]
    cuda = [dataclasses.replace(cpu[0], device="auto")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _cpu_context(cuda).get_start_method() == "forkserver"  # no CUDA here: no risk
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    assert _cpu_context(cuda).get_start_method() == "spawn"
    assert _cpu_context(cpu).get_start_method() == "forkserver"


def test_local_parallel_workers_limit_threads_and_report_failures(tmp_path):
    cka = CKAConfig(enabled=True, n_inputs=16)
    cfgs = [tiny(tmp_path, s, 0, cka=cka, num_threads=None) for s in (0, 1)]
    bad = tiny(tmp_path, 0, 1, train=TrainConfig(epochs=1, lr=-1.0))  # fails in the train stage
    before = torch.get_num_threads()
    sub = launch(plan_grid(cfgs + [bad]), LauncherConfig(local_workers=2))
    assert torch.get_num_threads() == before  # the caller's thread setting is restored
    by_id = {r.run_id: r for r in sub.local}
    expected = max(1, usable_cpus() // 2)
    for c in cfgs:
        r = by_id[run_id(c)]
        assert (r.status, r.threads) == ("ok", expected)
        saved = json.loads((run_dir(c) / "config.json").read_text())
        assert saved["num_threads"] == expected
    assert len({r.pid for r in sub.local}) == 3  # each run in its own worker process
    failed = by_id[run_id(bad)]
    assert failed.status == "failed" and "train.lr must be a finite number > 0" in failed.error
    assert not run_dir(bad).exists()  # settings are validated before anything is written
    df = results.load(tmp_path)
    assert set(df.loc[df.stage == "train", "run_id"]) == {run_id(c) for c in cfgs}
    cka_rows = df[df.stage == "cka_final"]
    assert set(zip(cka_rows.seed, cka_rows.seed_b)) == {(0, 0), (1, 1), (0, 1)}
    assert [s.ran for s in sub.cells] == [["cka_final"], []]  # the second cell has no CKA
    # Nothing left but the failed run.
    assert [p.run_id for p in plan_grid(cfgs + [bad]).pending] == [run_id(bad)]


def test_one_submission_sweeps_a_pruning_criterion_and_the_status_shows_every_variant(
        tmp_path, capsys):
    """``prune.criterion=magnitude,random``: each run trains once, then prunes with both;
    the status lists both units; a second submission has nothing left."""
    root = tmp_path / "r"
    args = [a for a in TINY_ARGS if not a.startswith("seed=")] + [
        "seed=0", f"results_root={root}", "prune.enabled=true", "prune.rates=[0.5]",
        "prune.criterion=magnitude,random", "cka.enabled=true", "cka.n_inputs=16"]
    plan, _, sub = submit(args)
    assert "2 runs in 2 cells" in capsys.readouterr().out
    assert [len(p.variants) for p in plan.pending] == [2, 2]
    assert [r.status for r in sub.local] == ["ok", "ok"]
    df = results.load(root)
    pruned = df[df["stage"] == "prune"]
    assert set(zip(pruned["run_id"], pruned["criterion"])) == {
        (run_id(c), k) for c in plan.runs for k in ("magnitude", "random")}
    trained = df[(df["stage"] == "train") & (df["metric"] == "test_acc")]
    assert len(trained) == 2  # one training per run
    [entry] = results.read_submissions(root)
    assert sorted(r["run_id"] for r in entry["runs"]) == sorted(
        [run_id(c) for c in plan.runs] * 2)
    table = status_table(root)
    prune_units = table[table["unit"].str.startswith("prune_")]
    assert len(prune_units) == 4 and (prune_units["done"] == 1).all()
    assert {u.split("_")[1] for u in prune_units["unit"]} == {"magnitude", "random"}
    again, _, nothing = submit(args)
    assert not again.pending and nothing is None
    # a later submission of another criterion: the earlier units done on disk stay listed; a
    # request that never ran (recorded, then replaced by a later one) is not
    entries = results.read_submissions(root)
    never = [(r["run_id"], None, {**r["config"], "prune": {**r["config"]["prune"],
                                                            "criterion": "obd"}})
             for r in entries[0]["runs"][:1]]
    results.record_submission(root, "local", never)
    later, _, _ = submit([a for a in args if not a.startswith("prune.criterion")]
                         + ["prune.criterion=magnitude_gradient"])
    assert [len(p.variants) for p in later.pending] == [1, 1]
    table = status_table(root)
    prune_units = table[table["unit"].str.startswith("prune_")]
    assert {u.split("_")[1] for u in prune_units["unit"]} == {"magnitude", "random"}
    assert len(prune_units) == 6 and (prune_units["done"] == 1).all()
    assert len(table[table["unit"].str.startswith("prune_magnitude_gradient")]) == 2


def test_a_failed_variant_does_not_stop_the_others_once_the_run_is_trained(tmp_path,
                                                                           monkeypatch):
    from landscape.grid import variants

    a, b, c = (tiny(tmp_path, 0, 0, report=report) for report in (True, False, True))
    ran = []

    def fake_run(cfg):
        ran.append(cfg)
        if cfg is b:
            raise RuntimeError("b failed")
        return pipeline.RunSummary(run_dir="x", ran=[f"u{len(ran)}"])

    monkeypatch.setattr(variants, "run", fake_run)
    monkeypatch.setattr(variants, "trained", lambda cfg: True)
    with pytest.raises(RuntimeError, match="b failed"):
        variants.run_variants((a, b, c))
    assert ran == [a, b, c]
    ran.clear()
    monkeypatch.setattr(variants, "trained", lambda cfg: False)  # the training failed
    with pytest.raises(RuntimeError, match="b failed"):
        variants.run_variants((b, c))
    assert ran == [b]
    ran.clear()
    assert variants.run_variants(a).ran == ["u1"]  # a task pickled before variants existed


# --------------------------------------------------------------------------- status table
def test_status_table_counts_states_and_shows_failure_reasons(tmp_path, monkeypatch):
    cka = CKAConfig(enabled=True, n_inputs=16)
    done, failed, started, queued, diverged = (tiny(tmp_path, s, 0, cka=cka) for s in range(5))
    never = tiny(tmp_path, 0, 1)  # submitted, not started, another cell
    pipeline.run(done)
    pipeline.run(diverged)
    d_run = run_dir(diverged)
    results.write_stage(d_run, "train", [], status="diverged")  # overwrite: pretend it diverged
    imp = ImportanceConfig(enabled=True, input_size=16, n_samples=2)
    json_cfg = dataclasses.asdict(dataclasses.replace(diverged, importance=imp))
    (d_run / "config.json").write_text(json.dumps(json_cfg))
    f_run = run_dir(failed)
    results.write_failure(f_run, "train", "Traceback (most recent call last):\n  ...\n"
                                          "RuntimeError: CUDA out of memory\n")
    (f_run / "config.json").write_text(json.dumps(dataclasses.asdict(failed)))
    s_run = run_dir(started)
    (s_run / "checkpoints").mkdir(parents=True)
    save_checkpoint(s_run / "checkpoints" / "last.pt", {"epoch": 3})  # (no weights: not read)
    (s_run / "config.json").write_text(json.dumps(dataclasses.asdict(started)))
    results.record_submission(tmp_path, "slurm", [
        (run_id(queued), "9_0", dataclasses.asdict(queued)),
        (run_id(never), "9_1", dataclasses.asdict(never))])
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {"9_0": "PENDING"})

    table = status_table(tmp_path).set_index(["cell", "unit"])
    cell0, cell1 = cell_name(done), cell_name(never)
    train = table.loc[(cell0, "train")]
    assert train[["runs", "done", "failed", "started", "queued", "missing"]].tolist() == [
        5, 2, 1, 1, 1, 0]
    assert "seed=1: RuntimeError: CUDA out of memory" in train["reason"]
    assert f"seed=2: epoch 3 of {started.train.epochs} saved" in train["reason"]
    assert "seed=4: diverged" in train["reason"]
    imp_row = table.loc[(cell0, "importance_init")]
    assert (imp_row["runs"], imp_row["skipped"]) == (1, 1)
    assert table.loc[(cell1, "train"), "missing"] == 1
    cka_row = table.loc[(cell0, "cka_final")]
    assert (cka_row["runs"], cka_row["missing"]) == (1, 1)
    assert table.loc[(cell0, "receptive_field"), "done"] == 1  # written by the first run
    pipeline.run_cell(tmp_path, cell0, overrides=done)
    again = status_table(tmp_path).set_index(["cell", "unit"])
    assert again.loc[(cell0, "cka_final"), "done"] == 1
    assert again.loc[(cell0, "cka_final"), "reason"] == "seeds [0]"
    text = format_status(again)
    assert "CUDA out of memory" in text and "running" not in text  # all-zero columns dropped
    assert status_main([str(tmp_path)]) == 0
    assert status_main([f"results_root={tmp_path}"]) == 0  # as the Hydra commands spell it


# --------------------------------------------------------------------------- runs per GPU
def test_runs_per_gpu_local_packing_and_memory_check(tmp_path, monkeypatch):
    import queue

    from landscape.grid import gpu, local
    from landscape.grid.launcher import SubmissionError

    cfgs = [tiny(tmp_path, s, 0, num_threads=None) for s in (0, 1)]
    lc = LauncherConfig(runs_per_gpu=2)
    with pytest.raises(ValueError, match="launcher.runs_per_gpu must be >= 1"):
        validate_launcher(LauncherConfig(runs_per_gpu=0))
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    with pytest.raises(SubmissionError, match="runs_per_gpu=2 shares CUDA GPUs.*none is visible"):
        launch(plan_grid(cfgs), lc)
    # a (pretend) machine with 2 GPUs: 2 x 2 slots, each GPU named twice
    monkeypatch.setattr(local, "visible_gpus", lambda: [0, 1])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.gpu_slots([0, 1], 2) == ["0", "0", "1", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu.gpu_slots([0, 1], 2) == ["3", "3", "5", "5"]
    assert "4 at a time (2 per GPU on 2 GPUs)" in local.LocalBackend().describe(plan_grid(cfgs), lc)[0]
    need = gpu.estimate_run_bytes(cfgs[0])
    assert gpu.CONTEXT_BYTES < need < gpu.CONTEXT_BYTES + 2**20  # a tiny run
    monkeypatch.setattr(local, "free_memory", lambda gpus: [10 * need, need])
    with pytest.raises(SubmissionError, match=r"runs_per_gpu=2: 2 runs need .*GPU 1 has .* "
                                              r"free; lower launcher.runs_per_gpu \(at most 1"):
        launch(plan_grid(cfgs), lc)
    assert not (tmp_path / ".submissions.jsonl").exists() and not run_dir(cfgs[0]).exists()
    # a worker takes a slot, sees only that GPU while it runs, and gives the slot back
    slots: queue.Queue = queue.Queue()
    slots.put("5")
    seen = gpu.run_on_a_slot(slots, lambda c: __import__("os").environ["CUDA_VISIBLE_DEVICES"],
                             cfgs[0])
    assert seen == "5" and slots.get_nowait() == "5"
    # CIFAR-10 resnet18 at batch 128: about 0.15 GB of uint8 images plus activations
    big = tiny(tmp_path, model=ModelConfig(name="resnet18"), data=DataConfig(name="cifar10"),
               train=TrainConfig(batch_size=128))
    assert 0.5 * 2**30 < gpu.estimate_run_bytes(big) < 8 * 2**30


def test_runs_per_gpu_slurm_packs_k_runs_per_array_task(tmp_path):
    from landscape.grid.launcher import SubmissionError

    cfgs = grid(tmp_path)[:3]
    plan = plan_grid(cfgs)
    lc = LauncherConfig(backend="slurm", runs_per_gpu=2)
    task, args = slurm._array_tasks(plan, lc)
    assert isinstance(task, slurm.GroupTask)
    assert [[run_id(v[0]) for v in g] for g in args] == [[run_id(c) for c in cfgs[:2]],
                                                         [run_id(cfgs[2])]]
    assert "1 array of 2 tasks for 3 runs (at most 64 at once, 2 runs per task sharing its GPU)" \
        in "\n".join(slurm.SlurmBackend().describe(plan, lc))
    with pytest.raises(SubmissionError, match="set launcher.gpus_per_node=1"):
        slurm._array_tasks(plan, dataclasses.replace(lc, gpus_per_node=2))
    task, args = slurm._array_tasks(plan, dataclasses.replace(lc, runs_per_gpu=1))
    assert isinstance(task, slurm.RunTask) and len(args) == 3


def test_the_status_shows_a_resubmitted_runs_new_settings_until_it_runs_by_hand(tmp_path):
    """A run resubmitted with another hessian.k before its job starts is stale in the status
    (the submission's settings, not those of its config.json written before); a run started
    by hand after the submission shows the settings it ran with."""
    import time

    from landscape.config import identity_dict
    from landscape.grid.status import run_states

    def config(k):
        [cfg] = expand_grid(["model=small_cnn", "model.width=0.25", "data=digits",
                             f"results_root={tmp_path}", "hessian.enabled=true",
                             "hessian.checkpoints=[init]", f"hessian.k={k}", "train.epochs=1"])
        return cfg

    old, new = config(3), config(5)
    run_id = identify(old).run_id
    paths = results.run_paths(tmp_path, identify(old).cell_name, 0)
    results.write_run_records(paths, identity_dict(old), dataclasses.asdict(old))
    done = {"seconds": 1.0, "settings": HessianStage().unit_settings(old.hessian, "hessian_init")}
    results.write_stage(paths.run_dir, "hessian_init",
                        [{"metric": "hessian_trace", "value": 1.0}], info=done)

    def hessian_state():
        states = run_states(tmp_path)
        return states.query("unit == 'hessian_init'")[["state", "reason"]].iloc[0].tolist()

    assert hessian_state() == ["done", ""]
    time.sleep(0.01)
    results.record_submission(tmp_path, "local", [(run_id, None, dataclasses.asdict(new))])
    assert hessian_state() == ["stale", "settings changed: k 3 -> 5"]
    time.sleep(0.01)
    os.utime(paths.run_dir / "config.json")  # run by hand since, with k=3
    assert hessian_state() == ["done", ""]
