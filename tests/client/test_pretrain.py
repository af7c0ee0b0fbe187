"""Warm starts that need no private data (issue 21 item 4): ``fedssl pretrain`` on synthetic
records (any shape), on a user's public records, or on MNIST-1D's public split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedssl.cli import main
from fedssl.client.pretrain import SOURCES, pretrain
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.warm_start import WarmStartError, load_init_encoder

TINY = dict(num_samples=64, epochs=1, batch_size=32)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


@pytest.mark.parametrize("shape", [(1, 40), (2, 32), (1, 8, 8), (3, 8, 8)])
def test_synthetic_warm_start_fits_the_runs_model_for_any_shape(tmp_path: Path,
                                                                shape: tuple) -> None:
    out = pretrain("synthetic", shape, tmp_path / "w.safetensors", method="simclr", **TINY)
    model = get_objective("infonce-public").build_model(shape)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    meta = load_init_encoder(model, out)  # the simulate/server --init-encoder path
    assert meta["warm_start_source"] == "synthetic" and "no data" in meta["dataset"]
    assert meta["input_shape"] == ",".join(map(str, shape)) and meta["records"] == "64"
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items())


def test_synthetic_records_are_fixed_by_the_seed_alone() -> None:
    first, _ = SOURCES["synthetic"].records((1, 8, 8), 16, 7, "")
    again, _ = SOURCES["synthetic"].records((1, 8, 8), 16, 7, "")
    other, _ = SOURCES["synthetic"].records((1, 8, 8), 16, 8, "")
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.isfinite(first).all() and first.shape == (16, 1, 8, 8)


def test_public_records_of_the_users_own(tmp_path: Path) -> None:
    npz = tmp_path / "public.npz"
    np.savez(npz, x=np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32))
    out = pretrain("public", (1, 8, 8), tmp_path / "p.safetensors", public_path=str(npz),
                   **TINY)
    assert _metadata(out)["dataset"] == f"public records from {npz}"
    with pytest.raises(WarmStartError, match=r"public records have shape \(1, 8, 8\)"):
        pretrain("public", (1, 28, 28), tmp_path / "q.safetensors", public_path=str(npz))
    with pytest.raises(WarmStartError, match="needs --public PATH"):
        pretrain("public", (1, 8, 8), tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()


def test_the_mnist1d_public_split_says_what_it_is(tmp_path: Path) -> None:
    out = pretrain("mnist1d-public", (1, 40), tmp_path / "m.safetensors", **TINY)
    assert "in-distribution public data" in _metadata(out)["dataset"]
    with pytest.raises(WarmStartError, match="seed 0 generates the private pool"):
        pretrain("mnist1d-public", (1, 40), tmp_path / "z.safetensors", seed=0)
    with pytest.raises(WarmStartError, match="unknown warm-start source"):
        pretrain("imagenet", (1, 40), tmp_path / "z.safetensors")


def test_fedssl_pretrain_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.safetensors"
    assert main(["pretrain", "--input-shape", "1,8,8", "--num-samples", "32", "--epochs", "1",
                 "--batch-size", "16", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _metadata(out)["warm_start_source"] == "synthetic"
    assert main(["pretrain", "--input-shape", "1,x", "--out", str(tmp_path / "b")]) == 2
    assert "--input-shape must be C,L or C,H,W" in capsys.readouterr().err
