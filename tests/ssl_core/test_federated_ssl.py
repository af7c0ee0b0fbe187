"""FedAvg / FedU / FedEMA merging of the global model into the local one, and shared parts."""

from __future__ import annotations

import pytest
import torch

from fedssl.ssl_core.federated_algorithms import merge
from fedssl.ssl_core.heads import SSLModel
from fedssl.ssl_core.model_parts import AlgorithmError, parse_shared, shared_state


def _states() -> tuple[SSLModel, dict, dict]:
    torch.manual_seed(0)
    model = SSLModel((1, 40), width=8)
    local = {k: v.clone() for k, v in model.state_dict().items()}
    glob = {k: v + 0.01 for k, v in local.items()}
    return model, glob, local


def test_fedavg_takes_global() -> None:
    model, glob, local = _states()
    merge(model, glob, local, "fedavg")
    assert all(torch.equal(model.state_dict()[k], glob[k]) for k in glob)


def test_fedema_mixes_by_divergence() -> None:
    model, glob, local = _states()
    info = merge(model, glob, local, "fedema", fedema_tau=0.5)
    lam = info["mix"]
    assert 0 < lam < 1 and info["divergence"] > 0
    k = "encoder.body.0.weight"
    torch.testing.assert_close(model.state_dict()[k], lam * local[k] + (1 - lam) * glob[k])
    far = {k: v + 10 for k, v in local.items()}
    assert merge(model, far, local, "fedema")["mix"] == 1.0  # drifted far: keep local


def test_fedu_keeps_local_predictor_when_divergent() -> None:
    model, glob, local = _states()
    merge(model, glob, local, "fedu", fedu_threshold=1e-6)
    state = model.state_dict()
    assert torch.equal(state["predictor.0.weight"], local["predictor.0.weight"])
    assert torch.equal(state["encoder.body.0.weight"], glob["encoder.body.0.weight"])
    merge(model, glob, local, "fedu", fedu_threshold=1e6)
    assert torch.equal(model.state_dict()["predictor.0.weight"], glob["predictor.0.weight"])


def test_first_round_without_local_state_takes_global() -> None:
    model, glob, _ = _states()
    assert merge(model, glob, None, "fedema") == {"divergence": 0.0, "mix": 0.0}
    assert torch.equal(model.state_dict()["encoder.body.0.weight"], glob["encoder.body.0.weight"])


def test_shared_parts() -> None:
    model, *_ = _states()
    state = model.state_dict()
    enc = shared_state(state, parse_shared("encoder,projector"))
    assert enc and all(k.split(".")[0] in ("encoder", "projector") for k in enc)
    assert shared_state(state, parse_shared("all")) == state
    with pytest.raises(AlgorithmError, match="subset"):
        parse_shared("encoder,head")
    with pytest.raises(AlgorithmError, match="unknown algorithm"):
        merge(model, state, state, "fedprox")


def test_a_new_algorithm_is_added_in_one_place() -> None:
    """Issue 23 item 2: a toy algorithm registered with ``register_algorithm`` alone is a
    run setting the checks accept and what ``merge`` runs."""
    from fedssl.run_spec import RunSpec
    from fedssl.ssl_core.federated_algorithms import (
        ALGORITHMS,
        FederatedAlgorithm,
        register_algorithm,
    )

    @register_algorithm
    class KeepLocal(FederatedAlgorithm):
        """Ignores the global model (a toy)."""

        name = "toy-keep-local"

        def start(self, model, global_state, local_state, fedema_tau, fedu_threshold):
            return {"divergence": -1.0, "mix": 1.0}

    try:
        RunSpec(algorithm="toy-keep-local").validate()
        model = SSLModel((1, 40), width=8)
        local = {k: v.clone() for k, v in model.state_dict().items()}
        glob = {k: torch.zeros_like(v) for k, v in local.items() if k.startswith("encoder.")}
        assert merge(model, glob, local, "toy-keep-local") == {"divergence": -1.0, "mix": 1.0}
        assert all(torch.equal(model.state_dict()[k], local[k]) for k in glob)
    finally:
        ALGORITHMS.pop("toy-keep-local")
