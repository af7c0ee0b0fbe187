"""Warm start: the encoder file, and loading one pretrained on public or synthetic data.

DP-SGD from scratch on small private sets learns little (ViP, Yu et al., ICML 2024, pretrain
on synthetic Shaders21k images before DP-SGD; De et al. 2022 and Sander et al. 2023 likewise
start from public pretraining). ``--init-encoder PATH`` loads such an encoder (a safetensors
file with the encoder's state dict, keys without the ``encoder.`` prefix, as
:func:`export_encoder` writes) into the initial global model. Its weights must not depend on
the private data: the privacy guarantee covers only the private training that follows, and
using the private records to make the warm start would be an unaccounted release.

:mod:`fedssl.client.pretrain` makes one (with the local trainer, so it lives above
``ssl_core`` in the data flow) from data that is NOT the private pool: ``fedssl pretrain
--source synthetic`` (procedural records, no data at all, any record shape), ``--source
public --public PATH`` (the user's own public records) or ``--source mnist1d-public`` (fresh
draws from the MNIST-1D generator with another seed than the private pool's: in-distribution
public data, which a real site rarely has; the file says so).

Command::

    fedssl pretrain --source synthetic --input-shape 1,28,28 --out warm.safetensors
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fedssl.atomic import atomic_path


class WarmStartError(ValueError):
    """Raised for a warm-start encoder file that does not fit the model."""


def load_init_encoder(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load the encoder weights of ``path`` into ``model.encoder``; returns the file's
    metadata.

    Args:
        model: an SSL model with an ``encoder``.
        path: the safetensors file.

    Returns:
        The file's metadata.

    Raises:
        WarmStartError: if the file is missing or unreadable, or its keys or shapes differ
            from the model's encoder (every mismatch is named).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WarmStartError(f"init encoder {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
            metadata = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise WarmStartError(f"init encoder {str(path)!r} is not a readable safetensors "
                             f"file: {exc}") from exc
    own = model.encoder.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise WarmStartError(
            f"init encoder {str(path)!r} does not fit this model's encoder "
            f"(made for {metadata.get('input_shape', '?')} / {metadata.get('method', '?')}): "
            + "; ".join(filter(None, [
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {extra[:5]}" if extra else "",
                f"shape mismatch {shapes[:5]}" if shapes else ""])))
    model.encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    return metadata


def export_encoder(path: Path, model: nn.Module, metadata: dict[str, str]) -> None:
    """Save the encoder part of an SSL model (``encoder.`` prefix stripped) as safetensors,
    atomically, with ``metadata`` and the encoder's architecture record (class and
    constructor arguments: :func:`fedssl.ssl_core.encoder_file.architecture_record`);
    :func:`load_init_encoder` and :func:`fedssl.load_encoder` read it back.

    Args:
        path: the file to write.
        model: the SSL model whose ``encoder`` is saved.
        metadata: string entries stored with the weights.
    """
    from safetensors.torch import save_file as save_torch

    from fedssl.ssl_core.encoder_file import architecture_record

    tensors = {k.removeprefix("encoder."): v.detach().cpu().contiguous()
               for k, v in model.state_dict().items() if k.startswith("encoder.")}
    record = architecture_record(model.encoder) if hasattr(model, "encoder") else {}
    with atomic_path(path) as tmp:
        save_torch(tensors, str(tmp), metadata={**record, **metadata})


if __name__ == "__main__":
    # the former command, ``python -m fedssl.ssl_core.warm_start``, runs the pretraining that
    # now lives above ssl_core (it needs the local trainer); nothing imports this branch
    import runpy

    runpy.run_module("fedssl.client.pretrain", run_name="__main__", alter_sys=True)
