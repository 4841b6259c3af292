"""Artifact files: atomic writes, content hashes, and staged folders that appear complete or not at all."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def shown(path: str | os.PathLike) -> str:
    """A path as it can be printed: bytes that are not UTF-8 (kept by the OS in a file name) as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write to a temporary file beside ``path`` and rename, so a reader never sees half a file. A failure
    names ``path`` (not the temporary file) and leaves nothing behind."""
    path = check_file_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise naming(exc, path) from None
    try:
        # mkstemp creates 0600; give the artifact the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise naming(exc, path) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def staged_folder(out_dir: str | os.PathLike, error: type[Exception]) -> Iterator[Path]:
    """A private folder inside ``out_dir`` to write a set of artifacts into; on success each file in it is
    moved into ``out_dir`` (the set appears complete), on failure nothing new is left behind (not even
    ``out_dir`` when this created it). ``error``: the exception type for an unwritable ``out_dir``."""
    out_dir = Path(out_dir)
    existed = out_dir.is_dir()
    try:
        check_folder_target(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    except OSError as exc:
        raise error(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None
    try:
        yield staging
        made = sorted(staging.iterdir())
        blocked = [out_dir / item.name for item in made if (out_dir / item.name).is_dir()]
        if blocked:  # checked before any file moves, so that none does
            raise error(f"cannot write {blocked[0]}: a folder of that name is in the way")
        for item in made:
            try:
                os.replace(item, out_dir / item.name)
            except OSError as exc:
                raise naming(exc, out_dir / item.name) from None
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def replaced_entries(out_dir: str | os.PathLike, names: tuple[str, ...]) -> Iterator[Path]:
    """A private folder inside ``out_dir`` to write the entries ``names`` into (files or folders, paths
    relative to ``out_dir``). On success each replaces the entry of that name entirely (an old folder is
    removed, never merged into), in the order given; on failure or Ctrl-C ``out_dir`` is left as it was (and
    removed when this created it)."""
    out_dir = check_folder_target(out_dir)
    for name in names:
        _check_parents((out_dir / name).parent, out_dir / name)
    existed = out_dir.is_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    except OSError as exc:
        raise naming(exc, out_dir) from None
    try:
        yield staging
        with _signals_deferred():  # the swap is a few renames: not to be cut between two of them
            _swap_in(staging, out_dir, names)
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out_dir: Path, names: tuple[str, ...]) -> None:
    for name in names:  # all checked before the first rename, so that none happens
        target = out_dir / name
        if target.exists() and target.is_dir() != (staging / name).is_dir():
            kind = "a folder" if target.is_dir() else "a file"
            raise FileExistsError(errno.EEXIST, f"{kind} of that name is in the way", str(target))
    aside = Path(tempfile.mkdtemp(prefix=".old-", dir=staging))
    for index, name in enumerate(names):
        target = out_dir / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                os.replace(target, aside / str(index))  # removed with the staging folder
            os.replace(staging / name, target)
        except OSError as exc:
            raise naming(exc, target) from None


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while inside (delivered on leaving), where the platform can."""
    block = getattr(signal, "pthread_sigmask", None)
    held = {signal.SIGINT, signal.SIGTERM}
    previous = block(signal.SIG_BLOCK, held) if block else None
    try:
        yield
    finally:
        if block:
            block(signal.SIG_SETMASK, previous)


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Fail now, with the reason, when ``path`` (a file, or a folder with ``folder``) could not be written
    later. Nothing is created: the nearest folder that exists is probed. For commands that write only after
    long work."""
    path = check_folder_target(path) if folder else check_file_target(path)
    existing = _nearest_existing(path if folder else path.parent)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
    except OSError as exc:
        raise naming(exc, path) from None
    os.close(fd)
    os.unlink(probe)
    return path


# ---- what stands in the way of a path, said with the path the user gave (never a temporary file's)
def check_file_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or the reason no file can be written there: an empty name, a folder of that name,
    or a file where one of its parent folders should be."""
    if not os.fspath(path):
        raise FileNotFoundError(errno.ENOENT, "no file name given (an empty path)")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    _check_parents(path.parent, path)
    return path


def check_folder_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or the reason it cannot be (or become) a folder: an empty name, a file of that
    name, or a file where one of its parent folders should be."""
    if not os.fspath(path):
        raise FileNotFoundError(errno.ENOENT, "no folder name given (an empty path)")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(path))
    _check_parents(path, path)
    return path


def naming(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` (a failed write) as the same error about ``path``, the file the user asked for."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_parents(folder: Path, target: Path) -> None:
    existing = _nearest_existing(folder)
    if existing.exists() and not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {target}: {existing} is a file, not a folder")
