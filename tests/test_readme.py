"""Every ``landscape-*`` command in README.md and jobs/README.md runs as written.

The commands are taken from the fenced code blocks (continuation lines joined, ``# comments``
dropped) and run in order in one temporary folder, which holds a generated CIFAR-10 tree at
``data/`` (the default ``data.root``), the README's own example modules (``mypkg/``, from its
``# mypkg/...`` Python blocks) and option files (``myconf/``, from its ``# myconf/...`` YAML
blocks). What is added to a command, and why, is listed below; nothing of a command is removed
except the placeholders named in ``PLACEHOLDERS``.

Each command runs its console script's entry point in a process of its own, forked from one
that imported ``landscape`` once (a fresh interpreter per command costs seconds of imports).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_data import make_cifar10_tree
from tests.test_image_folders import make_tree

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "jobs" / "README.md"]
ENTRY_POINTS = {  # pyproject.toml [project.scripts]
    "landscape-run": "landscape.cli:run_main", "landscape-submit": "landscape.cli:submit_main",
    "landscape-cells": "landscape.cli:cells_main", "landscape-rf": "landscape.cli:rf_main",
    "landscape-erf": "landscape.cli.erf:erf_main",
    "landscape-status": "landscape.commands:status_main",
    "landscape-report": "landscape.commands:report_main",
}
# Skipped: commands that show a placeholder the reader fills in.
SKIP = [r"<[^>]+>"]
# Replaced: "..." stands for the reader's other overrides (the small settings below stand in);
# the cluster's shared results folder is the one the earlier commands wrote; README's folder of
# images is generated here.
PLACEHOLDERS = [(r"(?<=\s)\.\.\.(?=\s|$)", ""), (r"/shared/\$USER/landscape-results", "results"),
                (r"data\.root=/datasets", "data.root=datasets")]
# Added to every command that composes a run: small data (the generated CIFAR-10 is not the
# published one: no md5), one epoch, a narrow model, the CPU, no report at the end of a grid
# (landscape-report writes it).
SMALL = ["data.train_subset=64", "data.test_subset=80", "data.verify_md5=false",
         "train.epochs=1", "model.width=0.125", "device=cpu", "num_threads=1", "progress=false",
         "report=false"]
# Added to landscape-erf: two depths of narrow stacks on a small input (its defaults take minutes).
ERF_SMALL = ["depths=[1,2]", "width=4", "n_inputs=4", "n_nets=1", "input_size=9"]
# Added to the commands that match: one point of an experiment's grid (a command-line value
# replaces the experiment's sweep of that key) and small evaluation sets for the stages a
# command switches on (protocol=paper takes only some: the others are its procedure).
EXTRA = [
    (r"experiment=(?!rf_design)", ["model.name=vgg19", "model.pool_level=1", "seed=0"]),
    (r"experiment=size_matters_small", ["input=canvas_32_16", "probes.n_test=80",
                                        "resolution.sizes=[16]"]),
    (r"experiment=rf_design", ["variant=dilated", "seed=0", "prune.rates=[0.5]",
                               "hessian.n_samples=10", "probes.n_test=80", "cka.n_inputs=16"]),
    (r"experiment=(demo|paper)|prune=paper", ["prune.rates=[0.5]"]),
    (r"experiment=(demo|paper)|hessian=paper", ["hessian.n_samples=10", "hessian.density_iter=5"]),
    (r"experiment=(demo|paper)|cka", ["cka.n_inputs=16"]),
    (r"experiment=(demo|paper)|importance", ["importance.n_samples=1"]),
    (r"experiment=demo", ["hessian.k=2", "hessian.trace_samples=2", "prune.path_points=3",
                          "prune.geometry_samples=16", "slice.points_1d=5", "slice.points_2d=3",
                          "sharpness.steps=1", "probes.pool_size=1", "connectivity.points=3"]),
]

FORK_SERVER = r"""
import importlib, json, os, signal, sys, traceback

import landscape.cli, landscape.commands  # the imports every command needs, once

entry_points = json.loads(sys.argv[1])
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        module, name = entry_points[job["argv"][0]].split(":")
        sys.argv = job["argv"]
        signal.alarm(job["timeout"])  # a command that hangs is killed (exit status -14)
        try:
            sys.exit(getattr(importlib.import_module(module), name)())
        except SystemExit as e:  # as the interpreter exits on it
            code = e.code if isinstance(e.code, int) or e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime]),
          flush=True)
"""


def doc_commands(path: Path) -> list[str]:
    """The ``landscape-*`` command lines of the fenced code blocks of ``path``."""
    found = []
    for block in re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", path.read_text(), re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().split(" ", 1)[0] in ENTRY_POINTS:
                found.append(line.strip())
    return found


def as_run(line: str) -> list[str] | None:
    """The argv this test runs for a README line, or None for a skipped one."""
    if any(re.search(p, line) for p in SKIP):
        return None
    for pattern, value in PLACEHOLDERS:
        line = re.sub(pattern, value, line)
    argv = shlex.split(line, comments=True)
    prog, args = argv[0], argv[1:]
    if prog == "landscape-submit" and "launcher=slurm" in args and "--dry-run" not in args:
        args.append("--dry-run")  # no Slurm here
    if prog in ("landscape-run", "landscape-cells", "landscape-submit"):
        args += SMALL + [a for pattern, extra in EXTRA if re.search(pattern, line) for a in extra]
    if prog == "landscape-erf":
        args += ERF_SMALL
    return [prog, *args]


def code_block(path: Path, first_line: str, language: str = "python") -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)
    return next(b for b in blocks if b.startswith(first_line))


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    lines = [line for doc in DOCS for line in doc_commands(doc)]
    assert len(lines) >= 20  # the extraction found the blocks
    runs = list(dict.fromkeys(tuple(a) for line in lines if (a := as_run(line))))
    make_cifar10_tree(tmp_path / "data", per_batch=80)
    make_tree(tmp_path / "datasets")  # README's own images: datasets/leaves/{train,val}
    (tmp_path / "mypkg").mkdir()
    for name in ("mycriteria", "weight_norm", "mydata"):
        (tmp_path / "mypkg" / f"{name}.py").write_text(
            code_block(REPO / "README.md", f"# mypkg/{name}.py"))
    (tmp_path / "myconf" / "data").mkdir(parents=True)  # its images generated under datasets/
    (tmp_path / "myconf" / "data" / "leaves.yaml").write_text(code_block(
        REPO / "README.md", "# myconf/data/leaves.yaml", "yaml").replace("/datasets", "datasets"))
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, json.dumps(ENTRY_POINTS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path, env=env)
    failed = []
    try:
        for i, argv in enumerate(runs):
            log = tmp_path / f"command-{i}.log"
            job = {"argv": list(argv), "log": str(log), "timeout": 300}
            server.stdin.write(json.dumps(job) + "\n")
            server.stdin.flush()
            reply = server.stdout.readline()
            if not reply:
                pytest.fail(f"the fork server died running {shlex.join(argv)}")
            rc, cpu = json.loads(reply)
            print(f"{cpu:5.1f} s CPU, exit {rc}: {shlex.join(argv)}")  # shown with -s
            if rc != 0:
                failed.append(f"{shlex.join(argv)}\n  exit {rc} after {cpu:.0f} s CPU:\n"
                              f"{log.read_text()[-2000:]}")
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert not failed, "README commands that failed:\n" + "\n".join(failed)
