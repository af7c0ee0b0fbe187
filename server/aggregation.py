"""How one round's client updates become the next global model.

The run config chooses one of three aggregation paths and the server optimizer after it:

- plain FedAvg: the strategy (:class:`~fedssl.server.strategy.FedSSLStrategy`) screens each
  reply (names, shapes, finiteness, the clients' refusals) and averages the accepted ones, as
  the grid hands them over (the simulator's grid streams them, a deployment's returns them
  all at once);
- client-level central DP (DP-FedAvg, McMahan et al. 2018): each update clipped to
  ``client-clip`` and Gaussian noise added to the sum
  (:class:`~fedssl.privacy.client_level.central.ClientLevelGaussian`); the server sees single
  updates,
  so it cannot be combined with secure aggregation;
- secure aggregation (SecAgg+, :class:`~fedssl.server.secure_aggregation.SecureAggregation`):
  the server learns only the sum, optionally with distributed DP (each client adds a Skellam
  share, Agarwal et al. 2021; :class:`~fedssl.server.secure_aggregation.DistributedDP`);

then FedAvgM (:class:`~fedssl.server.server_optimizer.ServerMomentum`, Hsu et al. 2019) takes
the aggregate as a pseudo-gradient step, which is post-processing: no epsilon changes.
:class:`Aggregation` also states what the client-level mechanisms cost (the round's and the
run's client-level epsilon) for the metrics and the report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedssl.privacy.accounting.budget import epsilon_of
from fedssl.privacy.client_level.central import ClientLevelGaussian
from fedssl.privacy.client_level.distributed import SkellamRound, skellam_epsilon
from fedssl.run_layout import RunLayout
from fedssl.run_spec import RunSpec
from fedssl.server.federation_nodes import min_round_nodes
from fedssl.server.ledger_copies import LedgerCopyKeeper
from fedssl.server.secure_aggregation import (
    DistributedDP,
    SecureAggregation,
    simulated_registry,
)
from fedssl.server.server_optimizer import ServerMomentum
from fedssl.server.strategy import FedSSLStrategy, RoundOutcome

log = logging.getLogger("fedssl.server")


def min_dp_clients(spec: RunSpec, per_round: int) -> int:
    """Noise shares every distributed-DP release must hold: the configured number, else
    80 % of the clients sampled per round (so a few dropouts do not void a round).

    Args:
        spec: the run's settings (``client-dp-min-clients``).
        per_round: the clients sampled per round.

    Returns:
        The configured number if positive, else 80 % of ``per_round`` (at least 1).
    """
    given = spec.client_dp_min_clients
    return given if given > 0 else max(1, int(0.8 * per_round))


class Aggregation:
    """The round's aggregation path and server optimizer, built from the run's checked
    settings ``spec`` (:meth:`fedssl.run_spec.RunSpec.validate` refuses the combinations no
    path can run: central client-level DP under secure aggregation, distributed DP without
    it) for a federation of ``num_nodes`` clients whose run directory is ``layout``;
    ``ledger_gate`` verifies and keeps the sites' ledger copies as replies are screened;
    ``min_clients`` is the operator's floor of connected sites per round."""

    def __init__(self, spec: RunSpec, num_nodes: int, reference: dict[str, np.ndarray],
                 seed: int, layout: RunLayout,
                 ledger_gate: LedgerCopyKeeper | None = None, min_clients: int = 0) -> None:
        self.num_nodes = num_nodes
        self.per_round = spec.clients_per_round or num_nodes
        self.client_rate = self.per_round / max(1, num_nodes)
        self.delta = spec.delta
        self.timeout = spec.round_timeout
        self.client_dp: ClientLevelGaussian | None = None
        if spec.client_dp == "central":
            self.client_dp = ClientLevelGaussian(
                spec.client_clip, spec.client_noise_multiplier,
                expected_clients=self.client_rate * num_nodes,
                # OS entropy, not the run seed: config.toml holds the seed, and noise that can
                # be regenerated can be subtracted from the released model
                rng=np.random.default_rng())
        self.strategy = FedSSLStrategy(
            reference=reference, client_dp=self.client_dp, client_rate=self.client_rate,
            # client-level DP's sampling must be unpredictable too (its amplification assumes it)
            rng=np.random.default_rng(None if self.client_dp is not None else seed + 11),
            fraction_train=self.client_rate,
            min_train_nodes=self.per_round, min_available_nodes=self.per_round,
            fraction_evaluate=0.0, aggregator=spec.aggregator,
        )
        # sites' ledger copies verified as their replies are screened: a refused copy
        # rejects the update with it (fedssl.server.ledger_copies)
        self.strategy.ledger_gate = ledger_gate
        self.server_opt = ServerMomentum(spec.server_lr, spec.server_momentum)
        #: distributed-DP rounds whose sum was unmasked (what the Skellam accountant composes)
        self.released: list[SkellamRound] = []
        self.secure: SecureAggregation | None = None
        if spec.secagg:
            registry = Path(spec.identity_registry or layout.identities)
            if not spec.identity_registry and not registry.exists():
                # `flwr run .` (no driver made the simulated sites' keys): make them now
                simulated_registry(layout.root, num_nodes)
            self.secure = SecureAggregation(self.strategy, registry, spec.secagg_clip,
                                            self.timeout, layout.root.resolve())
            if spec.dropout_prob or spec.straggler_prob:
                # the simulator's fault model (simulations/faults.py, a mod only the simulated
                # sites' ClientApp has) reads these in every stage; a deployment sends none
                settings = spec.to_run_config()
                self.secure.fault_config = {k: settings[k] for k in (
                    "dropout-prob", "straggler-prob", "straggler-delay", "seed")}
            if spec.client_dp == "distributed":
                self.secure.dp = DistributedDP(spec.client_clip, spec.client_noise_multiplier,
                                               min_dp_clients(spec, self.per_round))
        # a round starts with the nodes connected then, once there are enough, waiting for
        # them at most the round timeout (a dead site must not hang the run)
        dist = self.distributed_dp
        self.strategy.min_round_nodes = min_round_nodes(
            spec.secagg, min_clients, dist.min_clients if dist is not None else 0)
        self.strategy.round_wait = self.timeout

    @property
    def distributed_dp(self) -> DistributedDP | None:
        """Distributed DP under secure aggregation, if on."""
        return self.secure.dp if self.secure is not None else None

    @property
    def outcome(self) -> RoundOutcome:
        """Who contributed to the last round, who refused, failed or was rejected."""
        return self.strategy.last_outcome

    def resume(self, rows: list[dict[str, Any]], momentum: dict[str, np.ndarray] | None,
               last_round: int) -> None:
        """Continue after ``last_round``: the distributed-DP releases recorded in the
        metrics ``rows`` and the server optimizer's checkpointed velocity ``momentum``.

        Args:
            rows: the metrics rows of the completed rounds.
            momentum: the checkpointed velocity, or None.
            last_round: the last complete round.
        """
        self.released = [SkellamRound(**r["distributed_dp"]) for r in rows
                         if r.get("distributed_dp")]
        if momentum is not None:
            self.server_opt.load_state(momentum)
        elif not self.server_opt.is_plain_fedavg and last_round > 0:
            log.warning("resuming with server momentum but round %d's checkpoint holds no "
                        "velocity: the momentum restarts from zero", last_round)

    def run_round(self, server_round: int, grid: Grid, arrays: ArrayRecord,
                  config: ConfigRecord) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Train one round from ``arrays``: the aggregate (None when no valid update came
        back) and the aggregated client metrics. The known nodes not connected when the
        round started are recorded among its failures ("not connected when the round
        started").

        Args:
            server_round: the round's number.
            grid: Flower's grid to the clients.
            arrays: the global model's shared arrays.
            config: the round's config.

        Returns:
            The aggregate (None without a valid update) and the aggregated client metrics.

        Raises:
            TooFewNodesError: fewer nodes than a round needs stayed connected for the round
                timeout (:meth:`~fedssl.server.strategy.FedSSLStrategy.connected_nodes`).
        """
        self.strategy.round_missing = {}
        if self.secure is not None:
            result = self.secure.run(server_round, grid, arrays, config)
        else:
            messages = self.strategy.configure_train(server_round, arrays, config, grid)
            replies = grid.send_and_receive(messages, timeout=self.timeout)
            result = self.strategy.aggregate_train(server_round, replies)
        outcome = self.strategy.last_outcome
        outcome.failed = {**self.strategy.round_missing, **outcome.failed}
        return result

    def step(self, server_round: int, arrays: ArrayRecord, aggregate: ArrayRecord | None
             ) -> ArrayRecord:
        """The next global model: ``aggregate`` itself (FedAvg), the server optimizer's step
        towards it (FedAvgM), or ``arrays`` unchanged when the round had no valid update.

        Args:
            server_round: the round's number (for the log).
            arrays: the current global arrays.
            aggregate: the round's aggregate, or None.

        Returns:
            The next global arrays.
        """
        if aggregate is None:
            outcome = self.outcome
            log.warning("round %d: no valid update (refused: %s, rejected: %s, failed: %s); "
                        "the global model is unchanged", server_round, outcome.refused,
                        outcome.rejected, outcome.failed)
            return arrays
        if self.server_opt.is_plain_fedavg:
            return aggregate
        stepped = self.server_opt.step({k: v.numpy() for k, v in arrays.items()},
                                       {k: v.numpy() for k, v in aggregate.items()})
        return ArrayRecord({k: Array(v) for k, v in stepped.items()})

    def round_privacy(self, server_round: int) -> dict[str, Any]:
        """The round's metrics of the client-level mechanisms: the run's client-level
        epsilon after ``server_round`` rounds and, with distributed DP, the release."""
        row: dict[str, Any] = {}
        if self.client_dp is not None:
            row["client_level_epsilon"] = epsilon_of(
                [(self.client_dp.noise_multiplier, self.client_rate, server_round)],
                self.delta)
        secure = self.secure
        if secure is not None and secure.dp is not None:
            if secure.released is not None:
                self.released.append(secure.released.round_record())
                row["distributed_dp"] = asdict(self.released[-1])
            row["client_level_epsilon"] = skellam_epsilon(self.released, self.delta)
        return row

    def run_privacy(self, rounds: int) -> dict[str, Any] | None:
        """report.json's ``privacy.client_level`` block for a run of ``rounds`` rounds (None
        without a client-level mechanism)."""
        if self.client_dp is not None:
            dp = self.client_dp
            return {
                "mechanism": "DP-FedAvg (central Gaussian)", "delta": self.delta,
                "epsilon": epsilon_of([(dp.noise_multiplier, self.client_rate, rounds)],
                                      self.delta),
                "noise_multiplier": dp.noise_multiplier, "clip": dp.clip_norm,
                "sample_rate": self.client_rate, "rounds": rounds,
            }
        dist = self.distributed_dp
        if dist is not None:
            return {
                "mechanism": "distributed Skellam under secure aggregation",
                "delta": self.delta,
                "epsilon": skellam_epsilon(self.released, self.delta),
                "noise_multiplier": dist.noise_multiplier, "clip": dist.clip,
                "min_clients": dist.min_clients, "sample_rate": 1.0,
                "rounds": len(self.released), "released": [asdict(r) for r in self.released],
                "assumes": "at least min_clients honest clients' noise shares in every "
                           "unmasked sum; no amplification by client sampling is claimed",
            }
        return None
