"""Atomic writes: outputs appear complete or not at all, and inputs are never overwritten."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError, OutputPathError


def check_output(path: str | Path, overwrite: bool, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` (a file, or a ``folder``) can be written; return it.

    Refuses an existing output unless ``overwrite``, an existing file where a folder goes (and the reverse), a parent
    that is a file, and a location this process cannot write to (probed with a temporary file, so read-only mounts
    and permissions are caught also for root). Creates nothing.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"output '{path}' already exists; choose another path or pass --overwrite")
        if path.is_dir() != folder:
            want, got = ("a folder", "a file") if folder else ("a file", "a folder")
            raise OutputPathError(f"output '{path}' must be {want}, but {got} is there")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot write '{path}': '{ancestor}' is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".erasekit-write-check.", dir=ancestor)
    except OSError as exc:
        raise OutputPathError(f"cannot write '{path}': '{ancestor}' is not writable ({exc.strerror})") from None
    os.close(fd)
    os.remove(probe)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path beside ``path``; on success rename it over ``path`` (same filesystem, atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (or the writer) made it owner-only: give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _follow_umask(folder: Path) -> None:
    """mkdtemp makes an owner-only folder (and some writers owner-only files): give the tree the usual permissions."""
    mask = _umask()
    for item in [folder, *folder.rglob("*")]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success move it to ``path`` (replacing an old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _follow_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
