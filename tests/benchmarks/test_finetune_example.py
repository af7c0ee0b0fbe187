"""The fine-tuning example (issue 15 item 4c) is ``docs/examples/finetune.py``, shown verbatim
in docs/using-the-encoder.md (the README's "Using the trained encoder" links there), and it
runs: on a tiny run directory made here (the exporter's encoder file, no simulation) and a
labelled .npz."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.warm_start import export_encoder

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "finetune.py"


def test_the_guide_shows_the_example_verbatim() -> None:
    guide = ROOT / "docs" / "using-the-encoder.md"
    assert f"```python\n{EXAMPLE.read_text()}```" in guide.read_text()
    assert "docs/using-the-encoder.md" in (ROOT / "README.md").read_text()


def test_the_example_fine_tunes_an_exported_encoder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = SSLModel((1, 8, 8), width=8)
    export_encoder(run / "encoder.safetensors", model,
                   {"method": "simsiam", "dataset": "npz", "input_shape": "1,8,8"})
    rng = np.random.default_rng(0)
    y = np.arange(50) % 2
    np.savez(tmp_path / "labelled.npz", train_labels=y,
             train_images=(rng.normal(size=(50, 8, 8)) + y[:, None, None]).astype(np.float32))
    out = tmp_path / "finetuned.pt"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(run), "--data",
                                      str(tmp_path / "labelled.npz"), "--steps", "20",
                                      "--labels-per-class", "5", "--compare",
                                      "--out", str(out)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "fine-tuned on 10 labelled records: test {'accuracy':" in printed
    assert "from scratch: test {'accuracy':" in printed
    state = torch.load(out)
    assert state["1.weight"].shape == (2, model.encoder.feature_dim)  # the new linear head
    trained = {k.removeprefix("0."): v for k, v in state.items() if k.startswith("0.")}
    assert set(trained) == set(model.encoder.state_dict())
    assert any(not torch.equal(trained[k], v) for k, v in model.encoder.state_dict().items())
