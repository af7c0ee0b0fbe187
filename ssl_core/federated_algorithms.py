"""How a client combines the received global model with its own local model: the federated
SSL algorithms, in a registry.

Three algorithms, chosen with the run config's ``algorithm``:

- ``fedavg``: the local model is replaced by the global one (McMahan et al. 2017).
- ``fedu``: Zhuang et al., "Collaborative Unsupervised Visual Representation Learning from
  Decentralized Data", ICCV 2021. Encoder and projector are replaced by the global ones; the
  predictor is *divergence-aware*: the client takes the global predictor only while its own
  online encoder is close to the global one (``||W_g - W_l|| < fedu_threshold``) and keeps its
  local predictor otherwise.
- ``fedema``: Zhuang et al., "Divergence-aware Federated Self-Supervised Learning", ICLR 2022.
  The local model moves towards the global one by an EMA whose weight grows with divergence::

      lambda = min(tau * ||W_g - W_l||, 1);   W_l <- lambda * W_l + (1 - lambda) * W_g

  so clients that drifted far (non-IID data) keep more of their own knowledge.

Which parts of the model are sent to the server and averaged (``shared``: a subset of
``encoder``, ``projector``, ``predictor``) is a separate choice
(:mod:`fedssl.ssl_core.model_parts`); parts that are not shared never leave the client. An
algorithm that keeps a local model (:attr:`FederatedAlgorithm.keeps_local_model`) has the
client keep it node-local between rounds. All of this is post-processing of DP-SGD outputs and
costs no privacy. A new algorithm is one :class:`FederatedAlgorithm` subclass registered with
:func:`register_algorithm`; the run setting ``algorithm`` lists the registry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import torch

from fedssl.ssl_core.model_parts import AlgorithmError


def _divergence(global_state: dict[str, torch.Tensor], local: dict[str, torch.Tensor]) -> float:
    """L2 distance between the global and local online encoders."""
    keys = [k for k in global_state if k.startswith("encoder.") and k in local]
    return math.sqrt(sum(float((global_state[k] - local[k]).float().pow(2).sum())
                         for k in keys))


class FederatedAlgorithm(ABC):
    """A client's start of each round: what it loads into its model from the global model
    and the local one it kept (see the module doc)."""

    name: ClassVar[str] = ""
    #: the client keeps its trained model node-local for the next round
    keeps_local_model: ClassVar[bool] = True

    @abstractmethod
    def start(self, model: torch.nn.Module, global_state: dict[str, torch.Tensor],
              local_state: dict[str, torch.Tensor], fedema_tau: float,
              fedu_threshold: float) -> dict[str, float]:
        """Load this round's starting point into ``model`` (which already holds
        ``local_state``); returns the divergence and mixing weight used (round metrics).

        Args:
            model: the client's model, holding ``local_state``.
            global_state: the server's global model.
            local_state: the client's model from its last round.
            fedema_tau: FedEMA's scale of the divergence into the mixing weight.
            fedu_threshold: FedU's divergence above which the local predictor is kept.

        Returns:
            ``{"divergence": ..., "mix": ...}``.
        """


#: algorithm name -> class, in registration order (filled by :func:`register_algorithm`)
ALGORITHMS: dict[str, type[FederatedAlgorithm]] = {}

F = TypeVar("F", bound=type[FederatedAlgorithm])


def register_algorithm(cls: F) -> F:
    """Class decorator: register ``cls`` under ``cls.name``.

    Args:
        cls: a :class:`FederatedAlgorithm` subclass with a name.

    Returns:
        ``cls``, unchanged.

    Raises:
        TypeError: ``cls`` has no algorithm name.
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no algorithm name")
    ALGORITHMS[cls.name] = cls
    return cls


def algorithm_names() -> tuple[str, ...]:
    """Every registered algorithm, in registration order.

    Returns:
        The algorithms' names.
    """
    return tuple(ALGORITHMS)


def get_algorithm(name: str) -> FederatedAlgorithm:
    """The algorithm registered as ``name``.

    Args:
        name: a registered algorithm's name.

    Returns:
        A new instance of it.

    Raises:
        AlgorithmError: no algorithm has that name (naming the choices).
    """
    if name not in ALGORITHMS:
        raise AlgorithmError(f"unknown algorithm {name!r}; choose one of "
                             f"{algorithm_names()}")
    return ALGORITHMS[name]()


@register_algorithm
class FedAvg(FederatedAlgorithm):
    """The global model replaces the local one."""

    name = "fedavg"
    keeps_local_model = False

    def start(self, model: torch.nn.Module, global_state: dict[str, torch.Tensor],
              local_state: dict[str, torch.Tensor], fedema_tau: float,
              fedu_threshold: float) -> dict[str, float]:
        """Load the global model as it is (divergence and mix 0)."""
        model.load_state_dict(global_state, strict=False)
        return {"divergence": 0.0, "mix": 0.0}


@register_algorithm
class FedU(FederatedAlgorithm):
    """Divergence-aware predictor update (Zhuang et al. 2021)."""

    name = "fedu"

    def start(self, model: torch.nn.Module, global_state: dict[str, torch.Tensor],
              local_state: dict[str, torch.Tensor], fedema_tau: float,
              fedu_threshold: float) -> dict[str, float]:
        """Load the global model, but keep the local predictor when the divergence reaches
        ``fedu_threshold``."""
        div = _divergence(global_state, local_state)
        take = {k: v for k, v in global_state.items()
                if not k.startswith("predictor.") or div < fedu_threshold}
        model.load_state_dict(take, strict=False)
        return {"divergence": div, "mix": float(div >= fedu_threshold)}


@register_algorithm
class FedEMA(FederatedAlgorithm):
    """Divergence-aware EMA of the local and global models (Zhuang et al. 2022)."""

    name = "fedema"

    def start(self, model: torch.nn.Module, global_state: dict[str, torch.Tensor],
              local_state: dict[str, torch.Tensor], fedema_tau: float,
              fedu_threshold: float) -> dict[str, float]:
        """Load ``lam * local + (1 - lam) * global`` with ``lam = min(fedema_tau * divergence,
        1)``."""
        div = _divergence(global_state, local_state)
        lam = min(fedema_tau * div, 1.0)
        mixed = {k: lam * local_state[k] + (1 - lam) * v for k, v in global_state.items()}
        model.load_state_dict(mixed, strict=False)
        return {"divergence": div, "mix": lam}


def merge(
    model: torch.nn.Module,
    global_state: dict[str, torch.Tensor],
    local_state: dict[str, torch.Tensor] | None,
    algorithm: str,
    fedema_tau: float = 0.7,
    fedu_threshold: float = 0.5,
) -> dict[str, float]:
    """Load into ``model`` the starting point of this round's local training; returns the
    divergence and mixing weight it used (for the round's metrics).

    Args:
        model: the client's model, built for the run.
        global_state: the shared parts of the received global model.
        local_state: the model the client kept from its last round (None: its first round,
            which starts from the global model whatever the algorithm).
        algorithm: a registered algorithm (:func:`algorithm_names`).
        fedema_tau: FedEMA's tau.
        fedu_threshold: FedU's divergence threshold.

    Returns:
        ``{"divergence": ..., "mix": ...}``.

    Raises:
        AlgorithmError: for an unknown algorithm.
    """
    algo = get_algorithm(algorithm)
    if local_state is None:
        model.load_state_dict(global_state, strict=False)
        return {"divergence": 0.0, "mix": 0.0}
    model.load_state_dict(local_state)
    return algo.start(model, global_state, local_state, fedema_tau, fedu_threshold)
