"""The run directory's paths are named once, in :mod:`fedssl.run_layout` (issue 14): every
module asks :class:`~fedssl.run_layout.RunLayout` (or :class:`~fedssl.run_layout.SiteLayout`)
for them; this test greps the source for a path built from one of the names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedssl.run_layout import RunLayout, SiteLayout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedssl", "ssl_core", "privacy", "client", "server", "simulations")
NAMES = ("config.toml", "run_id", "metrics.jsonl", "report.json", "identities.json",
         "identity.pem", "ledger", "checkpoints", "state.json", "encoder.safetensors", "plots",
         "cache", "clients", "site.toml", "ledger.jsonl", "tensorboard", "evaluation.json",
         "flower", "node-config.toml", "fedssl.lock")
_NAME = "|".join(re.escape(n) for n in NAMES)
#: calls that build a path from their string arguments
_PATH_CALL = r"(?:\b(?:Pure)?Path|\.joinpath|\bos\.path\.join|\.with_name)"
#: a call's arguments before the name (one level of nested parentheses: ``Path(str(d), ...)``)
_ARGS_BEFORE = r"(?:[^()]|\([^()]*\))*?"
#: a path joined from a literal name (``run_dir / "ledger"``), a module constant that spells a
#: file name (``CONFIG_FILE = "config.toml"``) or a name given to a call that builds a path
#: (``Path(d, "metrics.jsonl")``, ``.joinpath("cache")``, ``os.path.join(d, "plots")``,
#: ``.with_name("report.json")``); only these positions, so a word in prose (a help text
#: mentioning Flower's "flower" home) is not flagged
STRAY = re.compile(rf"""/\s*["']({_NAME})["']|^\s*[A-Z_]+\s*=\s*["']({_NAME})["']"""
                   rf"""|{_PATH_CALL}\({_ARGS_BEFORE}(?<=[(,\s])["']({_NAME})["']""", re.M)
#: modules edited concurrently by other work when the layout was introduced; each still
#: spells names itself and is to move onto RunLayout (issue 14 item 1, what is left)
NOT_YET: set[str] = set()


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if p != ROOT / "fedssl" / "run_layout.py")


def test_no_module_spells_a_run_directory_name() -> None:
    stray = []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        if rel in NOT_YET:
            continue
        for m in STRAY.finditer(path.read_text()):
            line = path.read_text().count("\n", 0, m.start()) + 1
            stray.append(f"{rel}:{line}: {m.group(0).strip()}")
    assert stray == [], "use fedssl.run_layout.RunLayout / SiteLayout:\n" + "\n".join(stray)


def test_the_grep_finds_a_stray_name() -> None:
    assert STRAY.search('path = run_dir / "metrics.jsonl"')
    assert STRAY.search("CONFIG_FILE = 'config.toml'")
    assert not STRAY.search('row = {"clients": 3}')


@pytest.mark.parametrize("snippet", [
    'path = run_dir / "metrics.jsonl"',
    "FLOWER_DIR = 'flower'",
    'home = state / "flower"',
    'p = Path(run_dir, "metrics.jsonl")',
    'p = pathlib.Path(str(run_dir), "cache")',
    'p = Path(\n    run_dir,\n    "node-config.toml",\n)',
    'p = PurePath("checkpoints")',
    'p = run_dir.joinpath("plots")',
    'p = state.joinpath("flower", "node-config.toml")',
    'p = os.path.join(run_dir, "report.json")',
    'p = os.path.join(os.getcwd(), "flower")',
    'p = config.with_name("state.json")',
])
def test_the_guard_flags_each_forbidden_form(snippet: str) -> None:
    """The guard provably fails: each way of spelling a run-directory name is flagged."""
    assert STRAY.search(snippet), snippet


@pytest.mark.parametrize("snippet", [
    'help = "start a flower supernode"',
    'say(f"the flower home is {RunLayout(run).flower}")',
    'print("flower")',
    'p = Path(run_dir, f"{name}.identity.pem")',
    'p = key.with_name(f"{name}.pub")',
    'row = {"clients": 3}',
])
def test_the_guard_ignores_words_outside_paths(snippet: str) -> None:
    assert not STRAY.search(snippet), snippet


def test_layout_paths() -> None:
    run = RunLayout("RUN")
    assert (run.config, run.run_id, run.metrics, run.report, run.identities) == tuple(
        Path("RUN") / n for n in ("config.toml", "run_id", "metrics.jsonl", "report.json",
                                  "identities.json"))
    assert run.ledger("client-001") == Path("RUN/ledger/client-001.jsonl")
    assert run.checkpoint(12) == Path("RUN/checkpoints/round-0012.safetensors")
    assert run.checkpoint_state == Path("RUN/checkpoints/state.json")
    assert (run.encoder, run.plots, run.cache) == (
        Path("RUN/encoder.safetensors"), Path("RUN/plots"), Path("RUN/cache"))
    assert (run.tensorboard, run.evaluation) == (Path("RUN/tensorboard"),
                                                 Path("RUN/evaluation.json"))
    site = run.client_site("client-002")
    assert site == SiteLayout("RUN/clients/client-002")
    assert (site.identity, site.ledger, site.site_file) == (
        Path("RUN/clients/client-002/identity.pem"), Path("RUN/clients/client-002/ledger.jsonl"),
        Path("RUN/clients/client-002/site.toml"))
    assert run.flower == Path("RUN/flower")
    assert (site.flower, site.node_config) == (
        Path("RUN/clients/client-002/flower"),
        Path("RUN/clients/client-002/flower/node-config.toml"))


def test_ledgers_of_a_missing_folder(tmp_path: Path) -> None:
    assert RunLayout(tmp_path).ledgers() == []
    (tmp_path / "ledger").mkdir()
    for name in ("b.jsonl", "a.jsonl", "a.pub"):
        (tmp_path / "ledger" / name).write_text("")
    assert [p.name for p in RunLayout(tmp_path).ledgers()] == ["a.jsonl", "b.jsonl"]
