"""The Slurm path end to end, against a real single-node Slurm started by jobs/local_slurm.sh
(slurmctld + slurmd + slurmdbd/MariaDB + munge, private to this test session).

Runs are tiny (digits, small_cnn at width 0.25, CPU, one thread). The node advertises dummy
GPUs, so the default one-GPU request of configs/launcher/slurm.yaml is what is submitted.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from landscape import results
from landscape.cli import submit, submit_main
from landscape.grid import SubmissionError, status_table
from landscape.identity import identify

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "local_slurm.sh"
TINY = ["model=small_cnn", "model.width=0.25", "data=digits", "train=demo", "device=cpu",
        "num_threads=1", "progress=false", "launcher=slurm", "launcher.cpus_per_task=1",
        "launcher.mem_gb=1", "launcher.time=10", "launcher.cell_time=10"]
GRID = TINY + ["train.epochs=1", "seed=0,1", "model.pool_level=0,1", "cka.enabled=true",
               "cka.n_inputs=32"]
# One run of 0.3-0.5 s per epoch here: interrupted after epoch 2, the rest (>= 13 s) must
# outlast Slurm's cancellation, which sends SIGTERM (ignored by submitit) and SIGKILL only
# KillWait (5 s) later; with 16 epochs an idle machine finished training in between.
LONG_EPOCHS = 50
LONG = TINY + [f"train.epochs={LONG_EPOCHS}", "seed=0", "report=false"]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A private Slurm for the session; SLURM_CONF points at it (jobs inherit it)."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm runs its daemons as root (jobs/local_slurm.sh); not root")
    installed = all(shutil.which(b) or Path("/usr/sbin", b).exists()
                    for b in ("sbatch", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd"))
    if not installed and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")  # one per worker
    port = int(os.environ.get("LANDSCAPE_SLURM_PORT", 16917)) + 10 * int(worker or 0)
    env = {**os.environ, "LANDSCAPE_SLURM_DIR": str(tmp_path_factory.mktemp("slurm")),
           "LANDSCAPE_SLURM_PORT": str(port)}
    start = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                           timeout=900)
    if start.returncode != 0:
        pytest.fail(f"jobs/local_slurm.sh start failed:\n{start.stdout}\n{start.stderr}")
    conf = start.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", conf)
    try:
        yield conf
    finally:
        mp.undo()
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def sacct(*args: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


# sacct states after which a job will not run again (REQUEUED, COMPLETING etc. are not final).
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def wait(jobs, timeout: float = 240) -> None:
    """Until every job has left the queue (squeue) and its end is in the accounting (sacct).

    Not submitit's ``job.done()``: it is true as soon as the result pickle exists, while the
    job may still be running its epilogue, and slurmdbd records the end a moment after
    slurmctld (under load, after squeue has forgotten the job)."""
    end = time.time() + timeout
    ids = ",".join(j.job_id.split("_")[0] for j in jobs)
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", ids], capture_output=True, text=True).stdout
        if not queue.strip() and all(final(state(j)) for j in jobs):
            return
        if time.time() > end:
            states = [(j.job_id, state(j)) for j in jobs]
            pytest.fail(f"jobs still running after {timeout} s: {states}; "
                        f"logs in {jobs[0].paths.folder}")
        time.sleep(1)


def state(job) -> str:
    return job.get_info(mode="force").get("State", "UNKNOWN")


def final(sacct_state: str) -> bool:
    words = sacct_state.split()  # sacct prints e.g. "CANCELLED by 0"; "" before it knows the job
    return bool(words) and words[0] in FINAL


def wait_for_epoch(last: Path, epoch: int, timeout: float = 120) -> list[dict]:
    """The training history in ``last.pt`` once it holds ``epoch`` epochs."""
    end = time.time() + timeout
    while time.time() < end:
        if last.exists():
            history = torch.load(last, weights_only=True)["history"]
            if len(history) >= epoch:
                return history
        time.sleep(0.05)
    pytest.fail(f"{last} did not reach epoch {epoch} in {timeout} s")


def assert_resumed(run_dir: Path, before: list[dict], epochs: int) -> None:
    """The finished history keeps the epochs recorded before the interruption bit for bit
    (their measured epoch_seconds would differ had training restarted from scratch)."""
    rows = results.read_stage(run_dir, "train")
    seconds = rows[rows.metric == "epoch_seconds"].set_index("index")["value"]
    assert sorted(seconds.index) == list(range(1, epochs + 1))
    assert len(before) < epochs
    for r in before:
        assert seconds[r["epoch"]] == r["epoch_seconds"]


def test_grid_array_and_dependent_cell_job_then_resubmission_submits_nothing(slurm, tmp_path):
    # Two pruning criteria: each run's task trains once, then prunes with both (its variants).
    args = GRID + [f"results_root={tmp_path}", "prune.enabled=true", "prune.rates=[0.5]",
                   "prune.criterion=magnitude,random"]
    plan, _, sub = submit(args)
    assert len(sub.run_ids) == 4 and sub.array_job_id and sub.cell_job_id
    script = Path(sub.jobs[0].paths.submission_file).read_text()
    assert "#SBATCH --array=0-3%4" in script and "#SBATCH --gpus-per-node=1" in script
    cell_script = Path(sub.jobs[-1].paths.submission_file).read_text()
    assert f"#SBATCH --dependency=afterany:{sub.array_job_id}" in cell_script
    wait(sub.jobs)
    assert [state(j) for j in sub.jobs] == ["COMPLETED"] * 5

    df = results.load(tmp_path)
    for c in plan.runs:
        run = df[df.run_id == identify(c).run_id]
        acc = run[(run.stage == "train") & (run.metric == "test_acc")]
        assert acc["index"].tolist() == [1] and 0 <= acc["value"].iloc[0] <= 1
        assert run.loc[run.metric == "num_params", "value"].iloc[0] > 0
        assert set(run.loc[run.stage == "prune", "criterion"]) == {"magnitude", "random"}
    cka = df[df.stage == "cka_final"]
    assert cka["run_id"].nunique() == 2  # the cell job ran CKA in both cells
    for _, cell in cka.groupby("run_id"):
        assert set(zip(cell.seed, cell.seed_b)) == {(0, 0), (1, 1), (0, 1)}
        diag = cell[(cell.seed == cell.seed_b) & (cell.layer == cell.layer_b)]
        assert diag["value"].to_numpy() == pytest.approx(1.0, abs=1e-4)
    assert [s.ran for s in sub.jobs[-1].result()] == [["cka_final"], ["cka_final"]]
    assert (tmp_path / "report" / "report.md").is_file()  # then the cell job wrote the report
    table = status_table(tmp_path)  # 2 cells x (train, 2 prune units, receptive_field, cka)
    assert (table["done"] == table["runs"]).all() and len(table) == 10

    jobs_before = sacct("-o", "JobID")
    plan, _, again = submit(args)
    assert again is None and not plan.pending and not plan.needs_cell_job
    assert sacct("-o", "JobID") == jobs_before  # nothing reached Slurm


def test_preempted_task_is_requeued_and_resumes_from_its_checkpoint(slurm, tmp_path):
    plan, _, sub = submit(LONG + [f"results_root={tmp_path}"])
    job, run_dir = sub.jobs[0], tmp_path / identify(plan.runs[0]).run_id
    before = wait_for_epoch(run_dir / "checkpoints" / "last.pt", 2)
    # What Slurm sends before a time limit or a preemption; submitit checkpoints and requeues.
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    wait([job], timeout=300)
    assert state(job) == "COMPLETED"
    assert "REQUEUED" in sacct("--duplicates", "-o", "State", "-j", job.job_id)
    assert "Requeued job" in Path(job.paths.stderr).read_text()
    assert_resumed(run_dir, before, LONG_EPOCHS)


def test_killed_task_resumes_when_the_grid_is_resubmitted(slurm, tmp_path):
    args = LONG + [f"results_root={tmp_path}"]
    plan, _, sub = submit(args)
    job, run_dir = sub.jobs[0], tmp_path / identify(plan.runs[0]).run_id
    before = wait_for_epoch(run_dir / "checkpoints" / "last.pt", 2)
    subprocess.run(["scancel", "--full", "--signal=KILL", job.job_id], check=True)
    wait([job])
    assert state(job) != "COMPLETED" and not results.is_done(run_dir, "train")
    train = status_table(tmp_path).set_index("unit").loc["train"]
    assert train["started"] == 1  # killed mid-training: checkpoints, no DONE, no live job
    assert re.search(rf"epoch \d+ of {LONG_EPOCHS} saved", train["reason"])

    plan, _, sub = submit(args)
    assert [p.units for p in plan.pending] == [("train",)]
    wait(sub.jobs)
    assert state(sub.jobs[0]) == "COMPLETED"
    assert_resumed(run_dir, before, LONG_EPOCHS)


def test_impossible_request_fails_at_submission_with_the_field_to_change(slurm, tmp_path, capsys):
    args = TINY + ["train.epochs=1", f"results_root={tmp_path}"]
    with pytest.raises(SubmissionError) as e:
        submit(args + ["launcher.time=600"])  # the partition's MaxTime is 60 minutes
    assert "Requested time limit is invalid" in str(e.value)  # sbatch's words
    assert "launcher.time=600" in str(e.value)
    with pytest.raises(SubmissionError) as e:
        submit(args + ["launcher.gpus_per_node=64"])
    assert "Requested node configuration is not available" in str(e.value)
    assert "launcher.gpus_per_node=64" in str(e.value)
    assert submit_main(args + ["launcher.cpus_per_task=64"]) == 1
    err = capsys.readouterr().err
    assert "sbatch refused the run array" in err and "launcher.cpus_per_task=64" in err
    assert not results.read_submissions(tmp_path)  # nothing was recorded as submitted
