"""An exclusive lock on a run directory or a site's state directory: :class:`RunLock`.

Two processes on one run directory overwrite each other's ``encoder.safetensors`` and
``report.json``, append duplicate ``metrics.jsonl`` rows and extra, differently noised ledger
entries (issue 22, item 3: two ``fedssl simulate --resume`` of one run); two ``fedssl
client`` agents on one ``--state-dir`` share one identity key and one ledger. So ``fedssl
simulate`` and ``fedssl server`` hold the lock of their run directory, and ``fedssl client``
the lock of its state directory, for as long as they run; a second one is refused before it
reads or writes anything, with :class:`RunInUseError` naming the holder.

How: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file (``RunLayout.lock`` /
``SiteLayout.lock``, ``fedssl.lock``). The kernel releases the lock when its holder exits,
however it exits (``kill -9`` included), so a lock can never outlive its process: there is
nothing to clean up by hand. The holder writes a JSON record into the file, ``{pid, host,
command, started}``, which the refusal quotes. A record whose process is gone (its holder
was killed before it could remove the file) is *stale*: the next holder takes the lock and
says so (:attr:`RunLock.stale`, and a note on stderr). A lock held although its recorded
process is gone (a child the holder forked without ``exec`` still has the file open) is
reported as such.

The record is written into the locked file in place, not through :mod:`fedssl.atomic`: the
lock belongs to the file's inode, which an atomic replace would swap for a new, unlocked one.
It is short (one ``write``) and read only by a process that failed to take the lock; a record
not yet written reads as an unknown holder. On release the file is removed while still locked
(a process that opened it meanwhile notices that the path no longer names the file it locked
and tries again), and so is the directory if the lock created it and it is still empty.

On a file system without ``flock`` the record alone guards the directory: a record naming a
live process on this host refuses, anything else is taken over (with a warning).

A leaf module: it imports nothing of fedssl, so every package may use it.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> with RunLock(d / "x.lock", "run directory") as lock:
...     lock.record["pid"] == os.getpid(), (d / "x.lock").exists()
(True, True)
>>> (d / "x.lock").exists()
False
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

__all__ = ["RunInUseError", "RunLock", "default_command", "describe_holder", "pid_alive"]


class DirectoryError(ValueError):
    """Raised for a run or state directory that cannot be one: a path through a file, a
    directory that cannot be created or written."""


class RunInUseError(RuntimeError):
    """The directory is locked by another process (the message names it)."""

    def __init__(self, message: str, holder: dict[str, Any] | None) -> None:
        super().__init__(message)
        #: the holder's record (None if it could not be read)
        self.holder = holder


def default_command() -> str:
    """This process's command line as a user typed it (``fedssl simulate --out X ...``)."""
    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name or argv[0]
    return shlex.join(argv)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(record: dict[str, Any] | None) -> str:
    """``pid 1234 on host h (fedssl simulate --out X, started 2026-...Z)``."""
    if not record:
        return "another process (its record is not written yet)"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
            f"({record.get('command', '?')}, started {record.get('started', '?')})")


def _read_record(fh: TextIO) -> dict[str, Any] | None:
    fh.seek(0)
    try:
        record = json.loads(fh.read() or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _is_gone(record: dict[str, Any]) -> bool:
    """Whether the recorded process is known to be gone (this host, no such pid)."""
    return (record.get("host") == socket.gethostname()
            and not pid_alive(int(record.get("pid", 0) or 0)))


class RunLock:
    """Hold ``path`` (a lock file in the directory it guards) exclusively while the block runs.

    ``what`` names the directory in messages ("run directory", "state directory"). The
    directory is created if missing (and removed again on release if it is then empty).
    Raises :class:`RunInUseError` if another process holds it. ``command`` is recorded for
    the refusal another process gets (default: this process's command line).
    """

    #: attempts when the lock file is replaced under us (a holder releasing it meanwhile)
    ATTEMPTS = 20

    def __init__(self, path: str | os.PathLike[str], what: str = "run directory",
                 command: str | None = None) -> None:
        self.path = Path(path)
        self.what = what
        self.command = command if command is not None else default_command()
        self.record: dict[str, Any] = {}
        #: the record of a previous holder that is gone without releasing (else None)
        self.stale: dict[str, Any] | None = None
        #: the lock works by the record only (no ``flock`` on this file system)
        self.advisory = False
        self._fh: TextIO | None = None
        self._created: list[Path] = []

    @property
    def directory(self) -> Path:
        return self.path.parent

    def _make_directory(self) -> None:
        """Create the directory (and missing parents), or say why it cannot be one."""
        missing = []
        d = self.directory
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        if d.exists() and not d.is_dir():  # the directory itself, or a parent, is a file
            raise DirectoryError(f"{self.what} {self.directory}: {d} is a file, not a "
                                 "directory; choose another path")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DirectoryError(f"{self.what} {self.directory} cannot be created "
                                 f"({exc.strerror or exc}); choose a writable path") from None
        self._created = missing  # innermost first

    def _open(self) -> TextIO:
        try:
            return open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            self._release_directory()
            raise DirectoryError(f"{self.what} {self.directory} is not writable "
                                 f"({exc.strerror or exc}); choose a writable path") from None

    def _refuse(self, record: dict[str, Any] | None) -> RunInUseError:
        holder = describe_holder(record)
        extra = ""
        if record and _is_gone(record):
            extra = (f"; pid {record.get('pid')} is gone but the lock is still held, by a "
                     "process it started (stop that one)")
        return RunInUseError(
            f"{self.what} {self.directory} is in use by {holder}{extra}; wait for it to end "
            f"or stop it (nothing was changed; the lock: {self.path})", record)

    def acquire(self) -> RunLock:
        """Take the lock (see the class); returns self."""
        self._make_directory()
        for _ in range(self.ATTEMPTS):
            fh = self._open()
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = _read_record(fh)
                fh.close()
                self._release_directory()
                raise self._refuse(record) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    fh.close()
                    self._release_directory()
                    raise
                self.advisory = True  # no flock here: the record alone guards
            try:
                same = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (and removed) by its holder meanwhile: try again
                fh.close()
                continue
            old = _read_record(fh)
            if self.advisory and old and not _is_gone(old) and old.get("pid") != os.getpid():
                fh.close()
                self._release_directory()
                raise self._refuse(old)
            self.stale = old if old else None
            self._fh = fh
            self._write_record()
            if self.stale:
                print(f"note: {self.what} {self.directory} was locked by "
                      f"{describe_holder(self.stale)}, which is gone; taken over",
                      file=sys.stderr)
            if self.advisory:
                print(f"warning: {self.path}: the file system does not support locks; the "
                      f"{self.what} is guarded by its pid record only", file=sys.stderr)
            return self
        self._release_directory()
        raise RunInUseError(f"{self.what} {self.directory}: its lock {self.path} keeps being "
                            "replaced; another process is taking it", None)

    def _write_record(self) -> None:
        assert self._fh is not None
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "command": self.command,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(self.record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _release_directory(self) -> None:
        for d in self._created:  # innermost first; stops at the first one not empty
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []

    def release(self) -> None:
        """Remove the lock file (still locked), then unlock; idempotent."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            fh.close()  # closing the last descriptor drops the flock
        self._release_directory()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
