"""TensorBoard event files of a run's per-round metrics (``--tensorboard``).

The ServerApp writes one ``metrics.jsonl`` row per round (:func:`fedssl.server.report.
append_metrics`); with ``tensorboard = true`` each row also goes to TensorBoard event files in
``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``), through
``torch.utils.tensorboard.SummaryWriter``, step = round:

================================  ======================================================
tag                               from
================================  ======================================================
``train/loss``                    the row's mean local SSL loss
``eval/<metric>``                 the row's probes: ``linear_probe_accuracy``,
                                  ``knn_accuracy``, few-label, AUC, collapse metrics
``time/round_seconds``            the row's ``seconds``
``time/client_train_seconds``     the clients' summed training seconds
``clients/accepted``              the row's ``clients``
``privacy/epsilon_max``           the largest epsilon a client replied
``privacy/client_level_epsilon``  central or distributed client-level DP
``privacy/epsilon/<client>``      each client's cumulative epsilon, from its ledger copy
                                  (``RUN/ledger/<client>.jsonl``, verified when stored)
================================  ======================================================

Round 0 (the initial encoder's evaluation) is logged too. A resumed run starts its writer with
``purge_step`` at its first round, so TensorBoard drops what an interrupted attempt logged for
the rounds that are redone.

Example:
    >>> import tempfile
    >>> log = TensorBoardLog(tempfile.mkdtemp())
    >>> log.add_round({"round": 1, "loss": 0.5, "seconds": 2.0, "knn_accuracy": 0.8})
    ['eval/knn_accuracy', 'time/round_seconds', 'train/loss']
    >>> log.close()
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fedssl.run_layout import RunLayout

#: row keys logged under another tag than ``eval/<key>``
RENAMED = {"loss": "train/loss", "seconds": "time/round_seconds",
           "client_train_seconds": "time/client_train_seconds", "clients": "clients/accepted",
           "epsilon_max": "privacy/epsilon_max",
           "client_level_epsilon": "privacy/client_level_epsilon"}
#: row keys that are not scalars of the run's progress
SKIPPED = {"round"}


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, "inf", a dict, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class TensorBoardLog:
    """Writes each round's row (and the clients' ledger epsilons) as TensorBoard scalars."""

    def __init__(self, run_dir: str | os.PathLike[str], start_round: int = 0,
                 run_id: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.layout = RunLayout(run_dir)
        self.run_id = run_id
        self.start_round = start_round
        self.writer = SummaryWriter(log_dir=str(self.layout.tensorboard),
                                    purge_step=start_round or None)
        self._seen: dict[Path, tuple[int, int]] = {}  # ledger -> (size, mtime_ns) last read
        self._logged: set[tuple[str, int]] = set()  # (client, round) epsilons written

    def add_round(self, row: dict[str, Any]) -> list[str]:
        """Log one metrics row (and new ledger entries); returns the row's tags, sorted."""
        step = int(row["round"])
        tags = []
        for key, value in row.items():
            number = _number(value)
            if key in SKIPPED or number is None:
                continue
            tag = RENAMED.get(key, f"eval/{key}")
            self.writer.add_scalar(tag, number, global_step=step)
            tags.append(tag)
        self._add_ledger_epsilons()
        self.writer.flush()
        return sorted(tags)

    def _add_ledger_epsilons(self) -> None:
        for path in self.layout.ledgers():
            try:
                stat = path.stat()
            except OSError:
                continue
            if self._seen.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            self._seen[path] = (stat.st_size, stat.st_mtime_ns)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    client, step = str(entry["client"]), int(entry["round"])
                except (ValueError, KeyError, TypeError):
                    continue  # the report's verification names bad entries; this only plots
                if ((self.run_id is not None and entry.get("run_id", "") != self.run_id)
                        or step < self.start_round or (client, step) in self._logged):
                    continue
                if (epsilon := _number(entry.get("epsilon"))) is not None:
                    self.writer.add_scalar(f"privacy/epsilon/{client}", epsilon,
                                           global_step=step)
                    self._logged.add((client, step))

    def close(self) -> None:
        self.writer.close()
