"""``--tensorboard`` (issue 15 item 5a): each metrics row and the clients' ledger epsilons
become TensorBoard scalars in RUN/tensorboard/, read back here with TensorBoard's own
EventAccumulator."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedssl.run_layout import RunLayout
from fedssl.server.tensorboard_log import TensorBoardLog


def _ledger_line(client: str, rnd: int, eps: float | str, run_id: str = "r1") -> str:
    return json.dumps({"round": rnd, "client": client, "epsilon": eps, "run_id": run_id,
                       "noise_multiplier": 1.0}) + "\n"


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(RunLayout(run_dir).tensorboard))
    acc.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_rows_and_ledger_epsilons_are_scalars(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    layout.ledger_dir.mkdir()
    log = TensorBoardLog(tmp_path, run_id="r1")
    log.add_round({"round": 0, "clients": 0, "seconds": 0.0, "linear_probe_accuracy": 0.5,
                   "knn_accuracy": 0.4, "linear_probe_5shot": 0.3})
    for rnd, loss in ((1, 0.9), (2, 0.7)):
        with layout.ledger("client-000").open("a") as fh:
            fh.write(_ledger_line("client-000", rnd, 1.5 * rnd))
        with layout.ledger("client-001").open("a") as fh:
            fh.write(_ledger_line("client-001", rnd, 2.0 * rnd))
            fh.write(_ledger_line("client-001", rnd, 99.0, run_id="older-run"))
        log.add_round({"round": rnd, "loss": loss, "clients": 2, "seconds": 3.5 + rnd,
                       "client_train_seconds": 2.0, "epsilon_max": 2.0 * rnd,
                       "refused": {}, "distributed_dp": {"x": 1},
                       "linear_probe_accuracy": 0.5 + rnd / 10, "knn_accuracy": None})
    log.add_round({"round": 3, "loss": 0.6, "seconds": 4.0})  # ledgers unchanged
    log.close()
    s = _scalars(tmp_path)
    assert s["train/loss"] == [(1, 0.9), (2, 0.7), (3, 0.6)]
    assert s["eval/linear_probe_accuracy"] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert s["eval/knn_accuracy"] == [(0, 0.4)] and s["eval/linear_probe_5shot"] == [(0, 0.3)]
    assert s["time/round_seconds"] == [(0, 0.0), (1, 4.5), (2, 5.5), (3, 4.0)]
    assert s["privacy/epsilon_max"] == [(1, 2.0), (2, 4.0)]
    assert s["privacy/epsilon/client-000"] == [(1, 1.5), (2, 3.0)]
    assert s["privacy/epsilon/client-001"] == [(1, 2.0), (2, 4.0)]  # other runs' left out
    assert not any(t.startswith(("eval/refused", "eval/distributed_dp")) for t in s)


def test_a_resumed_run_starts_at_its_first_round(tmp_path: Path) -> None:
    first = TensorBoardLog(tmp_path)
    for rnd in (1, 2, 3):
        first.add_round({"round": rnd, "loss": 1.0 / rnd})
    first.close()
    RunLayout(tmp_path).ledger_dir.mkdir()
    RunLayout(tmp_path).ledger("c").write_text(_ledger_line("c", 1, 1.0)
                                               + _ledger_line("c", 3, 5.0))
    resumed = TensorBoardLog(tmp_path, start_round=3)  # round 3 is redone
    resumed.add_round({"round": 3, "loss": 0.25})
    resumed.close()
    s = _scalars(tmp_path)
    assert s["train/loss"] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert s["privacy/epsilon/c"] == [(3, 5.0)]
