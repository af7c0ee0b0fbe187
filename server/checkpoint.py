"""Checkpoints of the global model and strategy state.

Weights are stored with safetensors (no pickle: a checkpoint can't run code when loaded).
``RUN/checkpoints/round-NNNN.safetensors`` holds the whole global model after round N, and
``RUN/checkpoints/state.json`` the last completed round and the strategy's state, written
atomically (:mod:`fedssl.atomic`: temp file, fsync, rename) after the weights, so a crash never
leaves a state that points at a missing or half-written checkpoint. The exported encoder
(``RUN/encoder.safetensors``) is :func:`fedssl.ssl_core.warm_start.export_encoder`.

A round is *complete* once its checkpoint and then its ``metrics.jsonl`` row (the last thing
the server writes in a round) are on disk. :func:`resume_point` finds the last complete round,
so a resumed run redoes a round that was interrupted or crashed anywhere before its metrics
row, even after its checkpoint was written, and never counts it as trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedssl.atomic import atomic_path, atomic_write_bytes
from fedssl.run_layout import RunLayout


class CheckpointError(ValueError):
    """Raised for a missing, corrupt or mismatched checkpoint."""


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as safetensors, atomically (a crash keeps the old file or none)."""
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors checkpoint file; any damage is a :class:`CheckpointError` naming it
    (safetensors raises its own ``SafetensorError``, which is not a ``ValueError``)."""
    try:
        return load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: {exc}") from exc


def save_checkpoint(run_dir: Path, server_round: int, weights: dict[str, np.ndarray],
                    state: dict, server_momentum: dict[str, np.ndarray] | None = None) -> Path:
    """Write round ``server_round``'s weights (and FedAvgM's velocity, if given), then point
    ``state.json`` at them.

    Args:
        run_dir: the run directory.
        server_round: the round checkpointed.
        weights: the global model's weights.
        state: further entries for ``state.json``.
        server_momentum: FedAvgM's velocity, or None.

    Returns:
        The path of the weights file.
    """
    layout = RunLayout(run_dir)
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    if server_momentum:
        _save_arrays(layout.server_momentum(server_round), server_momentum)
    path = layout.checkpoint(server_round)
    _save_arrays(path, weights)
    atomic_write_bytes(layout.checkpoint_state,
                       json.dumps({"round": server_round, "weights": path.name, **state},
                                  indent=2).encode())
    return path


def load_latest(run_dir: Path) -> tuple[int, dict[str, np.ndarray], dict] | None:
    """The last completed round, its weights and strategy state (None if no checkpoint)."""
    layout = RunLayout(run_dir)
    state_path = layout.checkpoint_state
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        weights = load_file(str(layout.checkpoints / state["weights"]))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"corrupt checkpoint in {layout.checkpoints}: {exc}") from exc
    return int(state["round"]), weights, state


@dataclass
class ResumePoint:
    """Where a resumed run continues: after ``round``, the last complete round."""

    #: last complete round (0: none; the run restarts at round 1 from the seeded init)
    round: int
    #: the global model after ``round`` (None for round 0)
    weights: dict[str, np.ndarray] | None
    #: metrics.jsonl rows of rounds 0..round (rows of later, incomplete rounds dropped)
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: the round ``state.json`` points at (> ``round`` when that round never got its row)
    checkpointed: int = 0
    #: FedAvgM's velocity after ``round`` (None: no server momentum was saved)
    server_momentum: dict[str, np.ndarray] | None = None


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``; a torn last line (a crash while appending) is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path}: line {i + 1} is not JSON ({exc})") from exc
    return rows


def resume_point(run_dir: Path) -> ResumePoint | None:
    """The last complete round of the run in ``run_dir``: the latest round ``r`` (at most the
    one ``state.json`` points at) whose checkpoint file exists and whose metrics row was
    written; None if the directory holds no run (no metrics and no checkpoint)."""
    layout = RunLayout(run_dir)
    state_path = layout.checkpoint_state
    rows = _metrics_rows(layout.metrics)
    if not rows and not state_path.exists():
        return None
    checkpointed = 0
    if state_path.exists():
        try:
            checkpointed = int(json.loads(state_path.read_text())["round"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"corrupt checkpoint state {state_path}: {exc}") from exc
    with_row = {int(r["round"]) for r in rows if "round" in r}
    done = max((r for r in with_row if 0 < r <= checkpointed
                and layout.checkpoint(r).exists()), default=0)
    weights = velocity = None
    if done:
        weights = _load_arrays(layout.checkpoint(done))
        if layout.server_momentum(done).exists():
            velocity = _load_arrays(layout.server_momentum(done))
    kept = [r for r in rows if int(r.get("round", -1)) <= done]
    return ResumePoint(done, weights, kept, checkpointed, velocity)


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with ``rows`` atomically (a crash keeps the old file).

    Args:
        run_dir: the run directory.
        rows: the metrics rows to keep.
    """
    atomic_write_bytes(RunLayout(run_dir).metrics,
                       "".join(json.dumps(r) + "\n" for r in rows).encode())

