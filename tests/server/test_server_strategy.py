"""The server validates every reply before averaging and records refusals."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedssl.server.replies import check_arrays
from fedssl.server.strategy import FedSSLStrategy

REF = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _reply(cid: str, w: np.ndarray, b: np.ndarray, n: int = 10, status: str = "ok") -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({"w": Array(w), "b": Array(b)}),
        "metrics": MetricRecord({"num-examples": n, "loss": 1.0}),
        "status": ConfigRecord({"status": status, "client": cid, "reason": "budget spent"}),
    })
    return Message(content, dst_node_id=1, message_type="train")


def test_check_arrays_names_problem() -> None:
    ok = ArrayRecord({k: Array(v) for k, v in REF.items()})
    assert check_arrays(ok, REF) is None
    bad = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": Array(REF["b"])})
    assert "has shape (3, 2), expected (2, 3)" in check_arrays(bad, REF)
    nan = ArrayRecord({"w": Array(np.full((2, 3), np.nan, np.float32)), "b": Array(REF["b"])})
    assert "NaN or Inf" in check_arrays(nan, REF)
    missing = ArrayRecord({"w": Array(REF["w"])})
    assert "missing ['b']" in check_arrays(missing, REF)
    wrong_dtype = ArrayRecord({"w": Array(np.zeros((2, 3))), "b": Array(REF["b"])})
    assert "dtype float64" in check_arrays(wrong_dtype, REF)


def test_aggregate_skips_refused_and_rejected(flower_identity, caplog) -> None:
    strategy = FedSSLStrategy(reference=REF)
    replies = [
        _reply("a", np.ones((2, 3), np.float32), np.ones(3, np.float32), n=10),
        _reply("b", np.full((2, 3), 3, np.float32), np.full(3, 3, np.float32), n=30),
        _reply("c", np.full((2, 3), np.inf, np.float32), np.zeros(3, np.float32)),
        _reply("d", np.zeros((2, 3), np.float32), np.zeros(3, np.float32), status="refused"),
        _reply("e", np.zeros((4,), np.float32), np.zeros(3, np.float32)),
    ]
    with caplog.at_level("WARNING", logger="fedssl.server"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    out = strategy.last_outcome
    assert out.accepted == ["a", "b"]
    assert out.refused == {"d": "budget spent"}
    assert set(out.rejected) == {"c", "e"}
    assert "rejected update from client c" in caplog.text
    np.testing.assert_allclose(arrays["w"].numpy(), 2.5)  # (1*10 + 3*30) / 40
    assert metrics["loss"] == pytest.approx(1.0)


def test_aggregate_with_no_valid_update(flower_identity) -> None:
    strategy = FedSSLStrategy(reference=REF)
    arrays, metrics = strategy.aggregate_train(
        1, [_reply("a", np.zeros((2, 3)), np.zeros(3), status="refused")])
    assert arrays is None and metrics is None


def test_streamed_mean_matches_flower_and_keeps_dtypes(flower_identity) -> None:
    """The decode-once running mean equals Flower's FedAvg average; an integer buffer stays
    an integer (Flower's would become float64 and be rejected by the next round's check)."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    rng = np.random.default_rng(0)
    ref = {**REF, "steps": np.zeros((), np.int64)}
    replies, contents = [], []
    for i, n in enumerate((5, 17, 40)):
        arrays = {"w": rng.normal(size=(2, 3)).astype(np.float32),
                  "b": rng.normal(size=3).astype(np.float32), "steps": np.array(10 * i)}
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n, "loss": float(i)}),
            "status": ConfigRecord({"status": "ok", "client": f"c{i}"}),
        })
        contents.append(content)
        replies.append(Message(content, dst_node_id=1, message_type="train"))
    arrays, metrics = FedSSLStrategy(reference=ref).aggregate_train(1, replies)
    flower = aggregate_arrayrecords(contents, "num-examples")
    for k in ("w", "b"):
        assert arrays[k].numpy().dtype == np.float32
        np.testing.assert_allclose(arrays[k].numpy(), flower[k].numpy(), rtol=1e-6)
    assert arrays["steps"].numpy().dtype == np.int64
    assert int(arrays["steps"].numpy()) == round((0 * 5 + 10 * 17 + 20 * 40) / 62)
    assert metrics["loss"] == pytest.approx((0 * 5 + 1 * 17 + 2 * 40) / 62)


def test_fast_decode_equals_numpy_load_and_falls_back() -> None:
    """Bytes exactly as np.save writes them decode without numpy's header parser; anything
    else (here a Fortran-ordered array, whose header differs) takes Flower's general path."""
    from fedssl.server.replies import decode_arrays

    rng = np.random.default_rng(1)
    w = rng.normal(size=(2, 3)).astype(np.float32)
    for stored in (w, np.asfortranarray(w)):
        values, problem = decode_arrays(
            ArrayRecord({"w": Array(stored), "b": Array(REF["b"])}), REF)
        assert problem is None
        np.testing.assert_array_equal(values["w"], w)
        assert values["w"].shape == (2, 3) and values["w"].dtype == np.float32
    truncated = Array(w)
    truncated.data = truncated.data[:-4]
    _, problem = decode_arrays(ArrayRecord({"w": truncated, "b": Array(REF["b"])}), REF)
    assert problem is not None and "not a readable array" in problem
