"""Registry of SSL objectives: ``get_objective("simsiam")``."""

from __future__ import annotations

from typing import Any

from fedssl.ssl_core.objectives.base import Objective
from fedssl.ssl_core.objectives.byol import BYOL
from fedssl.ssl_core.objectives.group_infonce import GroupInfoNCE
from fedssl.ssl_core.objectives.mae import MAE
from fedssl.ssl_core.objectives.masked_ae import MaskedAE
from fedssl.ssl_core.objectives.public_infonce import PublicInfoNCE
from fedssl.ssl_core.objectives.simclr import SimCLR
from fedssl.ssl_core.objectives.simsiam import SimSiam

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (
    SimSiam, BYOL, SimCLR, MAE, MaskedAE, PublicInfoNCE, GroupInfoNCE)}


class UnknownMethodError(ValueError):
    """Raised for a method name that is not in the registry."""


def get_objective(name: str, **kwargs: Any) -> Objective:
    """Instantiate the objective registered under ``name`` (``kwargs``: its constructor's
    options, e.g. ``get_objective("masked-ae", decoder="map")``).

    Args:
        name: a registered method name (:data:`OBJECTIVES`).
        **kwargs: the objective's constructor options.

    Returns:
        A new objective.

    Raises:
        UnknownMethodError: no objective is registered under ``name``.
    """
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown SSL method {name!r}; choose one of {', '.join(sorted(OBJECTIVES))}"
        ) from None
    return cls(**kwargs)


__all__ = ["OBJECTIVES", "Objective", "UnknownMethodError", "get_objective"]
