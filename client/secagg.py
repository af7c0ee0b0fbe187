"""Client side of secure aggregation (SecAgg+) as Flower message handlers.

A securely aggregated round runs, per client (see :mod:`fedssl.server.secure_aggregation`)::

    train.secagg_identify -> its registry name, once its identity key and the registry check
    train.secagg_setup    -> signed round keys                   (SecAgg+ AdvertiseKeys)
    train.secagg_share    -> encrypted Shamir shares for its neighbours (ShareKeys)
    train                 -> local training (:mod:`fedssl.client.app`); the quantised update
                             stays in the node-local ``context.state``, only metrics are sent
    train.secagg_mask     -> the masked update                   (MaskedInput)
    train.secagg_consistency -> its signature on the survivor set U3 it is shown
                             (ConsistencySignature; Bonawitz et al. 2017's consistency check)
    train.secagg_unmask   -> the shares the server needs to remove the masks (UnmaskResponse),
                             only once t registered survivors' signatures verify on the same U3

The key setup comes *before* training so that a client whose secure setup cannot succeed
(no identity key, a key the registry does not list, a neighbour key whose signature does not
verify) never computes a gradient of its records: no privacy is spent on a round whose
update could not be aggregated. :func:`require_ready` is what the train handler checks.

Between messages the protocol state lives in ``context.state`` (JSON, never leaves the node).
Any protocol error aborts this client's participation and wipes its round secrets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.privacy.identity.keys import (
    IdentityError,
    load_or_create_identity,
    load_private_key,
    load_registry,
)
from fedssl.privacy.secagg import SecAggClient, SecAggError
from fedssl.privacy.secagg.crypto import identity_public_bytes
from fedssl.privacy.secagg.messages import payload_bytes
from fedssl.round_protocol import RUN_DIR, SECAGG_PAYLOAD, SERVER_ROUND
from fedssl.run_layout import RunLayout, SiteLayout

STAGES = ("identify", "setup", "share", "mask", "consistency", "unmask")
STATE_KEY = "secagg"
UPDATE_KEY = "secagg-update"


class SecureSetupError(SecAggError):
    """This node cannot take part in secure aggregation (key or registry missing or wrong)."""


def registry_path(context: Context, config: ConfigRecord) -> Path:
    """Where this node's trusted identity registry is (node config, else the run dir).

    Args:
        context: the node's Flower context (``identity-registry`` node config).
        config: the round's config (its run directory).
    """
    if "identity-registry" in context.node_config:
        return Path(str(context.node_config["identity-registry"]))
    return RunLayout(str(config[RUN_DIR])).identities


def flatten(weights: dict[str, np.ndarray]) -> np.ndarray:
    """All arrays in state-dict order as one float64 vector."""
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in weights.values()])


def identity_name(context: Context, client_id: str) -> str:
    """This node's name in the identity registry (a site's node-key name, else its id).

    Args:
        context: the node's Flower context (``identity-name`` node config).
        client_id: the client's id, the fallback.
    """
    return str(context.node_config.get("identity-name", client_id))


def site_identity(context: Context, state_dir: Path) -> Ed25519PrivateKey:
    """This node's Ed25519 identity key (signs its ledger and its SecAgg round keys).

    A real site (``state-dir`` in its node config) must hold the key registered for it in
    ``identities.json`` (``fedssl client`` copies ``node-<i>.identity.pem`` into its state
    directory): a missing key is an error, never replaced by a fresh one the server would have
    to trust on first use. A simulated client whose key was not made by the driver (e.g. a
    direct ClientApp test) gets one created.

    Args:
        context: the node's Flower context.
        state_dir: the site's state directory, which holds the key.

    Raises:
        SecureSetupError: a site's key is missing, unreadable, or not the registered one.
    """
    path = SiteLayout(state_dir).identity
    if "state-dir" not in context.node_config:
        return load_or_create_identity(path)
    if not path.is_file():
        raise SecureSetupError(
            f"{path} not found: this site's registered identity key (node-<i>.identity.pem "
            "from `fedssl certs`) is missing; restart `fedssl client` with it next to the "
            "node key")
    try:
        key = load_private_key(path)
    except IdentityError as exc:
        raise SecureSetupError(str(exc)) from None
    registry_file = context.node_config.get("identity-registry")
    if registry_file:
        name = str(context.node_config.get("identity-name", ""))
        registry = _registry(Path(str(registry_file)))
        if name not in registry or (identity_public_bytes(registry[name][1])
                                    != identity_public_bytes(key)):
            raise SecureSetupError(f"{path} is not the identity key {registry_file} registers "
                                   f"for {name!r}")
    return key


def _registry(path: Path) -> dict:
    try:
        return load_registry(path)
    except IdentityError as exc:
        raise SecureSetupError(str(exc)) from None


def store_update(context: Context, q: np.ndarray) -> None:
    """Keep the quantised update node-local until the masking stage.

    Args:
        context: the node's Flower context, whose state keeps the update.
        q: the quantised update.
    """
    context.state[UPDATE_KEY] = ArrayRecord({"q": Array(q)})


def require_ready(context: Context, server_round: int) -> None:
    """Raise unless this node finished the round's key setup (identify, setup, share).

    Called by the train handler before anything is computed on the node's records, so a
    client whose secure setup failed (or never happened) refuses to train.

    Args:
        context: the node's Flower context, whose state holds the setup's progress.
        server_round: the round's number.

    Raises:
        SecureSetupError: if the round's key setup did not complete on this node.
    """
    record = context.state.config_records.get(STATE_KEY)
    if record is None or int(record.get("round", -1)) != int(server_round):
        raise SecureSetupError(f"secure aggregation is not set up for round {server_round} "
                               "on this node: not training")
    if str(record.get("stage", "")) != "shared":
        raise SecureSetupError(f"secure aggregation setup for round {server_round} did not "
                               "complete on this node: not training")


def _wipe(context: Context) -> None:
    for key in (STATE_KEY, UPDATE_KEY):
        if key in context.state:
            del context.state[key]


def _identify(context: Context, state_dir: Path, config: ConfigRecord, client_id: str
              ) -> bytes:
    """Check this node's key against the registry; start the round's state; its name."""
    _wipe(context)  # a new round: whatever an earlier, unfinished one left is dropped
    name = identity_name(context, client_id)
    registry = _registry(registry_path(context, config))
    if name not in registry:
        raise SecureSetupError(f"client {name!r} is not in the identity registry")
    key = site_identity(context, state_dir)
    if identity_public_bytes(key) != identity_public_bytes(registry[name][1]):
        raise SecureSetupError(f"client {name!r}: its identity key differs from the "
                               "registry's")
    context.state[STATE_KEY] = ConfigRecord({"client": name,
                                             "round": int(config[SERVER_ROUND]),
                                             "stage": "identified"})
    return name.encode()


def _client(context: Context, state_dir: Path, config: ConfigRecord
            ) -> tuple[SecAggClient, ConfigRecord]:
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        raise SecureSetupError("this node has not been identified for secure aggregation "
                               "this round")
    if int(record.get("round", -1)) != int(config[SERVER_ROUND]):
        raise SecureSetupError(f"secure aggregation state is for round {record.get('round')}, "
                               f"not {config[SERVER_ROUND]}")
    registry = _registry(registry_path(context, config))
    cid = str(record["client"])
    if cid not in registry:
        raise SecureSetupError(f"client {cid!r} is not in the identity registry")
    key = site_identity(context, state_dir)
    if identity_public_bytes(key) != identity_public_bytes(registry[cid][1]):
        raise SecureSetupError(f"client {cid!r}: its identity key differs from the registry's")
    by_index = {i: identity_public_bytes(pub) for i, pub in registry.values()}
    if "protocol" in record:
        client = SecAggClient.from_state(bytes(record["protocol"]), key, by_index)
    else:
        client = SecAggClient(registry[cid][0], key, by_index)
    return client, record


def decline(msg: Message, context: Context, client_id: str, reason: str) -> Message:
    """Answer ``train.secagg_identify`` with "declined": this client would refuse the
    round's training (``reason``), so it takes no part in the round's key setup.

    Args:
        msg: the server's identify message.
        context: the node's Flower context (its secure-aggregation state is wiped).
        client_id: the client's id.
        reason: why the client would refuse.

    Returns:
        The "declined" reply.
    """
    _wipe(context)
    name = identity_name(context, client_id or str(context.node_id))
    return Message(RecordDict({"secagg": ConfigRecord({
        "status": "declined", "reason": reason, "client": name})}), reply_to=msg)


def handle(stage: str, msg: Message, context: Context, state_dir: Path,
           client_id: str = "") -> Message:
    """Run one protocol stage; reply ``{"secagg": {"payload": bytes}}`` or an error status.

    Args:
        stage: the protocol stage (identify, setup, share, mask, consistency, unmask).
        msg: the server's message.
        context: the node's Flower context, whose state keeps the protocol's state.
        state_dir: the site's state directory (its identity key).
        client_id: the client's id ("": the node id).

    Returns:
        The reply; a protocol failure is a "refused" status, not an exception.
    """
    config = msg.content["config"]
    name = identity_name(context, client_id or str(context.node_id))
    try:
        payload = payload_bytes(config.get(SECAGG_PAYLOAD), "secure-aggregation payload")
        if stage == "identify":
            out = _identify(context, state_dir, config, client_id or str(context.node_id))
        else:
            client, record = _client(context, state_dir, config)
            if stage == "setup":
                out = client.setup(payload).to_bytes()
            elif stage == "share":
                out = client.share_keys(payload).to_bytes()
                record["stage"] = "shared"
            elif stage == "mask":
                if UPDATE_KEY not in context.state.array_records:
                    raise SecAggError("no trained update is waiting for secure aggregation on "
                                      "this node")
                q = context.state.array_records[UPDATE_KEY]["q"].numpy()
                out = client.mask_input(payload, q.astype(np.uint32)).to_bytes()
                record["stage"] = "masked"
            elif stage == "consistency":
                out = client.consistency_check(payload).to_bytes()
                record["stage"] = "signed"
            elif stage == "unmask":
                out = client.unmask(payload).to_bytes()
            else:
                raise SecAggError(f"unknown secure-aggregation stage {stage!r}")
            if stage == "unmask":  # round over: drop the secrets and the update
                _wipe(context)
            else:
                record["protocol"] = client.export_state()
        reply = ConfigRecord({"status": "ok", "client": name, SECAGG_PAYLOAD: out})
    except SecAggError as exc:
        _wipe(context)
        reply = ConfigRecord({"status": "refused", "reason": f"secure aggregation aborted: "
                              f"{exc}", "client": name})
    return Message(RecordDict({"secagg": reply}), reply_to=msg)
