"""Server side of secure aggregation: one federated round as a SecAgg+ workflow over Flower.

The round runs seven message exchanges over Flower's Message API (``Grid.send_and_receive``),
the key setup *before* training, so that no client trains (and spends privacy) in a round
whose secure setup cannot succeed:

1. ``train.secagg_identify``: each sampled client checks its identity key against the
   registry and answers with its registry name (a client without a usable key drops out here,
   before it has computed anything);
2. ``train.secagg_setup``: the round configuration (the identified clients, graph degree k,
   threshold t, vector length d) -> each client's Ed25519-signed X25519 keys;
3. ``train.secagg_share``: each client's neighbours' keys -> its AES-GCM-encrypted Shamir shares;
4. ``train``: the clients whose shares went out train; each keeps its quantised update
   node-local and replies with metrics only (a client refuses to train unless its own setup
   completed, :func:`fedssl.client.secagg.require_ready`);
5. ``train.secagg_mask``: the shares addressed to each client that trained -> its masked update;
6. ``train.secagg_consistency``: the survivor set ``U3`` (the same for everyone) -> each
   client's Ed25519 signature on it (Bonawitz et al. 2017's consistency check);
7. ``train.secagg_unmask``: who survived and who dropped, with t signatures of stage 6 ->
   the shares that remove the masks (a client reveals nothing unless ``t`` registered
   survivors signed the very set it was shown; a client that drops at stage 6 is treated as
   one that drops at stage 7).

Training between the share and mask stages is what SecAgg+ allows (Bonawitz et al. 2017,
Figure 4: the input is only needed at MaskedInputCollection): a client that shared its keys
but then refuses or fails to train is a dropout whose pairwise masks are recovered from its
neighbours' shares, exactly as for a client that vanishes.

The protocol itself is :mod:`fedssl.privacy.secagg` (Bonawitz et al. 2017; Bell et al. 2020);
this module only moves its messages. The server learns the sum of the survivors' quantised
updates and nothing else about any one of them; the new global model is the old one plus the
decoded mean update (uniform weights: per-client example counts are not revealed to the
sum). Clients that vanish at any stage are dropped and their masks recovered from the
survivors' shares; if fewer than ``t`` remain, the round fails cleanly and the global model is
left unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedssl.privacy.client_level.distributed import DistributedDPError, SkellamPlan
from fedssl.privacy.identity.keys import load_or_create_identity, load_registry, write_registry
from fedssl.privacy.secagg import MalformedMessageError, Quantizer, SecAggError, SecAggServer
from fedssl.privacy.secagg.crypto import identity_public_bytes
from fedssl.privacy.secagg.messages import payload_bytes
from fedssl.round_protocol import RUN_DIR, SECAGG_NUM_CLIENTS, SECAGG_PAYLOAD, SERVER_ROUND
from fedssl.run_layout import RunLayout
from fedssl.server.strategy import FedSSLStrategy, RoundOutcome

log = logging.getLogger("fedssl.server")


def simulated_registry(run_dir: Path, num_clients: int) -> Path:
    """Identity keys of ``num_clients`` simulated sites and their registry, in ``run_dir``.

    What ``fedssl simulate``'s driver writes before a run, for runs no driver prepared
    (``flwr run .`` on Flower's local simulation): simulated client ``client-<pid>`` keeps its
    key in ``RUN/clients/client-<pid>/identity.pem``, where the ClientApp looks for it, and
    the public registry is ``RUN/identities.json``. Only for simulations: a real site's key is
    made by ``fedssl certs`` and registered before the run.

    Args:
        run_dir: the run directory.
        num_clients: the number of simulated sites.

    Returns:
        The path of the registry written (``RUN/identities.json``).
    """
    layout = RunLayout(run_dir)
    keys = {f"client-{i:03d}": load_or_create_identity(
        layout.client_site(f"client-{i:03d}").identity) for i in range(num_clients)}
    log.warning("no identity registry: made %d simulated sites' identity keys and %s",
                num_clients, layout.identities)
    return write_registry(layout.identities, keys)


@dataclass(frozen=True)
class DistributedDP:
    """Distributed client-level DP settings (:mod:`fedssl.privacy.client_level.distributed`)."""

    clip: float              # L2 clip of each client's update
    noise_multiplier: float  # total noise std / integer L2 sensitivity
    min_clients: int         # noise shares every released sum must hold

    def plan(self, num_clients: int, coord_clip: float, dim: int) -> SkellamPlan:
        """The encoding both sides use this round (clients compute the same one).

        Args:
            num_clients: the clients sampled this round.
            coord_clip: the per-coordinate clip of the encoding.
            dim: the number of coordinates of an update.

        Returns:
            The round's Skellam plan.

        Raises:
            DistributedDPError: if fewer clients were sampled than a release needs noise shares.
        """
        if num_clients < self.min_clients:
            raise DistributedDPError(
                f"{num_clients} clients sampled, fewer than the {self.min_clients} noise "
                "shares each release needs")
        return SkellamPlan.make(self.clip, coord_clip, self.noise_multiplier,
                                self.min_clients, num_clients, dim)

    def client_config(self) -> dict[str, str | float | int]:
        return {"client-dp": "distributed", "client-clip": self.clip,
                "client-noise-multiplier": self.noise_multiplier,
                "client-dp-min-clients": self.min_clients}


class SecureAggregation:
    """Runs federated rounds whose aggregate is computed with SecAgg+."""

    def __init__(self, strategy: FedSSLStrategy, registry_path: Path, clip: float,
                 timeout: float, run_dir: Path) -> None:
        self.strategy = strategy
        self.registry = load_registry(registry_path)
        self.by_index = {i: identity_public_bytes(pub) for i, pub in self.registry.values()}
        self.clip = clip
        self.timeout = timeout
        self.run_dir = run_dir
        #: simulated-fault settings forwarded to every stage (empty outside simulations)
        self.fault_config: dict[str, float | int] = {}
        #: distributed DP (Skellam shares added by the clients); None: plain secure aggregation
        self.dp: DistributedDP | None = None
        #: the encoding plan of the last round whose sum was released (None: nothing released)
        self.released: SkellamPlan | None = None
        #: Flower node id -> client id, for readable logs (the strategy's: dropouts name them)
        self.names: dict[int, str] = strategy.names

    def _exchange(self, grid: Grid, stage: str, payloads: dict[int, bytes],
                  round_id: int, settings: ConfigRecord | None = None) -> dict[int, bytes]:
        """Send each node its payload for ``stage`` (with the round's ``settings``, if
        given); return the payloads of good replies. A node that declines (it would refuse
        to train) is recorded as refusing the round."""
        messages = [
            Message(RecordDict({"config": ConfigRecord({
                **(dict(settings.items()) if settings is not None else {}),
                SECAGG_PAYLOAD: payload, RUN_DIR: str(self.run_dir), SERVER_ROUND: round_id,
                **self.fault_config,
            })}), dst_node_id=node, message_type=f"train.secagg_{stage}")
            for node, payload in payloads.items()
        ]
        out: dict[int, bytes] = {}
        outcome = self.strategy.last_outcome
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        for node in set(payloads) - {r.metadata.src_node_id for r in replies}:
            outcome.failed[self.names.get(node, f"node-{node}")] = (
                f"{stage}: no reply before the round timeout")
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in payloads:
                continue  # the SuperLink answering for an unreachable node: timed out, above
            if reply.has_error():
                outcome.failed[self.names.get(node, f"node-{node}")] = (
                    f"{stage}: {reply.error.reason[-300:]}")
                continue
            rec = reply.content.config_records.get("secagg")
            if rec is not None and rec.get("status") == "declined":
                name = str(rec.get("client", self.names.get(node, f"node-{node}")))
                outcome.refused[name] = str(rec.get("reason", ""))
                log.warning("round %d: client %s will not train, so it takes no part: %s",
                            round_id, name, outcome.refused[name])
                continue
            if rec is None or rec.get("status") != "ok" or SECAGG_PAYLOAD not in rec:
                reason = rec.get("reason", "malformed reply") if rec else "malformed reply"
                outcome.failed[str(rec.get("client", node)) if rec else f"node-{node}"] = (
                    f"{stage}: {reason}")
                continue
            try:
                out[node] = payload_bytes(rec[SECAGG_PAYLOAD], "payload")
            except MalformedMessageError as exc:
                outcome.failed[self.names.get(node, f"node-{node}")] = f"{stage}: {exc}"
        return out

    def _identify(self, grid: Grid, nodes: list[int], round_id: int,
                  settings: ConfigRecord) -> dict[int, int]:
        """Ask every sampled node who it is and whether it would train this round (it gets
        the round's ``settings``: a client whose own budget is spent declines here, before
        any key is set up); Flower node id -> registry index of those whose identity checks
        out and that will train (the others are recorded and take no further part)."""
        outcome = self.strategy.last_outcome
        claims = self._exchange(grid, "identify", {n: b"" for n in nodes}, round_id, settings)
        index_of: dict[int, int] = {}
        taken: dict[str, int] = {}
        for node, raw in sorted(claims.items()):
            name = raw.decode("utf-8", errors="replace")
            self.names[node] = name
            if name not in self.registry:
                outcome.failed[name] = "identify: not in the identity registry"
            elif name in taken:
                outcome.failed[name] = (f"identify: name also claimed by node {taken[name]}; "
                                        "both are left out")
                index_of.pop(taken[name], None)
            else:
                taken[name] = node
                index_of[node] = self.registry[name][0]
        return index_of

    def run(self, server_round: int, grid: Grid, arrays: ArrayRecord, config: ConfigRecord
            ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One securely aggregated round; ``(None, metrics)`` if the protocol failed.

        Key setup (identify, setup, share) runs first; only the clients whose shares went out
        are asked to train, so a failed setup costs no client any privacy.

        Args:
            server_round: the round's number.
            grid: Flower's grid to the clients.
            arrays: the global model's shared arrays.
            config: the round's config; the secure aggregation settings are added to it.

        Returns:
            The aggregate (None if the round failed) and the aggregated client metrics.

        Raises:
            TooFewNodesError: if fewer nodes than a round needs stayed connected.
        """
        strategy = self.strategy
        self.released = None
        current = {k: v.numpy() for k, v in arrays.items()}
        nodes = strategy.sample(server_round, grid)
        config[SERVER_ROUND] = server_round
        config["secagg"] = True
        config[SECAGG_NUM_CLIENTS] = max(1, len(nodes))
        config["secagg-clip"] = self.clip
        d = sum(v.size for v in current.values())
        plan = None
        if self.dp is not None:
            config.update(self.dp.client_config())
            try:
                plan = self.dp.plan(len(nodes), self.clip, d)
            except DistributedDPError as exc:
                strategy.last_outcome = RoundOutcome(failed={"distributed-dp": str(exc)})
                log.warning("round %d: not run: %s", server_round, exc)
                return None, None
        setup_outcome = RoundOutcome()
        strategy.last_outcome = setup_outcome  # what _exchange records failures in
        metrics: MetricRecord | None = None
        try:
            index_of = self._identify(grid, nodes, server_round, config)
            node_of = {i: n for n, i in index_of.items()}
            if len(index_of) < 2:
                # SecAgg+ sums at least two updates: with fewer the round cannot complete,
                # so it stops here, before anybody computes a gradient or spends privacy
                out = setup_outcome.refused | setup_outcome.failed
                why = "; ".join(f"{c}: {r}" for c, r in sorted(out.items()))[:600]
                raise SecAggError(
                    f"only {len(index_of)} of {len(nodes)} sampled clients can take part and "
                    "secure aggregation needs at least 2: round skipped before anybody "
                    f"trained, no privacy spent{f' ({why})' if why else ''}")
            server = SecAggServer(sorted(index_of.values()), d, identity_registry=self.by_index)
            cfg = server.setup().to_bytes()
            adv = self._exchange(grid, "setup", {n: cfg for n in index_of}, server_round)
            dirs = server.collect_advertisements(adv.values())
            shares = self._exchange(grid, "share", {node_of[i]: m.to_bytes()
                                                    for i, m in dirs.items()}, server_round)
            bundles = server.collect_shares(shares.values())
            # the clients whose shares went out (U2) train now; nobody else is asked to
            ready = [node_of[i] for i in sorted(bundles)]
            replies = grid.send_and_receive(strategy.messages(arrays, config, ready),
                                            timeout=self.timeout)
            trained = strategy.screen(server_round, replies, with_arrays=False, sent_to=ready)
            outcome = strategy.last_outcome
            for node in ready:  # a failed train reply names no client: its name is known
                if f"node-{node}" in outcome.failed and node in self.names:
                    outcome.failed[self.names[node]] = outcome.failed.pop(f"node-{node}")
            outcome.failed = {**setup_outcome.failed, **outcome.failed}
            outcome.rejected = {**setup_outcome.rejected, **outcome.rejected}
            outcome.refused = {**setup_outcome.refused, **outcome.refused}
            metrics = (strategy.train_metrics_aggr_fn([m.content for m in trained],
                                                      strategy.weighted_by_key)
                       if trained else None)
            trained_nodes = set()
            for msg in trained:
                node = msg.metadata.src_node_id
                if node not in index_of:  # cannot happen: only U2 nodes were asked
                    continue
                trained_nodes.add(node)
                self.names[node] = str(msg.content.config_records["status"]["client"])
            masked = self._exchange(grid, "mask", {node_of[i]: m.to_bytes()
                                                   for i, m in bundles.items()
                                                   if node_of[i] in trained_nodes},
                                    server_round)
            if plan is not None and len(masked) < plan.min_clients:
                # fewer noise shares than the accounting assumes: never unmask this sum
                raise SecAggError(
                    f"distributed DP: only {len(masked)} masked updates arrived, fewer than "
                    f"the {plan.min_clients} noise shares each release needs; not unmasked")
            checks = server.collect_masked_inputs(masked.values())
            signed = self._exchange(grid, "consistency", {node_of[i]: m.to_bytes()
                                                          for i, m in checks.items()},
                                    server_round)
            requests = server.collect_consistency_signatures(signed.values())
            unmask = self._exchange(grid, "unmask", {node_of[i]: m.to_bytes()
                                                     for i, m in requests.items()}, server_round)
            result = server.collect_unmask_responses(unmask.values())
        except SecAggError as exc:
            log.warning("round %d: secure aggregation failed, global model unchanged: %s",
                        server_round, exc)
            outcome = strategy.last_outcome
            outcome.failed["secagg"] = str(exc)
            if outcome.accepted:  # they trained (and spent privacy) for a discarded round
                log.warning("round %d: %d client(s) trained and spent privacy on this round, "
                            "but their updates were discarded: %s", server_round,
                            len(outcome.accepted), ", ".join(sorted(outcome.accepted)))
            outcome.accepted = []  # nothing was aggregated
            return None, metrics
        survivors = {f"index-{i}" for i in result.survivors}
        log.info("round %d: securely aggregated %d updates (%d dropped)", server_round,
                 result.count, len(result.dropped))
        survived = {self.names[node] for node, i in index_of.items()
                    if f"index-{i}" in survivors}
        strategy.last_outcome.accepted = [
            c for c in strategy.last_outcome.accepted if c in survived]
        if plan is not None:
            self.released = plan
            quantizer = plan.quantizer()
        else:
            quantizer = Quantizer(self.clip, int(config[SECAGG_NUM_CLIENTS]))
        mean = quantizer.decode_mean(result.total, result.count)
        new, offset = {}, 0
        for key, ref in current.items():
            new[key] = Array((ref + mean[offset:offset + ref.size].reshape(ref.shape))
                             .astype(ref.dtype))
            offset += ref.size
        return ArrayRecord(new), metrics
