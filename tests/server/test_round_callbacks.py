"""Round side effects are callbacks in a registry (issue 23 item 2, (e)): a toy callback
registered in one place runs in every round of a real federation, sees the new global model
before the row is written, may add to the row, and is closed at the end; the built-in ones
write the checkpoint, the evaluation and metrics.jsonl as before.

The federation runs in this process: the production ServerApp's round loop
(:func:`fedssl.server.app.run_federation`) against the production ClientApp through a grid
that delivers each message to the addressed node (no Ray, no network, no clock).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedssl.run_spec import ServerRun
from fedssl.server.app import run_federation
from fedssl.server.round_callbacks import (
    CALLBACKS,
    RoundCallback,
    RoundState,
    RunContext,
    register_callback,
)
from tests.in_process_grid import InProcessGrid


def _run(run_dir: Path, rounds: int = 2) -> dict[str, Any]:
    run = ServerRun.from_run_config({
        "num-server-rounds": rounds, "num-clients": 2, "num-samples": 300, "eval-samples": 100,
        "partitioner": "iid", "few-label": "", "finetune": "", "dp": False, "secagg": False,
        "progress": False, "run-dir": str(run_dir), "local-epochs": 1, "batch-size": 64})
    return run_federation(InProcessGrid(2), run)


@pytest.mark.usefixtures("flower_identity")
def test_a_registered_callback_runs_in_every_round(tmp_path: Path) -> None:
    seen: list[tuple[str, Any]] = []

    class Recorder(RoundCallback):
        def __init__(self, ctx: RunContext) -> None:
            seen.append(("start", (ctx.start_round, ctx.rounds, ctx.resumed)))

        def after_aggregate(self, state: RoundState) -> None:
            first = next(iter(state.model.encoder.parameters()))
            seen.append(("aggregate", state.server_round))
            state.row["toy_norm"] = float(first.detach().norm())

        def after_row(self, row: dict[str, Any]) -> None:
            seen.append(("row", row["round"]))

        def close(self) -> None:
            seen.append(("close", None))

    register_callback("toy-recorder")(Recorder)
    try:
        _run(tmp_path / "run")
    finally:
        CALLBACKS.pop("toy-recorder")
    assert seen == [("start", (1, 2, False)), ("row", 0), ("aggregate", 1), ("row", 1),
                    ("aggregate", 2), ("row", 2), ("close", None)]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["toy_norm"] > 0 for r in rows[1:])  # added to the row before it was written
    assert all(r["clients"] == 2 for r in rows[1:])
    # where the clients' round went (issue 24 item 1): every phase, the training phase
    # holding train_local's own seconds
    for r in rows[1:]:
        phases = r["client_phase_seconds"]
        assert set(phases) == {"setup", "plan", "model", "train", "ledger", "reply"}
        assert all(v >= 0 for v in phases.values())
        assert phases["train"] >= r["client_train_seconds"] > 0
    assert "linear_probe_accuracy" in rows[2]  # the evaluation callback, after the last round
    assert (tmp_path / "run" / "checkpoints").is_dir()  # the checkpoint callback
    assert not (tmp_path / "run" / "tensorboard").exists()  # off unless asked for


def test_the_built_in_callbacks_run_in_this_order() -> None:
    assert list(CALLBACKS)[:4] == ["checkpoint", "evaluation", "metrics", "tensorboard"]
