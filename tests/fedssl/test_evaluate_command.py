"""``fedssl evaluate`` (issue 15 item 4b): a run's encoder probed on a labelled set the user
gives, on a tiny run directory made here (the exporter's file, no simulation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedssl.evaluate_command import add_evaluate_parser, format_evaluation, run_evaluate
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.warm_start import export_encoder


def _run_dir(root: Path, shape: tuple[int, ...] = (1, 8, 8)) -> Path:
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    export_encoder(run / "encoder.safetensors", SSLModel(shape, width=8),
                   {"method": "simsiam", "dataset": "npz",
                    "input_shape": ",".join(map(str, shape)), "rounds": "2"})
    return run


def _npz(path: Path, channels: int = 0, labels: bool = True, n: int = 60) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    shape = (n, 8, 8, channels) if channels else (n, 8, 8)
    x = rng.normal(size=shape) + y.reshape(-1, *[1] * (len(shape) - 1))  # separable classes
    arrays = {"train_images": x.astype(np.float32)}
    if labels:
        arrays["train_labels"] = y
    np.savez(path, **arrays)
    return path


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedssl")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    return run_evaluate(parser.parse_args(["evaluate", *argv]))


def test_evaluate_prints_the_table_and_writes_evaluation_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    data = _npz(tmp_path / "labelled.npz")
    assert _main([str(run), "--data", str(data), "--few-label", "1,5"]) == 0
    out = capsys.readouterr().out
    assert "trained encoder" in out and "random init" in out and "5-shot linear" in out
    result = json.loads((run / "evaluation.json").read_text())
    assert result["encoder_class"] == "ResNetEncoder2d"
    assert result["trained"]["method"] == "simsiam"
    assert result["data"]["dataset"] == "labelled" and result["data"]["test_records"] == 12
    for row in (result["encoder"], result["random_init"]):
        assert {"linear_probe_accuracy", "knn_accuracy", "linear_probe_1shot",
                "knn_5shot"} <= set(row)
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert format_evaluation(result).splitlines()[0].startswith("encoder: ")


def test_an_encoder_file_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    data = _npz(tmp_path / "labelled.npz")
    out = tmp_path / "sub" / "e.json"
    assert _main([str(run / "encoder.safetensors"), "--data", str(data), "--few-label", "",
                  "--no-baseline", "--out", str(out), "--max-train", "30"]) == 0
    result = json.loads(out.read_text())
    assert "random_init" not in result and result["few_label"] == []
    assert result["data"]["train_records"] == 30
    assert any("30 of 48" in n for n in result["notes"])


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: _npz(d / "rgb.npz", channels=3), "trained on records of shape (1, 8, 8)"),
    (lambda d: _npz(d / "nolabels.npz", labels=False), "has no labels"),
    (lambda d: d / "missing.npz", "not found"),
])
def test_bad_data_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   make, message: str) -> None:
    run = _run_dir(tmp_path)
    assert _main([str(run), "--data", str(make(tmp_path))]) == 2
    assert message in capsys.readouterr().err
    assert not (run / "evaluation.json").exists()


def test_not_a_run_and_no_data_are_usage_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main([str(tmp_path), "--data", "x.npz"]) == 2
    assert "not a finished fedssl run directory" in capsys.readouterr().err
    run = _run_dir(tmp_path)
    assert _main([str(run)]) == 2
    assert "--data PATH" in capsys.readouterr().err
    assert _main([str(run), "--data", "x.npz", "--few-label", "a"]) == 2
    assert "--few-label" in capsys.readouterr().err


def test_fedssl_evaluate_is_a_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    from fedssl.cli import main

    run = _run_dir(tmp_path)
    assert main(["evaluate", str(run), "--data", str(_npz(tmp_path / "l.npz")),
                 "--few-label", "", "--no-baseline"]) == 0
    assert "trained encoder" in capsys.readouterr().out
    assert (run / "evaluation.json").is_file()


def test_finetune_adds_the_label_efficiency_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--finetune``: fine-tuned, from scratch, frozen probe and raw-input logistic
    regression per k, over the seeds, printed and in evaluation.json (issue 21 item 1)."""
    run = _run_dir(tmp_path)
    data = _npz(tmp_path / "labelled.npz")
    assert _main([str(run), "--data", str(data), "--few-label", "", "--finetune", "1,2",
                  "--finetune-seeds", "2", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "| labels per class | 1 | 2 |" in out and "| same network from scratch |" in out
    assert "gain of trained encoder fine-tuned over from scratch" in out
    table = json.loads((run / "evaluation.json").read_text())["label_efficiency"]
    assert table["shots"] == [1, 2] and table["seeds"] == [0, 1]
    assert [r["kind"] for r in table["rows"]] == ["raw-input", "from-scratch", "frozen",
                                                 "fine-tuned"]
    for row in table["rows"]:
        assert set(row["values"]) == {"1", "2"}
        assert all(len(v["per_seed"]) == 2 and 0 <= v["mean"] <= 1
                   for v in row["values"].values())


def test_finetune_values_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    run = _run_dir(tmp_path)
    data = _npz(tmp_path / "labelled.npz")
    assert _main([str(run), "--data", str(data), "--finetune", "0"]) == 2
    assert "--finetune values must be >= 1" in capsys.readouterr().err
    assert _main([str(run), "--data", str(data), "--finetune", "5",
                  "--finetune-seeds", "0"]) == 2
    assert "--finetune-seeds must be >= 1" in capsys.readouterr().err
    assert not (run / "evaluation.json").exists()
