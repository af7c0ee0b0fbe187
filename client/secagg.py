"""Client side of secure aggregation (SecAgg+) as Flower message handlers.

After local training (:mod:`fedssl.client.app`) a client with secure aggregation on keeps its
quantised model update in its node-local ``context.state`` and sends the server only metrics.
Four further messages run the protocol of :mod:`fedssl.privacy.secagg`:

``train.secagg_setup`` -> signed round keys, ``train.secagg_share`` -> encrypted Shamir
shares for its neighbours, ``train.secagg_mask`` -> the masked update, ``train.secagg_unmask``
-> the shares the server needs to remove the masks. Between messages the protocol state lives
in ``context.state`` (JSON, never leaves the node). Any protocol error (a neighbour key whose
signature does not verify against the identity registry, a malformed message) aborts this
client's participation and wipes its round secrets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedssl.privacy.identity import load_or_create_identity, load_registry
from fedssl.privacy.secagg import SecAggClient, SecAggError
from fedssl.privacy.secagg.crypto import identity_public_bytes

STAGES = ("setup", "share", "mask", "unmask")
STATE_KEY = "secagg"
UPDATE_KEY = "secagg-update"


def registry_path(context: Context, config: ConfigRecord) -> Path:
    """Where this node's trusted identity registry is (node config, else the run dir)."""
    if "identity-registry" in context.node_config:
        return Path(str(context.node_config["identity-registry"]))
    return Path(str(config["run-dir"])) / "identities.json"


def flatten(weights: dict[str, np.ndarray]) -> np.ndarray:
    """All arrays in state-dict order as one float64 vector."""
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in weights.values()])


def identity_name(context: Context, client_id: str) -> str:
    """This node's name in the identity registry (a site's node-key name, else its id)."""
    return str(context.node_config.get("identity-name", client_id))


def store_update(context: Context, q: np.ndarray, client_id: str) -> None:
    """Keep the quantised update node-local until the masking stage."""
    context.state[UPDATE_KEY] = ArrayRecord({"q": Array(q)})
    context.state[STATE_KEY] = ConfigRecord({"client": identity_name(context, client_id),
                                             "stage": "trained"})


def _client(context: Context, state_dir: Path, config: ConfigRecord
            ) -> tuple[SecAggClient, ConfigRecord]:
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        raise SecAggError("no trained update is waiting for secure aggregation on this node")
    registry = load_registry(registry_path(context, config))
    cid = str(record["client"])
    if cid not in registry:
        raise SecAggError(f"client {cid!r} is not in the identity registry")
    key = load_or_create_identity(state_dir / "identity.pem")
    if identity_public_bytes(key) != identity_public_bytes(registry[cid][1]):
        raise SecAggError(f"client {cid!r}: its identity key differs from the registry's")
    by_index = {i: identity_public_bytes(pub) for i, pub in registry.values()}
    if "protocol" in record:
        client = SecAggClient.from_state(bytes(record["protocol"]), key, by_index)
    else:
        client = SecAggClient(registry[cid][0], key, by_index)
    return client, record


def handle(stage: str, msg: Message, context: Context, state_dir: Path) -> Message:
    """Run one protocol stage; reply ``{"secagg": {"payload": bytes}}`` or an error status."""
    config = msg.content["config"]
    payload = bytes(config["payload"])
    try:
        client, record = _client(context, state_dir, config)
        if stage == "setup":
            out = client.setup(payload)
        elif stage == "share":
            out = client.share_keys(payload)
        elif stage == "mask":
            q = context.state.array_records[UPDATE_KEY]["q"].numpy()
            out = client.mask_input(payload, q.astype(np.uint32))
        elif stage == "unmask":
            out = client.unmask(payload)
        else:
            raise SecAggError(f"unknown secure-aggregation stage {stage!r}")
        if stage == "unmask":  # round over: drop the secrets and the update
            del context.state[STATE_KEY]
            del context.state[UPDATE_KEY]
        else:
            record["protocol"] = client.export_state()
        reply = ConfigRecord({"status": "ok", "client": str(record["client"]),
                              "payload": out.to_bytes()})
    except SecAggError as exc:
        for key in (STATE_KEY, UPDATE_KEY):
            if key in context.state:
                del context.state[key]
        reply = ConfigRecord({"status": "refused", "reason": f"secure aggregation aborted: "
                              f"{exc}", "client": str(context.node_id)})
    return Message(RecordDict({"secagg": reply}), reply_to=msg)
