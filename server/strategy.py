"""FedAvg over the SSL model's weights, with reply validation and refusal bookkeeping.

Builds on Flower's message-based :class:`flwr.serverapp.strategy.FedAvg` (McMahan et al.,
"Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017):
sampling and the example-weighted average are Flower's. What this class adds is what a server
facing many independent sites needs before averaging:

- replies whose status is ``refused`` (bad data, exhausted privacy budget, unsound DP
  configuration) are recorded with the client's reason and left out;
- replies with missing or extra arrays, wrong shapes or dtypes, or NaN/Inf values are
  rejected with a log line naming the client, so one broken site can't poison the model;
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

import functools
import io
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
from fedssl.ssl_core.aggregators import get_aggregator

log = logging.getLogger("fedssl.server")
#: the largest example count a reply may claim (an exact float; NaN, inf or 1e308 weights
#: would turn the weighted mean into NaN)
MAX_EXAMPLES = 2**53


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


def client_name(msg: Message) -> str:
    """The client id a reply claims, else its node id."""
    if not msg.has_error() and "status" in msg.content.config_records:
        return str(msg.content.config_records["status"].get("client", ""))
    return f"node-{msg.metadata.src_node_id}"


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The exact ``.npy`` header ``np.save`` writes for an array of this dtype and shape."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _check_npy_size(data: bytes) -> None:
    """Refuse ``.npy`` bytes whose header declares another size than the bytes that follow,
    before ``np.load`` allocates the declared array (it does, before reading a byte of it: a
    header claiming 2**40 elements would cost that much memory, or a MemoryError).

    Raises:
        ValueError: the header is unreadable or the sizes disagree.
    """
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(stream)
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(data) - stream.tell():
        raise ValueError(f"its header declares shape {shape} of {dtype} ({declared} bytes) "
                         f"but {len(data) - stream.tell()} bytes follow")


def _decode(array: Array, ref: np.ndarray) -> np.ndarray:
    """``array.numpy()``, without numpy's header parsing when the bytes are exactly what
    ``np.save`` writes for ``ref``'s dtype and shape (then the result is the same array, a
    read-only view); anything else takes Flower's general path and its checks, after the
    declared size is checked against the bytes (:func:`_check_npy_size`)."""
    data = array.data
    if array.stype == "numpy.ndarray" and isinstance(data, bytes):
        header = _npy_header(ref.dtype.str, ref.shape)
        if len(data) == len(header) + ref.nbytes and data.startswith(header):
            return np.frombuffer(data, dtype=ref.dtype, offset=len(header)).reshape(ref.shape)
        _check_npy_size(data)
    return array.numpy()


def decode_arrays(arrays: ArrayRecord, reference: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """``arrays`` deserialised once, or why they can't be averaged into a model shaped like
    ``reference``: ``(values, None)`` or ``(None, problem)``."""
    keys = set(arrays.keys())
    if keys != set(reference):
        missing, extra = sorted(set(reference) - keys), sorted(keys - set(reference))
        return None, f"parameter names differ (missing {missing[:3]}, unexpected {extra[:3]})"
    values: dict[str, np.ndarray] = {}
    for name, ref in reference.items():
        try:
            value = _decode(arrays[name], ref)
        except Exception as exc:  # a malformed Array can't be deserialised
            return None, f"parameter {name!r} is not a readable array ({exc})"
        if value.shape != ref.shape:
            return None, f"parameter {name!r} has shape {value.shape}, expected {ref.shape}"
        if value.dtype != ref.dtype:
            return None, f"parameter {name!r} has dtype {value.dtype}, expected {ref.dtype}"
        if not np.isfinite(value).all():
            return None, f"parameter {name!r} contains NaN or Inf"
        values[name] = value
    return values, None


def check_arrays(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> str | None:
    """Why ``arrays`` can't be averaged into a model shaped like ``reference`` (or None)."""
    return decode_arrays(arrays, reference)[1]


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
        or of all the connected ones when fewer are."""
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
        """One message per node carrying the global model and the round config."""
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return construct_messages(self, record, nodes, message_type)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = {k: v.numpy() for k, v in arrays.items()}
        config[SERVER_ROUND] = server_round
        self._sent = self.sample(server_round, grid)
        return self.messages(arrays, config, self._sent)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
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
        each accepted reply's decoded arrays and example count as it is screened."""
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
            if (len(msg.content.array_records) != int(with_arrays)
                    or len(msg.content.metric_records) != 1):
                problem = (f"reply must hold {int(with_arrays)} ArrayRecord(s) and one "
                           "MetricRecord")
            else:
                problem, values = None, None
                if with_arrays:
                    arrays = next(iter(msg.content.array_records.values()))
                    values, problem = decode_arrays(arrays, self.reference)
                metrics = next(iter(msg.content.metric_records.values()))
                n = metrics.get(self.weighted_by_key)
                if problem is None and (not isinstance(n, (int, float)) or isinstance(n, bool)
                                        or not 0 < n <= MAX_EXAMPLES):
                    problem = (f"'{self.weighted_by_key}' must be a positive number of "
                               f"examples (at most 2**53), got {n!r}")
            if problem is not None:
                outcome.rejected[cid] = problem
                log.warning("round %d: rejected update from client %s: %s",
                            server_round, cid, problem)
                continue
            if status is not None and "ledger" in status and "ledger-pub" in status:
                text, pub = status["ledger"], status["ledger-pub"]
                identity = str(status["identity"]) if "identity" in status else None
                if not (isinstance(text, str) and isinstance(pub, bytes)):
                    # never bytes(pub): an int would become that many zero bytes
                    refused = (f"ledger copy must be text and its key bytes, got "
                               f"{type(text).__name__} and {type(pub).__name__}")
                    reject = True
                else:
                    refused, reject = (self.ledger_gate(cid, text, pub, identity)
                                       if self.ledger_gate is not None else (None, False))
                if refused is not None:
                    outcome.ledger_refused[cid] = refused
                if refused is not None and reject:
                    # a site whose ledger key or history cannot be trusted (unregistered or
                    # foreign key, broken signatures, rewritten history) does not contribute
                    outcome.rejected[cid] = ("its ledger copy was refused, so its update is "
                                             f"not used: {refused}")
                    log.warning("round %d: rejected update from client %s: %s",
                                server_round, cid, outcome.rejected[cid])
                    continue
                if refused is None:
                    outcome.ledgers[cid] = (text, pub)
                    if identity is not None:
                        outcome.ledger_identities[cid] = identity
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

    def _clipped_update(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A client's update (its model minus the global one), clipped for DP-FedAvg."""
        assert self.current is not None and self.client_dp is not None
        return self.client_dp.clip({k: values[k].astype(np.float64) - self.current[k]
                                    for k in self.current})

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
