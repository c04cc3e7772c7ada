"""Atomic file writes shared by every module that writes results (checkpoints, resume states, reports).

A write goes to a temporary file in the destination folder, is flushed and fsynced, then ``os.replace``-d over
the target, so an interrupted write never leaves a half-written file or destroys the previous one. This module
sits at the bottom of the import layers (it imports only :mod:`torchrobust.errors`), so any module can use it;
:mod:`torchrobust.checkpoint` re-exports both functions.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import TorchRobustError

__all__ = ["atomic_write_bytes", "check_file_path", "write_texts"]


def _umask() -> int:
    """The process umask, read without changing it where the OS tells (Linux >= 4.7: ``Umask:`` in
    ``/proc/self/status``). Elsewhere it falls back to ``os.umask`` set-and-restore, during which a file created
    by another thread of this process would get the temporary mask 0o022 for a moment."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def check_file_path(path: str | os.PathLike[str]) -> Path:
    """``path`` can be written as a file: it is not a directory and no existing ancestor is a file.

    Raises a one-line :class:`TorchRobustError` otherwise; returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.is_dir():
        raise TorchRobustError(f"cannot write {path}: it is a directory; give a file path inside it, e.g. "
                               f"{path / 'model.safetensors'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TorchRobustError(f"cannot write {path}: {parent} is a file, not a folder; choose another "
                                       "output path")
            break
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``).

    Permissions are those an ordinary ``open(path, "w")`` gives: an existing target keeps its mode, a new file
    gets ``0o666 & ~umask`` (``mkstemp``'s private 0o600 is changed before the rename). The folder is fsynced
    after the rename where the OS allows, so the new name survives a crash too. A path that is a directory or
    lies under a file, or a folder that cannot be written, raises :class:`TorchRobustError`.
    """
    path = check_file_path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o666 & ~_umask()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TorchRobustError(f"cannot write {path}: {exc.strerror or exc}; choose a writable output path") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:  # some file systems cannot fsync a directory; the data itself is already on disk
        pass
    finally:
        os.close(dfd)


def write_texts(out_dir: str | os.PathLike[str], stem: str, texts: dict[str, str]) -> dict[str, Path]:
    """Write ``texts[ext]`` to ``out_dir/<stem>.<ext>`` for every extension, each atomically (a report that is
    rewritten never exists half-written). Returns ``{ext: path}``."""
    out = Path(out_dir)
    paths = {ext: out / f"{stem}.{ext}" for ext in texts}
    for ext, text in texts.items():
        atomic_write_bytes(paths[ext], text.encode())
    return paths
