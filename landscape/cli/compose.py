"""From a command line to a config: the dataclass schemas Hydra composes over (free-form
dictionaries open to new keys), Hydra's own errors as one line, and the ``@hydra.main`` of the
console scripts. With ``landscape.cli`` the only code that imports Hydra."""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import os
import sys
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable, get_type_hints

import hydra
from hydra.core.config_store import ConfigStore
from hydra.errors import (CompactHydraException, HydraException, MissingConfigException,
                          OverrideParseException)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, OmegaConfBaseException,
                              ValidationError)

from landscape.config import (RFSweepConfig, RunConfig, check_known_keys, describe_type,
                              free_form_fields)
from landscape.data import DatasetNotFoundError
from landscape.grid import LauncherConfig
from landscape.hessian import NoSecondDerivativeError
from landscape.results import DamagedUnitError, ResultsRootError
from landscape.storage import CheckpointError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def schema_node(schema: type) -> DictConfig:
    """The structured config of the dataclass ``schema``, its free-form dict fields
    (``prune.options``, ``stages``, ``launcher.sbatch_extra``) open to new keys. Hydra puts the
    composed config in struct mode, which closes typed dicts too (a new key would need ``+``);
    a node's own struct flag overrides the one it would inherit, and Hydra's merges keep it."""
    node = OmegaConf.structured(schema)
    for path in free_form_fields(schema):
        OmegaConf.set_struct(OmegaConf.select(node, path), False)
    return node


cs = ConfigStore.instance()
cs.store(name="run_schema", node=schema_node(RunConfig))
cs.store(name="rf_schema", node=schema_node(RFSweepConfig))
cs.store(group="launcher", name="schema", node=schema_node(LauncherConfig))


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config against the schema and return plain dataclasses."""
    data = OmegaConf.to_container(cfg, resolve=False)
    check_known_keys(data, RunConfig)
    check_no_missing(data)
    run_cfg = OmegaConf.to_object(cfg)
    if not isinstance(run_cfg, RunConfig):
        raise TypeError(f"expected a RunConfig, got {type(run_cfg).__name__}")
    return run_cfg


def check_no_missing(data: dict) -> None:
    """A ``???`` (a value an option file leaves to the command line) that was not given, in
    the composed config as a container (``OmegaConf.to_container(cfg, resolve=False)``): an
    error naming the keys (``OmegaConf.to_object`` would silently use the schema's default)."""
    missing = sorted(_missing(data))
    if missing:
        raise ValueError(f"{', '.join(missing)} must be given (the config leaves "
                         f"{'it' if len(missing) == 1 else 'them'} to the command line: ???); "
                         f"e.g. {missing[0]}=...")


def _missing(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _missing(value, f"{prefix}{key}.")
        elif isinstance(value, str) and value == "???":
            out.append(f"{prefix}{key}")
    return out


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError, CheckpointError)
# While stages run, only these say what to fix (their unit's FAILED file keeps the traceback);
# anything else is a bug and keeps its traceback.
RUN_ERRORS = (DatasetNotFoundError, CheckpointError, ResultsRootError, DamagedUnitError,
              NoSecondDerivativeError)


def exit_on_user_error(prog: str, fn: Callable[[], Any], errors: tuple = USER_ERRORS) -> Any:
    """``fn()``; a bad setting (ValueError, an unknown registry name, a missing dataset or
    module, an unusable checkpoint) is printed as one line and exits with status 2 instead of
    a traceback."""
    try:
        return fn()
    except errors as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


_NOISE = ("Config search path", "provider=", "full_key:", "reference_type=", "object_type=",
          "Set the environment variable HYDRA_FULL_ERROR")


def _one_line(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages without the search path and node details."""
    lines = [line.strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_NOISE)]
    return "; ".join([line.rstrip(".") for line in lines[:-1]] + lines[-1:])


def hydra_error_line(e: Exception, config_dir: str = CONFIG_DIR) -> str:
    """One line for an error Hydra or OmegaConf raised while composing a config: a bad group
    option lists the options of its group (ours and those of a ``hydra.searchpath``) and says
    where an option file of your own goes, a value of the wrong type names the field, the
    value and the type, an unknown key the nearest valid one."""
    if isinstance(e, MissingConfigException) and "/" in (e.missing_cfg_file or ""):
        group, name = e.missing_cfg_file.rsplit("/", 1)
        folder = Path(config_dir) / group
        options = sorted({p.stem for p in folder.glob("*.yaml")} | set(e.options or []))
        near = difflib.get_close_matches(name, options, n=1)
        choose = f"; did you mean {group}={near[0]}? Choose" if near else "; choose"
        where = (f" (files in {folder}; one of your own: <dir>/{group}/{name}.yaml and "
                 f"hydra.searchpath=[file://<dir>])" if folder.is_dir() else "")
        return f"{group}={name}: no such option{choose} one of: {', '.join(options)}{where}"
    if isinstance(e, OverrideParseException):
        return f"cannot parse the override {e.override!r}: {_one_line(e.message)}"
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    if isinstance(cause, OmegaConfBaseException) and is_dataclass(cause.object_type):
        hints = get_type_hints(cause.object_type)
        full_key = cause.full_key or str(cause.key)
        prefix = full_key.rpartition(".")[0] + "." if "." in full_key else ""
        if isinstance(cause, ValidationError) and cause.key in hints:
            return f"{full_key} must be {describe_type(hints[cause.key])}, got {cause.value!r}"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.key not in hints:
            try:
                check_known_keys({cause.key: None}, cause.object_type, prefix)
            except ValueError as unknown:
                return str(unknown)
    msg = _one_line(str(e))
    if isinstance(e, CompactHydraException) and isinstance(cause, OmegaConfBaseException):
        msg += f": {_one_line(cause.msg or '')}"
    return msg


TaskFunction = Callable[[DictConfig], Any]


# What an interrupted command leaves: every unit is written whole or not at all, training
# keeps an epoch checkpoint (landscape.results, landscape.train).
INTERRUPTED = {p: ": finished units are kept, and the same command goes on from there"
               for p in ("landscape-run", "landscape-cells")}


def command_help(prog: str, about: str, hydra_help: str) -> str:
    """``prog --help``: a usage line and ``about`` (what the command does, examples) over
    Hydra's listing of the config groups and the composed config, without its header line
    ("<module> is powered by Hydra.", which named neither the command nor what it does)."""
    listing = hydra_help[hydra_help.find("== "):] if "== " in hydra_help else hydra_help
    return (f"usage: {prog} [group=option ...] [key=value ...]\n\n"
            f"{about.strip().replace('``', '')}\n\n{listing}")


def hydra_command(prog: str, config_name: str,
                  about: str = "") -> Callable[[TaskFunction], Callable[[], Any]]:
    """``@hydra.main`` over ``configs/<config_name>.yaml`` for the console script ``prog``,
    whose composition errors (a bad group option, a value of the wrong type, an unknown key, a
    malformed override) are one line and exit status 2. Hydra raises them instead of printing
    them when ``HYDRA_FULL_ERROR=1`` (so an error of the task keeps its whole traceback too);
    set by the user, it keeps Hydra's own report. ``--help`` starts with ``about``
    (:func:`command_help`)."""

    def decorate(task: TaskFunction) -> Callable[[], Any]:
        main = hydra.main(config_path=CONFIG_DIR, config_name=config_name,
                          version_base="1.3")(task)

        @functools.wraps(task)
        def command() -> Any:
            if about and {"--help", "-h"} & set(sys.argv[1:]):
                with contextlib.redirect_stdout(io.StringIO()) as out:
                    with contextlib.suppress(SystemExit):  # Hydra exits 0 after its help
                        main()
                print(command_help(prog, about, out.getvalue()), end="", flush=True)
                return None
            full_error = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return main()
            except (HydraException, OmegaConfBaseException) as e:
                if full_error == "1":
                    raise
                print(f"{prog}: error: {hydra_error_line(e)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
                print(f"{prog}: interrupted{INTERRUPTED.get(prog, '')}", file=sys.stderr,
                      flush=True)
                raise SystemExit(130) from None
            finally:
                if full_error is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = full_error

        return command

    return decorate
