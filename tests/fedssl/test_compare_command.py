"""``fedssl compare`` (issue 15 item 5b): a table of several runs and a PNG of accuracy and
epsilon per round, on small synthetic run directories (report.json, metrics.jsonl, signed
ledgers, config.toml as the server writes them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedssl.compare_command import add_compare_parser, run_compare, summarize
from fedssl.privacy.identity.keys import public_pem
from fedssl.privacy.identity.ledger import Ledger, LedgerEntry


def _run(root: Path, name: str, method: str, dp: bool, report: bool = True) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.toml").write_text(
        f'[experiment]\nmethod = "{method}"\ndataset = "mnist1d"\nnum_clients = 2\n'
        "rounds = 3\n")
    rows = [{"round": 0, "clients": 0, "seconds": 0.0, "linear_probe_accuracy": 0.5,
             "knn_accuracy": 0.4}]
    rows += [{"round": r, "loss": 1.0 / r, "clients": 2, "seconds": 1.0,
              "linear_probe_accuracy": 0.5 + r / 10, "knn_accuracy": 0.4 + r / 10,
              **({"epsilon_max": 2.0 * r} if dp else {})} for r in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                       + '{"round": 4, "lo')  # a torn last line
    privacy = None
    if dp:
        (run / "ledger").mkdir()
        for i, scale in enumerate((1.0, 1.5)):
            key = Ed25519PrivateKey.generate()
            cid = f"client-00{i}"
            (run / "ledger" / f"{cid}.pub").write_bytes(public_pem(key))
            ledger = Ledger(run / "ledger" / f"{cid}.jsonl", key)
            for r in (1, 3) if i else (1, 2, 3):  # client-001 skipped round 2
                ledger.append(LedgerEntry(
                    round=r, client=cid, noise_multiplier=1.0, sample_rate=0.1, steps=10,
                    max_grad_norm=1.0, delta=1e-5, accountant="prv", epsilon=scale * r))
        privacy = {"delta": 1e-5, "clients": {"client-000": {"epsilon": 3.0},
                                              "client-001": {"epsilon": 4.5}}}
    if report:
        (run / "report.json").write_text(json.dumps({
            "method": method, "dataset": "mnist1d", "clients": 2, "rounds": 3,
            "linear_probe_accuracy": 0.81, "knn_accuracy": 0.72,
            "few_label": {"linear_probe_5shot": 0.55, "knn_5shot": 0.5},
            "wall_seconds": 12.34, "privacy": privacy}))
    return run


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedssl")
    add_compare_parser(parser.add_subparsers(dest="command"))
    return run_compare(parser.parse_args(["compare", *argv]))


def test_the_table_and_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dp = _run(tmp_path, "dp-run", "simsiam", dp=True)
    plain = _run(tmp_path, "plain-run", "byol", dp=False)
    going = _run(tmp_path, "going", "mae", dp=False, report=False)
    png = tmp_path / "out" / "cmp.png"
    assert _main([str(dp), str(plain), str(going), "--out", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "method", "dataset", "clients", "rounds", "linear",
                                "kNN", "5-shot", "max", "eps", "wall", "s"]
    assert lines[2].split() == ["dp-run", "simsiam", "mnist1d", "2", "3", "0.810", "0.720",
                                "0.550", "4.50", "12.3"]
    assert lines[3].split() == ["plain-run", "byol", "mnist1d", "2", "3", "0.810", "0.720",
                                "0.550", "-", "12.3"]
    # unfinished: from config.toml and the last evaluated metrics row
    assert lines[4].split() == ["going", "(unfinished)", "mae", "mnist1d", "2", "3", "0.800",
                                "0.700", "-", "-", "-"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_come_from_metrics_and_the_verified_ledgers(tmp_path: Path) -> None:
    run = summarize(_run(tmp_path, "dp", "simsiam", dp=True))
    assert run.accuracy == [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]
    # the largest cumulative epsilon of any client after each round
    assert run.epsilon == [(1, 1.5), (2, 2.0), (3, 4.5)]
    for path in (tmp_path / "dp" / "ledger").glob("*.pub"):  # unverifiable ledgers...
        path.unlink()
    assert summarize(tmp_path / "dp").epsilon == [(1, 2.0), (2, 4.0), (3, 6.0)]  # ...replies


def test_a_directory_that_is_not_a_run_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _run(tmp_path, "good", "simsiam", dp=False)
    (tmp_path / "empty").mkdir()
    assert _main([str(good), str(tmp_path / "empty")]) == 2
    assert "is not a fedssl run directory" in capsys.readouterr().err
    assert _main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (good / "report.json").write_text("{not json")
    assert _main([str(good)]) == 2
    assert "report.json: not readable JSON" in capsys.readouterr().err


def test_fedssl_compare_is_a_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    from fedssl.cli import main

    run = _run(tmp_path, "r", "simsiam", dp=False)
    assert main(["compare", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert "simsiam" in capsys.readouterr().out and (tmp_path / "c.png").is_file()
