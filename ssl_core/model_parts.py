"""Which parts of an SSL model are shared with the server, and the federated SSL algorithms.

An SSL model has named top-level parts (``encoder``, ``projector``, ``predictor``, and a
``decoder`` for masked reconstruction); a run shares a subset of them (``shared``), which is
all the server ever receives and averages. How a client merges the received parts into its
local model is the *algorithm* (``fedavg``, ``fedu``, ``fedema``; see
:mod:`fedssl.ssl_core.federated_algorithms`).
"""

from __future__ import annotations

import torch

PARTS = ("encoder", "projector", "predictor", "decoder")


class AlgorithmError(ValueError):
    """Raised for an unknown algorithm or shared part."""


def parse_shared(shared: str) -> tuple[str, ...]:
    """``"encoder,projector"`` -> ``("encoder", "projector")``, validated; ``"all"`` (every
    part of the model) -> ``("all",)``.

    Args:
        shared: ``"all"`` or comma-separated part names.

    Returns:
        The part names.

    Raises:
        AlgorithmError: an unknown part, or none.
    """
    if shared.strip() == "all":
        return ("all",)
    parts = tuple(p.strip() for p in shared.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if not parts or bad:
        raise AlgorithmError(f"shared parts must be a comma-separated subset of {PARTS}, got "
                             f"{shared!r}")
    return parts


def shared_state(state: dict[str, torch.Tensor], shared: tuple[str, ...]
                 ) -> dict[str, torch.Tensor]:
    """The entries of a state dict that belong to the shared parts.

    Args:
        state: the model's state dict.
        shared: the shared parts (:func:`parse_shared`).

    Returns:
        The shared entries (all of them for ``("all",)``).
    """
    if shared == ("all",):
        return dict(state)
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in shared}
