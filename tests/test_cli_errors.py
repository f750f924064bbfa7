"""The Hydra console scripts: free-form option dictionaries take new keys without ``+``, and
Hydra's own composition errors are one line with the choices and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException

from landscape import cli
from landscape.cli import CONFIG_DIR, expand_grid, hydra_error_line, load_launcher, submit
from landscape.config import RunConfig, free_form_fields
from landscape.grid import LauncherConfig
from landscape.grid.sbatch import idle_gpu_warning

REPO = Path(__file__).resolve().parents[1]


def compose_error(*overrides: str, config_name: str = "config") -> Exception:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(Exception) as e:
            compose(config_name, overrides=list(overrides))
    return e.value


# --------------------------------------------------------------------------- free-form keys
def test_free_form_dicts_take_new_keys_without_plus():
    assert free_form_fields(RunConfig) == ["prune.options", "stages"]
    [cfg] = expand_grid(["prune.options.scale=2.0", "stages.weight_norm.checkpoints=[final]"])
    assert cfg.prune.options == {"scale": 2.0}
    assert cfg.stages == {"weight_norm": {"checkpoints": ["final"]}}
    [cfg] = expand_grid(["experiment=paper_small", "model.name=vgg19", "model.pool_level=1",
                         "seed=0", "+prune.options.scale=3", "++stages.x.y=1"])  # + still works
    assert cfg.prune.options == {"scale": 3} and cfg.stages == {"x": {"y": 1}}
    assert load_launcher("slurm", ["launcher.sbatch_extra.qos=high"]).sbatch_extra == {
        "qos": "high"}
    # Everywhere else an unknown key is still refused, with or without +.
    assert hydra_error_line(compose_error("prune.optionz=1")).startswith(
        "unknown config key 'prune.optionz'; did you mean 'prune.options'? Valid keys of prune:")
    with pytest.raises(ValueError, match="unknown config key 'prune.optionz'"):
        expand_grid(["+prune.optionz=1"])


# --------------------------------------------------------------------------- Hydra's errors
def test_hydra_errors_are_one_line_with_the_choices():
    assert hydra_error_line(compose_error("train.epochs=abc")) == \
        "train.epochs must be an integer, got 'abc'"
    assert hydra_error_line(compose_error("model.pool_kernel=x")) == \
        "model.pool_kernel must be an integer or null, got 'x'"
    assert hydra_error_line(compose_error("prune.rates=abc")) == \
        "prune.rates must be a list [...] of numbers, got 'abc'"
    data = Path(CONFIG_DIR) / "data"
    assert hydra_error_line(compose_error("data=cifar")) == (
        f"data=cifar: no such option; did you mean data=cifar10? Choose one of: cifar10, "
        f"cifar100, digits, folder, imagenette, synthetic, tiny_imagenet, tiny_imagenet_paper "
        f"(files in {data}; one of your own: <dir>/data/cifar.yaml and "
        f"hydra.searchpath=[file://<dir>])")
    assert hydra_error_line(compose_error("model=nosuch")).startswith(
        "model=nosuch: no such option; choose one of: resnet101, resnet18, "
        "resnet18_imagenet_stem, resnet18_no_skips, resnet34, resnet50, small_cnn, vgg11, "
        "vgg13, vgg16, vgg19, vgg19_dilated")
    assert hydra_error_line(compose_error("device=[1")).startswith(
        "cannot parse the override 'device=[1': ")
    assert hydra_error_line(compose_error("levels=x", config_name="rf")) == \
        "levels must be a list [...] of integers or null, got 'x'"
    for e in (compose_error("seed=0,1"), compose_error("+model.width=2")):
        assert "\n" not in hydra_error_line(e) and "HYDRA_FULL_ERROR" not in hydra_error_line(e)


@pytest.fixture
def fresh_hydra():
    yield
    GlobalHydra.instance().clear()  # a failed @hydra.main leaves it initialised


@pytest.mark.parametrize("main, arg, line", [
    ("run_main", "train.epochs=abc", "landscape-run: error: train.epochs must be an integer, "
                                     "got 'abc'"),
    ("cells_main", "data=cifar", "landscape-cells: error: data=cifar: no such option; "
                                 "did you mean data=cifar10? Choose one of: cifar10, "),
    ("rf_main", "model=vgg", "landscape-rf: error: model=vgg: no such option; did you mean "
                             "model=vgg19? Choose one of: resnet101, resnet18, "
                             "resnet18_imagenet_stem, resnet18_no_skips, resnet34, resnet50, "
                             "small_cnn, vgg11, vgg13, vgg16, vgg19, vgg19_dilated"),
])
def test_every_hydra_entry_point_says_hydras_errors_in_one_line(
        main, arg, line, monkeypatch, capsys, fresh_hydra):
    monkeypatch.setattr(sys, "argv", [main, arg])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        getattr(cli, main)()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(line), err
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the user asks for Hydra's own traceback
    GlobalHydra.instance().clear()
    with pytest.raises(HydraException):
        getattr(cli, main)()


def test_a_hydra_error_from_the_console_is_one_line_and_exit_status_2(tmp_path):
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-c", "from landscape.cli import run_main; run_main()",
                          "experiment=paper_smal", f"results_root={tmp_path / 'r'}"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    experiment = Path(CONFIG_DIR) / "experiment"
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"landscape-run: error: experiment=paper_smal: no such option; did you mean "
        f"experiment=paper_small? Choose one of: demo, dynamics_small, paper_cifar10, "
        f"paper_small, paper_tinyimagenet, rf_design_small, size_matters_cifar10, "
        f"size_matters_imagenette, size_matters_small (files in {experiment}; one of your own: "
        f"<dir>/experiment/paper_smal.yaml and hydra.searchpath=[file://<dir>])"]
    assert not (tmp_path / "r").exists()


def test_submit_says_hydras_errors_in_one_line(capsys):
    assert cli.submit_main(["--dry-run", "experiment=paper_smal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "landscape-submit: error: experiment=paper_smal: no such option; did you mean "
        "experiment=paper_small? Choose one of: demo, dynamics_small, paper_cifar10")
    assert cli.submit_main(["--dry-run", "launcher=slurm", "launcher.time=abc"]) == 2
    assert capsys.readouterr().err == ("landscape-submit: error: launcher.time must be an "
                                       "integer, got 'abc'\n")


def test_a_value_left_to_the_command_line_is_an_error_not_the_schemas_default(capsys):
    """``???`` (OmegaConf's missing value) would become the dataclass default (data.name:
    digits) and train on it without a word."""
    assert cli.submit_main(["--dry-run", "data.name=???", "model.name=???"]) == 2
    assert capsys.readouterr().err == (
        "landscape-submit: error: data.name, model.name must be given (the config leaves them "
        "to the command line: ???); e.g. data.name=...\n")


# --------------------------------------------------------------------------- GPU request
def test_a_gpu_requested_for_runs_told_to_use_the_cpu_is_a_warning(tmp_path, capsys):
    cpu, auto = RunConfig(device="cpu"), RunConfig(device="auto")
    slurm = LauncherConfig(backend="slurm", gpus_per_node=1)
    assert "launcher.gpus_per_node=1 requests a GPU for every task, but device=cpu" in \
        idle_gpu_warning([cpu], slurm)
    assert idle_gpu_warning([auto], slurm) is None
    assert idle_gpu_warning([cpu], LauncherConfig(backend="slurm", gpus_per_node=0)) is None
    assert idle_gpu_warning([cpu], LauncherConfig(backend="slurm", gpus_per_node=None)) is None
    assert idle_gpu_warning([cpu], LauncherConfig(backend="local")) is None
    args = ["model=small_cnn", "data=synthetic", "device=cpu", f"results_root={tmp_path}",
            "launcher=slurm"]
    submit(args, dry_run=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["landscape-submit: warning: launcher.gpus_per_node=1 requests a GPU for "
                        "every task, but device=cpu tells the runs to use the CPU; set "
                        "launcher.gpus_per_node=0 for CPU-only jobs, or device=auto (or cuda) "
                        "to use the GPU"]
    submit(args + ["launcher.gpus_per_node=0"], dry_run=True)
    assert "warning" not in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_status_130(monkeypatch, capsys):
    """Ctrl-C during a run prints what is kept, not a traceback."""
    from landscape import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    monkeypatch.setattr(sys, "argv", ["landscape-run", "model=small_cnn", "data=digits",
                                      "hydra.run.dir=.", "hydra.output_subdir=null"])
    with pytest.raises(SystemExit) as e:
        cli.run_main()
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "landscape-run: interrupted: finished units are kept, and the same command goes on "
        "from there"]


@pytest.mark.parametrize("main, prog, says", [
    ("cells_main", "landscape-cells", "the cell-level stages"),
    ("run_main", "landscape-run", "train one run"),
    ("rf_main", "landscape-rf", "the analytic receptive field of a model"),
])
def test_help_names_the_command_and_what_it_does_over_the_config_groups(console, main, prog,
                                                                        says):
    """``--help`` began "cli is powered by Hydra.": neither the command nor what it does."""
    code, out, err = console(main, "--help")
    assert code in (0, None) and not err
    assert out.startswith(f"usage: {prog} [group=option ...] [key=value ...]\n\n{prog}: {says}")
    assert "powered by Hydra" not in out and "``" not in out
    assert "== Configuration groups ==" in out and "== Config ==" in out
