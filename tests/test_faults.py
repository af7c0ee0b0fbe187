"""Simulated dropouts and stragglers are reproducible, at the configured rates, and only for
simulated clients."""

from __future__ import annotations

import time

import pytest

from fedssl.client.faults import SimulatedDropoutError, maybe_fault, planned_fault


def _dropped(config: dict, pid: int, stage: str = "train") -> bool:
    try:
        maybe_fault(config, {"partition-id": pid}, stage)
    except SimulatedDropoutError:
        return True
    return False


def test_dropout_rate_and_reproducibility() -> None:
    cfg = {"dropout-prob": 0.3, "seed": 1, "server-round": 2}
    first = [_dropped(cfg, pid) for pid in range(2000)]
    assert first == [_dropped(cfg, pid) for pid in range(2000)]
    assert sum(first) / 2000 == pytest.approx(0.3, abs=0.04)
    other_stage = [_dropped(cfg, pid, "mask") for pid in range(2000)]
    assert first != other_stage  # independent draws per stage


def test_no_faults_by_default_or_for_real_sites() -> None:
    assert not any(_dropped({"seed": 0}, pid) for pid in range(100))
    maybe_fault({"dropout-prob": 1.0}, {"state-dir": "/site"}, "train")  # a real site


def test_straggler_sleeps() -> None:
    t0 = time.perf_counter()
    maybe_fault({"straggler-prob": 1.0, "straggler-delay": 0.2}, {"partition-id": 0}, "train")
    assert time.perf_counter() - t0 >= 0.2


def test_planned_fault_is_what_maybe_fault_does() -> None:
    """The pure plan (used by tests and researchers to know fates in advance) and the fault
    applied to a message agree for every client and stage; stragglers are planned at the
    configured rate among the clients that do not drop."""
    cfg = {"dropout-prob": 0.2, "straggler-prob": 0.3, "seed": 7, "server-round": 3,
           "straggler-delay": 0.0}
    fates = []
    for stage in ("train", "setup", "unmask"):
        for pid in range(500):
            fate = planned_fault(7, 3, pid, stage, 0.2, 0.3)
            assert (fate == "drop") == _dropped(cfg, pid, stage)
            fates.append(fate)
    kept = [f for f in fates if f != "drop"]
    assert fates.count("drop") / len(fates) == pytest.approx(0.2, abs=0.04)
    assert kept.count("slow") / len(kept) == pytest.approx(0.3, abs=0.05)
