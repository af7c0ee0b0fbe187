"""DP-FedAvg: clipping bounds each client's influence; noise has the calibrated scale."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedssl.privacy.client_level.central import ClientLevelGaussian, poisson_sample, update_norm
from fedssl.server.strategy import FedSSLStrategy

REF = {"w": np.zeros((4, 5), np.float32), "b": np.zeros(5, np.float32)}


def test_clip_bounds_norm_and_keeps_small_updates() -> None:
    mech = ClientLevelGaussian(1.0, 0.0, 1.0, np.random.default_rng(0))
    big = {"w": np.full((4, 5), 3.0), "b": np.full(5, -2.0)}
    assert update_norm(mech.constrain_sensitivity(big)) == pytest.approx(1.0)
    small = {"w": np.full((4, 5), 0.01), "b": np.zeros(5)}
    np.testing.assert_allclose(mech.constrain_sensitivity(small)["w"], small["w"])


def test_removing_one_client_moves_noise_free_sum_by_at_most_clip() -> None:
    rng = np.random.default_rng(1)
    mech = ClientLevelGaussian(0.5, 0.0, 1.0, rng)
    updates = [{"w": rng.normal(size=(4, 5)) * 5, "b": rng.normal(size=5)} for _ in range(6)]
    clipped = [mech.constrain_sensitivity(u) for u in updates]
    full = mech.noisy_mean(clipped, REF)
    for i in range(6):
        without = mech.noisy_mean(clipped[:i] + clipped[i + 1:], REF)
        diff = {k: full[k].astype(np.float64) - without[k] for k in REF}
        assert update_norm(diff) <= 0.5 * (1 + 1e-5)


def test_noise_scale_matches_calibration() -> None:
    mech = ClientLevelGaussian(2.0, 1.5, expected_clients=4.0, rng=np.random.default_rng(2))
    template = {"w": np.zeros(20000, np.float32)}
    out = mech.noisy_mean([], template)["w"]
    assert out.std() == pytest.approx(1.5 * 2.0 / 4.0, rel=0.03)


def test_poisson_sampling_rate() -> None:
    rng = np.random.default_rng(3)
    counts = [len(poisson_sample(list(range(100)), 0.2, rng)) for _ in range(200)]
    assert np.mean(counts) == pytest.approx(20, rel=0.05)
    assert np.std(counts) > 1  # variable, not fixed-size


def test_strategy_applies_client_dp(flower_identity) -> None:
    mech = ClientLevelGaussian(1.0, 0.0, expected_clients=2.0, rng=np.random.default_rng(0))
    strategy = FedSSLStrategy(reference=REF, client_dp=mech)
    strategy.current = {k: v.copy() for k, v in REF.items()}

    def reply(value: float) -> Message:
        return Message(RecordDict({
            "arrays": ArrayRecord({"w": Array(np.full((4, 5), value, np.float32)),
                                   "b": Array(np.zeros(5, np.float32))}),
            "metrics": MetricRecord({"num-examples": 10, "loss": 0.5}),
            "status": ConfigRecord({"status": "ok", "client": f"c{value}"}),
        }), dst_node_id=1, message_type="train")

    arrays, _ = strategy.aggregate_train(1, [reply(10.0), reply(0.01)])
    w = arrays["w"].numpy()
    # client 1 clipped to norm 1 (each entry 1/sqrt(20)), client 2 within the clip
    np.testing.assert_allclose(w, (1 / np.sqrt(20) + 0.01) / 2, rtol=1e-5)
