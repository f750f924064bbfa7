"""Structure of the package: no import cycles (not even under TYPE_CHECKING or inside a
function), metric code free of orchestration, Hydra only in the CLI, one list of stages."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports anywhere in its body: ``import a.b``, ``from a.b
    import c`` (c if it is a module, else a.b) and relative imports."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, name, set(modules)) for name, path in modules.items()}


def test_the_import_graph_has_no_cycle():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert "landscape.pipeline" in order and "landscape.stages.base" in order


def test_the_cycle_check_finds_a_cycle():
    graph = import_graph()
    graph["landscape.stages.base"] = graph["landscape.stages.base"] | {"landscape.pipeline"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


@pytest.mark.parametrize("metric_module", [
    "landscape.hessian", "landscape.cka", "landscape.importance", "landscape.activations",
    "landscape.pruning", "landscape.receptive_field", "landscape.results", "landscape.geometry",
    "landscape.probes",
])
def test_metric_code_does_not_reach_orchestration_or_models(metric_module):
    graph = import_graph()
    modules = [m for m in graph if m == metric_module or m.startswith(metric_module + ".")]
    forbidden = {"landscape.pipeline", "landscape.config", "landscape.cli", "landscape.grid",
                 "landscape.stages", "landscape.identity"}
    for module in modules:
        deps = reachable(graph, module)
        assert not {d for d in deps if d in forbidden or d.startswith(
            ("landscape.grid.", "landscape.stages.", "landscape.cli."))}, module
        # the analytic RF (which builds models by name for its sweeps) brings the registry
        if not builds_models_by_name(module) and "landscape.receptive_field" not in deps:
            assert not {d for d in deps if d.startswith("landscape.models")}, module


def builds_models_by_name(module: str) -> bool:
    """The analytic RF and importance at init take an architecture *name* (the importance
    package re-exports the latter); every other metric computation takes a model."""
    return module in ("landscape.importance", "landscape.importance.at_init") or \
        module.startswith("landscape.receptive_field")


def test_hydra_is_imported_only_by_the_cli():
    users = [name for name, path in all_modules().items()
             if any(isinstance(n, (ast.Import, ast.ImportFrom))
                    and any((getattr(n, "module", None) or a.name).split(".")[0]
                            in ("hydra", "omegaconf") for a in n.names)
                    for n in ast.walk(ast.parse(path.read_text())))]
    assert "landscape.cli" in users
    assert all(u == "landscape.cli" or u.startswith("landscape.cli.") for u in users), users


def test_the_stage_registry_is_the_only_list_of_stages():
    """Status and report take the stage list from the registry: outside the stage modules no
    literal list or tuple holds three or more stage names (or their units' names)."""
    from landscape.stages import registered_stages, stage_names

    names = stage_names()
    assert names == ["train", "prune", "finetune", "imp", "hessian", "importance", "slice",
                     "sharpness", "probes", "resolution", "receptive_field", "cka",
                     "connectivity"]
    assert [s.level for s in registered_stages()].count("cell") == 3

    def is_stage(v: object) -> bool:
        return isinstance(v, str) and any(v == n or v.startswith(n + "_") for n in names)

    for name, path in all_modules().items():
        if name.startswith("landscape.stages"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple)):
                found = [e.value for e in node.elts
                         if isinstance(e, ast.Constant) and is_stage(e.value)]
                assert len(found) < 3, f"{name}:{node.lineno} lists stages {found}"


def test_orchestration_modules_stay_small():
    big = {name: n for name, path in all_modules().items()
           if name.startswith(("landscape.pipeline", "landscape.grid", "landscape.stages",
                               "landscape.cli", "landscape.config", "landscape.identity",
                               "landscape.results"))
           and (n := len(path.read_text().splitlines())) > 300}
    assert not big, f"over 300 lines: {big}"


def test_the_commands_import_neither_torch_pruning_nor_timm():
    """torch_pruning imports timm (0.5 s): ``landscape-status``, ``landscape-report`` and the
    planning of a grid must not pay for it (structured pruning imports it when it runs)."""
    import subprocess
    import sys

    code = ("import sys, landscape.commands, landscape.cli, landscape.stages; "
            "print(sorted({'torch_pruning', 'timm'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
