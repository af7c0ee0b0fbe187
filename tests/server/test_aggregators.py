"""The server's averaging rules (fedssl.ssl_core.aggregators): the example-weighted mean,
L-DAWA's layer-wise cosine weights, and a new rule added in one place (issue 23, (d))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedssl.run_spec import ConfigError, RunSpec, ServerRun
from fedssl.ssl_core.aggregators import (
    AGGREGATORS,
    Aggregator,
    get_aggregator,
    register_aggregator,
)
from tests.in_process_grid import InProcessGrid

REF = {"w": np.zeros((2, 2), np.float32), "n": np.zeros((), np.int64)}


def test_ldawa_weighs_each_layer_by_its_cosine_to_the_global_layer() -> None:
    """Rehman et al. 2023: a layer that kept the global direction counts fully, one at right
    angles not at all; integer buffers are example-weighted means."""
    current = {"w": np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), "n": np.array(0)}
    rule = get_aggregator("ldawa")(REF, current)
    same = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)  # cos 1
    right = np.array([[0.0, 3.0], [0.0, 0.0]], np.float32)  # cos 0
    tilted = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)  # cos 1/sqrt(2)
    for w, n, weight in ((same, 10, 1.0), (right, 20, 1.0), (tilted, 40, 2.0)):
        rule.add({"w": w, "n": np.array(n)}, weight)
    out = rule.result()
    expected = (same + tilted / np.sqrt(2)) / 3
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    assert out["w"].dtype == np.float32
    assert out["n"] == np.rint((10 + 20 + 2 * 40) / 4) and out["n"].dtype == np.int64


def test_the_mean_is_example_weighted_and_needs_no_global_model() -> None:
    rule = get_aggregator("mean")(REF)
    rule.add({"w": np.ones((2, 2), np.float32), "n": np.array(1)}, 1.0)
    rule.add({"w": np.full((2, 2), 4.0, np.float32), "n": np.array(3)}, 3.0)
    np.testing.assert_allclose(rule.result()["w"], np.full((2, 2), 3.25))
    with pytest.raises(ValueError, match="not given"):
        get_aggregator("ldawa")(REF)
    with pytest.raises(ValueError, match="unknown aggregator 'median'"):
        get_aggregator("median")


def test_rules_that_need_single_updates_are_refused_where_the_server_sees_none() -> None:
    RunSpec(aggregator="ldawa", secagg=False).validate()
    with pytest.raises(ConfigError, match="secure aggregation hides"):
        RunSpec(aggregator="ldawa").validate()  # secure aggregation is on by default
    with pytest.raises(ConfigError, match="central client-level DP"):
        RunSpec(aggregator="ldawa", secagg=False, dp=False, client_dp="central").validate()
    with pytest.raises(ConfigError, match="unknown 'median'"):
        RunSpec(aggregator="median", secagg=False).validate()


@pytest.mark.usefixtures("flower_identity")
def test_a_new_rule_is_added_in_one_place(tmp_path: Path) -> None:
    """A toy rule registered with ``register_aggregator`` alone is accepted by the run
    settings and averages the rounds of a real (in-process) federation."""
    calls: list[float] = []

    @register_aggregator
    class FirstReply(Aggregator):
        """Keeps the first accepted model (a toy)."""

        name = "toy-first"

        def __init__(self, reference, current=None) -> None:
            super().__init__(reference, current)
            self.first: dict[str, np.ndarray] | None = None

        def add(self, values, weight) -> None:
            calls.append(weight)
            self.first = self.first or dict(values)

        def result(self):
            assert self.first is not None
            return {k: self._cast(k, v) for k, v in self.first.items()}

    from fedssl.server.app import run_federation

    try:
        run = ServerRun.from_run_config({
            "num-server-rounds": 1, "num-clients": 2, "num-samples": 300, "eval-samples": 100,
            "partitioner": "iid", "few-label": "", "finetune": "", "dp": False,
            "secagg": False, "progress": False, "run-dir": str(tmp_path / "run"),
            "aggregator": "toy-first"})
        report = run_federation(InProcessGrid(2), run)
    finally:
        AGGREGATORS.pop("toy-first")
    assert len(calls) == 2 and all(w > 0 for w in calls)  # both replies went through it
    assert report["rounds"] == 1
