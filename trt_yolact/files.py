"""Artifact files: atomic writes, content hashes, and staged folders that appear complete or not at all."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write to a temporary file beside ``path`` and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
            os.replace(item, out_dir / item.name)
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Fail now, with the reason, when ``path`` (a file, or a folder with ``folder``) could not be written
    later. Nothing is created: the nearest folder that exists is probed. For commands that write only after
    long work."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "not a folder", str(path))
    if not folder and path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, "not a folder", str(existing))
    fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
    os.close(fd)
    os.unlink(probe)
    return path
