"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer of the run directory (``config.toml``, ``run_id``, checkpoints and their
``state.json``, ``metrics.jsonl`` rewrites, ``encoder.safetensors``, the server's ledger copies,
the data cache) goes through this module: write to a temporary file in the *same directory*
(``os.replace`` is atomic only within one file system), flush and ``fsync`` it, ``os.replace``
it onto the target, then ``fsync`` the directory so the rename itself survives a crash. On an
error the temporary file is removed and the target is left as it was. Private files (identity
and node keys) go through :func:`atomic_write_private`, which creates them with mode 0600.

A leaf module: it imports nothing of fedssl, so every package may use it (see
``docs/architecture.md``).

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.txt", "one")
>>> with atomic_path(d / "a.txt") as tmp:
...     _ = tmp.write_text("two")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('two', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_directory", "atomic_path", "atomic_write_bytes", "atomic_write_private",
           "atomic_write_text", "fsync_path"]


def fsync_path(path: str | Path) -> None:
    """``fsync`` a file or a directory (a directory where the platform cannot: ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """A fresh name beside ``path`` (not created: the writer creates it with the usual
    permissions, where ``mkstemp`` would make it private)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write (any writer that takes
    a file name: ``np.save``, safetensors, ...); on normal exit it is fsynced and renamed onto
    ``path``. An exception inside the block removes it and leaves ``path`` untouched.

    Args:
        path: the file to replace.
        fsync: fsync the file and its directory (off: faster, not durable).
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Replace ``path``'s content with ``data`` atomically.

    Args:
        path: the file to replace.
        data: its new content.
        fsync: fsync the file and its directory.
    """
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> None:
    """Replace ``path``'s content with ``text`` (UTF-8) atomically.

    Args:
        path: the file to replace.
        text: its new content.
        fsync: fsync the file and its directory.
    """
    atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_write_private(path: str | Path, data: bytes, exclusive: bool = False,
                         fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically as a private file (mode 0600: keys, secrets).

    The temporary file is created with mode 0600 before any byte is written, so the content is
    never readable by others, not even briefly, whatever the umask or the mode of a file it
    replaces. With ``exclusive`` the file must not exist yet: it is linked into place instead
    of renamed, so a file another process created meanwhile is never replaced
    (:class:`FileExistsError`, like ``O_EXCL``). On any error the temporary file is removed
    and ``path`` is left as it was.

    Args:
        path: the file to write.
        data: its content.
        exclusive: refuse to replace an existing file.
        fsync: fsync the file and its directory.

    Raises:
        FileExistsError: with ``exclusive``, if ``path`` exists.
    """
    path = Path(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # exactly 0600 (the umask may only have narrowed it)
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # FileExistsError if it is there: nothing replaced
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to fill; on normal exit its files are
    fsynced and it is renamed to ``path``. A directory cannot replace a non-empty one: if
    ``path`` appeared meanwhile (another process won the race) the new copy is dropped and
    the existing one kept. An exception inside the block removes the temporary directory.

    Args:
        path: the directory to create.
        fsync: fsync its files and the directories.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if fsync:
            for f in tmp.rglob("*"):
                if f.is_file():
                    fsync_path(f)
            fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if fsync:
        fsync_path(path.parent)
