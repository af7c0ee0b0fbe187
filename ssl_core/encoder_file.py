"""The exported encoder file, read back as a ready torch module: ``fedssl.load_encoder``.

``RUN/encoder.safetensors`` (written by :func:`fedssl.ssl_core.warm_start.export_encoder`)
holds the encoder's state dict and string metadata: ``method``, ``dataset``, ``input_shape``,
``rounds``, and the *architecture record*, which is what rebuilds the module without the run's
configuration:

- ``encoder_class``: the class name (one of :data:`ENCODER_CLASSES`),
- ``encoder_kwargs``: its constructor arguments as JSON (the encoder's ``arch_kwargs``, e.g.
  ``{"in_channels": 1, "width": 64, "feature_dim": 128, "ws": true}`` for the 1-D CNN or the
  ViT's ``input_shape``/``dim``/``depth``/``heads``/``mlp_ratio``/``patch_size`` for MAE),
- ``feature_dim``: the size of the representation it returns.

A file written before the record existed (older runs) is rebuilt from ``method`` and
``input_shape`` the way the run built it (MAE: the ViT; every other method: the CNN for the
record shape), its width read off the first layer's weights and weight-standardised
convolutions assumed unless the weights show plain ones; a note says so
(:attr:`EncoderInfo.notes`, and :func:`load_encoder` warns). A missing, unreadable or
corrupt file, an unknown class, or weights that do not fit the rebuilt module raise
:class:`EncoderFileError` naming the problem.

Example (a file written by the exporter, read back)::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from fedssl.ssl_core.objectives import get_objective
    >>> from fedssl.ssl_core.warm_start import export_encoder
    >>> model = get_objective("simsiam").build_model((1, 40))
    >>> path = Path(tempfile.mkdtemp()) / "enc.safetensors"
    >>> export_encoder(path, model, {"method": "simsiam", "input_shape": "1,40"})
    >>> enc = load_encoder(path)
    >>> type(enc).__name__, enc(torch.zeros(2, 1, 40)).shape
    ('ConvEncoder1d', torch.Size([2, 128]))
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedssl.run_layout import RunLayout
from fedssl.ssl_core.encoders import ConvEncoder1d, ResNetEncoder2d, build_encoder
from fedssl.ssl_core.vit import ViTEncoder

#: encoder classes an architecture record may name
ENCODER_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (ConvEncoder1d, ResNetEncoder2d, ViTEncoder)}
#: metadata keys of the architecture record
CLASS_KEY, KWARGS_KEY, FEATURE_DIM_KEY = "encoder_class", "encoder_kwargs", "feature_dim"


class EncoderFileError(ValueError):
    """An encoder file (or run directory) that cannot give an encoder; the message says why."""


@dataclass
class EncoderInfo:
    """What :func:`read_encoder` found: the file, its metadata, how the module was built."""

    path: Path
    metadata: dict[str, str]
    encoder_class: str
    encoder_kwargs: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The record shape the encoder was trained on (None if the file does not say)."""
        return parse_shape(self.metadata.get("input_shape", ""))


def architecture_record(encoder: nn.Module) -> dict[str, str]:
    """The metadata entries that rebuild ``encoder`` (empty for an encoder class that is not
    in :data:`ENCODER_CLASSES` or records no ``arch_kwargs``).

    Args:
        encoder: the encoder to save.

    Returns:
        The class name and JSON constructor arguments, under the file's metadata keys.
    """
    name = type(encoder).__name__
    kwargs = getattr(encoder, "arch_kwargs", None)
    if ENCODER_CLASSES.get(name) is not type(encoder) or not isinstance(kwargs, dict):
        return {}
    return {CLASS_KEY: name, KWARGS_KEY: json.dumps(kwargs, sort_keys=True),
            FEATURE_DIM_KEY: str(int(getattr(encoder, "feature_dim", 0)))}


def parse_shape(text: str) -> tuple[int, ...] | None:
    """``"1,28,28"`` -> ``(1, 28, 28)``; None for an empty or malformed value.

    Args:
        text: comma-separated integers.

    Returns:
        The shape, or None.
    """
    try:
        shape = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        return None
    return shape or None


def encoder_path(run_dir_or_file: str | os.PathLike[str]) -> Path:
    """The encoder file of a run directory (``RUN/encoder.safetensors``), or the file itself.

    Args:
        run_dir_or_file: a run directory or an encoder file.

    Returns:
        The encoder file.

    Raises:
        EncoderFileError: the path does not exist, or the directory holds no encoder file.
    """
    path = Path(run_dir_or_file)
    if path.is_dir():
        file = RunLayout(path).encoder
        if not file.is_file():
            raise EncoderFileError(
                f"{path} holds no {file.name}: not a finished fedssl run directory (the "
                "server writes it after the last round), or pass the encoder file itself")
        return file
    if not path.exists():
        raise EncoderFileError(f"encoder file or run directory {str(path)!r} does not exist")
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
            metadata = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise EncoderFileError(f"{str(path)!r} is not a readable safetensors encoder file: "
                               f"{exc}") from exc
    if not tensors:
        raise EncoderFileError(f"{str(path)!r} holds no weights")
    return tensors, metadata


def _from_record(path: Path, metadata: dict[str, str]) -> tuple[str, dict[str, Any]]:
    name = metadata[CLASS_KEY]
    if name not in ENCODER_CLASSES:
        raise EncoderFileError(
            f"{str(path)!r} records encoder class {name!r}, which this fedssl does not know "
            f"(known: {', '.join(ENCODER_CLASSES)})")
    try:
        kwargs = json.loads(metadata.get(KWARGS_KEY, "{}"))
        if not isinstance(kwargs, dict):
            raise TypeError("not a JSON object")
    except (ValueError, TypeError) as exc:
        raise EncoderFileError(f"{str(path)!r}: malformed {KWARGS_KEY} record "
                               f"{metadata.get(KWARGS_KEY)!r}: {exc}") from exc
    if "input_shape" in kwargs:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    return name, kwargs


def _from_method(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]
                 ) -> tuple[str, dict[str, Any], str]:
    """Class and kwargs of a file without the architecture record, as the run built it."""
    method = metadata.get("method", "")
    shape = parse_shape(metadata.get("input_shape", ""))
    if shape is None:
        raise EncoderFileError(
            f"{str(path)!r} has no architecture record and no input_shape in its metadata: "
            "cannot tell which encoder its weights belong to")
    if method == "mae" or "embed.weight" in tensors:
        from fedssl.ssl_core.objectives.mae import MAE

        defaults = MAE()
        dim = int(tensors["embed.weight"].shape[0]) if "embed.weight" in tensors else 64
        depth = len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})
        kwargs = {"input_shape": shape, "dim": dim, "depth": depth or defaults.depth,
                  "heads": defaults.heads}
        return "ViTEncoder", kwargs, f"method {method or '?'}: the MAE ViT"
    first = tensors.get("body.0.weight", tensors.get("stem.0.weight"))
    width = int(first.shape[0]) if first is not None else None
    ws = "body.0.bias" not in tensors  # the plain 1-D CNN has conv biases
    # files without the record predate the image encoder's pool option: global pooling
    encoder = build_encoder(shape, width, ws=ws, pool=1)
    return (type(encoder).__name__, dict(encoder.arch_kwargs),
            f"method {method or '?'}: the CNN for records of shape {shape}")


def _fit(path: Path, encoder: nn.Module, tensors: dict[str, torch.Tensor], how: str) -> None:
    own = encoder.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs module {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise EncoderFileError(
            f"the weights in {str(path)!r} do not fit the encoder rebuilt from {how}: "
            + "; ".join(filter(None, [
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {extra[:5]}" if extra else "",
                f"shape mismatch {shapes[:5]}" if shapes else ""])))
    encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def read_encoder(run_dir_or_file: str | os.PathLike[str], device: str | torch.device = "cpu"
                 ) -> tuple[nn.Module, EncoderInfo]:
    """The trained encoder of a run directory or encoder file, and what the file said.

    Args:
        run_dir_or_file: a run directory or an encoder file.
        device: where the encoder is put.

    Returns:
        The encoder (eval mode) and the file's information.

    Raises:
        EncoderFileError: missing path, unreadable or corrupt file, unknown or malformed
            architecture record, weights that do not fit the rebuilt encoder.
    """
    path = encoder_path(run_dir_or_file)
    tensors, metadata = _read(path)
    notes: list[str] = []
    if CLASS_KEY in metadata:
        name, kwargs = _from_record(path, metadata)
        how = f"its architecture record ({name}, {metadata.get(KWARGS_KEY, '{}')})"
    else:
        name, kwargs, how = _from_method(path, metadata, tensors)
        notes.append(
            f"{path.name} has no architecture record (written by an older fedssl): rebuilt "
            f"from {how}, width from the weights"
            + ("" if name == "ViTEncoder" else
               ", weight-standardised convolutions" if kwargs.get("ws", True) else
               ", plain convolutions"))
    try:
        encoder = ENCODER_CLASSES[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise EncoderFileError(f"cannot rebuild {name} from {str(path)!r}'s record "
                               f"{kwargs}: {exc}") from exc
    _fit(path, encoder, tensors, how)
    encoder.to(device).eval()
    return encoder, EncoderInfo(path, metadata, name, kwargs, notes)


def load_encoder(run_dir_or_file: str | os.PathLike[str], device: str | torch.device = "cpu"
                 ) -> nn.Module:
    """The trained encoder of a fedssl run (``RUN`` or ``RUN/encoder.safetensors``), rebuilt
    and loaded, in eval mode on ``device``: ``encoder(x)`` maps records ``(N, *input_shape)``
    to features ``(N, encoder.feature_dim)``. Its parameters require gradients, so it can be
    fine-tuned (call ``.train()``). A file without an architecture record is rebuilt from its
    method and input shape, with a ``UserWarning`` saying so.

    Args:
        run_dir_or_file: a run directory or an encoder file.
        device: where the encoder is put.

    Returns:
        The encoder.

    Raises:
        EncoderFileError: see :func:`read_encoder`.
    """
    encoder, info = read_encoder(run_dir_or_file, device)
    for note in info.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return encoder
