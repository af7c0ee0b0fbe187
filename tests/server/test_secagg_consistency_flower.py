"""The consistency stage over Flower messages (``train.secagg_consistency``, client side).

Three simulated clients run every SecAgg+ stage through :func:`fedssl.client.secagg.handle`
(the ClientApp's handler: protocol state in ``context.state`` between messages) against a
:class:`SecAggServer`; the honest round equals the plain sum, and a client shown a survivor set
the others did not sign refuses to unmask and wipes its round state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedssl.client import secagg
from fedssl.privacy.identity.keys import load_or_create_identity, load_registry, write_registry
from fedssl.privacy.secagg import (
    ConsistencyCheck,
    ConsistencySignature,
    SecAggServer,
    UnmaskRequest,
)
from fedssl.privacy.secagg.crypto import identity_public_bytes
from fedssl.simulations.faults import STAGE_IDS

D = 10
pytestmark = pytest.mark.usefixtures("flower_identity")


class Sites:
    def __init__(self, run: Path, n: int = 3) -> None:
        self.run = run
        self.names = [f"client-{i:03d}" for i in range(n)]
        self.state_dirs = {c: run / "clients" / c for c in self.names}
        keys = {c: load_or_create_identity(self.state_dirs[c] / "identity.pem")
                for c in self.names}
        write_registry(run / "identities.json", keys)
        registry = load_registry(run / "identities.json")
        self.index = {c: registry[c][0] for c in self.names}
        self.by_index = {i: identity_public_bytes(pub) for i, pub in registry.values()}
        self.contexts = {c: Context(run_id=1, node_id=10 + k, state=RecordDict(), run_config={},
                                    node_config={}) for k, c in enumerate(self.names)}
        self.q = {c: np.full(D, k + 1, np.uint32) for k, c in enumerate(self.names)}

    def send(self, stage: str, name: str, payload: bytes) -> ConfigRecord:
        ctx = self.contexts[name]
        msg = Message(RecordDict({"config": ConfigRecord({
            "payload": payload, "run-dir": str(self.run), "server-round": 1})}),
            dst_node_id=ctx.node_id, message_type=f"train.secagg_{stage}")
        reply = secagg.handle(stage, msg, ctx, self.state_dirs[name], name)
        return reply.content.config_records["secagg"]

    def ok(self, stage: str, name: str, payload: bytes) -> bytes:
        rec = self.send(stage, name, payload)
        assert rec["status"] == "ok", rec.get("reason")
        return bytes(rec["payload"])

    def through_mask(self) -> tuple[SecAggServer, dict[int, ConsistencyCheck], dict[int, str]]:
        for c in self.names:
            assert self.ok("identify", c, b"") == c.encode()
        name_of = {self.index[c]: c for c in self.names}
        server = SecAggServer(sorted(name_of), D, identity_registry=self.by_index)
        cfg = server.setup().to_bytes()
        dirs = server.collect_advertisements([self.ok("setup", c, cfg) for c in self.names])
        bundles = server.collect_shares(
            [self.ok("share", name_of[i], m.to_bytes()) for i, m in dirs.items()])
        for c in self.names:
            secagg.require_ready(self.contexts[c], 1)
            secagg.store_update(self.contexts[c], self.q[c])
        checks = server.collect_masked_inputs(
            [self.ok("mask", name_of[i], m.to_bytes()) for i, m in bundles.items()])
        return server, checks, name_of


def test_consistency_is_a_stage_of_the_client_app_and_of_the_fault_model() -> None:
    assert secagg.STAGES.index("mask") < secagg.STAGES.index("consistency") < (
        secagg.STAGES.index("unmask"))
    assert "consistency" in STAGE_IDS and len(set(STAGE_IDS.values())) == len(STAGE_IDS)


def test_round_through_the_handlers_equals_the_plain_sum(tmp_path: Path) -> None:
    sites = Sites(tmp_path)
    server, checks, name_of = sites.through_mask()
    signed = [sites.ok("consistency", name_of[i], m.to_bytes()) for i, m in checks.items()]
    for c in sites.names:
        assert sites.contexts[c].state.config_records[secagg.STATE_KEY]["stage"] == "signed"
    requests = server.collect_consistency_signatures(signed)
    result = server.collect_unmask_responses(
        [sites.ok("unmask", name_of[i], m.to_bytes()) for i, m in requests.items()])
    assert np.array_equal(result.total, sum(sites.q.values()).astype(np.uint32))
    for ctx in sites.contexts.values():  # round over: secrets and update wiped
        assert secagg.STATE_KEY not in ctx.state and secagg.UPDATE_KEY not in ctx.state


def test_client_shown_another_survivor_set_refuses_to_unmask(tmp_path: Path) -> None:
    sites = Sites(tmp_path)
    server, checks, name_of = sites.through_mask()
    ids = sorted(checks)
    victim_of_lie, dropped = ids[0], ids[-1]
    lie = ConsistencyCheck(server.config.round_id, victim_of_lie,
                           tuple(i for i in ids if i != dropped))
    shown = {i: (lie if i == victim_of_lie else checks[i]) for i in ids}
    sigs = {i: sites.ok("consistency", name_of[i], m.to_bytes()) for i, m in shown.items()}
    relayed = tuple(sorted((i, ConsistencySignature.from_bytes(s).signature)
                           for i, s in sigs.items()))
    g = server.graph[victim_of_lie]
    request = UnmaskRequest(server.config.round_id, victim_of_lie,
                            tuple(sorted((g | {victim_of_lie}) & set(lie.survivors))),
                            (dropped,), relayed)
    name = name_of[victim_of_lie]
    rec = sites.send("unmask", name, request.to_bytes())
    assert rec["status"] == "refused" and "payload" not in rec
    assert "consistency signature" in str(rec["reason"])
    assert secagg.STATE_KEY not in sites.contexts[name].state  # secrets wiped
    # asked again, it has nothing left to reveal
    again = sites.send("unmask", name, request.to_bytes())
    assert again["status"] == "refused" and "payload" not in again
