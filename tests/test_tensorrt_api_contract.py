"""Every TensorRT name used by trt_yolact exists in every TensorRT version it claims to support.

TensorRT cannot be installed on CI, so the TensorRT code paths never run here. Instead, the
sources of every module that imports TensorRT (the builder ``trt_yolact/deploy/tensorrt_build.py``,
``trt_yolact/deploy/engine_format.py`` and the runner ``trt_yolact/runtime/tensorrt_runner.py``) are
parsed and the names they use are checked against the name lists extracted from the real bindings by
``tools/extract_tensorrt_names.py`` (``tests/data/tensorrt_api/tensorrt-<version>.txt``).

What the checker sees (conventions documented in ``trt_yolact/deploy/engine_format.py``):

* attribute chains on the module alias: ``trt.BuilderFlag.FP16`` -> ``BuilderFlag.FP16``
  (the alias is ``trt``, plus whatever ``import tensorrt as X`` binds);
* attribute chains on TensorRT objects, typed by variable name through ``TRT_OBJECT_TYPES``:
  ``builder_config.set_flag`` -> ``IBuilderConfig.set_flag``; ``self._engine.x`` is looked up
  as ``engine``;
* ``getattr(obj, "X", ...)`` / ``hasattr(obj, "X")`` with a literal name on such objects;
* public methods of classes deriving from a TensorRT class (overrides of
  ``IProgressMonitor.phase_start`` ...); helpers there must start with ``_``.

A name in ``VERSION_SPECIFIC_TRT_NAMES`` (``{"BuilderFlag.FP16": "10"}``, ``{"X": "10.1+"}``) is
checked only against the lists of those versions (major versions, or a release and every later one); the
lists include the oldest supported release (``OLDEST_TRT_VERSION``) and the newest 10.x and 11.x.
When a prefix of a chain is a leaf of the list (a value whose members are not listed, e.g. ``__version__``
or an enum value), the rest of the chain cannot be checked and is accepted.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API_DIR = ROOT / "tests" / "data" / "tensorrt_api"
# Every module that gets hold of the tensorrt module, found by its text so that no new one escapes the check.
_GETS_TENSORRT = re.compile(r"\bimport tensorrt\b|\bimport_tensorrt\(\)")
SOURCES = sorted(path for path in (ROOT / "trt_yolact").rglob("*.py") if _GETS_TENSORRT.search(path.read_text()))
ENGINE_SOURCE = ROOT / "trt_yolact" / "deploy" / "engine_format.py"  # the conventions' constants


# --------------------------------------------------------------------------- checker


def module_constant(source: str, name: str):
    """Value of a literal module-level assignment ``NAME = ...`` / ``NAME: T = ...``."""
    for node in ast.parse(source).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            return ast.literal_eval(node.value)
    raise KeyError(name)


class _Collector(ast.NodeVisitor):
    def __init__(self, object_types: dict[str, str]):
        self.object_types = object_types
        self.aliases = {"trt"}  # names bound to the tensorrt module
        self.imported: dict[str, str] = {}  # from tensorrt import X [as Y]: Y -> "X"
        self.found: list[tuple[str, int]] = []

    # -- resolution of an expression to a dotted TensorRT name ("" = the module itself)
    def resolve(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return ""
            if node.id in self.imported:
                return self.imported[node.id]
            return self.object_types.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                key = node.attr.lstrip("_")
                return self.object_types.get(key)
            base = self.resolve(node.value)
            return None if base is None else _join(base, node.attr)
        if isinstance(node, ast.Call) and _is_dynamic_lookup(node, "getattr"):
            base = self.resolve(node.args[0])
            return None if base is None else _join(base, node.args[1].value)
        return None

    def _record(self, dotted: str | None, node: ast.AST) -> None:
        if dotted:
            self.found.append((dotted, getattr(node, "lineno", 0)))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "tensorrt":
                self.aliases.add(alias.asname or "tensorrt")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "tensorrt":
            for alias in node.names:
                self.imported[alias.asname or alias.name] = alias.name
                self._record(alias.name, node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._record(self.resolve(node), node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        for fn in ("getattr", "hasattr"):
            if _is_dynamic_lookup(node, fn):
                base = self.resolve(node.args[0])
                if base is not None:
                    self._record(_join(base, node.args[1].value), node)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            dotted = self.resolve(base)
            if dotted:
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        self._record(_join(dotted, item.name), item)
        self.generic_visit(node)


def _join(base: str, attr: str) -> str:
    return f"{base}.{attr}" if base else attr


def _is_dynamic_lookup(node: ast.Call, fn: str) -> bool:
    return (
        isinstance(node.func, ast.Name)
        and node.func.id == fn
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def collect_trt_names(source: str, object_types: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """(dotted TensorRT name, line) for every TensorRT name the source uses."""
    collector = _Collector(dict(object_types or {}))
    tree = ast.parse(source)
    # Bind aliases first, so that uses above a function-local import are resolved too.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            collector.visit(node)
    collector.found.clear()
    collector.visit(tree)
    return collector.found


def load_api_lists(directory: Path = API_DIR) -> dict[str, frozenset[str]]:
    """{version: names} from ``tensorrt-<version>.txt`` files."""
    lists = {}
    for path in sorted(directory.glob("tensorrt-*.txt")):
        version = path.stem[len("tensorrt-") :]
        lists[version] = frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())
    return lists


def _known(name: str, names: frozenset[str]) -> bool:
    if name in names:
        return True
    parts = name.split(".")
    if len(parts) > 1 and parts[-1].startswith("__") and parts[-1].endswith("__"):
        # Python protocol members (__init__, __name__) of a known object are not listed.
        return _known(".".join(parts[:-1]), names)
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in names:
            # The prefix is listed: accept the tail only if the prefix has no listed members
            # (a leaf such as __version__ or an enum value); otherwise the tail is unknown.
            return not any(n.startswith(prefix + ".") for n in names)
    return False


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _used_in(version: str, spec: str) -> bool:
    """Whether a name declared for ``spec`` ("10", "10,11", "10.1+") is used with TensorRT ``version``."""
    for item in re.split(r"[,\s]+", str(spec).strip()):
        if item.endswith("+"):
            if _version_key(version) >= _version_key(item[:-1]):
                return True
        elif version.split(".")[0] == item:
            return True
    return False


def _declared_versions(name: str, version_specific: dict[str, str]) -> str | None:
    """The version spec of ``name`` (or of the chain it starts), None when it is used in every version."""
    for key, spec in version_specific.items():
        if name == key or name.startswith(key + "."):
            return spec
    return None


def check_names(
    used: Iterable[tuple[str, int]],
    api_lists: dict[str, frozenset[str]],
    version_specific: dict[str, str] | None = None,
    supported_majors: Iterable[str] | None = None,
) -> list[str]:
    """Problems: each used name missing from a list it must be in."""
    version_specific = version_specific or {}
    problems = []
    for version, names in sorted(api_lists.items()):
        major = version.split(".")[0]
        if supported_majors is not None and major not in set(supported_majors):
            continue
        for name, line in used:
            spec = _declared_versions(name, version_specific)
            if spec is not None and not _used_in(version, spec):
                continue
            if not _known(name, names):
                problems.append(f"line {line}: trt.{name} does not exist in TensorRT {version}")
    return sorted(set(problems))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def api_lists():
    lists = load_api_lists()
    assert lists, f"no TensorRT name lists in {API_DIR} (run tools/extract_tensorrt_names.py)"
    return lists


@pytest.fixture(scope="module")
def engine_source():
    return ENGINE_SOURCE.read_text()


@pytest.fixture(scope="module")
def contract(engine_source):
    return {
        "supported": tuple(module_constant(engine_source, "SUPPORTED_TRT_MAJORS")),
        "version_specific": dict(module_constant(engine_source, "VERSION_SPECIFIC_TRT_NAMES")),
        "object_types": dict(module_constant(engine_source, "TRT_OBJECT_TYPES")),
    }


def _object_types(source: str, base: dict[str, str]) -> dict[str, str]:
    types = dict(base)
    with contextlib.suppress(KeyError):
        types.update(module_constant(source, "TRT_OBJECT_TYPES"))
    return types


@pytest.fixture(scope="module")
def used_names(contract):
    used = {}
    for path in SOURCES:
        source = path.read_text()
        used[path.name] = collect_trt_names(source, _object_types(source, contract["object_types"]))
    return used


# --------------------------------------------------------------------------- the contract


def test_every_supported_major_has_a_name_list(api_lists, contract):
    majors = {v.split(".")[0] for v in api_lists}
    for major in contract["supported"]:
        assert major in majors, f"no name list for TensorRT {major}.x in {API_DIR}"


@pytest.mark.parametrize("source", [p.name for p in SOURCES])
def test_trt_names_exist_in_every_supported_version(source, used_names, api_lists, contract):
    problems = check_names(used_names[source], api_lists, contract["version_specific"], contract["supported"])
    assert not problems, f"{source}:\n" + "\n".join(problems)


def test_checker_sees_the_tensorrt_code(used_names):
    assert {"engine_format.py", "tensorrt_build.py", "tensorrt_runner.py"} <= set(used_names)
    engine = {n for n, _ in used_names["tensorrt_build.py"]}
    runner = {n for n, _ in used_names["tensorrt_runner.py"]}
    for name in (
        "Builder",
        "OnnxParser",
        "OnnxParser.parse_from_file",
        "ParserError.node_name",
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "BuilderFlag.FP16",
        "IBuilderConfig.set_memory_pool_limit",
        "MemoryPoolType.WORKSPACE",
        "IBuilderConfig.progress_monitor",
        "IBuilderConfig.create_timing_cache",
        "ITimingCache.serialize",
        "ProfilingVerbosity.DETAILED",
        "IOptimizationProfile.set_shape",
        "Builder.build_serialized_network",
        "IProgressMonitor",
        "IProgressMonitor.phase_start",
        "IProgressMonitor.step_complete",
        "IProgressMonitor.phase_finish",
        "__version__",
    ):
        assert name in engine, f"checker did not find trt.{name} in tensorrt_build.py"
    for name in (
        "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.execute_async_v3",
        "IExecutionContext.get_tensor_shape",
        "ICudaEngine.get_tensor_profile_shape",
        "ICudaEngine.num_io_tensors",
        "ICudaEngine.get_tensor_mode",
        "TensorIOMode.INPUT",
        "DataType.HALF",
        "ICudaEngine.create_execution_context",
        "Runtime.deserialize_cuda_engine",
        "ICudaEngine.create_engine_inspector",
        "EngineInspector.get_engine_information",
        "LayerInformationFormat.JSON",
    ):
        assert name in runner, f"checker did not find trt.{name} in tensorrt_runner.py"


def test_version_specific_names_are_used_and_really_version_specific(used_names, api_lists, contract):
    used = {n for names in used_names.values() for n, _ in names}
    for name, spec in contract["version_specific"].items():
        assert name in used, f"VERSION_SPECIFIC_TRT_NAMES lists {name}, which is not used any more"
        missing_somewhere = any(
            name not in names
            for v, names in api_lists.items()
            if v.split(".")[0] in contract["supported"] and not _used_in(v, spec)
        )
        assert missing_somewhere, f"{name} exists in every supported version: drop it from VERSION_SPECIFIC_TRT_NAMES"


def test_the_oldest_supported_version_has_a_name_list(api_lists, engine_source):
    """The lists span what is claimed: the oldest supported release and the newest of each major."""
    oldest = module_constant(engine_source, "OLDEST_TRT_VERSION")
    assert oldest in api_lists, f"no name list for TensorRT {oldest}, the oldest supported version"
    assert min(api_lists, key=_version_key) == oldest, "a list older than OLDEST_TRT_VERSION: raise neither"


def test_the_runner_falls_back_to_the_pre_10_1_memory_size(api_lists):
    """10.0 has only ``device_memory_size``, 11.x only ``device_memory_size_v2``: the runner needs both."""
    assert "ICudaEngine.device_memory_size_v2" not in api_lists["10.0.1"]
    assert "ICudaEngine.device_memory_size" not in api_lists["11.4.0.106"]
    source = (ROOT / "trt_yolact" / "runtime" / "tensorrt_runner.py").read_text()
    runner = {n for n, _ in collect_trt_names(source, {"engine": "ICudaEngine"})}
    assert {"ICudaEngine.device_memory_size", "ICudaEngine.device_memory_size_v2"} <= runner


def test_object_type_classes_exist(api_lists, contract):
    for var, cls in contract["object_types"].items():
        for version, names in api_lists.items():
            if version.split(".")[0] in contract["supported"]:
                assert cls in names, f"TRT_OBJECT_TYPES[{var!r}] = {cls!r} is not a class of TensorRT {version}"


def test_name_lists_are_sorted_and_plausible(api_lists):
    for path in sorted(API_DIR.glob("tensorrt-*.txt")):
        lines = path.read_text().splitlines()
        assert lines == sorted(set(lines)), f"{path.name} is not sorted and unique"
    for version, names in api_lists.items():
        for name in ("Builder.build_serialized_network", "ICudaEngine.get_tensor_name", "Logger.WARNING"):
            assert name in names, f"{name} missing from the TensorRT {version} list: extraction broken?"
        if version.startswith("11."):
            assert "BuilderFlag.FP16" not in names  # removed in TensorRT 11
        if version.startswith("10."):
            assert "BuilderFlag.FP16" in names


# --------------------------------------------------------------------------- the checker itself

_COMMON = {
    "Builder",
    "BuilderFlag",
    "BuilderFlag.TF32",
    "__version__",
    "IBuilderConfig",
    "IBuilderConfig.set_flag",
    "IProgressMonitor",
    "IProgressMonitor.phase_start",
    "DataType",
    "DataType.HALF",
}
LISTS = {"10.0.0": frozenset(_COMMON | {"BuilderFlag.FP16"}), "11.0.0": frozenset(_COMMON)}  # FP16 flag: 10.x only


def _problems(source: str, version_specific=None, object_types=None) -> list[str]:
    return check_names(collect_trt_names(source, object_types), LISTS, version_specific)


def test_checker_reports_made_up_names():
    src = "import tensorrt as trt\nflag = trt.BuilderFlag.NOT_A_FLAG\n"
    problems = _problems(src)
    assert problems == [
        "line 2: trt.BuilderFlag.NOT_A_FLAG does not exist in TensorRT 10.0.0",
        "line 2: trt.BuilderFlag.NOT_A_FLAG does not exist in TensorRT 11.0.0",
    ]
    assert _problems("import tensorrt as trt\nflag = trt.BuilderFlag.TF32\n") == []
    assert _problems("import tensorrt as trt\nb = trt.Bulder\n")  # top-level typo


def test_checker_follows_other_aliases_and_from_imports():
    assert _problems("import tensorrt as t\nx = t.BuilderFlag.NOPE\n")
    assert _problems("import tensorrt\nx = tensorrt.Nope\n")
    assert _problems("from tensorrt import BuilderFlag\nx = BuilderFlag.NOPE\n")
    assert _problems("from tensorrt import Nope\n")
    # an alias bound inside a function, used in another one
    assert _problems("def f():\n    import tensorrt as trt2\ndef g():\n    return trt2.Nope\n")


def test_checker_catches_dynamic_lookups():
    assert _problems('import tensorrt as trt\nf = getattr(trt.BuilderFlag, "NOT_A_FLAG", None)\n')
    assert _problems('import tensorrt as trt\nok = hasattr(trt, "NotAClass")\n')
    assert _problems('import tensorrt as trt\nx = getattr(trt, "BuilderFlag").NOPE\n')
    assert _problems('import tensorrt as trt\nok = hasattr(trt.BuilderFlag, "TF32")\n') == []


def test_checker_version_specific_names():
    src = "import tensorrt as trt\nflag = trt.BuilderFlag.FP16\n"
    assert _problems(src) == ["line 2: trt.BuilderFlag.FP16 does not exist in TensorRT 11.0.0"]
    assert _problems(src, {"BuilderFlag.FP16": "10"}) == []
    # declared for 11.x only: checked against the 11.x lists only
    assert _problems("import tensorrt as trt\nx = trt.BuilderFlag.NOPE\n", {"BuilderFlag.NOPE": "11"}) == [
        "line 2: trt.BuilderFlag.NOPE does not exist in TensorRT 11.0.0"
    ]
    # declared from a release on: checked against that release and every later one
    assert _problems("import tensorrt as trt\nx = trt.BuilderFlag.NOPE\n", {"BuilderFlag.NOPE": "10.5+"}) == [
        "line 2: trt.BuilderFlag.NOPE does not exist in TensorRT 11.0.0"
    ]
    assert _used_in("10.16.1.11", "10.1+") and not _used_in("10.0.1", "10.1+") and _used_in("11.0.0", "10.1+")
    assert _used_in("10.0.1", "10") and not _used_in("11.4.0.106", "10") and _used_in("11.4.0.106", "10, 11")


def test_checker_types_objects_by_variable_name():
    types = {"builder_config": "IBuilderConfig", "engine": "ICudaEngine"}
    assert _problems("builder_config.set_flag(1)\n", object_types=types) == []
    assert _problems("builder_config.set_flags(1)\n", object_types=types)
    assert _problems("class R:\n    def f(self):\n        return self._builder_config.no_such\n", object_types=types)
    assert _problems("unrelated.anything\n", object_types=types) == []


def test_checker_checks_overridden_methods():
    ok = (
        "import tensorrt as trt\nclass M(trt.IProgressMonitor):\n"
        "    def phase_start(self): pass\n    def _helper(self): pass\n"
    )
    assert _problems(ok) == []
    typo = "import tensorrt as trt\nclass M(trt.IProgressMonitor):\n    def phase_strat(self): pass\n"
    assert _problems(typo)


def test_checker_accepts_tails_of_leaf_values():
    assert _problems("import tensorrt as trt\nv = trt.__version__.split('.')\n") == []
    assert _problems("import tensorrt as trt\nv = trt.DataType.HALF.name\n") == []
    assert _problems("import tensorrt as trt\ntrt.IProgressMonitor.__init__(None)\n") == []
    assert _problems("import tensorrt as trt\ntrt.NoSuch.__init__(None)\n")
