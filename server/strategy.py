"""FedAvg over the SSL model's weights, with reply validation and refusal bookkeeping.

Builds on Flower's message-based :class:`flwr.serverapp.strategy.FedAvg` (McMahan et al.,
"Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017):
sampling and the example-weighted average are Flower's. What this class adds is what a server
facing many independent sites needs before averaging:

- replies whose status is ``refused`` (bad data, exhausted privacy budget, unsound DP
  configuration) are recorded with the client's reason and left out;
- replies with missing or extra arrays, wrong shapes or dtypes, or NaN/Inf values are
  rejected with a log line naming the client, so one broken site can't poison the model
  (the checks: :mod:`fedssl.server.replies`; the average of what passes: the run's
  :mod:`~fedssl.ssl_core.aggregators` rule);
- optionally client-level DP (DP-FedAvg, :mod:`fedssl.privacy.client_level.central`): Poisson client
  sampling, per-client update clipping and Gaussian noise on the sum;
- a round samples from the nodes connected when it starts, never waiting without a bound
  for nodes that are gone (Flower's ``sample_nodes`` waits for its minimum for ever, so one
  dead site hung every later round): with at least :attr:`FedSSLStrategy.min_round_nodes`
  connected the round starts with those, the others recorded as dropouts ("not connected
  when the round started"); with fewer, it waits up to the round timeout, then
  :class:`~fedssl.server.federation_nodes.TooFewNodesError` stops the run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedssl.privacy.client_level.central import ClientLevelGaussian, poisson_sample
from fedssl.round_protocol import SERVER_ROUND
from fedssl.server.federation_nodes import TooFewNodesError, await_round_nodes
from fedssl.server.flower_strategy_adapter import construct_messages
from fedssl.server.replies import check_update, client_name, ledger_copy_types
from fedssl.ssl_core.aggregators import get_aggregator

log = logging.getLogger("fedssl.server")


@dataclass
class RoundOutcome:
    """Who contributed to a round, who refused and who was rejected, and why."""

    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    #: sites' ledger copies sent with their replies: client -> (ledger text, public key PEM)
    ledgers: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    #: the identity-registry name each ledger-sending reply gives (``status["identity"]``)
    ledger_identities: dict[str, str] = field(default_factory=dict)
    #: ledger copies refused before verification (fields of the wrong type): client -> why
    ledger_refused: dict[str, str] = field(default_factory=dict)


class FedSSLStrategy(FedAvg):
    """Flower FedAvg that validates and accounts for every reply before averaging."""

    def __init__(
        self,
        reference: dict[str, np.ndarray],
        client_dp: ClientLevelGaussian | None = None,
        client_rate: float = 1.0,
        rng: np.random.Generator | None = None,
        aggregator: str = "mean",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        #: the averaging rule of the accepted models (:mod:`fedssl.ssl_core.aggregators`)
        self.aggregator = get_aggregator(aggregator)
        #: verifies and keeps a site's ledger copy as its reply is screened: (client, ledger
        #: text, public key PEM, identity name) -> (None or why it was refused, whether the
        #: reply's update is rejected with it) (:class:`~fedssl.server.ledger_copies.
        #: LedgerCopyKeeper`); None: copies are only checked for their types
        self.ledger_gate: (Callable[[str, str, bytes, str | None], tuple[str | None, bool]]
                           | None) = None
        self.client_dp = client_dp
        self.client_rate = client_rate
        self.rng = rng or np.random.default_rng()
        self.current: dict[str, np.ndarray] | None = None
        self._sent: list[int] = []
        self.last_outcome = RoundOutcome()
        #: the fewest connected nodes a round starts with (secure aggregation's group, the
        #: operator's minimum; :func:`fedssl.server.federation_nodes.min_round_nodes`)
        self.min_round_nodes = 1
        #: how long a round waits for ``min_round_nodes`` to be connected (the round timeout)
        self.round_wait = 600.0
        #: the time source of that wait (a test's fake one)
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep
        #: every node seen in this run (the ServerApp's first count, then each round's)
        self.known_nodes: set[int] = set()
        #: Flower node id -> the client name its replies gave (for readable dropouts)
        self.names: dict[int, str] = {}
        #: the known nodes not connected when the last round started: name -> why
        self.round_missing: dict[str, str] = {}

    def node_name(self, node: int) -> str:
        """The client name node ``node`` gave in a reply, else ``node-<id>``."""
        return self.names.get(node, f"node-{node}")

    def connected_nodes(self, server_round: int, grid: Grid) -> list[int]:
        """The nodes connected now, once at least :attr:`min_round_nodes` are (waiting up to
        :attr:`round_wait` seconds); the known nodes that are not are logged and kept in
        :attr:`round_missing`.

        Args:
            server_round: the round's number.
            grid: Flower's grid to the clients.

        Returns:
            The connected node ids.

        Raises:
            TooFewNodesError: fewer than :attr:`min_round_nodes` connected for the whole wait
                (the message names the round, the missing nodes and how to resume).
        """
        minimum = min(self.min_round_nodes, max(1, len(self.known_nodes)))
        try:
            nodes = await_round_nodes(grid, minimum, self.round_wait, clock=self.clock,
                                      sleep=self.sleep)
        except TooFewNodesError as exc:
            gone = sorted(self.node_name(n) for n in self.known_nodes
                          - set(grid.get_node_ids()))
            raise TooFewNodesError(
                f"round {server_round} cannot start: {exc} (not connected: "
                f"{', '.join(gone) or 'none known'}); the run stops here with round "
                f"{server_round - 1} as its last complete round (checkpointed): once enough "
                "sites are connected, continue it with --resume") from None
        self.known_nodes |= set(nodes)
        connected = set(nodes)
        self.round_missing = {self.node_name(n): "not connected when the round started"
                              for n in sorted(self.known_nodes - connected)}
        if self.round_missing:
            log.warning("round %d: %d of %d clients connected; not connected: %s; the round "
                        "goes on with the connected ones", server_round, len(nodes),
                        len(self.known_nodes), ", ".join(sorted(self.round_missing)))
        return nodes

    def sample(self, server_round: int, grid: Grid) -> list[int]:
        """Node ids to train this round, from the nodes connected when it starts
        (:meth:`connected_nodes`): Poisson at rate q under client-level DP (what its
        accounting assumes), else a fixed-size uniform sample as Flower's ``sample_nodes``
        draws it (``random.sample`` of the grid's node list) of ``clients-per-round`` nodes,
        or of all the connected ones when fewer are.

        Args:
            server_round: the round's number.
            grid: Flower's grid to the clients.

        Returns:
            The sampled node ids.

        Raises:
            TooFewNodesError: if fewer nodes than a round needs stayed connected.
        """
        nodes = self.connected_nodes(server_round, grid)
        if self.client_dp is not None:
            sampled = poisson_sample(sorted(nodes), self.client_rate, self.rng)
        else:
            size = max(int(len(nodes) * self.fraction_train), self.min_train_nodes)
            sampled = random.sample(nodes, min(size, len(nodes)))
        log.info("round %d: %d of %d clients sampled", server_round, len(sampled), len(nodes))
        return sampled

    def messages(self, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int],
                 message_type: str = MessageType.TRAIN) -> list[Message]:
        """One message per node carrying the global model and the round config.

        Args:
            arrays: the global model's shared arrays.
            config: the round's config.
            nodes: the destination node ids.
            message_type: Flower's message type.

        Returns:
            The messages.
        """
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return construct_messages(self, record, nodes, message_type)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's training messages to the sampled nodes (:meth:`sample`).

        Args:
            server_round: the round's number, set as the config's ``server-round``.
            arrays: the global model's shared arrays.
            config: the round's config.
            grid: Flower's grid to the clients.

        Returns:
            One message per sampled node.

        Raises:
            TooFewNodesError: if fewer nodes than a round needs stayed connected.
        """
        self.current = {k: v.numpy() for k, v in arrays.items()}
        config[SERVER_ROUND] = server_round
        self._sent = self.sample(server_round, grid)
        return self.messages(arrays, config, self._sent)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's aggregate of the replies :meth:`screen` accepts.

        Args:
            server_round: the round's number.
            replies: the clients' replies.

        Returns:
            The aggregated arrays and client metrics, or ``(None, None)`` if none was accepted.
        """
        if self.client_dp is not None:
            clipped: list[dict[str, np.ndarray]] = []
            good = self.screen(server_round, replies, sent_to=self._sent,
                               on_accept=lambda values, _: clipped.append(
                                   self._clipped_update(values)))
            return self._aggregate_client_dp(good, clipped)
        rule = self.aggregator(self.reference, self.current)
        good = self.screen(server_round, replies, sent_to=self._sent, on_accept=rule.add)
        if not good:
            return None, None
        metrics = self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
        return ArrayRecord({k: Array(v) for k, v in rule.result().items()}), metrics

    def screen(self, server_round: int, replies: Iterable[Message], with_arrays: bool = True,
               sent_to: Iterable[int] = (),
               on_accept: Callable[[dict[str, np.ndarray], float], None] | None = None,
               ) -> list[Message]:
        """Replies fit to aggregate; refusals, failures and rejections go to
        :attr:`last_outcome` with the client's name and reason (nodes in ``sent_to`` that did
        not reply at all are recorded as timed out). ``on_accept(values, weight)`` receives
        each accepted reply's decoded arrays and example count as it is screened.

        Args:
            server_round: the round's number.
            replies: the clients' replies (may be a stream).
            with_arrays: the replies carry arrays to check (not so under secure aggregation).
            sent_to: the nodes asked to reply.
            on_accept: called with each accepted reply's arrays and weight, or None.

        Returns:
            The accepted replies.
        """
        outcome = RoundOutcome()
        good: list[Message] = []
        sent = list(sent_to)
        sent_set = set(sent)
        answered: set[int] = set()
        for msg in replies:  # may be a stream: each reply is screened as it arrives
            answered.add(msg.metadata.src_node_id)
            cid = client_name(msg)
            if cid != f"node-{msg.metadata.src_node_id}":
                self.names[msg.metadata.src_node_id] = cid
            if msg.has_error() and sent and msg.metadata.src_node_id not in sent_set:
                continue  # the SuperLink answering for an unreachable node: timed out, below
            if msg.has_error():
                outcome.failed[cid] = msg.error.reason[-300:]
                log.warning("round %d: client %s failed: %s", server_round, cid,
                            msg.error.reason)
                continue
            status = msg.content.config_records.get("status")
            if status is not None and status.get("status") == "refused":
                outcome.refused[cid] = str(status.get("reason", ""))
                log.warning("round %d: client %s refused: %s", server_round, cid,
                            outcome.refused[cid])
                continue
            values, n, metrics, problem = check_update(msg, self.reference,
                                                       self.weighted_by_key, with_arrays)
            if problem is not None:
                outcome.rejected[cid] = problem
                log.warning("round %d: rejected update from client %s: %s",
                            server_round, cid, problem)
                continue
            if not self._ledger_copy(server_round, cid, status, outcome):
                continue
            if on_accept is not None and values is not None:
                on_accept(values, float(n))
            outcome.accepted.append(cid)
            outcome.client_metrics[cid] = {k: float(v) for k, v in metrics.items()
                                           if isinstance(v, (int, float))}
            good.append(msg)
        timed_out = {f"node-{node}": "no reply before the round timeout"
                     for node in sent if node not in answered}
        outcome.failed = {**timed_out, **outcome.failed}
        self.last_outcome = outcome
        return good

    def _ledger_copy(self, server_round: int, cid: str, status: Any,
                     outcome: RoundOutcome) -> bool:
        """Keep a site's ledger copy sent with its reply, once the ledger gate verified it
        (:class:`~fedssl.server.ledger_copies.LedgerCopyKeeper`); False when the copy's key or
        history cannot be trusted, which rejects the update with it (recorded in
        ``outcome``). A reply without a copy passes."""
        if status is None or "ledger" not in status or "ledger-pub" not in status:
            return True
        text, pub = status["ledger"], status["ledger-pub"]
        identity = str(status["identity"]) if "identity" in status else None
        refused = ledger_copy_types(text, pub)
        reject = refused is not None
        if refused is None and self.ledger_gate is not None:
            refused, reject = self.ledger_gate(cid, text, pub, identity)
        if refused is None:
            outcome.ledgers[cid] = (text, pub)
            if identity is not None:
                outcome.ledger_identities[cid] = identity
            return True
        outcome.ledger_refused[cid] = refused
        if reject:
            # a site whose ledger key or history cannot be trusted (unregistered or foreign
            # key, broken signatures, rewritten history) does not contribute
            outcome.rejected[cid] = ("its ledger copy was refused, so its update is not "
                                     f"used: {refused}")
            log.warning("round %d: rejected update from client %s: %s", server_round, cid,
                        outcome.rejected[cid])
        return not reject

    def _clipped_update(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A client's update (its model minus the global one), clipped for DP-FedAvg."""
        assert self.current is not None and self.client_dp is not None
        return self.client_dp.constrain_sensitivity(
            {k: values[k].astype(np.float64) - self.current[k] for k in self.current})

    def _aggregate_client_dp(self, good: list[Message], clipped: list[dict[str, np.ndarray]]
                             ) -> tuple[ArrayRecord, MetricRecord | None]:
        """Global + noisy mean of clipped updates; the noise is added even if no client
        replied, because the round is accounted for either way."""
        assert self.current is not None and self.client_dp is not None
        mean = self.client_dp.noisy_mean(clipped, self.current)
        new = ArrayRecord({k: Array(np.asarray(self.current[k] + mean[k],
                                               dtype=self.current[k].dtype))
                           for k in self.current})
        metrics = (self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
                   if good else None)
        return new, metrics
