"""Which torch device a client or the server computes on.

``"auto"`` picks the first CUDA device when torch sees one (in a simulation, Ray shows a worker
a GPU only if ``--gpus-per-client`` reserves a share of one), else the CPU; ``"cpu"``,
``"cuda"`` and ``"cuda:N"`` ask for that device and fail with a clear message when it is not
there, rather than silently training somewhere else.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """Raised for a device name that is malformed or not available on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """The :class:`torch.device` for ``name`` (see the module docstring).

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The device.

    Raises:
        DeviceError: an unknown name, CUDA asked for where torch sees no such device, or a
            device type other than CPU and CUDA.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but torch sees no CUDA device here")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but only "
                              f"{torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise DeviceError(f"device type {device.type!r} is not supported: use cpu or cuda")
    return device
