#!/usr/bin/env python3
"""Extract the public names of the TensorRT Python module for the API contract test.

Output: ``tests/data/tensorrt_api/tensorrt-<version>.txt``, one dotted name per line, sorted:
top-level names (``Builder``, ``float16``, ``__version__``) and the members of classes and
enums (``Builder.build_serialized_network``, ``BuilderFlag.FP16``,
``ILogger.Severity.WARNING``). ``tests/test_tensorrt_api_contract.py`` checks every TensorRT
name used by ``trt_yolact`` against these lists.

Method
------
TensorRT itself (libnvinfer) is not installable everywhere, but the Python bindings wheels
``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings`` are ordinary wheels. They ship no
``.pyi`` stubs, only a pybind11 extension (``tensorrt_bindings/tensorrt*.so``) that links
against ``libnvinfer.so.N``, ``libnvonnxparser.so.N`` and ``libnvinfer_plugin.so.N``.
Listing the strings of that binary gives names, but not which class a method belongs to, so
this script instead *imports the real module* and introspects it:

1. ``pip download --no-deps --only-binary=:all:`` the bindings wheel for the running
   interpreter, and unzip it into a temporary directory.
2. Read the extension's ``NEEDED`` entries (``readelf -d``) and its undefined dynamic symbols
   (``nm -D --undefined-only``). The symbols that are unversioned and not already resolvable
   in this Python process (i.e. not libc / libpython / libstdc++) are the TensorRT C entry
   points (``createInferBuilder_INTERNAL``, ``getPluginRegistry``, ...; nine of them in
   10.x/11.x).
3. Compile with the C compiler a *stub* shared library defining each of those symbols as a
   function that returns 0, once under each missing ``libnv*`` soname.
4. In a subprocess with ``LD_LIBRARY_PATH`` pointing at the stubs, import the package (its
   ``__init__.py`` runs as usual, so Python-level additions such as ``Logger.WARNING`` or
   ``__version__`` are included), and walk ``dir()`` of the module and of every class defined
   by it (nested classes too, up to ``A.B.c``). Names starting with ``_`` (except
   ``__version__``) and imported modules (``os``, ``ctypes``, ...) are skipped. Inherited
   members are listed under the subclass as well (``dir()`` semantics).
5. Sanity check: the last component of every extracted name must occur as a string in the
   extension binary or in the package's Python sources; otherwise the script fails.

pybind11 registers classes, methods, properties and enum values while the module initialises,
without calling into libnvinfer, so the list obtained this way is exactly the one a real
installation exposes. The stubs are never called during the walk; a stub that were called
would return NULL, which the subprocess turns into a clear failure (no list is written).

Limitations
-----------
* Needs Linux (ELF), ``readelf``/``nm`` (binutils), a C compiler (``cc`` or ``$CC``) and a
  CPython for which the bindings wheel is published (cp38..cp313 at the time of writing). The
  list describes that interpreter's wheel; the API surface does not depend on the Python
  version or on the CUDA flavour (cu12 vs cu13) of the bindings.
* Only *names* are extracted, not signatures, argument or return types.
* Every attribute of the real package is listed, including helpers and leftovers of its
  ``__init__.py`` (``volume``, ``nptype``, ``common_enter``, the loop variables ``attr`` and
  ``value``): they are attributes of the real module, so the list stays exact.
* Members of objects that are not classes (e.g. attributes of ``trt.float16``, an enum value)
  are not listed; names created lazily at run time (none known) would be missed.
* If a future wheel's module init calls into libnvinfer, the import fails in the subprocess
  and the script stops with the subprocess's error: it never falls back to a guessed list.

Usage::

    python tools/extract_tensorrt_names.py                 # newest 10.x and newest 11.x
    python tools/extract_tensorrt_names.py --versions 10.0.1 10.16.1.11 11.4.0.106   # the lists kept in tests/
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "tests" / "data" / "tensorrt_api"
PACKAGES = ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings")
DEFAULT_MAJORS = ("10", "11")

# Run in the subprocess that imports the bindings against the stub libraries.
_INTROSPECT = r"""
import json, sys, types
pkg = __import__(sys.argv[1])
names = set()
if hasattr(pkg, "__version__"):
    names.add("__version__")

def defined_here(obj):
    mod = getattr(obj, "__module__", "") or ""
    return mod == pkg.__name__ or mod.startswith(pkg.__name__ + ".")

def walk(prefix, obj, depth, stack):
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # a property that needs an instance; the name is still public
            value = None
        if isinstance(value, types.ModuleType):
            continue
        dotted = prefix + name
        names.add(dotted)
        if isinstance(value, type) and defined_here(value) and depth < 2 and value not in stack:
            walk(dotted + ".", value, depth + 1, stack + (value,))

walk("", pkg, 0, ())
print(json.dumps({"version": getattr(pkg, "__version__", None), "names": sorted(names)}))
"""


def log(msg: str) -> None:
    print(f"[extract_tensorrt_names] {msg}", file=sys.stderr)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def available_versions(package: str) -> list[str]:
    """Versions the configured package index serves for `package` (via ``pip index versions``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", package],
        text=True,
        capture_output=True,
    )
    m = re.search(r"Available versions:\s*(.+)", proc.stdout)
    if proc.returncode != 0 or not m:
        return []
    return [v.strip() for v in m.group(1).split(",") if v.strip()]


def _version_key(v: str) -> tuple:
    parts = []
    for p in re.split(r"[.]", v):
        m = re.match(r"(\d+)(.*)", p)
        parts.append((int(m.group(1)), m.group(2)) if m else (-1, p))
    return tuple(parts)


def pick_versions(majors: tuple[str, ...]) -> list[tuple[str, str]]:
    """Newest final release of each major version, as (package, version)."""
    chosen = []
    for major in majors:
        for package in PACKAGES:
            candidates = [
                v
                for v in available_versions(package)
                if v.split(".")[0] == major and not re.search(r"(a|b|rc|dev)\d*$", v)
            ]
            if candidates:
                chosen.append((package, max(candidates, key=_version_key)))
                break
        else:
            raise SystemExit(f"no {major}.x release of {' or '.join(PACKAGES)} on the package index")
    return chosen


def download_wheel(package: str, version: str, dest: Path) -> Path:
    log(f"downloading {package}=={version}")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(dest),
            f"{package}=={version}",
        ]
    )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in the download directory, found {len(wheels)}")
    return wheels[0]


def find_package(site: Path) -> tuple[str, Path]:
    """(import name, extension module path) of the unpacked bindings wheel."""
    top_levels = list(site.glob("*.dist-info/top_level.txt"))
    names = top_levels[0].read_text().split() if top_levels else ["tensorrt_bindings", "tensorrt"]
    for name in names:
        exts = sorted((site / name).glob("tensorrt*.so")) if (site / name).is_dir() else []
        if exts:
            return name, exts[0]
    raise SystemExit(f"no tensorrt*.so extension in the wheel (packages: {names})")


def needed_libraries(ext: Path) -> list[str]:
    out = run(["readelf", "-d", str(ext)]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def missing_symbols(ext: Path) -> list[str]:
    """Unversioned undefined symbols that nothing loaded in this process provides."""
    out = run(["nm", "-D", "--undefined-only", str(ext)]).stdout
    process = ctypes.CDLL(None)
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue  # weak ('w') and versioned (libc/libstdc++) symbols resolve elsewhere
        sym = parts[1]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sym):
            raise SystemExit(f"unexpected undefined symbol {sym!r}: cannot stub it")
        try:
            getattr(process, sym)
        except AttributeError:
            syms.append(sym)
    return sorted(syms)


def build_stubs(ext: Path, stub_dir: Path) -> list[str]:
    libs = [lib for lib in needed_libraries(ext) if lib.startswith("libnv")]
    syms = missing_symbols(ext)
    if not libs or not syms:
        raise SystemExit(f"nothing to stub (libraries {libs}, symbols {syms}): unexpected wheel layout")
    log(f"stubbing {len(syms)} symbols ({', '.join(syms)}) in {', '.join(libs)}")
    src = stub_dir / "stub.c"
    src.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in syms))
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise SystemExit("a C compiler (cc/gcc/clang or $CC) is needed to build the stub libraries")
    for lib in libs:
        run([cc, "-shared", "-fPIC", "-o", str(stub_dir / lib), str(src), f"-Wl,-soname,{lib}"])
    return syms


def introspect(site: Path, package: str, stub_dir: Path) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(stub_dir), env.get("LD_LIBRARY_PATH")]))
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _INTROSPECT, package], env=env, text=True, capture_output=True, cwd=str(site)
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"importing {package} against the stub libraries failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout)


def sanity_check(names: list[str], ext: Path, site: Path, package: str) -> None:
    blob = ext.read_bytes()
    py_text = "\n".join(p.read_text(errors="replace") for p in (site / package).rglob("*.py"))
    missing = [n for n in names if n.rsplit(".", 1)[-1].encode() not in blob and n.rsplit(".", 1)[-1] not in py_text]
    if missing:
        raise SystemExit(f"{len(missing)} extracted names do not occur in the binary or sources: {missing[:20]}")
    for must in ("Builder", "BuilderFlag", "OnnxParser", "Runtime", "ICudaEngine", "__version__"):
        if must not in names:
            raise SystemExit(f"implausible extraction: {must!r} missing")


def extract(package: str, version: str, out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="trt-names-") as tmp:
        tmp = Path(tmp)
        wheel = download_wheel(package, version, tmp / "dl")
        site = tmp / "site"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        import_name, ext = find_package(site)
        stub_dir = tmp / "stubs"
        stub_dir.mkdir()
        build_stubs(ext, stub_dir)
        result = introspect(site, import_name, stub_dir)
        names = result["names"]
        sanity_check(names, ext, site, import_name)
        module_version = result["version"] or version
        if module_version != version:
            log(f"note: wheel {version} reports __version__ {module_version}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"tensorrt-{module_version}.txt"
    tmp_out = out.with_suffix(".txt.tmp")
    tmp_out.write_text("".join(n + "\n" for n in sorted(names)))
    os.replace(tmp_out, out)
    log(f"wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out} ({len(names)} names)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", nargs="*", help="exact versions (default: newest 10.x and 11.x)")
    ap.add_argument(
        "--package",
        default=None,
        help=f"bindings package to download (default: first of {', '.join(PACKAGES)} serving the version)",
    )
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("this script needs Linux (it loads the ELF extension module against stubs)")
    if args.versions:
        jobs = [(args.package or PACKAGES[0], v) for v in args.versions]
    else:
        jobs = pick_versions(DEFAULT_MAJORS)
        if args.package:
            jobs = [(args.package, v) for _, v in jobs]
    for package, version in jobs:
        extract(package, version, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
