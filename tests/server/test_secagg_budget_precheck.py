"""Under secure aggregation a client that would refuse to train says so when the round
starts (``train.secagg_identify``), so a round that SecAgg+ cannot complete is skipped before
anybody spends privacy on it; a round whose updates are discarded after clients trained is
reported loudly (issue 22, item 7).

The round runs through the server's own aggregation path and the production ClientApp, with
a grid that delivers each message to the addressed node in this process (no Ray, no clock).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ArrayRecord

from fedssl.client.privacy_guard import write_site_file
from fedssl.run_layout import RunLayout
from fedssl.run_spec import RunSpec, ServerRun
from fedssl.server.aggregation import Aggregation
from fedssl.server.app import round_config
from fedssl.server.secure_aggregation import simulated_registry
from fedssl.ssl_core.objectives import get_objective
from tests.in_process_grid import InProcessGrid


def _round(run: Path, budgets: dict[str, float], clients: int = 2
           ) -> tuple[Aggregation, InProcessGrid]:
    """One DP + SecAgg+ round of ``clients`` simulated clients; ``budgets``: site budgets."""
    spec = RunSpec(secagg=True, dp=True, target_epsilon=8.0, num_samples=300,
                   partitioner="iid", rounds=1, round_timeout=30.0, run_dir=str(run),
                   identity_registry=str(simulated_registry(run, clients)))
    for cid, eps in budgets.items():
        write_site_file(RunLayout(run).client_dir(cid), epsilon=eps, delta=1e-5)
    model = get_objective(spec.method).build_model((1, 40))
    reference = {k: v.numpy() for k, v in model.state_dict().items()}
    aggregation = Aggregation(spec, clients, reference, 0, RunLayout(run))
    grid = InProcessGrid(clients)
    aggregation.strategy.known_nodes = set(grid.contexts)
    config, _ = round_config(ServerRun(spec, num_clients=clients), (1, 40), run)
    config["server-round"] = 1
    aggregation.run_round(1, grid, ArrayRecord(model.state_dict()), config)
    return aggregation, grid


@pytest.mark.usefixtures("flower_identity")
def test_a_round_secagg_cannot_complete_is_skipped_before_anybody_trains(
        tmp_path: Path) -> None:
    """2 clients, client-001's own budget cannot pay for the round: it declines when asked
    who takes part, so the round stops before the key setup; client-000 never trains and
    its ledger stays empty (before: client-000 spent epsilon 8 on a discarded round)."""
    run = tmp_path / "run"
    aggregation, grid = _round(run, {"client-001": 0.05})
    outcome = aggregation.outcome
    assert "privacy budget would be exceeded" in outcome.refused["client-001"]
    assert "only 1 of 2 sampled clients can take part" in outcome.failed["secagg"]
    assert "no privacy spent" in outcome.failed["secagg"]
    assert grid.sent == ["train.secagg_identify"] * 2  # no key setup, no training
    assert not RunLayout(run).ledger("client-000").exists()
    assert not RunLayout(run).ledger("client-001").exists()


@pytest.mark.usefixtures("flower_identity")
def test_clients_that_can_pay_still_train_together(tmp_path: Path) -> None:
    """The check costs a round nothing when every client can pay: both identify, set up,
    train and are aggregated, each with one ledger entry."""
    run = tmp_path / "run"
    aggregation, grid = _round(run, {"client-001": 50.0})
    assert sorted(aggregation.outcome.accepted) == ["client-000", "client-001"]
    assert "train" in grid.sent and "secagg" not in aggregation.outcome.failed
    for cid in ("client-000", "client-001"):
        lines = RunLayout(run).ledger(cid).read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["round"] == 1


@pytest.mark.usefixtures("flower_identity")
def test_a_client_that_declines_is_recorded_and_the_others_are_aggregated(
        tmp_path: Path) -> None:
    """3 clients, client-001 cannot pay: the round goes on with the 2 others (aggregated),
    and client-001's refusal is in the round's outcome (the final table's "refused round(s)"
    line and report.json's refusals come from it)."""
    run = tmp_path / "run"
    aggregation, _ = _round(run, {"client-001": 0.05}, clients=3)
    outcome = aggregation.outcome
    assert sorted(outcome.accepted) == ["client-000", "client-002"]
    assert "privacy budget would be exceeded" in outcome.refused["client-001"]
    assert "secagg" not in outcome.failed
    assert not RunLayout(run).ledger("client-001").exists()


def test_discarded_updates_are_reported_loudly(tmp_path: Path) -> None:
    """A client that trained in a round whose sum was never released (a dropout after the
    key setup left SecAgg+ short) is named in the row, report.json and the final table."""
    from fedssl.server.round_metrics import RoundMetrics
    from fedssl.server.strategy import RoundOutcome

    metrics = RoundMetrics([], dp=True, divergence=False)
    outcome = RoundOutcome(failed={"secagg": "MaskedInput: 1 participants < threshold 2"},
                           client_metrics={"client-000": {"steps": 5.0, "epsilon": 2.0}})
    row = metrics.row(3, outcome, None)
    assert row["discarded"] == ["client-000"] and metrics.discarded == {"client-000": [3]}
    resumed = RoundMetrics([row], dp=True, divergence=False)
    assert resumed.discarded == {"client-000": [3]}

    from fedssl.server.report_table import format_report

    report = {"method": "simsiam", "dataset": "mnist1d", "clients": 2, "rounds": 3,
              "wall_seconds": 1.0, "random_init": {}, "secure_aggregation": True,
              "discarded": metrics.discarded, "privacy": None}
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = format_report(tmp_path)
    assert ("WARNING: privacy spent on discarded updates: client-000 trained in round(s) 3"
            in text)
