"""fedssl.atomic: one helper for every atomic write of the run directory (issue 14)."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from fedssl.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_private,
    atomic_write_text,
)

ROOT = Path(__file__).resolve().parents[2]


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_directory_is_renamed_whole_and_a_lost_race_keeps_the_winner(tmp_path: Path) -> None:
    final = tmp_path / "cache"
    with atomic_directory(final) as tmp:
        (tmp / "a.npy").write_bytes(b"1")
    assert (final / "a.npy").read_bytes() == b"1"
    with atomic_directory(final) as tmp:  # another process's copy is already there
        (tmp / "a.npy").write_bytes(b"2")
    assert (final / "a.npy").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def _os_calls_outside_atomic(*names: str) -> list[str]:
    """``file:line`` of every ``os.<name>(...)`` call in the packages but fedssl/atomic.py."""
    found = []
    for folder in ("fedssl", "server", "client", "ssl_core", "privacy", "simulations"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "fedssl" / "atomic.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
                        and node.func.attr in names):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _writes_outside_atomic_blocks() -> list[str]:
    """``file:line`` of every ``.write_text(...)`` / ``.write_bytes(...)`` call in the
    packages that is not inside a ``with atomic_path(...)`` / ``atomic_directory(...)`` block
    (whose temporary path is written, then put in place whole)."""
    found = []
    for folder in ("fedssl", "server", "client", "ssl_core", "privacy", "simulations"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            inside: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.With) and any(
                        isinstance(item.context_expr, ast.Call)
                        and getattr(item.context_expr.func, "id", "") in ("atomic_path",
                                                                          "atomic_directory")
                        for item in node.items):
                    inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("write_text", "write_bytes")
                        and id(node) not in inside):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_file_of_a_run_or_site_is_written_whole() -> None:
    """No module writes a file in place (``Path.write_text``/``write_bytes``, which a crash
    leaves half-written: before, ``node-config.toml``, ``report.json`` and the ledgers'
    ``.pub`` files); each goes through :mod:`fedssl.atomic`."""
    assert _writes_outside_atomic_blocks() == []


def test_the_in_place_write_scan_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan above finds an in-place write and accepts one inside an atomic block."""
    package = tmp_path / "server"
    package.mkdir()
    (package / "bad.py").write_text(
        "def f(p, q):\n"
        "    with atomic_path(p) as tmp:\n"
        "        tmp.write_text('ok')\n"
        "    q.write_bytes(b'torn')\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _writes_outside_atomic_blocks() == ["server/bad.py:4"]


def test_no_module_renames_files_itself() -> None:
    """Every os.replace / os.rename of the packages is in fedssl/atomic.py."""
    assert _os_calls_outside_atomic("replace", "rename") == []


def test_a_private_file_is_0600_from_its_first_byte(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode 0600 for the temporary file while it is written (seen at its fsync) and for the
    result, even with a umask that would leave new files world-readable."""
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)  # a readable file it replaces does not lend it its mode
    seen: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    old_umask = os.umask(0)
    try:
        atomic_write_private(target, b"secret")
    finally:
        os.umask(old_umask)
    assert seen and set(seen) == {0o600}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b"secret"
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_a_failure_while_writing_keeps_the_previous_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fails after the new content is written, before it is in place: the previous
    file is intact and no temporary file is left (text, bytes and private writes)."""
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    for name, write in (("config.toml", lambda p: atomic_write_text(p, "new")),
                        ("run_id", lambda p: atomic_write_bytes(p, b"new")),
                        ("key.pem", lambda p: atomic_write_private(p, b"new"))):
        target = tmp_path / name
        target.write_text("old")
        with pytest.raises(OSError, match="No space left"):
            write(target)
        assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "key.pem", "run_id"]


def test_an_exclusive_private_file_never_replaces_one(tmp_path: Path) -> None:
    target = tmp_path / "identity.pem"
    atomic_write_private(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_private(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["identity.pem"]


def test_private_files_are_written_by_the_one_helper() -> None:
    """No module creates a 0600 file itself (``os.open(..., 0o600)``): they call
    :func:`fedssl.atomic.atomic_write_private`."""
    assert _os_calls_outside_atomic("open") == []
