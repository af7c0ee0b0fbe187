"""Simulated dropouts and stragglers are reproducible, at the configured rates, and only for
simulated clients."""

from __future__ import annotations

import time

import pytest

from fedssl.simulations.faults import SimulatedDropoutError, maybe_fault, planned_fault


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


def test_production_app_has_no_mods_and_the_simulator_s_has_the_fault_mod() -> None:
    from fedssl.client.app import app
    from fedssl.simulations.client_app import simulation_app
    from fedssl.simulations.faults import fault_mod

    assert app._mods == []  # Flower keeps a ClientApp's mods there
    assert simulation_app._mods == [fault_mod]
    # the same handlers, plus the simulation's start-up query (fedssl.simulations.warmup)
    assert set(simulation_app._registered_funcs) == {*app._registered_funcs, "query.warmup"}
    assert "query.warmup" not in app._registered_funcs


def test_stage_of_message_types() -> None:
    from fedssl.client import secagg
    from fedssl.simulations.faults import stage_of

    assert stage_of("train") == "train"
    assert stage_of("train.default") == "train"
    assert [stage_of(f"train.secagg_{s}") for s in secagg.STAGES] == list(secagg.STAGES)
    assert stage_of("query.warmup") is None


def _mod_call(message_type: str, config: dict, node_config: dict) -> tuple[bool, object]:
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedssl.simulations.faults import fault_mod

    msg = Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=1,
                  message_type=message_type)
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config=node_config)
    called = []

    def handler(m, c):
        called.append(m)
        return "reply"

    try:
        reply = fault_mod(msg, ctx, handler)
    except SimulatedDropoutError:
        return False, None
    return bool(called), reply


def test_fault_mod_applies_the_planned_fate(flower_identity) -> None:
    cfg = {"dropout-prob": 0.3, "straggler-prob": 0.3, "seed": 5, "server-round": 2,
           "straggler-delay": 0.0}
    for mtype, stage in (("train", "train"), ("train.secagg_setup", "setup"),
                         ("train.secagg_identify", "identify"),
                         ("train.secagg_consistency", "consistency")):
        for pid in range(40):
            fate = planned_fault(5, 2, pid, stage, 0.3, 0.3)
            ran, reply = _mod_call(mtype, cfg, {"partition-id": pid})
            assert ran == (fate != "drop"), (mtype, pid, fate)
            if ran:
                assert reply == "reply"
    # a straggler sleeps before the handler runs
    t0 = time.perf_counter()
    ran, _ = _mod_call("train", {"straggler-prob": 1.0, "straggler-delay": 0.2},
                       {"partition-id": 0})
    assert ran and time.perf_counter() - t0 >= 0.2
    # never for a real site, nor for a message outside training (the warm-up query)
    assert _mod_call("train", {"dropout-prob": 1.0}, {"state-dir": "/site"})[0]
    assert _mod_call("query.warmup", {"dropout-prob": 1.0}, {"partition-id": 0})[0]


def test_a_drop_from_the_simulation_app_fails_the_reply(flower_identity) -> None:
    """The dropout raises out of the ClientApp (the engine turns it into a failed reply), as
    when the handler raised it; the production app runs the handler."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedssl.client.app import app
    from fedssl.simulations.client_app import simulation_app

    config = ConfigRecord({"dropout-prob": 1.0, "seed": 0, "server-round": 1})
    msg = Message(RecordDict({"config": config}), dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config={"partition-id": 0, "num-partitions": 2})
    with pytest.raises(SimulatedDropoutError):
        simulation_app(msg, ctx)
    reply = app(msg, ctx)  # no run-dir: the handler refuses, no fault
    assert reply.content["status"]["status"] == "refused"
