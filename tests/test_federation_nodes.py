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
