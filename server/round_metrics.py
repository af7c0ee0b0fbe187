"""One round's row of ``metrics.jsonl``, apart from evaluation and timing, and what the run's
rows add up to for ``report.json``.

A row says who contributed to the round and who did not, and why (refused by the client,
rejected by the server's screening, failed or timed out; ``discarded``: who trained, so spent
privacy, but whose update was thrown away because secure aggregation could not complete); it
holds the round's loss, the clients' own training seconds and, under DP, the largest epsilon
a client reported. A site's ledger copy refused while its reply was screened
(:class:`~fedssl.server.ledger_copies.LedgerCopyKeeper`; its update is rejected with it when
the copy's key or history cannot be trusted) is named in the row. Across rounds
:class:`RoundMetrics` keeps each client's refusals (a resumed run's earlier ones included)
and what the clients' replies reported (steps, rounds, the last epsilon and noise), which the
report falls back on only when no verified ledger copy arrived.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import MetricRecord

from fedssl.round_protocol import PHASE_PREFIX
from fedssl.server.strategy import RoundOutcome

log = logging.getLogger("fedssl.server")


class RoundMetrics:
    """Rows for the rounds of one run. ``previous`` is the rows of the rounds already done
    (a resumed run); ``dp`` and ``divergence`` say whether rows carry the clients' largest
    epsilon and the aggregate's divergence (personalised algorithms)."""

    def __init__(self, previous: list[dict[str, Any]], dp: bool, divergence: bool) -> None:
        self.dp, self.divergence = dp, divergence
        #: client -> the rounds it refused and why (report.json's ``refusals``)
        self.refusals: dict[str, list[dict[str, Any]]] = {}
        #: what the clients' replies claimed (report.json's fallback without ledger copies)
        self.reported: dict[str, dict[str, Any]] = {}
        #: client -> the rounds it trained in (spending privacy) whose update was then
        #: discarded, e.g. secure aggregation could not complete (report.json's ``discarded``)
        self.discarded: dict[str, list[int]] = {}
        for row in previous:
            for cid, reason in (row.get("refused") or {}).items():
                self.refusals.setdefault(cid, []).append({"round": row["round"],
                                                          "reason": reason})
            for cid in row.get("discarded") or ():
                self.discarded.setdefault(cid, []).append(int(row["round"]))

    def row(self, server_round: int, outcome: RoundOutcome,
            agg: MetricRecord | None) -> dict[str, Any]:
        """The round's row from its ``outcome`` and aggregated client metrics ``agg``.

        Args:
            server_round: the round's number.
            outcome: what became of the round's replies.
            agg: the aggregated client metrics, or None.

        Returns:
            The metrics row (also updates the refusals, discards and reported spend kept here).
        """
        row: dict[str, Any] = {
            "round": server_round,
            "loss": float(agg["loss"]) if agg and "loss" in agg else None,
            "clients": len(outcome.accepted),
            "refused": outcome.refused, "rejected": outcome.rejected, "failed": outcome.failed,
        }
        for cid, reason in outcome.refused.items():
            self.refusals.setdefault(cid, []).append({"round": server_round, "reason": reason})
        wasted = sorted(c for c, m in outcome.client_metrics.items()
                        if c not in outcome.accepted and m.get("steps", 0) > 0)
        if wasted:  # trained, spent privacy, and the round threw the update away
            row["discarded"] = wasted
            for cid in wasted:
                self.discarded.setdefault(cid, []).append(server_round)
        for cid, problem in outcome.ledger_refused.items():
            log.warning("round %d: ledger copy of %s refused: %s", server_round, cid, problem)
            row.setdefault("ledger_refused", {})[cid] = problem
        for cid, m in outcome.client_metrics.items():
            seen = self.reported.setdefault(cid, {"steps": 0, "rounds": 0})
            seen.update(epsilon=m.get("epsilon", 0.0), noise_multiplier=m.get(
                "noise-multiplier", 0.0), sample_rate=m.get("sample-rate", 0.0))
            seen["steps"] += int(m.get("steps", 0))
            seen["rounds"] += 1
        # the clients' own training seconds: how much of the round was model compute
        row["client_train_seconds"] = sum(m.get("train-seconds", 0.0)
                                          for m in outcome.client_metrics.values())
        # the CPU time of the clients' processes in that training: less than the wall time
        # when the simulator runs more busy processes than there are cores
        row["client_train_cpu_seconds"] = sum(m.get("train-cpu-seconds", 0.0)
                                              for m in outcome.client_metrics.values())
        # and where the rest of each client's round went (setup, plan, model, ledger, reply)
        phases: dict[str, float] = {}
        for m in outcome.client_metrics.values():
            for key, value in m.items():
                if key.startswith(PHASE_PREFIX):
                    name = key[len(PHASE_PREFIX):]
                    phases[name] = phases.get(name, 0.0) + value
        if phases:
            row["client_phase_seconds"] = phases
        eps = [m.get("epsilon", 0.0) for m in outcome.client_metrics.values()]
        if self.dp and eps:
            row["epsilon_max"] = max(eps)
        if agg and "divergence" in agg and self.divergence:
            row["divergence"] = float(agg["divergence"])
        return row
