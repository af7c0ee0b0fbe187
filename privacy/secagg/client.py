"""Client side of SecAgg+ (Bonawitz et al. 2017, Figure 4; Bell et al. 2020 k-regular graph).

What: :class:`SecAggClient` is a transport-agnostic state machine; each stage method takes the
server's message (object or bytes) and returns the client's reply message::

    adv    = client.setup(config)                 # AdvertiseKeys (signed c_pk, s_pk)
    shares = client.share_keys(directory)         # ShareKeys (encrypted Shamir shares)
    masked = client.mask_input(bundle, q)         # MaskedInput (q: uint32 vector of length d)
    sig    = client.consistency_check(check)      # ConsistencySignature (signed U3)
    resp   = client.unmask(request)               # UnmaskResponse

Masking: with ``N2(u)`` the neighbours whose encrypted shares reached ``u`` (they are alive
after the share-keys stage),
``y_u = q_u + PRG(b_u) + sum_{v in N2(u), u < v} PRG(s_uv) - sum_{v in N2(u), u > v} PRG(s_uv)``
in ``Z_2^32``, so the pairwise terms cancel in the sum and ``PRG(b_u)`` hides ``q_u`` even
if the server later learns ``s_sk_u``.

Security checks made here (each raises a :class:`~.errors.SecAggError` subclass and puts the
client in a failed state, so it never continues a compromised round):

* every relayed public key carries a valid Ed25519 signature by the identity key registered
  for that node over (round digest, node id, c_pk, s_pk): a substituted key aborts;
* the relayed keys are for this client's graph neighbours only, its own entry is unchanged,
  all keys are distinct and at least ``t`` holders remain;
* shares decrypt under AES-GCM with associated data binding round, sender and receiver;
* consistency check (Bonawitz et al. 2017, Figure 4, round 3, malicious-server variant): the
  server shows the survivor set ``U3``; the client checks it holds itself, at least ``t`` ids of
  this round, and only neighbours whose shares reached it, then signs (round digest, its id,
  ``U3``) with its identity key - once per round: it never signs a second set;
* at unmasking, the request must carry at least ``t`` signatures, from distinct clients of
  ``U3`` registered in the identity registry, that all verify on *exactly* the ``U3`` this
  client signed (a forged, unregistered, foreign or other-set signature aborts), and its
  survivor/dropped lists must be what that ``U3`` implies; only then is a neighbour revealed,
  *either* as survivor (share of ``b_v``) *or* as dropped (share of ``s_sk_v``), never both.

Trust model: clients are honest-but-curious; the server may be malicious in relaying keys
(signatures) and in telling clients who survived. What the consistency check guarantees:
every client that releases unmasking shares was shown a ``U3`` that ``t`` distinct registered
clients signed, and an honest client signs one set per round; so two honest clients release
shares under different sets only if ``2t - c`` distinct clients signed (``c`` colluding
clients may sign both), which cannot happen when ``2t > n + c`` (``n`` = clients in the
round's SetupConfig; Bonawitz et al.'s setting). With SecAgg+'s sparse graph and ``t`` a
majority of ``k + 1 < n``, the check alone does not rule a split out; there, that each honest
holder reveals one of the two shares of a neighbour, and ``2t > k + 1``, is what keeps the
server from getting both ``b_v`` and ``s_sk_v`` while fewer than ``2t - k - 1`` of ``v``'s
neighbours collude with it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from enum import Enum
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from numpy.typing import NDArray

from . import crypto
from .errors import (
    InsufficientParticipantsError,
    MalformedMessageError,
    ProtocolStateError,
    SecAggError,
    SignatureVerificationError,
)
from .graph import build_graph
from .messages import (
    PLAINTEXT_BYTES,
    U32,
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyDirectory,
    MaskedInput,
    SetupConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from .prg import apply_masks
from .shamir import (
    SHARE_BYTES,
    decode_share_value,
    encode_share_value,
    node_x,
    split_secret,
)


class ClientStage(Enum):
    """Where a :class:`SecAggClient` is in the round."""

    INIT = "init"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    FAILED = "failed"


class SecAggClient:
    """One participant of a SecAgg+ round.

    Args:
        node_id: this node's unsigned 64-bit id (e.g. Flower's node id).
        identity_key: its long-term Ed25519 identity key (signs the round's public keys).
        identity_registry: node id -> registered Ed25519 public identity key (raw 32 bytes or
            key object) of every node that may appear as a neighbour.
    """

    def __init__(
        self,
        node_id: int,
        identity_key: Ed25519PrivateKey,
        identity_registry: Mapping[int, bytes | Ed25519PublicKey],
    ) -> None:
        self.node_id = int(node_id)
        self._identity_key = identity_key
        self._registry = {int(k): v for k, v in identity_registry.items()}
        self.stage = ClientStage.INIT

    # ------------------------------------------------------------------ helpers
    def _expect(self, stage: ClientStage, what: str) -> None:
        if self.stage is not stage:
            raise ProtocolStateError(
                f"node {self.node_id}: cannot {what} in stage '{self.stage.value}'"
            )

    def _fail(self, exc: SecAggError) -> SecAggError:
        self.stage = ClientStage.FAILED
        # Drop every secret so a failed round leaks nothing later.
        for attr in ("_c_sk", "_s_sk", "_b", "_seed_shares", "_key_shares", "_enc_keys"):
            self.__dict__.pop(attr, None)
        return exc

    def _check_round(self, round_id: bytes, name: str) -> None:
        if round_id != self._config.round_id:
            raise MalformedMessageError(f"{name}: round id does not match this round")

    # ------------------------------------------------------------------ stage 0
    def setup(self, config: SetupConfig | bytes) -> AdvertiseKeys:
        """Validate the round config, make two fresh X25519 key pairs and sign them.

        Args:
            config: the server's round configuration, as a message or its bytes.

        Returns:
            This node's signed public keys.

        Raises:
            ProtocolStateError: called in the middle of a round.
            MalformedMessageError: the configuration is invalid or does not list this node.
        """
        if self.stage not in (ClientStage.INIT, ClientStage.DONE, ClientStage.FAILED):
            raise ProtocolStateError(f"node {self.node_id}: setup called mid-round")
        try:
            cfg = SetupConfig.parse(config)
            if self.node_id not in cfg.node_ids:
                raise MalformedMessageError(f"SetupConfig: node {self.node_id} not in node_ids")
            self._config = cfg
            self._digest = crypto.config_digest(cfg.to_bytes())
            self._neighbours = build_graph(cfg.node_ids, cfg.degree, cfg.round_id)[self.node_id]
            self._c_sk, self._c_pk = crypto.generate_x25519()
            self._s_sk, self._s_pk = crypto.generate_x25519()
            sig = crypto.sign_advertisement(
                self._identity_key, self._digest, self.node_id, self._c_pk, self._s_pk
            )
        except SecAggError as exc:
            raise self._fail(exc) from None
        self.stage = ClientStage.ADVERTISED
        return AdvertiseKeys(cfg.round_id, self.node_id, self._c_pk, self._s_pk, sig)

    # ------------------------------------------------------------------ stage 1
    def share_keys(self, directory: KeyDirectory | bytes) -> ShareKeys:
        """Verify neighbours' signed keys; Shamir-share ``b_u`` and ``s_sk_u``; encrypt.

        Args:
            directory: the neighbours' advertised keys, as relayed by the server.

        Returns:
            The encrypted shares, one ciphertext per live neighbour.

        Raises:
            ProtocolStateError: not called after :meth:`setup`.
            SignatureVerificationError: a key is not signed by its node's registered identity, or
                this node's own keys were altered.
            MalformedMessageError: the directory is not addressed to this node, names a
                non-neighbour or repeats a key.
            InsufficientParticipantsError: fewer live neighbours than the threshold needs.
        """
        self._expect(ClientStage.ADVERTISED, "share keys")
        try:
            return self._share_keys(KeyDirectory.parse(directory))
        except SecAggError as exc:
            raise self._fail(exc) from None

    def _share_keys(self, directory: KeyDirectory) -> ShareKeys:
        cfg, me = self._config, self.node_id
        self._check_round(directory.round_id, "KeyDirectory")
        if directory.receiver != me:
            raise MalformedMessageError(f"KeyDirectory: addressed to {directory.receiver}")
        allowed = self._neighbours | {me}
        entries = {e.node_id: e for e in directory.entries}
        if me not in entries:
            raise MalformedMessageError("KeyDirectory: own keys missing")
        own = entries[me]
        if own.c_pk != self._c_pk or own.s_pk != self._s_pk:
            raise SignatureVerificationError("KeyDirectory: own public keys were altered")
        for node, entry in entries.items():
            if node not in allowed:
                raise MalformedMessageError(f"KeyDirectory: node {node} is not a neighbour")
            if node == me:
                continue  # own keys were compared byte for byte above
            if node not in self._registry:
                raise SignatureVerificationError(f"no registered identity key for node {node}")
            ident = crypto.load_identity_public(self._registry[node])
            crypto.verify_advertisement(
                ident, self._digest, node, entry.c_pk, entry.s_pk, entry.signature
            )
        keys = [e.c_pk for e in entries.values()] + [e.s_pk for e in entries.values()]
        if len(set(keys)) != len(keys):
            raise MalformedMessageError("KeyDirectory: repeated public keys")
        if len(entries) < cfg.threshold:
            raise InsufficientParticipantsError(
                f"node {me}: {len(entries)} live key holders < threshold {cfg.threshold}"
            )
        holders = sorted(entries)
        self._peers = {node: entries[node] for node in holders if node != me}
        self._b = os.urandom(32)
        xs = [node_x(v) for v in holders]
        b_shares = split_secret(self._b, cfg.threshold, xs)
        sk_shares = split_secret(crypto.x25519_private_bytes(self._s_sk), cfg.threshold, xs)
        self._seed_shares: dict[int, bytes] = {}
        self._key_shares: dict[int, bytes] = {}
        self._enc_keys: dict[int, bytes] = {}  # symmetric: same key decrypts v's shares to us
        out = []
        for v, b_sh, sk_sh in zip(holders, b_shares, sk_shares):
            b_y, sk_y = encode_share_value(b_sh.y), encode_share_value(sk_sh.y)
            if v == me:
                self._seed_shares[me] = b_y
                continue
            key = crypto.derive_pair_key(
                self._c_sk,
                entries[v].c_pk,
                salt=self._digest,
                purpose=crypto.PURPOSE_ENCRYPTION,
                u=me,
                v=v,
            )
            self._enc_keys[v] = key
            blob = crypto.encrypt_shares(
                key, b_y + sk_y, digest=self._digest, sender=me, receiver=v
            )
            out.append(EncryptedShares(me, v, blob))
        self.stage = ClientStage.SHARED
        return ShareKeys(cfg.round_id, me, tuple(out))

    # ------------------------------------------------------------------ stage 2
    def mask_input(self, bundle: ShareBundle | bytes, values: NDArray[np.uint32]) -> MaskedInput:
        """Decrypt received shares and return ``y_u`` (``values`` is quantised, uint32, len d).

        A distributed-DP noise share belongs in ``values`` already (see
        :meth:`~.quantization.Quantizer.encode`'s ``noise_hook``).

        Args:
            bundle: the shares addressed to this node.
            values: the quantised input.

        Returns:
            The masked input ``y_u``.

        Raises:
            ProtocolStateError: not called after :meth:`share_keys`.
            MalformedMessageError: the bundle is not this node's, or a share is malformed.
            DecryptionError: a ciphertext fails authentication.
            InsufficientParticipantsError: fewer senders than the threshold needs.
        """
        self._expect(ClientStage.SHARED, "mask input")
        try:
            return self._mask_input(ShareBundle.parse(bundle), values)
        except SecAggError as exc:
            raise self._fail(exc) from None

    def _mask_input(self, bundle: ShareBundle, values: NDArray[np.uint32]) -> MaskedInput:
        cfg, me = self._config, self.node_id
        self._check_round(bundle.round_id, "ShareBundle")
        if bundle.receiver != me:
            raise MalformedMessageError(f"ShareBundle: addressed to {bundle.receiver}")
        v_arr = np.asarray(values)
        if v_arr.dtype != U32 or v_arr.shape != (cfg.vector_length,):
            raise MalformedMessageError(
                f"input must be a uint32 vector of length {cfg.vector_length}, got "
                f"{v_arr.dtype} {v_arr.shape}"
            )
        if len(bundle.shares) + 1 < cfg.threshold:
            raise InsufficientParticipantsError(
                f"node {me}: {len(bundle.shares) + 1} live neighbours < threshold {cfg.threshold}"
            )
        live: list[int] = []
        for item in bundle.shares:
            v = item.sender
            if v not in self._peers:
                raise MalformedMessageError(f"ShareBundle: unexpected sender {v}")
            key = self._enc_keys[v]
            plain = crypto.decrypt_shares(
                key, item.ciphertext, digest=self._digest, sender=v, receiver=me
            )
            if len(plain) != PLAINTEXT_BYTES:
                raise MalformedMessageError(f"shares from {v}: wrong plaintext length")
            decode_share_value(plain[:SHARE_BYTES])
            decode_share_value(plain[SHARE_BYTES:])
            self._seed_shares[v] = plain[:SHARE_BYTES]
            self._key_shares[v] = plain[SHARE_BYTES:]
            live.append(v)
        add, sub = [self._b], []
        for v in live:
            seed = crypto.derive_pair_key(
                self._s_sk,
                self._peers[v].s_pk,
                salt=self._digest,
                purpose=crypto.PURPOSE_MASK,
                u=me,
                v=v,
            )
            (add if me < v else sub).append(seed)
        masked = np.array(v_arr, dtype=U32, copy=True)
        apply_masks(masked, add, sub)
        self._live = frozenset(live)
        # No longer needed; the shares are all the server may ask for.
        del self._b, self._s_sk, self._enc_keys
        self.stage = ClientStage.MASKED
        return MaskedInput(cfg.round_id, me, masked)

    # ------------------------------------------------------------------ stage 3
    def consistency_check(self, check: ConsistencyCheck | bytes) -> ConsistencySignature:
        """Sign the survivor set ``U3`` the server shows (once per round), after checking it.

        Args:
            check: the survivor set ``U3`` addressed to this node.

        Returns:
            This node's signature on ``(round, U3)``.

        Raises:
            ProtocolStateError: not called after :meth:`mask_input`.
            MalformedMessageError: the set is not addressed to this node, leaves it out or
                contradicts what it saw.
            InsufficientParticipantsError: ``U3`` is smaller than the threshold.
        """
        self._expect(ClientStage.MASKED, "sign the survivor set")
        try:
            msg = ConsistencyCheck.parse(check)
            cfg, me = self._config, self.node_id
            self._check_round(msg.round_id, "ConsistencyCheck")
            if msg.receiver != me:
                raise MalformedMessageError(f"ConsistencyCheck: addressed to {msg.receiver}")
            u3 = msg.survivors
            if me not in u3:
                raise MalformedMessageError("ConsistencyCheck: this node is not a survivor")
            strangers = set(u3) - set(cfg.node_ids)
            if strangers:
                raise MalformedMessageError(
                    f"ConsistencyCheck: node {min(strangers)} is not in this round"
                )
            unseen = (set(u3) & self._neighbours) - self._live
            if unseen:
                raise MalformedMessageError(
                    f"ConsistencyCheck: neighbour {min(unseen)} listed as survivor, but its "
                    "shares never reached this node"
                )
            if len(u3) < cfg.threshold:
                raise InsufficientParticipantsError(
                    f"ConsistencyCheck: {len(u3)} survivors < threshold {cfg.threshold}"
                )
            sig = crypto.sign_consistency(self._identity_key, self._digest, me, u3)
        except SecAggError as exc:
            raise self._fail(exc) from None
        self._u3 = tuple(u3)
        self.stage = ClientStage.SIGNED
        return ConsistencySignature(cfg.round_id, me, sig)

    def _check_consistency(self, req: UnmaskRequest) -> None:
        """``t`` valid signatures on this client's ``U3`` from distinct registered members."""
        cfg, u3 = self._config, self._u3
        members = set(u3)
        for signer, sig in req.signatures:  # signers are distinct: the parser checks it
            if signer not in members:
                raise SignatureVerificationError(
                    f"UnmaskRequest: consistency signature from node {signer}, which is not "
                    "in the survivor set this node signed; aborting"
                )
            if signer == self.node_id:
                ident = self._identity_key.public_key()
            elif signer in self._registry:
                ident = crypto.load_identity_public(self._registry[signer])
            else:
                raise SignatureVerificationError(
                    f"UnmaskRequest: no registered identity key for signer {signer}; aborting"
                )
            crypto.verify_consistency(ident, self._digest, signer, u3, sig)
        if len(req.signatures) < cfg.threshold:
            raise InsufficientParticipantsError(
                f"UnmaskRequest: {len(req.signatures)} consistency signatures on the survivor "
                f"set < threshold {cfg.threshold}; not revealing any share"
            )

    # ------------------------------------------------------------------ stage 4
    def unmask(self, request: UnmaskRequest | bytes) -> UnmaskResponse:
        """After the consistency check: reveal ``b``-shares of surviving neighbours and
        ``s_sk``-shares of dropped ones.

        Args:
            request: the survivors and dropped neighbours, with ``t`` consistency signatures.

        Returns:
            The ``b``-shares of surviving neighbours and ``s_sk``-shares of dropped ones.

        Raises:
            ProtocolStateError: not called after :meth:`consistency_check`.
            SignatureVerificationError: a consistency signature does not verify.
            MalformedMessageError: the request is not addressed to this node or its sets
                contradict ``U3``.
            InsufficientParticipantsError: fewer signatures or survivors than the threshold.
        """
        self._expect(ClientStage.SIGNED, "unmask")
        try:
            req = UnmaskRequest.parse(request)
            cfg, me = self._config, self.node_id
            self._check_round(req.round_id, "UnmaskRequest")
            if req.receiver != me:
                raise MalformedMessageError(f"UnmaskRequest: addressed to {req.receiver}")
            self._check_consistency(req)
            u3 = set(self._u3)
            survivors, dropped = set(req.survivors), set(req.dropped)
            if survivors != ({me} | self._live) & u3:
                raise MalformedMessageError(
                    "UnmaskRequest: survivors differ from the signed survivor set"
                )
            if dropped & u3:
                raise MalformedMessageError(
                    "UnmaskRequest: a node of the signed survivor set is listed as dropped"
                )
            if len(survivors) < cfg.threshold:
                raise InsufficientParticipantsError(
                    f"only {len(survivors)} survivors < threshold {cfg.threshold}"
                )
            seed_out, key_out = [(me, self._seed_shares[me])], []
            for v in sorted(self._live):
                if v in survivors:
                    seed_out.append((v, self._seed_shares[v]))
                elif v in dropped:
                    key_out.append((v, self._key_shares[v]))
                else:
                    raise MalformedMessageError(
                        f"UnmaskRequest: neighbour {v} is neither survivor nor dropped"
                    )
        except SecAggError as exc:
            raise self._fail(exc) from None
        self.stage = ClientStage.DONE
        for attr in ("_c_sk", "_seed_shares", "_key_shares"):
            self.__dict__.pop(attr, None)
        return UnmaskResponse(cfg.round_id, me, tuple(seed_out), tuple(key_out))

    # ------------------------------------------------------------------ persistence
    _SECRET_ATTRS = ("_c_sk", "_s_sk")
    _BYTES_ATTRS = ("_c_pk", "_s_pk", "_b")
    _DICT_ATTRS = ("_seed_shares", "_key_shares", "_enc_keys")

    def export_state(self) -> bytes:
        """Serialise the client between stages (JSON, base64 fields; no pickle).

        For runtimes that do not keep the object alive between messages (e.g. a Flower
        ClientApp storing it in its context state). The state holds this round's private keys
        and shares: keep it node-local, never send it over the network.

        Returns:
            The state as UTF-8 JSON.
        """
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        state: dict[str, Any] = {"v": 1, "node_id": self.node_id, "stage": self.stage.value}
        if hasattr(self, "_config"):
            state["config"] = b64(self._config.to_bytes())
        for name in self._SECRET_ATTRS:
            if hasattr(self, name):
                state[name] = b64(crypto.x25519_private_bytes(getattr(self, name)))
        for name in self._BYTES_ATTRS:
            if hasattr(self, name):
                state[name] = b64(getattr(self, name))
        for name in self._DICT_ATTRS:
            if hasattr(self, name):
                state[name] = {str(k): b64(v) for k, v in getattr(self, name).items()}
        if hasattr(self, "_peers"):
            state["peers"] = [b64(e.to_bytes()) for e in self._peers.values()]
        if hasattr(self, "_live"):
            state["live"] = sorted(self._live)
        if hasattr(self, "_u3"):
            state["u3"] = list(self._u3)
        return json.dumps(state, sort_keys=True).encode("utf-8")

    @classmethod
    def from_state(
        cls,
        state: bytes,
        identity_key: Ed25519PrivateKey,
        identity_registry: Mapping[int, bytes | Ed25519PublicKey],
    ) -> SecAggClient:
        """Rebuild a client saved by :meth:`export_state` (validated; bad state raises).

        Args:
            state: what :meth:`export_state` returned.
            identity_key: this node's Ed25519 identity key.
            identity_registry: node id -> registered identity key.

        Returns:
            The client, in the stage it was saved in.

        Raises:
            MalformedMessageError: an unknown version or corrupt state.
        """
        try:
            data = json.loads(state.decode("utf-8"))
            unb = lambda s: base64.b64decode(s.encode("ascii"), validate=True)  # noqa: E731
            if data.get("v") != 1:
                raise MalformedMessageError("client state: unknown version")
            client = cls(int(data["node_id"]), identity_key, identity_registry)
            client.stage = ClientStage(data["stage"])
            if "config" in data:
                cfg = SetupConfig.from_bytes(unb(data["config"]))
                client._config = cfg
                client._digest = crypto.config_digest(cfg.to_bytes())
                client._neighbours = build_graph(cfg.node_ids, cfg.degree, cfg.round_id)[
                    client.node_id
                ]
            for name in cls._SECRET_ATTRS:
                if name in data:
                    setattr(client, name, crypto.x25519_from_private_bytes(unb(data[name])))
            for name in cls._BYTES_ATTRS:
                if name in data:
                    setattr(client, name, unb(data[name]))
            for name in cls._DICT_ATTRS:
                if name in data:
                    setattr(client, name, {int(k): unb(v) for k, v in data[name].items()})
            if "peers" in data:
                peers = [AdvertiseKeys.from_bytes(unb(p)) for p in data["peers"]]
                client._peers = {p.node_id: p for p in peers}
            if "live" in data:
                client._live = frozenset(int(v) for v in data["live"])
            if "u3" in data:
                u3 = tuple(int(v) for v in data["u3"])
                ConsistencyCheck(client._config.round_id, client.node_id, u3)  # validates
                client._u3 = u3
        except SecAggError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedMessageError(f"client state is corrupt: {exc}") from None
        return client
