"""The ServerApp counts the federation's nodes only once they are registered
(fedssl.server.federation_nodes): Flower's simulation runtime starts the ServerApp before its
engine registers the simulated nodes. A fake clock makes these tests independent of load."""

from __future__ import annotations

import logging

import pytest

from fedssl.server.federation_nodes import POLL_SECONDS, await_nodes


class FakeGrid:
    """A grid whose nodes appear at given (fake) times; ``sleep`` advances the clock."""

    def __init__(self, arrivals: dict[int, float]) -> None:
        self.arrivals, self.now, self.calls = arrivals, 0.0, 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return [node for node, at in self.arrivals.items() if at <= self.now]

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _await(grid: FakeGrid, expected: int, timeout: float = 60.0) -> list[int]:
    return await_nodes(grid, expected, timeout, clock=grid.clock, sleep=grid.sleep)


def test_a_known_number_of_nodes_is_waited_for() -> None:
    grid = FakeGrid({7: 0.2, 3: 0.5, 5: 2.0})
    assert _await(grid, 3) == [3, 5, 7]
    assert 2.0 <= grid.now < 2.0 + 2 * POLL_SECONDS  # returned as soon as the last came


def test_nodes_already_there_cost_no_wait() -> None:
    grid = FakeGrid({1: 0.0, 2: 0.0})
    assert _await(grid, 2) == [1, 2]
    assert grid.now == 0.0 and grid.calls == 1


def test_an_unknown_number_waits_until_the_count_settles() -> None:
    """``flwr run .``: the ServerApp does not know the federation's size; nodes registered in
    bursts are all counted once no new one came for the settle time (1 s)."""
    grid = FakeGrid({1: 0.1, 2: 0.1, 3: 0.6, 4: 0.9})
    assert _await(grid, 0) == [1, 2, 3, 4]
    assert 1.9 <= grid.now < 1.9 + 2 * POLL_SECONDS


def test_the_wait_is_bounded_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    grid = FakeGrid({1: 0.0, 2: 100.0})
    with caplog.at_level(logging.WARNING, logger="fedssl.server"):
        assert _await(grid, 2, timeout=5.0) == [1]
    assert 5.0 <= grid.now < 5.0 + 2 * POLL_SECONDS
    assert "1 of 2 node(s) are registered" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedssl.server"):
        assert _await(FakeGrid({}), 0, timeout=3.0) == []
    assert "0 of an unknown number of node(s)" in caplog.text


# --- issue 22, item 1: one dead site must not hang the federation -------------------------
# Flower's node sampler (strategy_utils.sample_nodes) waited without a bound for as many nodes
# as the first round had: a site killed during round 1 made round 2 wait for ever.

from fedssl.server.federation_nodes import (  # noqa: E402
    MIN_SECAGG_NODES,
    TooFewNodesError,
    await_round_nodes,
    min_round_nodes,
)


class DeployGrid(FakeGrid):
    """A deployment's grid: node ``gone`` leaves at fake time ``left``; messages get no reply.
    Asked more than ``max_calls`` times without its clock moving, it fails the test instead
    of letting an unbounded wait on the real clock hang it (Flower's sampler sleeps 1 s of
    real time per call)."""

    def __init__(self, arrivals: dict[int, float], gone: dict[int, float],
                 max_calls: int = 3) -> None:
        super().__init__(arrivals)
        self.gone, self.max_calls, self.sent = gone, max_calls, []
        self._stalled, self._last = 0, -1.0

    def get_node_ids(self) -> list[int]:
        if self.now == self._last:
            self._stalled += 1
            assert self._stalled <= self.max_calls, "waited for nodes that are gone"
        self._last = self.now
        return [n for n in super().get_node_ids() if self.now < self.gone.get(n, float("inf"))]

    def send_and_receive(self, messages, timeout=None):
        self.sent.append([(m.metadata.message_type, m.metadata.dst_node_id) for m in messages])
        return []


def _strategy(grid: DeployGrid, known: set[int], minimum: int, wait: float = 30.0):
    import numpy as np

    from fedssl.server.strategy import FedSSLStrategy

    strategy = FedSSLStrategy(reference={"w": np.zeros(2, np.float32)}, fraction_train=1.0,
                              min_train_nodes=len(known), min_available_nodes=len(known))
    strategy.known_nodes, strategy.min_round_nodes, strategy.round_wait = known, minimum, wait
    strategy.clock, strategy.sleep = grid.clock, grid.sleep
    return strategy


def test_a_round_starts_with_the_connected_nodes_when_one_is_gone(
        caplog: pytest.LogCaptureFixture) -> None:
    """3 sites started the run, one died: the next round samples the 2 connected ones at
    once (no wait at all, fake clock unmoved) and names the missing one."""
    grid = DeployGrid({1: 0.0, 2: 0.0, 3: 0.0}, gone={3: 0.0})
    strategy = _strategy(grid, {1, 2, 3}, minimum=2)
    strategy.names[3] = "site-3"
    with caplog.at_level(logging.WARNING, logger="fedssl.server"):
        assert sorted(strategy.sample(2, grid)) == [1, 2]
    assert grid.now == 0.0
    assert strategy.round_missing == {"site-3": "not connected when the round started"}
    assert "2 of 3 clients connected; not connected: site-3" in caplog.text


def test_a_round_waits_for_its_minimum_within_the_round_timeout() -> None:
    """Fewer than the minimum connected: the round waits (bounded) and starts as soon as a
    restarted site is back."""
    grid = DeployGrid({1: 0.0, 2: 0.0, 3: 12.0}, gone={2: 0.0}, max_calls=1)
    strategy = _strategy(grid, {1, 2, 3}, minimum=2, wait=30.0)
    assert sorted(strategy.sample(2, grid)) == [1, 3]
    assert 12.0 <= grid.now < 13.0
    assert strategy.round_missing == {"node-2": "not connected when the round started"}


def test_a_run_that_cannot_reach_its_minimum_stops_with_a_clear_error() -> None:
    grid = DeployGrid({1: 0.0, 2: 0.0, 3: 0.0}, gone={2: 0.0, 3: 0.0}, max_calls=1)
    strategy = _strategy(grid, {1, 2, 3}, minimum=2, wait=30.0)
    strategy.names.update({2: "site-2", 3: "site-3"})
    with pytest.raises(TooFewNodesError) as err:
        strategy.sample(4, grid)
    assert 30.0 <= grid.now < 31.5
    text = str(err.value)
    assert "round 4 cannot start" in text and "only 1 node(s) connected for 30 s" in text
    assert "fewer than the 2 a round needs" in text and "site-2, site-3" in text
    assert "round 3 as its last complete round" in text and "--resume" in text


def test_await_round_nodes_returns_at_once_when_enough_are_connected() -> None:
    grid = FakeGrid({4: 0.0, 5: 0.0})
    assert await_round_nodes(grid, 2, 10.0, clock=grid.clock, sleep=grid.sleep) == [4, 5]
    assert grid.now == 0.0 and grid.calls == 1


def test_the_minimum_a_round_starts_with() -> None:
    assert min_round_nodes(secagg=False) == 1
    assert min_round_nodes(secagg=True) == MIN_SECAGG_NODES == 2
    assert min_round_nodes(secagg=True, min_clients=3) == 3
    assert min_round_nodes(secagg=False, min_clients=3) == 3
    assert min_round_nodes(secagg=True, dp_min=4) == 4
    # a federation smaller than the minimum is not waited for (its rounds fail as before)
    grid = DeployGrid({1: 0.0}, gone={})
    assert _strategy(grid, {1}, minimum=2).sample(1, grid) == [1]


def _aggregation(tmp_path, secagg: bool):
    import numpy as np

    from fedssl.run_layout import RunLayout
    from fedssl.run_spec import RunSpec
    from fedssl.server.aggregation import Aggregation
    from fedssl.server.secure_aggregation import simulated_registry

    spec = RunSpec(secagg=secagg, round_timeout=30.0,
                   identity_registry=str(simulated_registry(tmp_path, 3)) if secagg else "")
    return Aggregation(spec, 3, {"w": np.zeros(2, np.float32)}, 0, RunLayout(tmp_path))


@pytest.mark.parametrize("secagg", [False, True], ids=["fedavg", "secagg"])
def test_a_dead_site_is_a_dropout_and_the_round_goes_on(tmp_path, flower_identity,
                                                        secagg: bool) -> None:
    """Through the aggregation path the ServerApp uses: the round's group is fixed when it
    starts (the connected nodes: with secure aggregation its identify stage and its group
    size, which sizes the quantiser, count 2, not the run's 3), and the dead site is a
    dropout of the round."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from fedssl.round_protocol import SECAGG_NUM_CLIENTS

    grid = DeployGrid({11: 0.0, 12: 0.0, 13: 0.0}, gone={13: 0.0})
    aggregation = _aggregation(tmp_path, secagg)
    strategy = aggregation.strategy
    strategy.known_nodes = {11, 12, 13}
    strategy.clock, strategy.sleep = grid.clock, grid.sleep
    assert strategy.min_round_nodes == (2 if secagg else 1)
    config = ConfigRecord({})
    aggregate, _ = aggregation.run_round(
        2, grid, ArrayRecord({"w": Array(np.zeros(2, np.float32))}), config)
    assert aggregate is None  # nobody replied (a fake grid)
    first = grid.sent[0]
    assert sorted(node for _, node in first) == [11, 12]
    assert {kind for kind, _ in first} == {"train.secagg_identify" if secagg else "train"}
    if secagg:
        assert config[SECAGG_NUM_CLIENTS] == 2
    assert aggregation.outcome.failed["node-13"] == "not connected when the round started"


def test_the_console_names_the_sites_that_disconnect_and_reconnect() -> None:
    """``fedssl server`` reads the SuperLink's node list every second: a site going offline
    (or coming back) is said at once, by the name it was registered under; the ServerApp's
    ``node-<Flower id>`` in a round's line becomes that name."""
    from fedssl.server.superlink import connection_changes, name_nodes

    up = {123456789: ("node-1", "online"), 987654321: ("node-3", "online")}
    down = {123456789: ("node-1", "online"), 987654321: ("node-3", "offline")}
    assert connection_changes(up, up, 2) == []
    [line] = connection_changes(up, down, 2)
    assert line.startswith("node-3 disconnected (not connected: node-3); 1 of 2 sites "
                           "connected") and "while at least 2 are" in line
    assert connection_changes(down, up, 2) == ["node-3 connected; 2 of 2 sites connected"]
    text = "round 2/2  clients 1  failed: node-987654321"
    assert name_nodes(text, down) == "round 2/2  clients 1  failed: node-3"
    assert name_nodes("failed: node-555555555", down) == "failed: node-555555555"


def test_fault_settings_are_sent_only_when_faults_are_simulated(tmp_path) -> None:
    """Issue 23 item 5: the simulated fault model's settings travel in the secure-aggregation
    stages only when a fault is configured; a deployment's messages carry none of them."""
    assert _aggregation(tmp_path, secagg=True).secure.fault_config == {}
    import numpy as np

    from fedssl.run_layout import RunLayout
    from fedssl.run_spec import RunSpec
    from fedssl.server.aggregation import Aggregation
    from fedssl.server.secure_aggregation import simulated_registry

    spec = RunSpec(secagg=True, round_timeout=30.0, dropout_prob=0.2,
                   identity_registry=str(simulated_registry(tmp_path, 3)))
    faulty = Aggregation(spec, 3, {"w": np.zeros(2, np.float32)}, 0, RunLayout(tmp_path))
    assert faulty.secure.fault_config["dropout-prob"] == 0.2
