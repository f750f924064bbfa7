"""Results you can trust on a shared cluster: relocatable folders, provenance of every unit,
unknown keys, validation before any write, file modes, and a status that imports nothing."""

import json
import logging
import os
import shutil
import stat
import time
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from landscape import pipeline, results
from landscape.config import ModelConfig, RunConfig
from landscape.data import DataConfig
from landscape.identity import identify
from landscape.grid import pending_units, status_table
from landscape.stages.cka import CKAConfig
from landscape.stages.hessian import HessianConfig
from landscape.stages.prune import PruneConfig
from landscape.storage import CheckpointError
from landscape.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def tiny(root: Path, seed: int = 0, **kw) -> RunConfig:
    base = dict(model=ModelConfig(name="small_cnn", width=0.25, pool_level=1),
                data=DataConfig(name="synthetic", image_size=8, train_subset=64, test_subset=32),
                train=TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=seed,
                results_root=str(root), device="cpu", num_threads=1, progress=False,
                report=False)
    return RunConfig(**{**base, **kw})


def cli(main: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A console script (``landscape.cli.<main>``) in a fresh process."""
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    code = f"from landscape.cli import {main}; {main}()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd)


def snapshot(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file()}


def test_a_copied_results_folder_is_read_and_written_in_place(tmp_path):
    orig = tmp_path / "orig"
    for seed in (0, 1):
        pipeline.run(tiny(orig, seed))
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)
    before = snapshot(orig)
    moved = tmp_path / "moved-away"
    orig.rename(moved)  # the stored configs still name the old place
    out = cli("cells_main", "data=synthetic", f"results_root={copy}", "cka.enabled=true",
              "cka.n_inputs=16", "device=cpu")
    assert out.returncode == 0, out.stderr
    assert not orig.exists() and snapshot(moved) == before  # the original was not touched
    df = results.load(copy)
    assert set(zip(df[df.metric == "cka"].seed, df[df.metric == "cka"].seed_b)) == {
        (0, 0), (1, 1), (0, 1)}
    assert status_table(copy).set_index("unit").loc["train", "done"] == 2


def test_a_relative_results_root_works_from_its_own_directory(tmp_path):
    pipeline.run(tiny(tmp_path / "res"))
    out = cli("cells_main", "data=synthetic", "results_root=res", "cka.enabled=true",
              "cka.n_inputs=16", "device=cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert results.load(tmp_path / "res").query("metric == 'cka'").shape[0] > 0
    empty = cli("cells_main", "data=synthetic", "results_root=nowhere", "cka.enabled=true",
                cwd=tmp_path)
    assert empty.returncode == 2 and "no cells under" in empty.stderr


def test_changed_stage_settings_recompute_the_unit_visibly(tmp_path, caplog):
    h = HessianConfig(enabled=True, checkpoints=["final"], k=2, n_samples=16,
                      density_runs=0, trace_samples=0)
    cfg = tiny(tmp_path, hessian=h)
    pipeline.run(cfg)
    more = tiny(tmp_path, hessian=HessianConfig(**{**h.__dict__, "k": 3}))
    assert pending_units(more) == ["hessian_final"]
    table = status_table(tmp_path).set_index("unit")  # the stored config still says k=2
    assert table.loc["hessian_final", "done"] == 1
    with caplog.at_level("WARNING", logger="landscape"):
        again = pipeline.run(more)
    assert again.ran == ["hessian_final"]
    assert "settings changed: k 2 -> 3; recomputing it" in caplog.text
    eig = results.load(tmp_path).query("metric == 'hessian_eigenvalue'")
    assert sorted(eig["index"]) == [1, 2, 3]  # replaced, not appended to the old rows
    done = results.read_done(Path(again.run_dir), "hessian_final")
    assert done["settings"]["k"] == 3 and pipeline.run(more).ran == []
    # Switching a unit off or choosing other checkpoints does not invalidate a unit.
    assert pending_units(tiny(tmp_path, hessian=HessianConfig(**{**more.hessian.__dict__,
                                                                "enabled": False}))) == []


def test_changed_cell_stage_settings_recompute_the_cka(tmp_path):
    for seed in (0, 1):
        pipeline.run(tiny(tmp_path, seed))
    cka = CKAConfig(enabled=True, n_inputs=16)
    (first,) = pipeline.run_cells(tmp_path, overrides=tiny(tmp_path, cka=cka))
    assert first.ran == ["cka_final"]
    (same,) = pipeline.run_cells(tmp_path, overrides=tiny(tmp_path, cka=cka))
    assert same.ran == []
    debiased = CKAConfig(enabled=True, n_inputs=16, debiased=True)
    (changed,) = pipeline.run_cells(tmp_path, overrides=tiny(tmp_path, cka=debiased))
    assert changed.ran == ["cka_final"]
    notes = set(results.load(tmp_path).query("metric == 'cka'")["note"])
    assert notes == {"estimator=debiased; n_inputs=16"}


@pytest.mark.parametrize("override, message", [
    ("+model.pool_levl=2", "unknown config key 'model.pool_levl'; did you mean "
                           "'model.pool_level'?"),
    ("+foo=1", "unknown config key 'foo'. Valid keys: model, data"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.lr=nan", "train.lr must be a finite number > 0, got nan"),
    ("train.lr=inf", "train.lr must be a finite number > 0, got inf"),
    ("train.momentum=nan", "train.momentum must be in [0, 1) (SGD's heavy ball; 1 or more "
                           "makes the updates grow without bound), got nan"),
    ("train.scheduler=linear", "train.scheduler must be one of ('cosine', 'constant', 'step')"),
    ("data.train_subset=0", "data.train_subset must be >= 1 or null, got 0"),
    ("model.name=vgg", "unknown model 'vgg'; valid names: resnet101, resnet18, resnet34"),
    ("importance.enabled=true importance.n_samples=0", "importance.n_samples must be >= 1"),
    ("hessian.enabled=true hessian.tol=-1", "hessian.tol must be a finite number > 0"),
    ("prune.enabled=true prune.finetune_lr=nan", "prune.finetune_lr must be a finite number > 0"),
    ("hessian=paper hessian.bn_mode=eval", "hessian.protocol=paper is the released procedure, "
                                           "which needs hessian.bn_mode='train' (got 'eval')"),
    ("hessian.bn_mode=evl", "hessian.bn_mode must be one of"),  # a disabled stage too
    ("+stages.nosuch.threshold=1", "stages.nosuch: no such stage"),
    ("model.pool_level=2 model.pool_kernel=0", "pool_kernel=0 disables the pool, but "
                                                "pool_level=2 names a pooled preset"),
    ("data=cifar10 data.root=/nonexistent", "CIFAR-10 not found: looked in /nonexistent/"),
    ("data=tiny_imagenet data.root=/nonexistent", "Tiny ImageNet not found: missing"),
])
def test_bad_settings_are_one_line_and_leave_nothing_on_disk(tmp_path, override, message,
                                                             console):
    # in this process: each console script in a process of its own is
    # test_every_console_script_says_a_user_error_in_one_line
    args = override.split()
    data = [] if any(a.startswith("data=") for a in args) else ["data=synthetic"]
    code, _, err = console("run_main", *data, f"results_root={tmp_path / 'r'}", *args)
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("landscape-run: error: ") and message in lines[0]
    assert not (tmp_path / "r").exists()


def test_result_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        summary = pipeline.run(tiny(tmp_path))
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert (Path(summary.run_dir) / "stages" / "train" / "rows.csv") in files


def test_reading_a_results_folder_imports_no_code(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "evil_stage.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(pkg))
    # a user's criterion: its unit is named without importing it
    (pkg / "status_user_criterion.py").write_text(
        "from landscape.pruning import register_criterion\n"
        "@register_criterion('test_status_user')\n"
        "def largest(params, *, model, data):\n"
        "    return {n: -p.detach().abs() for n, p in params.items()}\n")
    root = tmp_path / "res"
    pipeline.run(tiny(root, prune=PruneConfig(enabled=True, rates=[0.5],
                                              imports=["status_user_criterion"],
                                              criterion="test_status_user")))
    cfg_file = next(root.glob("*/seed=0/config.json"))
    data = json.loads(cfg_file.read_text())
    data["imports"] = data["prune"]["imports"] = ["evil_stage"]
    cfg_file.write_text(json.dumps(data, indent=2))
    from landscape.pruning.criteria import CRITERIA
    monkeypatch.delitem(CRITERIA._items, "test_status_user")  # as in a fresh process
    monkeypatch.delitem(sys.modules, "status_user_criterion")
    table = status_table(root).set_index("unit")
    assert table.loc["train", "done"] == 1 and not marker.exists()
    assert "status_user_criterion" not in sys.modules
    [pruned] = [u for u in table.index if u.startswith("prune_test_status_user_0.5_")]
    assert table.loc[pruned, "done"] == 1


HOLD = """
import sys, time
from pathlib import Path
from landscape.results import try_lock
lock = try_lock(Path(sys.argv[1]), sys.argv[2])
print("held" if not isinstance(lock, str) else "busy", flush=True)
time.sleep(600)
"""


def test_a_unit_locked_by_a_live_process_is_skipped_and_a_dead_holder_frees_it(tmp_path,
                                                                                caplog):
    cfg = tiny(tmp_path)
    pipeline.validate(cfg)
    run_dir = tmp_path / pipeline.identify(cfg).run_id
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), "train"],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level("WARNING", logger="landscape"):
            summary = pipeline.run(cfg)
        assert summary.ran == ["receptive_field"] and "train" in summary.skipped
        assert f"train is being computed by pid {holder.pid} on " in caplog.text
        assert not results.is_done(run_dir, "train")
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; its LOCK file stays behind
        holder.wait()
    assert (run_dir / "stages" / "train" / results.LOCK).is_file()
    assert pipeline.run(cfg).ran == ["train"]  # the kernel dropped the dead holder's lock
    assert not (run_dir / "stages" / "train" / results.LOCK).exists()


def test_a_cell_unit_held_by_another_seed_is_skipped_without_a_warning(tmp_path, caplog):
    cfg = tiny(tmp_path)
    pipeline.validate(cfg)
    cell_stages = results.run_paths(tmp_path, pipeline.identify(cfg).cell_name).cell_stages
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(cell_stages),
                               "receptive_field"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level("INFO", logger="landscape"):
            summary = pipeline.run(cfg)
        assert "receptive_field" not in summary.ran and "train" in summary.ran
        (record,) = [r for r in caplog.records if "is being computed by" in r.getMessage()]
        assert record.levelname == "INFO" and "(another run of this cell)" in record.getMessage()
    finally:
        holder.kill()
        holder.wait()


def test_two_concurrent_starts_compute_each_unit_once(tmp_path):
    args = ["run_main", "model=small_cnn", "model.width=0.25", "data=synthetic",
            "data.image_size=8", "data.train_subset=256", "train.epochs=20", "device=cpu",
            "num_threads=1", f"results_root={tmp_path}", "hessian.enabled=true", "hessian.k=2",
            "hessian.n_samples=16", "hessian.density_runs=0", "hessian.trace_samples=0"]
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    code = "from landscape.cli import run_main; run_main()"
    procs = [subprocess.Popen([sys.executable, "-c", code, *args[1:]], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ran = [u for out, _ in outs for line in out.splitlines() if ": ran " in line
           for u in line.split(": ran ", 1)[1].split(" (status")[0].split(", ")]
    assert sorted(ran) == sorted(["receptive_field", "train", "hessian_init", "hessian_final"])
    df = results.load(tmp_path)
    assert len(df[(df.stage == "train") & (df.metric == "test_acc")]) == 20


def children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        out |= {int(c) for c in text.split()}
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killing_the_local_launcher_stops_its_workers(tmp_path):
    args = ["model=small_cnn", "model.width=0.25", "data=synthetic", "data.image_size=8",
            "train.epochs=500", "device=cpu", "seed=0,1", f"results_root={tmp_path}",
            "launcher=local", "launcher.local_workers=2", "report=false"]
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    code = "from landscape.cli import submit_main; submit_main()"
    launcher = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("*/seed=*/checkpoints/last.pt"))) < 2:
            assert time.time() < deadline and launcher.poll() is None, "workers never trained"
            time.sleep(0.2)
        workers = children(launcher.pid)
        assert len(workers) >= 2
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.time() + 30
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)]


def test_deleting_final_pt_recomputes_it_without_retraining(tmp_path, caplog):
    cfg = tiny(tmp_path, train=TrainConfig(epochs=2, batch_size=32, lr=0.05))
    first = pipeline.run(cfg)
    final = Path(first.run_dir) / "checkpoints" / "final.pt"
    weights = torch.load(final, weights_only=True)["model"]
    final.unlink()
    with caplog.at_level("INFO", logger="landscape"):
        again = pipeline.run(cfg)
    assert again.ran == ["train"] and "final.pt is missing; recomputing it" in caplog.text
    assert "resuming from the checkpoint of epoch 2 of 2" in caplog.text  # nothing retrained
    restored = torch.load(final, weights_only=True)["model"]
    assert all(torch.equal(weights[k], restored[k]) for k in weights)


def test_a_checkpoint_of_another_run_is_refused_with_its_path(tmp_path):
    a, b = pipeline.run(tiny(tmp_path, 0)), pipeline.run(tiny(tmp_path, 1))
    shutil.copy(Path(a.run_dir) / "checkpoints" / "final.pt",
                Path(b.run_dir) / "checkpoints" / "final.pt")
    h = HessianConfig(enabled=True, checkpoints=["final"], k=1, n_samples=8, density_runs=0,
                      trace_samples=0)
    with pytest.raises(CheckpointError, match=r"final.pt belongs to run .*seed=0, not to "
                                              r".*seed=1 \(copied from another run"):
        pipeline.run(tiny(tmp_path, 1, hessian=h))


def test_hessian_k_above_the_parameter_count_is_refused_before_training(tmp_path):
    h = HessianConfig(enabled=True, checkpoints=["final"], k=100_000, n_samples=8,
                      density_runs=0, trace_samples=0)
    cfg = tiny(tmp_path / "r", model=ModelConfig(name="small_cnn", width=0.02, pool_level=1),
               hessian=h)
    with pytest.raises(ValueError, match=r"hessian.k=100000 exceeds the 74 parameters of "
                                         r"small_cnn .* choose hessian.k <= 74"):
        pipeline.run(cfg)
    assert not (tmp_path / "r").exists()


def test_temp_files_of_a_killed_writer_are_cleaned(tmp_path):
    cfg = tiny(tmp_path)
    pipeline.validate(cfg)
    unit_dir = tmp_path / pipeline.identify(cfg).run_id / "stages" / "train"
    unit_dir.mkdir(parents=True)
    (unit_dir / ".rows.csv.abc123.tmp").write_text("half a file")
    pipeline.run(cfg)
    assert not list(unit_dir.glob(".*.tmp")) and (unit_dir / "DONE").is_file()


def test_cells_that_differ_in_more_than_the_pool_are_never_pooled(tmp_path, capsys):
    """Two cells at pool 0 that differ in the learning rate, plus pool 1 at the first lr:
    two grids in the report (titled by the lr), two rows in the grid summary, and a table
    over one of them never mixes the two."""
    from analysis.report import write_report
    from analysis.stats import grid_frame, with_variants
    from landscape.grid import final_accuracy_table, finish_cells

    slow = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    fast = TrainConfig(epochs=1, batch_size=32, lr=0.01)
    for seed in (0, 1):
        pipeline.run(tiny(tmp_path, seed, model=ModelConfig(name="small_cnn", width=0.25,
                                                            pool_level=0), train=slow))
        pipeline.run(tiny(tmp_path, seed, model=ModelConfig(name="small_cnn", width=0.25,
                                                            pool_level=0), train=fast))
        pipeline.run(tiny(tmp_path, seed, train=slow))  # pool 1
    variants = results.cell_variants(tmp_path)
    assert sorted(variants.values()) == ["train.lr=0.01", "train.lr=0.05", "train.lr=0.05"]
    table = final_accuracy_table(results.load(tmp_path), variants)
    assert len(table) == 3 and set(table["seeds"]) == {2}
    df = with_variants(results.load(tmp_path), variants)
    with pytest.raises(ValueError, match="differ in more than the RF pool"):
        grid_frame(df, arch="small_cnn")
    path = write_report(results.load(tmp_path), tmp_path / "rep", variants=variants)
    md = path.read_text()
    assert "## small_cnn (width 0.25) on synthetic, train.lr=0.01" in md
    assert "## small_cnn (width 0.25) on synthetic, train.lr=0.05" in md
    assert (tmp_path / "rep" / "tables" / "small_cnn-w0.25-synthetic-train.lr=0.01-training.md"
            ).is_file()
    finish_cells(tmp_path, overrides=tiny(tmp_path, report=False))
    printed = capsys.readouterr().out
    assert "train.lr=0.01" in printed and "train.lr=0.05" in printed


def test_a_results_root_that_cannot_be_created_is_one_line(tmp_path):
    out = cli("run_main", "data=synthetic", "results_root=/proc/forbidden/results")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("landscape-run: error: results_root=/proc/forbidden/results")


def test_a_results_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = cli("run_main", "data=synthetic", f"results_root={tmp_path / 'afile'}")
    assert out.returncode == 2
    assert out.stderr.strip() == (f"landscape-run: error: results_root={tmp_path / 'afile'} is "
                                  "a file, not a folder")


@pytest.mark.parametrize("main, args, message", [
    ("rf_main", ["+foo=1"], "landscape-rf: error: unknown config key 'foo'"),
    ("rf_main", ["levels=[1,20]"], "landscape-rf: error: model.* / levels=[1, 20]: pool_level "
                                   "must be in 0..16, got 20"),
    ("rf_main", ["data.name=cifar"], "landscape-rf: error: unknown dataset 'cifar'"),
    ("submit_main", ["--dry-run", "data=synthetic", "model.name=resnet19"],
     "landscape-submit: error: unknown model 'resnet19'"),
    ("submit_main", ["--dry-run", "data=synthetic", "train.epochs=0"],
     "landscape-submit: error: train.epochs must be >= 1, got 0"),
    ("submit_main", ["--dry-run", "data=cifar10", "data.root=/nonexistent"],
     "landscape-submit: error: CIFAR-10 not found"),
])
def test_every_console_script_says_a_user_error_in_one_line(tmp_path, main, args, message):
    code = f"import sys; from landscape.cli import {main}; sys.exit({main}())"
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    root = [] if main == "rf_main" else [f"results_root={tmp_path / 'r'}"]
    out = subprocess.run([sys.executable, "-c", code, *args, *root],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert not (tmp_path / "r").exists()


def test_a_corrupted_checkpoint_met_while_running_is_one_line(tmp_path):
    args = ["data=synthetic", "data.train_subset=64", "data.test_subset=32", "model=small_cnn",
            "model.width=0.25", "train.epochs=1", "train.batch_size=32", "device=cpu",
            f"results_root={tmp_path}"]
    assert cli("run_main", *args).returncode == 0
    (final,) = tmp_path.glob("*/seed=0/checkpoints/final.pt")
    final.write_bytes(final.read_bytes()[:100])
    out = cli("run_main", *args, "prune.enabled=true", "prune.rates=[0.5]")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[-1].startswith("landscape-run: error: checkpoint ")
    assert "final.pt is corrupted or unreadable" in lines[-1] and "Traceback" not in out.stderr


@pytest.mark.parametrize("damage", ["done", "rows_header_only", "rows_garbage"])
def test_damaged_result_files_are_recomputed_not_trusted(tmp_path, damage, caplog):
    cfg = tiny(tmp_path, 0, prune=PruneConfig(enabled=True, rates=[0.5]))
    pipeline.run(cfg)
    run_dir = results.run_paths(tmp_path, identify(cfg).cell_name, 0).run_dir
    unit = results.stage_dir(run_dir, "train")
    before = results.read_stage(run_dir, "train")
    if damage == "done":
        (unit / "DONE").write_text("{bad json")
    elif damage == "rows_header_only":
        rows = unit / "rows.csv"
        rows.write_text(rows.read_text().splitlines()[0] + "\n")
    else:
        (unit / "rows.csv").write_text("garbage\x00\x01")
    from landscape.grid.status import run_states

    state = run_states(tmp_path).set_index("unit").loc["train"]
    assert state["state"] == "stale" and "damaged" in state["reason"]
    (failed,) = results.failures(tmp_path).itertuples()  # the report lists it
    assert failed.unit == "train" and "damaged" in failed.reason
    with caplog.at_level(logging.WARNING, logger="landscape"):
        again = pipeline.run(cfg)
    assert again.ran == ["train"] and "damaged" in caplog.text  # resumed from last.pt: no epoch
    pd.testing.assert_frame_equal(results.read_stage(run_dir, "train").drop(columns="value")
                                  .reset_index(drop=True),
                                  before.drop(columns="value").reset_index(drop=True))


def test_a_report_of_a_folder_with_nothing_finished_is_an_error(tmp_path, capsys):
    from landscape.commands import report_main

    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    assert e.value.code == 2 and "nothing to report yet" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
