"""Unit tests of the server's aggregation path on its own (issue 23 item 7): the path chosen
from the settings (:class:`fedssl.server.aggregation.Aggregation`), the server optimizer's
step, the client-level privacy it reports, a resume's state, and the metrics row of a round
(:class:`fedssl.server.round_metrics.RoundMetrics`). The whole-run tests
(``test_round_callbacks``, ``test_secagg_budget_precheck``, the slow e2e suite) run the same
code through real rounds; these pin each piece's contract without a grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord

from fedssl.privacy.accounting.budget import epsilon_of
from fedssl.privacy.client_level.distributed import DistributedDPError, SkellamRound
from fedssl.run_layout import RunLayout
from fedssl.run_spec import RunSpec
from fedssl.server.aggregation import Aggregation, min_dp_clients
from fedssl.server.round_metrics import RoundMetrics
from fedssl.server.secure_aggregation import DistributedDP, simulated_registry
from fedssl.server.strategy import RoundOutcome

REF = {"w": np.zeros(3, np.float32)}


def _aggregation(tmp_path: Path, nodes: int = 4, **settings: object) -> Aggregation:
    spec = RunSpec(**{"secagg": False, **settings})  # type: ignore[arg-type]
    if spec.secagg:
        spec = RunSpec(**{**settings,  # type: ignore[arg-type]
                          "identity_registry": str(simulated_registry(tmp_path, nodes))})
    return Aggregation(spec, nodes, REF, 0, RunLayout(tmp_path))


def _arrays(values: list[float]) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.asarray(values, np.float32))})


def test_the_settings_choose_the_path(tmp_path: Path) -> None:
    plain = _aggregation(tmp_path / "a")
    assert plain.secure is None and plain.client_dp is None and plain.per_round == 4
    central = _aggregation(tmp_path / "b", client_dp="central", client_clip=0.5,
                           client_noise_multiplier=2.0, clients_per_round=2)
    assert central.client_dp is not None and central.client_dp.clip_norm == 0.5
    assert central.client_rate == 0.5 and central.strategy.client_dp is central.client_dp
    secure = _aggregation(tmp_path / "c", secagg=True, client_dp="distributed",
                          client_clip=0.7)
    assert secure.secure is not None and secure.distributed_dp is not None
    assert secure.distributed_dp.clip == 0.7
    # a round waits for SecAgg+'s smallest group and for the distributed-DP shares
    assert secure.strategy.min_round_nodes == min_dp_clients(RunSpec(), 4) == 3
    assert plain.strategy.min_round_nodes == 1


def test_min_dp_clients_is_the_setting_or_80_percent_of_a_round() -> None:
    assert min_dp_clients(RunSpec(client_dp_min_clients=5), 10) == 5
    assert min_dp_clients(RunSpec(), 10) == 8
    assert min_dp_clients(RunSpec(), 1) == 1


def test_step_is_fedavg_fedavgm_or_no_change(tmp_path: Path) -> None:
    plain = _aggregation(tmp_path / "a")
    current, aggregate = _arrays([0, 0, 0]), _arrays([1, 2, 3])
    assert plain.step(1, current, aggregate) is aggregate
    assert plain.step(1, current, None) is current  # no valid update: unchanged
    fedavgm = _aggregation(tmp_path / "b", server_momentum=0.5, server_lr=1.0)
    first = fedavgm.step(1, current, aggregate)
    np.testing.assert_allclose(first["w"].numpy(), [1, 2, 3])
    second = fedavgm.step(2, first, _arrays([1, 2, 3]))  # zero update: momentum carries
    np.testing.assert_allclose(second["w"].numpy(), [1.5, 3, 4.5])


def test_client_level_epsilon_is_reported_per_round_and_for_the_run(tmp_path: Path) -> None:
    central = _aggregation(tmp_path, client_dp="central", client_noise_multiplier=1.5,
                           clients_per_round=2)
    row = central.round_privacy(3)
    assert row["client_level_epsilon"] == pytest.approx(
        epsilon_of([(1.5, 0.5, 3)], 1e-5))
    report = central.run_privacy(3)
    assert report is not None and report["epsilon"] == row["client_level_epsilon"]
    assert report["sample_rate"] == 0.5 and report["rounds"] == 3
    assert _aggregation(tmp_path / "plain").run_privacy(3) is None


def test_resume_restores_the_releases_and_the_velocity(tmp_path: Path) -> None:
    secure = _aggregation(tmp_path, secagg=True, client_dp="distributed")
    release = {"noise_multiplier": 1.0, "l2_sensitivity": 10.0, "l1_sensitivity": 40.0}
    secure.resume([{"round": 1, "distributed_dp": release}, {"round": 2}], None, 2)
    assert secure.released == [SkellamRound(**release)]
    report = secure.run_privacy(2)
    assert report is not None and report["rounds"] == 1
    fedavgm = _aggregation(tmp_path / "m", server_momentum=0.9)
    fedavgm.resume([], {"w": np.ones(3)}, 1)
    np.testing.assert_allclose(fedavgm.server_opt.state()["w"], np.ones(3))


def test_distributed_dp_refuses_a_round_with_too_few_shares() -> None:
    dp = DistributedDP(clip=1.0, noise_multiplier=1.0, min_clients=3)
    with pytest.raises(DistributedDPError, match="fewer than the 3 noise shares"):
        dp.plan(2, 2.0, 100)
    assert dp.plan(3, 2.0, 100).min_clients == 3
    assert dp.client_config()["client-dp-min-clients"] == 3


def test_a_rounds_row_counts_refusals_discards_and_the_clients_claims() -> None:
    metrics = RoundMetrics([], dp=True, divergence=False)
    outcome = RoundOutcome(
        accepted=["a"], refused={"b": "budget"}, failed={"c": "gone"},
        client_metrics={"a": {"steps": 4, "epsilon": 1.5, "train-seconds": 0.5,
                              "phase-train": 0.5, "phase-plan": 0.125},
                        "d": {"steps": 2, "epsilon": 2.5, "train-seconds": 0.25,
                              "phase-train": 0.25}})
    row = metrics.row(1, outcome, MetricRecord({"loss": 0.75}))
    assert (row["round"], row["loss"], row["clients"]) == (1, 0.75, 1)
    assert row["refused"] == {"b": "budget"} and row["failed"] == {"c": "gone"}
    # d trained (spent privacy) but its update was not used
    assert row["discarded"] == ["d"] and metrics.discarded == {"d": [1]}
    assert row["epsilon_max"] == 2.5 and row["client_train_seconds"] == 0.75
    assert row["client_phase_seconds"] == {"train": 0.75, "plan": 0.125}
    metrics.row(2, RoundOutcome(accepted=["a"], client_metrics={"a": {"steps": 3}}), None)
    assert metrics.reported["a"]["steps"] == 7 and metrics.reported["a"]["rounds"] == 2
    assert metrics.refusals == {"b": [{"round": 1, "reason": "budget"}]}
    # without DP no epsilon column; a resumed run keeps the earlier refusals and discards
    resumed = RoundMetrics([{"round": 1, "refused": {"b": "x"}, "discarded": ["d"]}],
                           dp=False, divergence=False)
    assert resumed.refusals == {"b": [{"round": 1, "reason": "x"}]}
    assert resumed.discarded == {"d": [1]}
    assert "epsilon_max" not in resumed.row(2, outcome, None)
