"""``fedssl.load_encoder``: the exported encoder rebuilt from its architecture record (issue 15
item 4a), older files without one, and the errors for files that cannot give an encoder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fedssl
from fedssl.ssl_core.encoder_file import EncoderFileError, read_encoder
from fedssl.ssl_core.encoders import IMAGE_POOL, ConvEncoder1d, ResNetEncoder2d, build_encoder
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.warm_start import export_encoder


def _export(path: Path, method: str, shape: tuple[int, ...], width: int | None = None
            ) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_objective(method).build_model(shape, width=width)
    export_encoder(path, model, {"method": method, "dataset": "test",
                                 "input_shape": ",".join(map(str, shape)), "rounds": "1"})
    return model.encoder.eval()


@pytest.mark.parametrize(("method", "shape", "cls", "width"), [
    ("simsiam", (1, 40), "ConvEncoder1d", None),
    ("byol", (3, 12, 12), "ResNetEncoder2d", 8),
    ("mae", (1, 16, 16), "ViTEncoder", 32),
])
def test_an_exported_encoder_is_rebuilt_from_its_record(
        tmp_path: Path, method: str, shape: tuple[int, ...], cls: str, width: int | None
) -> None:
    original = _export(tmp_path / "encoder.safetensors", method, shape, width)
    with safe_open(str(tmp_path / "encoder.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["encoder_class"] == cls and meta["method"] == method
    assert json.loads(meta["encoder_kwargs"]) == json.loads(json.dumps(original.arch_kwargs))
    encoder = fedssl.load_encoder(tmp_path)  # the run directory
    assert type(encoder).__name__ == cls and not encoder.training
    assert encoder.feature_dim == original.feature_dim == int(meta["feature_dim"])
    x = torch.randn(3, *shape)
    torch.testing.assert_close(encoder(x), original(x))
    assert all(p.requires_grad for p in encoder.parameters())  # ready to fine-tune


def test_a_file_without_the_record_is_rebuilt_from_method_and_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = ConvEncoder1d(in_channels=2, width=32).eval()
    path = tmp_path / "old.safetensors"  # what export_encoder wrote before the record
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path),
              metadata={"method": "simsiam", "dataset": "x", "input_shape": "2,40",
                        "rounds": "3"})
    with pytest.warns(UserWarning, match="no architecture record"):
        encoder = fedssl.load_encoder(path)
    x = torch.randn(2, 2, 40)
    torch.testing.assert_close(encoder(x), original(x))
    _, info = read_encoder(path)
    assert info.encoder_kwargs["width"] == 32 and info.input_shape == (2, 40)
    assert "method simsiam" in info.notes[0]


def test_old_image_files_rebuild_the_globally_pooled_resnet(tmp_path: Path) -> None:
    """Image files written before ``pool`` existed (record without it, or no record) hold
    the global-average-pooled ResNet; new runs default to the 2x2 readout."""
    torch.manual_seed(0)
    old = ResNetEncoder2d(in_channels=1, width=8).eval()  # pool=1: the old architecture
    assert build_encoder((1, 12, 12), 8).feature_dim == 4 * 8 * IMAGE_POOL ** 2
    x = torch.randn(2, 1, 12, 12)
    record = {k: v for k, v in old.arch_kwargs.items() if k not in ("pool", "multiscale")}
    for name, meta in [
        ("record", {"method": "byol", "input_shape": "1,12,12", "feature_dim": "32",
                    "encoder_class": "ResNetEncoder2d", "encoder_kwargs": json.dumps(record)}),
        ("none", {"method": "byol", "input_shape": "1,12,12"}),
    ]:
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path),
                  metadata=meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no architecture record"
            encoder = fedssl.load_encoder(path)
        assert encoder.feature_dim == 32 and encoder.pool == 1, name
        torch.testing.assert_close(encoder(x), old(x))


def test_an_old_mae_file_is_rebuilt_as_the_vit(tmp_path: Path) -> None:
    model = get_objective("mae").build_model((1, 40))
    path = tmp_path / "old.safetensors"
    save_file({k.removeprefix("encoder."): v.contiguous() for k, v in
               model.state_dict().items() if k.startswith("encoder.")}, str(path),
              metadata={"method": "mae", "input_shape": "1,40"})
    with pytest.warns(UserWarning):
        encoder = fedssl.load_encoder(path)
    x = torch.randn(2, 1, 40)
    torch.testing.assert_close(encoder(x), model.encoder.eval()(x))


def test_bad_paths_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EncoderFileError, match="does not exist"):
        fedssl.load_encoder(tmp_path / "nope")
    with pytest.raises(EncoderFileError, match="not a finished fedssl run directory"):
        fedssl.load_encoder(tmp_path)
    (tmp_path / "encoder.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(EncoderFileError, match="not a readable safetensors"):
        fedssl.load_encoder(tmp_path)


def test_weights_that_do_not_fit_the_record_are_named(tmp_path: Path) -> None:
    path = tmp_path / "enc.safetensors"
    narrow = SSLModel((1, 40), width=16)
    export_encoder(path, narrow, {"method": "simsiam", "input_shape": "1,40"})
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        meta = dict(fh.metadata())
    meta["encoder_kwargs"] = json.dumps({**json.loads(meta["encoder_kwargs"]), "width": 64})
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(EncoderFileError, match=r"do not fit.*shape mismatch"):
        fedssl.load_encoder(path)
    save_file(tensors, str(path), metadata={**meta, "encoder_class": "Transformer9000"})
    with pytest.raises(EncoderFileError, match="Transformer9000"):
        fedssl.load_encoder(path)
    save_file(tensors, str(path), metadata={"method": "simsiam"})
    with pytest.raises(EncoderFileError, match="no input_shape"):
        fedssl.load_encoder(path)


def test_the_package_exports_load_encoder_lazily() -> None:
    assert "load_encoder" in fedssl.__all__
    with pytest.raises(AttributeError):
        _ = fedssl.no_such_name
