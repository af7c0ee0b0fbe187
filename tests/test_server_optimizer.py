"""FedAvgM's server optimizer: the update rule, dtypes, state and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from fedssl.server.server_optimizer import ServerMomentum


def _model(w: float, b: float = 0.0, count: int = 3) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), w, np.float32), "b": np.array([b], np.float32),
            "n": np.array(count, np.int64)}


def test_plain_fedavg_returns_the_aggregate() -> None:
    opt = ServerMomentum()
    assert opt.is_plain_fedavg
    out = opt.step(_model(1.0), _model(3.0, 2.0, 7))
    for k, v in _model(3.0, 2.0, 7).items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)


def test_momentum_accumulates_the_pseudo_gradient() -> None:
    opt = ServerMomentum(lr=0.5, momentum=0.9)
    assert not opt.is_plain_fedavg
    g = _model(0.0)
    g = opt.step(g, _model(1.0))  # v = 1, global = 0 + 0.5 * 1
    assert np.allclose(g["w"], 0.5)
    g = opt.step(g, {**_model(1.0), "w": g["w"] + 1.0})  # delta 1: v = 0.9 + 1 = 1.9
    assert np.allclose(g["w"], 0.5 + 0.5 * 1.9)
    assert np.allclose(opt.velocity["w"], 1.9)
    assert g["n"].dtype == np.int64 and int(g["n"]) == 3  # integer buffers: the aggregate


def test_state_round_trip_continues_the_same_trajectory() -> None:
    a = ServerMomentum(lr=1.0, momentum=0.5)
    g = a.step(_model(0.0), _model(2.0))
    b = ServerMomentum(lr=1.0, momentum=0.5)
    b.load_state(a.state())
    nxt = _model(5.0)
    assert all(np.array_equal(x, y) for x, y in zip(a.step(g, nxt).values(),
                                                    b.step(g, nxt).values()))


@pytest.mark.parametrize(("lr", "momentum"), [(0.0, 0.0), (-1.0, 0.0), (float("nan"), 0.0),
                                              (1.0, 1.0), (1.0, -0.1), (1.0, float("inf"))])
def test_bad_settings_are_refused(lr: float, momentum: float) -> None:
    with pytest.raises(ValueError, match=r"server (learning rate|momentum)"):
        ServerMomentum(lr, momentum)


def test_mismatched_aggregate_is_refused_and_state_untouched() -> None:
    opt = ServerMomentum(momentum=0.9)
    with pytest.raises(ValueError, match="differ from the model"):
        opt.step(_model(0.0), {"w": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="shape"):
        opt.step(_model(0.0), {**_model(1.0), "w": np.zeros((3,), np.float32)})
    assert opt.velocity == {}  # a refused step moves nothing
