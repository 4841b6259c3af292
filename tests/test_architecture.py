"""The package's structure rules, checked on the source: data flows one way through the stages, the runtime
reads only format modules, no import cycle (function-level imports included), functions short enough to
read at once (in the package, the benchmarks and the tools).

Every ``import`` and ``from ... import`` of a ``trt_yolact`` module anywhere in a file (module level or inside
a function) is an edge of the import graph; ``from pkg import name`` is an edge to ``pkg.name`` when that is a
module. The checks are functions of a graph, so the tests below also run them on made-up graphs that break
each rule.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trt_yolact"
MAX_FUNCTION_LINES = 60

# Layers in the order data flows: checkpoint -> model -> ONNX -> engine -> runner -> detections -> metrics.
# A module may import its own layer and the layers listed for it, nothing later.
BASE = {
    "trt_yolact",
    "trt_yolact.errors",
    "trt_yolact.config",
    "trt_yolact.structures",
    "trt_yolact.files",
    "trt_yolact.tables",
}
MAY_IMPORT = {
    "base": set(),
    "model": {"base"},
    "data": {"base"},
    "deploy": {"base", "model"},
    "runtime": set(),  # see RUNTIME_MAY_IMPORT: not all of base, and only the format modules of deploy
    # data: the generated shapes images INT8 calibrates on and its sensitivity is scored on
    "inference": {"base", "model", "data", "deploy", "runtime"},
    "metrics": {"base", "model", "data", "deploy", "runtime", "inference"},
    "training": {"base", "model", "data", "deploy", "runtime", "inference", "metrics"},
    "commands": {"base", "model", "data", "deploy", "runtime", "inference", "metrics", "training"},
}
# Command modules inside a stage's folder (``python -m trt_yolact.data.shapes``); the rest live at the top.
NESTED_COMMANDS = {"trt_yolact.data.shapes"}
RUNTIME_MAY_IMPORT = {
    "trt_yolact",
    "trt_yolact.errors",
    "trt_yolact.config",
    "trt_yolact.structures",
    "trt_yolact.deploy.onnx_format",
    "trt_yolact.deploy.engine_format",
}


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    if module in NESTED_COMMANDS:
        return "commands"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in MAY_IMPORT and parts[1] not in ("base", "commands"):
        return parts[1]
    return "commands"  # the command modules and what only they share (cli, command_line, __main__)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The trt_yolact modules ``path`` imports, at any depth of its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m == "trt_yolact" or m.startswith("trt_yolact.")}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) - {module_name(p)} for p in paths}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in sorted(graph.items()):
        layer = layer_of(module)
        for target in sorted(imported):
            if layer == "runtime":
                allowed = target in RUNTIME_MAY_IMPORT or layer_of(target) == "runtime"
            else:
                allowed = layer_of(target) in MAY_IMPORT[layer] | {layer}
            if not allowed:
                problems.append(f"{module} ({layer}) imports {target} ({layer_of(target)})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, once each (as the path from its smallest module around to it again)."""
    found: set[tuple[str, ...]] = set()

    def visit(path: list[str]) -> None:
        for target in sorted(graph.get(path[-1], ())):
            if target == path[0]:
                found.add(tuple(path))
            elif target not in path and target > path[0]:
                visit([*path, target])

    for start in sorted(graph):
        visit([start])
    return [[*cycle, cycle[0]] for cycle in sorted(found)]


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions longer than ``limit`` lines in the package and in the scripts beside it."""
    problems = []
    scripts = [PACKAGE.parent / folder for folder in ("benchmarks", "tools")]
    for path in sorted(p for root in [PACKAGE, *scripts] if root.is_dir() for p in root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {lines} lines")
    return problems


# ------------------------------------------------------------------------------------------ the rules
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer_and_the_stages_exist(graph):
    layers = {layer_of(m) for m in graph}
    assert layers == set(MAY_IMPORT)
    assert {"trt_yolact.deploy.artifacts", "trt_yolact.runtime.base", "trt_yolact.inference.predictor"} <= set(graph)


def test_data_flows_one_way(graph):
    assert layer_violations(graph) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_functions_are_short(graph):
    assert long_functions() == []


def test_commands_are_reached_only_through_the_command_table(graph):
    commands = {m for m in graph if layer_of(m) == "commands"}
    for module, imported in graph.items():
        if layer_of(module) != "commands":
            assert not imported & commands, f"{module} imports a command module"


# ------------------------------------------------------------------------------- the checks can fail
def test_the_checks_catch_a_deliberate_violation(graph):
    """A runner that imports the engine builder, a stage that imports a command, a cycle made of
    function-level imports: each breaks the rules as written."""
    broken = {m: set(t) for m, t in graph.items()}
    broken["trt_yolact.runtime.tensorrt_runner"].add("trt_yolact.deploy.tensorrt_build")
    broken["trt_yolact.model.checkpoint"].add("trt_yolact.build")
    assert layer_violations(broken) == [
        "trt_yolact.model.checkpoint (model) imports trt_yolact.build (commands)",
        "trt_yolact.runtime.tensorrt_runner (runtime) imports trt_yolact.deploy.tensorrt_build (deploy)",
    ]
    broken["trt_yolact.model.fuse"].add("trt_yolact.model.checkpoint")  # checkpoint imports fuse
    assert ["trt_yolact.model.checkpoint", "trt_yolact.model.fuse", "trt_yolact.model.checkpoint"] in cycles(broken)


def test_function_level_and_relative_imports_are_edges(tmp_path, monkeypatch):
    source = tmp_path / "trt_yolact" / "runtime" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text("def late():\n    from ..deploy import tensorrt_build\n    from . import base\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "trt_yolact")
    known = {"trt_yolact.deploy.tensorrt_build", "trt_yolact.runtime.base", "trt_yolact.runtime.example"}
    assert imports_of(source, known) == {"trt_yolact.deploy.tensorrt_build", "trt_yolact.runtime.base"}


def test_long_functions_are_found(tmp_path, monkeypatch):
    long = tmp_path / "trt_yolact" / "long.py"
    long.parent.mkdir()
    long.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "script.py").write_text("def g():\n" + "    y = 2\n" * MAX_FUNCTION_LINES)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", long.parent)
    assert sorted(long_functions()) == [
        f"benchmarks/script.py:1 g: {MAX_FUNCTION_LINES + 1} lines",
        f"trt_yolact/long.py:1 f: {MAX_FUNCTION_LINES + 1} lines",
    ]
