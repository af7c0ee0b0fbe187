"""How a client combines the received global model with its own local model.

Three federated SSL algorithms, chosen with the run config's ``algorithm``:

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
``encoder``, ``projector``, ``predictor``) is a separate choice; parts that are not shared never
leave the client. The local model is kept node-local in ``context.state`` between rounds.
All of this is post-processing of DP-SGD outputs and costs no privacy.
"""

from __future__ import annotations

import math

import torch

from fedssl.ssl_core.model_parts import ALGORITHMS, AlgorithmError


def _divergence(global_state: dict[str, torch.Tensor], local: dict[str, torch.Tensor]) -> float:
    """L2 distance between the global and local online encoders."""
    keys = [k for k in global_state if k.startswith("encoder.") and k in local]
    return math.sqrt(sum(float((global_state[k] - local[k]).float().pow(2).sum())
                         for k in keys))


def merge(
    model: torch.nn.Module,
    global_state: dict[str, torch.Tensor],
    local_state: dict[str, torch.Tensor] | None,
    algorithm: str,
    fedema_tau: float = 0.7,
    fedu_threshold: float = 0.5,
) -> dict[str, float]:
    """Load into ``model`` the starting point of this round's local training; returns the
    divergence and mixing weight it used (for the round's metrics)."""
    if algorithm not in ALGORITHMS:
        raise AlgorithmError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    if local_state is not None:
        model.load_state_dict(local_state)
    if local_state is None or algorithm == "fedavg":
        model.load_state_dict(global_state, strict=False)
        return {"divergence": 0.0, "mix": 0.0}
    div = _divergence(global_state, local_state)
    if algorithm == "fedu":
        take = {k: v for k, v in global_state.items()
                if not k.startswith("predictor.") or div < fedu_threshold}
        model.load_state_dict(take, strict=False)
        return {"divergence": div, "mix": float(div >= fedu_threshold)}
    lam = min(fedema_tau * div, 1.0)
    mixed = {k: lam * local_state[k] + (1 - lam) * v for k, v in global_state.items()}
    model.load_state_dict(mixed, strict=False)
    return {"divergence": div, "mix": lam}
