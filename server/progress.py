"""The ServerApp's progress display: one tqdm bar whose label names the phase of the run.

A run spends its first tens of seconds before any round finishes (the clients' workers start
and load code and data, the server evaluates the initial encoder as round 0); a bar that only
counts rounds sits at 0 % with no word of why. The label therefore says what the run is doing
now: ``start-up``, ``round 0/N: evaluating the initial encoder``, ``warm-up: clients loading
code and data``, ``round k/N: training``, ``round k/N: evaluating``, ``final evaluation``,
``writing the report``. After each round the postfix shows its loss, linear-probe accuracy and
the largest epsilon a client has spent so far.

Usage (``enabled`` False, a deployment's default, makes every call a no-op)::

    progress = RunProgress(rounds, start_round, enabled=True)
    progress.phase("round 0/5: evaluating the initial encoder")
    progress.start_rounds()
    progress.phase("round 1/5: training") ... progress.round_done(row)
    progress.close()
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

#: metrics.jsonl keys shown after each round, and their labels
POSTFIX = (("loss", "loss"), ("linear_probe_accuracy", "probe accuracy"),
           ("epsilon_max", "epsilon spent"))


class RunProgress:
    """A tqdm bar over the run's rounds, labelled with the current phase (see the module)."""

    def __init__(self, rounds: int, start_round: int = 1, enabled: bool = True) -> None:
        self.rounds, self.done = rounds, start_round - 1
        self.bar = tqdm(total=rounds, initial=self.done, unit="round", desc="start-up",
                        disable=not enabled, dynamic_ncols=True)

    def phase(self, text: str) -> None:
        """Name what the run does now (shown at once)."""
        self.bar.set_description_str(text)

    def start_rounds(self) -> None:
        """The rounds begin: restart the bar's clock, so its rate and time left are those
        of rounds, not of the start-up."""
        self.bar.reset(total=self.rounds)
        self.bar.update(self.done)

    def round_done(self, row: dict[str, Any]) -> None:
        """Count one round; show its metrics (a ``metrics.jsonl`` row)."""
        self.bar.set_postfix({label: f"{row[k]:.3g}" for k, label in POSTFIX
                              if row.get(k) is not None}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """End the bar (its last line stays)."""
        self.bar.close()
