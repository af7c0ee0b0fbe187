"""FedAvgM's server optimizer: the update rule, dtypes, state and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedssl.run_layout import RunLayout
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


def test_velocity_is_checkpointed_and_resumed(tmp_path: Path) -> None:
    from fedssl.server.checkpoint import CheckpointError, resume_point, save_checkpoint

    opt = ServerMomentum(momentum=0.9)
    weights = opt.step(_model(0.0), _model(1.0))
    save_checkpoint(tmp_path, 1, weights, {"seed": 0}, server_momentum=opt.state())
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    point = resume_point(tmp_path)
    assert point is not None and point.server_momentum is not None
    assert set(point.server_momentum) == {"w", "b"}  # float arrays only
    assert np.allclose(point.server_momentum["w"], 1.0)
    # FedAvg saves no velocity file, and a resume of it gets none
    save_checkpoint(tmp_path / "plain", 1, weights, {"seed": 0})
    (tmp_path / "plain" / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    assert resume_point(tmp_path / "plain").server_momentum is None  # type: ignore[union-attr]
    assert not list((tmp_path / "plain" / "checkpoints").glob("*server-momentum*"))
    # a damaged velocity file is named, not silently replaced by zeros
    RunLayout(tmp_path).server_momentum(1).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="server-momentum"):
        resume_point(tmp_path)


def test_a_damaged_weights_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    # safetensors raises its own SafetensorError (not a ValueError) for a bad header: it used
    # to escape the resume as a bare traceback
    from fedssl.server.checkpoint import CheckpointError, resume_point, save_checkpoint

    save_checkpoint(tmp_path, 1, _model(1.0), {"seed": 0})
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    RunLayout(tmp_path).checkpoint(1).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="round-0001"):
        resume_point(tmp_path)
