"""fedssl.atomic: one helper for every atomic write of the run directory (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedssl.atomic import atomic_directory, atomic_path, atomic_write_bytes, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


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


def test_no_module_renames_files_itself() -> None:
    """Every os.replace / os.rename of the packages is in fedssl/atomic.py."""
    found = []
    for folder in ("fedssl", "server", "client", "ssl_core", "privacy", "simulations"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "fedssl" / "atomic.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
                        and node.func.attr in ("replace", "rename")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
