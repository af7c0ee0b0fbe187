"""Server side of SecAgg+ (Bonawitz et al. 2017, Figure 4; Bell et al. 2020).

What: :class:`SecAggServer` is a transport-agnostic state machine. Each ``collect_*`` method
takes the replies that arrived (objects or bytes; a client that did not reply has dropped out)
and returns the next messages, keyed by destination node id::

    server = SecAggServer(node_ids, vector_length=d)
    config = server.setup()                                  # SetupConfig -> every node
    directories = server.collect_advertisements(adverts)     # {node: KeyDirectory}
    bundles = server.collect_shares(share_msgs)              # {node: ShareBundle}
    checks = server.collect_masked_inputs(masked_msgs)       # {node: ConsistencyCheck}
    requests = server.collect_consistency_signatures(sigs)   # {node: UnmaskRequest}
    result = server.collect_unmask_responses(responses)      # AggregationResult

Participant sets follow the paper: ``U1`` advertised keys, ``U2 <= U1`` shared keys,
``U3 <= U2`` sent a masked input, ``U4 <= U3`` signed ``U3`` in the consistency check (Bonawitz
et al.'s malicious-server variant: every client of ``U4`` is sent ``t`` of ``U4``'s signatures
and reveals nothing unless they all verify on the set it signed), ``U5 <= U4`` answered the
unmask request. A client of ``U3`` that does not sign is treated like one that answers no
unmask request: its input is in the sum and its ``b`` is rebuilt from its neighbours' shares,
as long as every secret still has ``t`` holders in ``U4``. The output is
``sum_{u in U3} q_u (mod 2^32)``: the server subtracts ``PRG(b_u)`` for every ``u in U3``
(``b_u`` reconstructed from ``t`` shares) and, for every ``v in U2 \\ U3``, reconstructs ``s_sk_v``
(checked against the advertised ``s_pk_v``) and removes the pairwise masks ``v`` left in its
surviving neighbours' inputs.

Validation: every message is checked against the round (round id, sender in the expected set,
no duplicate sender, receivers exactly the sender's live neighbours, vector length ``d``,
share owners exactly as requested). A malformed message raises
:class:`~.errors.MalformedMessageError` and leaves the server's state unchanged (the caller may
retry without it), or with ``strict=False`` is dropped and recorded in :attr:`rejected` (the
sender counts as dropped out). If fewer than ``t`` participants remain where shares are needed,
:class:`~.errors.InsufficientParticipantsError` is raised and the round is marked failed; the
caller's data is never modified.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from . import crypto
from .errors import (
    InsufficientParticipantsError,
    MalformedMessageError,
    ProtocolStateError,
    ReconstructionError,
    SecAggError,
)
from .graph import build_graph, default_degree, default_threshold, effective_degree
from .messages import (
    ROUND_ID_BYTES,
    U32,
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    SetupConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from .prg import apply_masks
from .shamir import Share, decode_share_value, node_x, reconstruct_bytes

M = TypeVar("M", AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskResponse)


class ServerStage(Enum):
    """Where a :class:`SecAggServer` is in the round."""

    INIT = "init"
    SETUP = "setup"
    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """The unmasked sum of the survivors' inputs.

    Attributes:
        total: ``sum_{u in survivors} q_u mod 2^32`` (uint32, length d).
        survivors: ids whose inputs are in ``total`` (``U3``).
        dropped: ids that shared keys but sent no input; their masks were removed.
    """

    total: NDArray[np.uint32]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of inputs in the sum."""
        return len(self.survivors)


class SecAggServer:
    """Coordinator of one SecAgg+ round over ``node_ids`` with vectors of length ``d``.

    Args:
        node_ids: the sampled clients (unsigned 64-bit ids).
        vector_length: ``d``, the length of every input vector.
        degree: ``k`` of the communication graph (default ``2 ceil(log2 n)``, capped at n-1).
        threshold: ``t`` of the Shamir sharing (default a strict majority of ``k + 1``).
        round_id: 32 random bytes naming the round (default ``os.urandom``); also seeds the graph.
        identity_registry: optional node id -> Ed25519 public identity key; when given the
            server also rejects advertisements with bad signatures (clients always check).
        strict: raise on a malformed message (default) instead of dropping its sender.
    """

    def __init__(
        self,
        node_ids: Iterable[int],
        vector_length: int,
        *,
        degree: int | None = None,
        threshold: int | None = None,
        round_id: bytes | None = None,
        identity_registry: Mapping[int, bytes | Ed25519PublicKey] | None = None,
        strict: bool = True,
    ) -> None:
        ids = tuple(sorted(int(i) for i in node_ids))
        n = len(ids)
        k = default_degree(n) if degree is None else effective_degree(n, degree)
        t = default_threshold(k) if threshold is None else int(threshold)
        self.config = SetupConfig(
            round_id if round_id is not None else os.urandom(ROUND_ID_BYTES),
            ids,
            k,
            t,
            int(vector_length),
        )
        self.digest = crypto.config_digest(self.config.to_bytes())
        self.graph = build_graph(ids, k, self.config.round_id)
        self._registry = (
            {int(a): crypto.load_identity_public(b) for a, b in identity_registry.items()}
            if identity_registry is not None
            else None
        )
        self.strict = strict
        self.rejected: list[tuple[int | None, str]] = []
        self.stage = ServerStage.INIT

    @property
    def threshold(self) -> int:
        return self.config.threshold

    @property
    def degree(self) -> int:
        return self.config.degree

    # ------------------------------------------------------------------ helpers
    def _expect(self, stage: ServerStage, what: str) -> None:
        if self.stage is not stage:
            raise ProtocolStateError(f"server: cannot {what} in stage '{self.stage.value}'")

    def _insufficient(self, msg: str) -> InsufficientParticipantsError:
        self.stage = ServerStage.FAILED
        return InsufficientParticipantsError(msg)

    def _gather(
        self,
        messages: Iterable[Any],
        cls: type[M],
        expected: set[int] | frozenset[int],
        check: Any = None,
        accept: Any = None,
    ) -> tuple[dict[int, M | None], list[tuple[int | None, str]]]:
        """Parse and validate replies one at a time (streaming).

        Returns ``(sender -> message, rejected)``. ``check(msg)`` adds stage-specific
        validation; ``accept(msg)``, if given, consumes an accepted message instead of keeping
        it (the dict then maps the sender to ``None``), so large masked vectors are summed as
        they arrive rather than held in memory. With ``strict=False`` the first valid message
        per sender wins and invalid ones are recorded and ignored.
        """
        name = cls.__name__
        out: dict[int, M | None] = {}
        rejected: list[tuple[int | None, str]] = []
        for raw in messages:
            sender: int | None = None
            try:
                msg = cls.parse(raw)
                sender = msg.node_id if isinstance(msg, AdvertiseKeys) else msg.sender
                if msg.round_id != self.config.round_id:
                    raise MalformedMessageError(f"{name}: round id does not match this round")
                if sender not in expected:
                    raise MalformedMessageError(
                        f"{name}: sender {sender} is not an expected participant"
                    )
                if sender in out:
                    raise MalformedMessageError(f"{name}: duplicated message from node {sender}")
                if check is not None:
                    check(msg)
            except SecAggError as exc:
                if self.strict:
                    raise
                rejected.append((sender, str(exc)))
                continue
            if accept is not None:
                accept(msg)
                out[sender] = None
            else:
                out[sender] = msg
        return out, rejected

    def _check_holders(self, live: set[int], stage: str) -> None:
        t = self.threshold
        if len(live) < t:
            raise self._insufficient(f"{stage}: {len(live)} participants < threshold {t}")
        for u in sorted(live):
            holders = len(self.graph[u] & live) + 1
            if holders < t:
                raise self._insufficient(
                    f"{stage}: node {u} has {holders} live share holders < threshold {t}"
                )

    # ------------------------------------------------------------------ stages
    def setup(self) -> SetupConfig:
        """The round configuration to broadcast to every node in ``node_ids``.

        Returns:
            The configuration.

        Raises:
            ProtocolStateError: the round is already set up.
        """
        self._expect(ServerStage.INIT, "set up")
        self.stage = ServerStage.SETUP
        return self.config

    def collect_advertisements(
        self, messages: Iterable[AdvertiseKeys | bytes]
    ) -> dict[int, KeyDirectory]:
        """Collect ``U1``'s signed keys; return each one's neighbour key directory.

        Args:
            messages: the nodes' signed keys (``U1``), as messages or bytes.

        Returns:
            Node id -> the key directory to relay to it.

        Raises:
            ProtocolStateError: called out of stage order.
            InsufficientParticipantsError: too few nodes, or a node with too few live share
                holders.
            SecAggError: with ``strict``, the first invalid message (otherwise it is recorded in
                :attr:`rejected` and ignored).
        """
        self._expect(ServerStage.SETUP, "collect advertisements")

        def check(msg: AdvertiseKeys) -> None:
            if self._registry is not None:
                if msg.node_id not in self._registry:
                    raise MalformedMessageError(f"no identity key for node {msg.node_id}")
                crypto.verify_advertisement(
                    self._registry[msg.node_id],
                    self.digest,
                    msg.node_id,
                    msg.c_pk,
                    msg.s_pk,
                    msg.signature,
                )

        adverts, rejected = self._gather(
            messages, AdvertiseKeys, frozenset(self.config.node_ids), check
        )
        u1 = set(adverts)
        self._check_holders(u1, "advertise keys")
        self.rejected += rejected
        self._adverts = adverts
        self._u1 = frozenset(u1)
        self.stage = ServerStage.KEYS
        rid = self.config.round_id
        return {
            u: KeyDirectory(rid, u, tuple(adverts[v] for v in sorted((self.graph[u] & u1) | {u})))
            for u in sorted(u1)
        }

    def collect_shares(self, messages: Iterable[ShareKeys | bytes]) -> dict[int, ShareBundle]:
        """Collect ``U2``'s encrypted shares and route them to their receivers.

        Args:
            messages: the nodes' encrypted shares (``U2``).

        Returns:
            Receiver id -> the ciphertexts addressed to it.

        Raises:
            ProtocolStateError: called out of stage order.
            InsufficientParticipantsError: too few nodes, or a node with too few live share
                holders.
            SecAggError: with ``strict``, the first invalid message.
        """
        self._expect(ServerStage.KEYS, "collect shares")

        def check(msg: ShareKeys) -> None:
            want = self.graph[msg.sender] & self._u1
            got = {s.receiver for s in msg.shares}
            if got != want:
                raise MalformedMessageError(
                    f"ShareKeys: node {msg.sender} sent shares to {sorted(got)}, "
                    f"expected its live neighbours {sorted(want)}"
                )

        share_msgs, rejected = self._gather(messages, ShareKeys, self._u1, check)
        u2 = set(share_msgs)
        self._check_holders(u2, "share keys")
        self.rejected += rejected
        self._u2 = frozenset(u2)
        inbox: dict[int, list[Any]] = {v: [] for v in sorted(u2)}
        for u in sorted(u2):
            for item in share_msgs[u].shares:
                if item.receiver in inbox:
                    inbox[item.receiver].append(item)
        self.stage = ServerStage.SHARES
        rid = self.config.round_id
        return {v: ShareBundle(rid, v, tuple(items)) for v, items in inbox.items()}

    def collect_masked_inputs(
        self, messages: Iterable[MaskedInput | bytes]
    ) -> dict[int, ConsistencyCheck]:
        """Sum ``U3``'s masked inputs; show every survivor the same ``U3`` to sign.

        Args:
            messages: the survivors' masked inputs (``U3``), summed as they arrive.

        Returns:
            Survivor id -> the survivor set to sign.

        Raises:
            ProtocolStateError: called out of stage order.
            InsufficientParticipantsError: fewer survivors than the threshold.
            SecAggError: with ``strict``, the first invalid message.
        """
        self._expect(ServerStage.SHARES, "collect masked inputs")
        d = self.config.vector_length

        def check(msg: MaskedInput) -> None:
            if msg.vector.shape[0] != d:
                raise MalformedMessageError(
                    f"MaskedInput: node {msg.sender} sent length {msg.vector.shape[0]}, "
                    f"expected {d}"
                )

        acc = np.zeros(d, dtype=U32)  # local until the stage succeeds: state stays clean

        def accept(msg: MaskedInput) -> None:
            np.add(acc, msg.vector, out=acc)

        masked, rejected = self._gather(messages, MaskedInput, self._u2, check, accept)
        u3 = set(masked)
        t = self.threshold
        if len(u3) < t:
            raise self._insufficient(f"masked input: {len(u3)} survivors < threshold {t}")
        for u in sorted(self._u2):
            holders = len(((self.graph[u] & self._u2) | {u}) & u3)
            if holders < t:
                raise self._insufficient(
                    f"masked input: node {u}'s secrets have {holders} surviving holders "
                    f"< threshold {t}"
                )
        self.rejected += rejected
        self._acc = acc
        self._u3 = frozenset(u3)
        self._dropped = self._u2 - self._u3
        self.stage = ServerStage.MASKED
        rid, survivors = self.config.round_id, tuple(sorted(u3))
        return {u: ConsistencyCheck(rid, u, survivors) for u in survivors}

    def collect_consistency_signatures(
        self, messages: Iterable[ConsistencySignature | bytes]
    ) -> dict[int, UnmaskRequest]:
        """Collect ``U4``'s signatures on ``U3``; ask each signer for its unmasking shares,
        relaying ``t`` of the signatures (those of the ``t`` smallest ids of ``U4``): what each
        client needs to verify before it reveals anything. Relaying all of them would cost
        every client ``|U4|`` instead of ``t`` signature verifications and prove no more.

        Args:
            messages: the survivors' signatures on ``U3`` (``U4``).

        Returns:
            Signer id -> its unmask request.

        Raises:
            ProtocolStateError: called out of stage order.
            InsufficientParticipantsError: fewer signers than the threshold.
            SecAggError: with ``strict``, the first invalid message (e.g. a signature that does
                not verify).
        """
        self._expect(ServerStage.MASKED, "collect consistency signatures")
        survivors = tuple(sorted(self._u3))

        def check(msg: ConsistencySignature) -> None:
            if self._registry is not None:
                if msg.sender not in self._registry:
                    raise MalformedMessageError(f"no identity key for node {msg.sender}")
                crypto.verify_consistency(
                    self._registry[msg.sender], self.digest, msg.sender, survivors, msg.signature
                )

        sigs, rejected = self._gather(messages, ConsistencySignature, self._u3, check)
        u4 = set(sigs)
        t = self.threshold
        if len(u4) < t:
            raise self._insufficient(f"consistency check: {len(u4)} signers < threshold {t}")
        for u in sorted(self._u2):
            holders = len(((self.graph[u] & self._u2) | {u}) & u4)
            if holders < t:
                raise self._insufficient(
                    f"consistency check: node {u}'s secrets have {holders} signing holders "
                    f"< threshold {t}"
                )
        self.rejected += rejected
        self._u4 = frozenset(u4)
        self.stage = ServerStage.SIGNED
        rid = self.config.round_id
        relayed = tuple(
            (v, sigs[v].signature)  # type: ignore[union-attr]
            for v in sorted(u4)[:t]
        )
        return {
            u: UnmaskRequest(
                rid,
                u,
                tuple(sorted((self.graph[u] | {u}) & self._u3)),
                tuple(sorted(self.graph[u] & self._dropped)),
                relayed,
            )
            for u in sorted(u4)
        }

    def collect_unmask_responses(
        self, messages: Iterable[UnmaskResponse | bytes]
    ) -> AggregationResult:
        """Reconstruct ``b_u`` (survivors) and ``s_sk_v`` (dropped), remove masks, return sum.

        Args:
            messages: the signers' shares.

        Returns:
            The unmasked sum, the survivors and the dropped nodes.

        Raises:
            ProtocolStateError: called out of stage order.
            InsufficientParticipantsError: too few responses to reconstruct a secret.
            ReconstructionError: the shares do not reconstruct a consistent secret.
            SecAggError: with ``strict``, the first invalid message.
        """
        self._expect(ServerStage.SIGNED, "collect unmask responses")
        u2, u3, dropped = self._u2, self._u3, self._dropped

        def check(msg: UnmaskResponse) -> None:
            s = msg.sender
            want_seed = ((self.graph[s] & u2) | {s}) & u3
            want_key = self.graph[s] & dropped
            got_seed = {o for o, _ in msg.seed_shares}
            got_key = {o for o, _ in msg.key_shares}
            if got_seed != want_seed or got_key != want_key:
                raise MalformedMessageError(
                    f"UnmaskResponse: node {s} revealed shares for the wrong nodes"
                )
            for _, y in msg.seed_shares + msg.key_shares:
                decode_share_value(y)

        responses, rejected = self._gather(messages, UnmaskResponse, self._u4, check)
        t = self.threshold
        seed_shares: dict[int, list[Share]] = {u: [] for u in u3}
        key_shares: dict[int, list[Share]] = {v: [] for v in dropped}
        for holder in sorted(responses):
            msg = responses[holder]
            for owner, y in msg.seed_shares:
                seed_shares[owner].append(Share(node_x(holder), decode_share_value(y)))
            for owner, y in msg.key_shares:
                key_shares[owner].append(Share(node_x(holder), decode_share_value(y)))
        for owner, shares in sorted(seed_shares.items()) + sorted(key_shares.items()):
            if len(shares) < t:
                raise self._insufficient(
                    f"unmask: only {len(shares)} shares for node {owner} < threshold {t}"
                )
        add: list[bytes] = []
        sub: list[bytes] = []
        try:
            for u in sorted(u3):
                sub.append(reconstruct_bytes(seed_shares[u], t))
            for v in sorted(dropped):
                sk_bytes = reconstruct_bytes(key_shares[v], t)
                sk = crypto.x25519_from_private_bytes(sk_bytes)
                if crypto.x25519_public_of(sk) != self._adverts[v].s_pk:
                    raise ReconstructionError(
                        f"unmask: reconstructed key of node {v} does not match its public key"
                    )
                for w in sorted(self.graph[v] & u3):
                    seed = crypto.derive_pair_key(
                        sk,
                        self._adverts[w].s_pk,
                        salt=self.digest,
                        purpose=crypto.PURPOSE_MASK,
                        u=v,
                        v=w,
                    )
                    # w added +PRG(s_wv) if w < v, else -PRG(s_wv): undo it.
                    (sub if w < v else add).append(seed)
        except SecAggError:
            self.stage = ServerStage.FAILED
            raise
        total = self._acc.copy()
        apply_masks(total, add, sub)
        self.rejected += rejected
        del self._acc
        self.stage = ServerStage.DONE
        return AggregationResult(total, tuple(sorted(u3)), tuple(sorted(dropped)))
