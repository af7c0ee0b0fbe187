"""How the server averages one round's accepted client models: rules in a registry.

An :class:`Aggregator` receives the accepted replies one at a time as the server screens them
(:meth:`Aggregator.add`, each client's decoded model and its example count), so a reply is
deserialised once and the replies are never all in memory, and gives the new global model
(:meth:`Aggregator.result`). Rules:

========= ========================================================== =========================
name      rule                                                        under secure aggregation
========= ========================================================== =========================
``mean``  example-weighted mean (FedAvg, McMahan et al. 2017)         yes: SecAgg+ computes it
``ldawa`` layer-wise divergence-aware weights: each layer's aggregate  no: it weighs each
          is ``1/K sum_k cos(w_k, w_g) w_k`` (Rehman et al., ICCV     client's own update,
          2023, "L-DAWA"), a client whose layer drifted from the      which SecAgg+ hides
          global one counts less                                      from the server
========= ========================================================== =========================

Both are post-processing of the clients' outputs and of the public global model: under
sample-level DP they change no epsilon. Client-level DP (DP-FedAvg) and secure aggregation
have their own aggregation paths (:mod:`fedssl.server.aggregation`). A new rule is one
subclass registered with :func:`register_aggregator`; the run setting ``aggregator`` lists
the registry.

Example:
    >>> import numpy as np
    >>> rule = get_aggregator("mean")({"w": np.zeros(2, np.float32)})
    >>> rule.add({"w": np.array([1.0, 3.0], np.float32)}, 1.0)
    >>> rule.add({"w": np.array([3.0, 5.0], np.float32)}, 3.0)
    >>> rule.result()["w"].tolist()
    [2.5, 4.5]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import numpy as np


class Aggregator(ABC):
    """Averages one round's accepted models (see the module doc).

    Args:
        reference: the shared model's arrays (names, shapes and dtypes of the result).
        current: the global model the round started from (None where the rule needs none).
    """

    name: ClassVar[str] = ""
    #: the rule needs each client's own model, which secure aggregation hides
    needs_individual_updates: ClassVar[bool] = True

    def __init__(self, reference: dict[str, np.ndarray],
                 current: dict[str, np.ndarray] | None = None) -> None:
        self.reference = reference
        self.current = current

    @abstractmethod
    def add(self, values: dict[str, np.ndarray], weight: float) -> None:
        """One accepted client model (decoded, checked against ``reference``) and its
        number of examples.

        Args:
            values: array name -> the client's array.
            weight: the client's number of examples.
        """

    @abstractmethod
    def result(self) -> dict[str, np.ndarray]:
        """The new global model, in the reference's dtypes (integer buffers rounded).

        Returns:
            Array name -> the aggregate.
        """

    def _cast(self, key: str, value: np.ndarray) -> np.ndarray:
        ref = self.reference[key]
        if not np.issubdtype(ref.dtype, np.floating):
            value = np.rint(value)
        return np.asarray(value, dtype=ref.dtype)  # 0-d: a scalar back to an array


#: rule name -> class, in registration order (filled by :func:`register_aggregator`)
AGGREGATORS: dict[str, type[Aggregator]] = {}

A = TypeVar("A", bound=type[Aggregator])


def register_aggregator(cls: A) -> A:
    """Class decorator: register ``cls`` under ``cls.name``.

    Args:
        cls: an :class:`Aggregator` subclass with a name.

    Returns:
        ``cls``, unchanged.

    Raises:
        TypeError: ``cls`` has no rule name.
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no rule name")
    AGGREGATORS[cls.name] = cls
    return cls


def aggregator_names() -> tuple[str, ...]:
    """Every registered rule, in registration order.

    Returns:
        The rules' names.
    """
    return tuple(AGGREGATORS)


def get_aggregator(name: str) -> type[Aggregator]:
    """The rule registered as ``name``.

    Args:
        name: a registered rule's name.

    Returns:
        The rule's class.

    Raises:
        ValueError: no rule has that name (naming the choices).
    """
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; one of "
                         f"{', '.join(AGGREGATORS)}") from None


@register_aggregator
class WeightedMean(Aggregator):
    """Running example-weighted mean, in float64 (Flower's ``aggregate_arrayrecords``:
    ``sum w_i x_i / sum w_i``), fed reply by reply."""

    name = "mean"
    needs_individual_updates = False

    def __init__(self, reference: dict[str, np.ndarray],
                 current: dict[str, np.ndarray] | None = None) -> None:
        super().__init__(reference, current)
        self.total = 0.0
        self.sums = {k: np.zeros(v.shape, np.float64) for k, v in reference.items()}

    def add(self, values: dict[str, np.ndarray], weight: float) -> None:
        self.total += weight
        for k, v in values.items():
            # in float64: ``weight * v`` of a float32 array stays float32 and overflows to
            # inf for a weight near 3.4e38 (found by tests/ssl_core/test_fuzz_decoders.py)
            self.sums[k] += np.multiply(v, weight, dtype=np.float64)

    def result(self) -> dict[str, np.ndarray]:
        return {k: self._cast(k, self.sums[k] / self.total) for k in self.reference}


@register_aggregator
class LayerwiseDivergenceAware(Aggregator):
    """L-DAWA (Rehman et al., ICCV 2023): per floating-point layer, ``1/K sum_k cos(w_k,
    w_g) w_k`` with ``w_g`` the round's starting global layer; other arrays (integer
    buffers, empty ones) are example-weighted means."""

    name = "ldawa"

    def __init__(self, reference: dict[str, np.ndarray],
                 current: dict[str, np.ndarray] | None = None) -> None:
        if current is None:
            raise ValueError("L-DAWA weighs each client's layers by their angle to the "
                             "round's global model, which was not given")
        super().__init__(reference, current)
        self.count = 0
        self.sums = {k: np.zeros(v.shape, np.float64) for k, v in reference.items()}
        self.plain = WeightedMean(reference)

    def _layerwise(self, key: str) -> bool:
        ref = self.reference[key]
        return bool(np.issubdtype(ref.dtype, np.floating) and ref.size)

    def add(self, values: dict[str, np.ndarray], weight: float) -> None:
        assert self.current is not None
        self.count += 1
        self.plain.add({k: v for k, v in values.items() if not self._layerwise(k)}, weight)
        for k, v in values.items():
            if not self._layerwise(k):
                continue
            w = np.asarray(v, np.float64).ravel()
            g = np.asarray(self.current[k], np.float64).ravel()
            cos = float(w @ g) / max(float(np.linalg.norm(w) * np.linalg.norm(g)), 1e-12)
            self.sums[k] += cos * np.asarray(v, np.float64)

    def result(self) -> dict[str, np.ndarray]:
        plain = self.plain.result() if self.plain.total else {}
        return {k: (self._cast(k, self.sums[k] / self.count) if self._layerwise(k)
                    else plain.get(k, self._cast(k, self.sums[k])))
                for k in self.reference}
