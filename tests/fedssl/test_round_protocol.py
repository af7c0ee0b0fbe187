"""The round protocol's keys are named once (fedssl.round_protocol), on both sides."""

from __future__ import annotations

import ast
from pathlib import Path

from fedssl import round_protocol
from fedssl.round_protocol import ROUND_KEYS, SECAGG_PAYLOAD

ROOT = Path(__file__).resolve().parents[2]
#: the keys that exist only in round messages (``run-dir``, ``run-id`` and ``payload`` are
#: also run-config keys or common words, so they are not scanned for)
MESSAGE_ONLY = ("server-round", "num-rounds", "input-shape", "secagg-num-clients")


def _literals(root: Path, words: tuple[str, ...]) -> list[str]:
    """``file:line`` of every string literal in ``words`` in the packages under ``root``
    (docstrings are not string literals of code and are skipped) but round_protocol.py."""
    found = []
    for folder in ("fedssl", "server", "client", "ssl_core", "privacy", "simulations"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name == "round_protocol.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                        | ast.AsyncFunctionDef)
                          and node.body and isinstance(node.body[0], ast.Expr)}
            found += [f"{path.relative_to(root)}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in words
                      and id(node) not in docstrings]
    return found


def test_no_module_spells_a_round_key_itself() -> None:
    assert set(MESSAGE_ONLY) <= set(ROUND_KEYS)
    assert _literals(ROOT, MESSAGE_ONLY) == []


def test_the_scan_finds_a_spelt_key(tmp_path: Path) -> None:
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "app.py").write_text(
        '"""Reads ``"server-round"``."""\n'
        'from fedssl.round_protocol import SERVER_ROUND\n'
        'a = config[SERVER_ROUND]\n'
        'b = config["num-rounds"]\n')
    assert _literals(tmp_path, MESSAGE_ONLY) == ["client/app.py:4"]


def test_the_keys_are_the_wire_names_sites_already_speak() -> None:
    """The names are the protocol: a changed value breaks every deployed site."""
    assert {name: getattr(round_protocol, name) for name in (
        "SERVER_ROUND", "NUM_ROUNDS", "INPUT_SHAPE", "RUN_DIR", "RUN_ID",
        "SECAGG_NUM_CLIENTS", "SECAGG_PAYLOAD")} == {
        "SERVER_ROUND": "server-round", "NUM_ROUNDS": "num-rounds",
        "INPUT_SHAPE": "input-shape", "RUN_DIR": "run-dir", "RUN_ID": "run-id",
        "SECAGG_NUM_CLIENTS": "secagg-num-clients", "SECAGG_PAYLOAD": SECAGG_PAYLOAD}
    assert SECAGG_PAYLOAD == "payload"
