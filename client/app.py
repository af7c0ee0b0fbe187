"""The fedssl ClientApp: local SSL training of the received model, with DP-SGD and a ledger.

One ``train`` message = one round. The server sends the global model (``arrays``) and the round
configuration (``config``); the client

1. loads its records (its own data path, or its simulated partition, cached per process);
2. plans the round's privacy: the noise multiplier that keeps the planned run within the
   run's target epsilon given what its ledger says it already spent (or a given noise
   multiplier), and refuses the round if it would exceed the site's *own* budget
   (:mod:`fedssl.client.privacy_guard`);
3. trains with the SSL objective (DP-SGD through Opacus when DP is on);
4. appends a signed, hash-chained entry to its own ledger;
5. replies with the updated weights and metrics — or, with secure aggregation on, keeps its
   quantised update on the node and takes part in the SecAgg+ stages
   (:mod:`fedssl.client.secagg`) so the server learns only the sum — or replies with
   ``status = "refused"`` and a reason (bad data, unsound DP configuration, exhausted budget,
   a global model whose names, shapes, dtypes or sizes do not fit the local model:
   :mod:`fedssl.client.global_model`, checked before any of it is decoded), never with a
   crash.

The production app, ``app``, carries no mods and nothing simulation-only; the simulator builds
its own from the same handlers with :func:`make_client_app`, the simulated fault model
(:func:`fedssl.simulations.faults.fault_mod`) and its start-up query
(:func:`fedssl.simulations.warmup.warmup`; see :mod:`fedssl.simulations.client_app`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedssl.atomic import atomic_write_bytes
from fedssl.client import secagg
from fedssl.client.global_model import GlobalModelError, decode_global_model
from fedssl.client.privacy_guard import BudgetExceededError, SiteBudget
from fedssl.client.secagg import flatten, store_update
from fedssl.client.trainer import (
    TrainConfig,
    TrainingError,
    TrainResult,
    steps_per_epoch,
    train_local,
)
from fedssl.privacy.accounting.budget import (
    AccountingError,
    calibrate_noise,
    check_delta,
    epsilon_of,
)
from fedssl.privacy.client_level.distributed import (
    DistributedDPError,
    SkellamPlan,
    encode_with_noise,
)
from fedssl.privacy.dp_sgd.opacus_engine import DPSoundnessError, clip_sensitivity
from fedssl.privacy.identity.keys import public_pem
from fedssl.privacy.identity.ledger import LEGACY_RUN, Ledger, LedgerEntry, LedgerError, segments
from fedssl.privacy.identity.ledger import runs as ledger_runs
from fedssl.privacy.secagg import Quantizer, SecAggError
from fedssl.round_protocol import (
    INPUT_SHAPE,
    NUM_ROUNDS,
    PHASE_PREFIX,
    RUN_DIR,
    RUN_ID,
    SECAGG_NUM_CLIENTS,
    SERVER_ROUND,
)
from fedssl.run_layout import RunLayout, SiteLayout
from fedssl.run_spec import RunSpec, round_spec
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.data_cache import DataSpec, cached_dataset, simulated_partition
from fedssl.ssl_core.datasets import DataError, validate_arrays
from fedssl.ssl_core.device import DeviceError, resolve_device
from fedssl.ssl_core.federated_algorithms import get_algorithm, merge
from fedssl.ssl_core.objectives import UnknownMethodError, get_objective

log = logging.getLogger("fedssl.client")

#: errors a client answers with a refusal instead of crashing
REFUSALS = (DataError, DPSoundnessError, AccountingError, TrainingError, LedgerError,
            DistributedDPError, DeviceError, GlobalModelError,
            UnknownMethodError, SecAggError, ValueError)

LOCAL_MODEL_KEY = "local-model"

#: a Flower client mod: ``mod(msg, context, call_next) -> reply``
Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


@dataclass
class ClientIdentity:
    """Who this client is and where it keeps its own state (key, ledger)."""

    client_id: str
    state_dir: Path
    ledger_path: Path


def identify(context: Context, config: ConfigRecord) -> ClientIdentity:
    """Client id and state location: a site's ``state-dir``/``client-id`` node config, or,
    in simulation, ``client-<partition-id>`` under the run directory.

    Args:
        context: the node's Flower context (its node config).
        config: the round's config (its run directory, in simulation).

    Returns:
        The client's id, state directory and ledger path.

    Raises:
        KeyError: in simulation, without ``partition-id`` or the round's run directory.
        ValueError: for a ``partition-id`` that is not an integer.
    """
    node = context.node_config
    if "state-dir" in node:
        cid = str(node.get("client-id", f"node-{context.node_id}"))
        state = Path(str(node["state-dir"]))
        return ClientIdentity(cid, state, SiteLayout(state).ledger)
    cid = f"client-{int(node['partition-id']):03d}"
    run = RunLayout(str(config[RUN_DIR]))
    return ClientIdentity(cid, run.client_dir(cid), run.ledger(cid))


def load_records(context: Context, run: RunSpec, expected: tuple[int, ...] = ()
                 ) -> np.ndarray:
    """This client's unlabelled training records.

    Args:
        context: the node's context (a site's own data path, or a simulated partition id).
        run: the round's settings (:func:`fedssl.run_spec.round_spec`).
        expected: the shape of one record the federation's model takes (empty: unchecked).

    Raises:
        DataError: for unreadable data, NaN/Inf, or records of another shape.
    """
    spec = DataSpec(dataset=run.dataset, data_path=run.data_path, num_samples=run.num_samples,
                    seed=run.seed, image_size=run.image_size)
    node = context.node_config
    if "data-path" in node:  # a real site: everything under its own data path
        spec = DataSpec(str(node.get("dataset", "npz")), str(node["data-path"]),
                        image_size=int(node.get("image-size", spec.image_size)),
                        with_test=False)  # a site only trains: nothing held out
        x = cached_dataset(spec).x_train
    else:
        x = simulated_partition(
            spec, int(node["partition-id"]), int(node["num-partitions"]),
            run.partitioner, run.dirichlet_alpha, run.shards_per_client, run_dir=run.run_dir,
        )
    validate_arrays(x, None, "local data")
    if expected and tuple(x.shape[1:]) != expected:  # e.g. an RGB site in a grey federation
        raise DataError(
            f"this site's records have shape {tuple(x.shape[1:])} (channels, size) but the "
            f"federation's model takes {expected}: convert the site's data (channels come from "
            "the files: RGB images give 3, greyscale 1) or resize it (--image-size)")
    return x


def compute_setup(context: Context, run: RunSpec) -> torch.device:
    """Set this worker's torch threads and return its device (the site's own ``device``
    node config wins over the run's).

    Args:
        context: the node's Flower context (its ``device`` node config).
        run: the round's settings (``threads``, ``device``).

    Returns:
        The torch device to train on.
    """
    torch.set_num_threads(max(1, run.threads))
    return resolve_device(str(context.node_config.get("device", run.device)))


def run_id_of(config: ConfigRecord) -> str:
    """The server run this round belongs to (the round config's ``run-id``; "" if none was
    sent, in which case the run's spend is taken to be the whole ledger, conservatively).

    Raises:
        ValueError: if the run id is not a short alphanumeric string, or is the name ledgers
            reserve for entries without a run id
            (:data:`~fedssl.privacy.identity.ledger.LEGACY_RUN`):
            the run's entries would count as the legacy run's.
    """
    rid = str(config.get(RUN_ID, ""))
    if rid and not (len(rid) <= 64 and rid.replace("-", "").isalnum()):
        raise ValueError(f"run id {rid!r} is not a short alphanumeric string")
    if rid.lower() == LEGACY_RUN:
        raise ValueError(f"run id {rid!r} is reserved for ledger entries without a run id "
                         "(they would be mixed with this run's); the server must send another")
    return rid


def plan_noise(run: RunSpec, config: ConfigRecord, ledger: Ledger, sample_rate: float,
               steps: int, server_round: int, sensitivity: float = 1.0) -> float:
    """Noise multiplier for this round that keeps the client's planned run within budget.

    With a target epsilon, the remaining rounds (this one included) are assumed to each cost
    ``steps`` steps, so a client that trains every round ends at (at most) the target and one
    that skips rounds stays below it. The target is the *run's*: it is planned against this
    run's ledger entries only (``run-id`` of the round config; the whole ledger if the server
    sent none), so a site that reuses its state directory for a new run starts that run like a
    fresh site; the site's lifetime spend is bounded by its own budget
    (:class:`~fedssl.client.privacy_guard.SiteBudget`), not by the server's target. Otherwise
    the given noise multiplier is used. ``sensitivity`` (``extra.sensitivity`` of the entry,
    see :meth:`~fedssl.privacy.identity.ledger.LedgerEntry.segment`) scales the calibrated effective
    noise multiplier back to the one handed to the optimizer.

    Args:
        run: the round's settings (DP and accountant settings).
        config: the round's config (number of rounds, run id).
        ledger: the client's privacy ledger.
        sample_rate: the round's sampling rate.
        steps: the DP-SGD steps a round takes.
        server_round: the round's number.
        sensitivity: the clip sensitivity (1, or 2 for group clipping).

    Returns:
        The noise multiplier handed to the optimizer.

    Raises:
        AccountingError: without a target epsilon or a positive noise multiplier, or when no
            noise multiplier keeps the run within its target.
    """
    delta, accountant, target = run.delta, run.accountant, run.target_epsilon
    history = ledger.history(run_id_of(config))
    if target <= 0:
        sigma = run.noise_multiplier
        if sigma <= 0:
            raise AccountingError("DP is on but neither a target epsilon nor a positive "
                                  "noise multiplier was given")
        return sigma
    remaining_rounds = int(config[NUM_ROUNDS]) - server_round + 1
    hint = history[-1][0] if history else None
    return sensitivity * calibrate_noise(
        target, delta, sample_rate, steps * max(1, remaining_rounds), accountant,
        spent=history, hint=hint)


def _refusal(msg: Message, cid: str, reason: str) -> Message:
    log.warning("client %s refuses round: %s", cid, reason)
    content = RecordDict({
        "metrics": MetricRecord({"num-examples": 0}),
        "status": ConfigRecord({"status": "refused", "reason": reason, "client": cid}),
    })
    return Message(content, reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Run one round of local SSL training and reply with the updated model.

    Args:
        msg: the server's train message.
        context: the node's Flower context.

    Returns:
        The reply: the updated model, or a refusal naming why.
    """
    config = msg.content["config"]
    try:
        ident = identify(context, config)
    except (KeyError, ValueError) as exc:
        return _refusal(msg, f"node-{context.node_id}", f"cannot identify client: {exc}")
    try:
        return _train(msg, context, config, ident)
    except REFUSALS as exc:
        return _refusal(msg, ident.client_id, str(exc))


@dataclass
class RoundPlan:
    """What a round will train with, settled before the first gradient: the objective, the
    records, the local training settings (noise multiplier planned) and the signed ledger."""

    objective: Any
    dp: bool
    sensitivity: float
    x: np.ndarray
    cfg: TrainConfig
    ledger: Ledger
    #: the site's identity key, which signs the ledger
    key: Any
    run_id: str


def plan_round(context: Context, config: ConfigRecord, run: RunSpec, ident: ClientIdentity
               ) -> RoundPlan:
    """Every check a round makes before its first gradient, and its noise multiplier.

    Run by the train handler, and under secure aggregation also when the server first asks
    who will take part (``train.secagg_identify``): a client that would refuse (its own
    budget exhausted, data unreadable, an unsound DP setting) says so *before* the key setup,
    so the server can skip a round that secure aggregation could not complete instead of
    letting the other clients spend privacy on it.

    Args:
        context: the node's Flower context.
        config: the round's config.
        run: the round's settings.
        ident: the client's identity.

    Returns:
        The round's plan: objective, DP settings, records, training config, ledger and key.

    Raises:
        one of :data:`REFUSALS`: the round would be refused; nothing was computed on the
        records and nothing spent.
    """
    server_round = int(config[SERVER_ROUND])
    objective = get_objective(run.method)
    dp = run.dp
    budget = SiteBudget.load(context.node_config, ident.state_dir)
    if budget is not None and not dp:
        # the site's budget binds only what DP-SGD accounts for: a round without it (the
        # server's choice, dp=false) would spend an unbounded, unrecorded amount
        raise BudgetExceededError(
            f"this site has its own privacy budget (epsilon {budget.epsilon:g} at delta "
            f"{budget.delta:g}) and the server asked for a round without record-level DP "
            "(dp = false); the budget can only be kept under DP-SGD: not training")
    # 1 (per-record clipping) or 2 (group clipping); refuses a method with no proven bound
    sensitivity = clip_sensitivity(objective) if dp else 1
    x = load_records(context, run, tuple(int(d) for d in config.get(INPUT_SHAPE, ())))
    cfg = round_train_config(run, context, server_round,
                             int(config.get(NUM_ROUNDS, server_round)), dp)
    key = secagg.site_identity(context, ident.state_dir)  # a site's registered key only
    ledger = Ledger(ident.ledger_path, key)
    run_id = run_id_of(config)
    if dp:
        cfg.noise_multiplier = _plan_round_noise(run, config, ledger, budget, cfg, len(x),
                                                 server_round, sensitivity, run_id)
    return RoundPlan(objective, dp, sensitivity, x, cfg, ledger, key, run_id)


def _train(msg: Message, context: Context, config: ConfigRecord, ident: ClientIdentity
           ) -> Message:
    """One round, in the order the module docstring gives; every refusal is raised before
    the first gradient (REFUSALS)."""
    start = time.perf_counter()
    phases = PhaseClock(start)
    server_round = int(config[SERVER_ROUND])
    run = round_spec(config)  # the round's settings, typed once (fedssl.run_spec)
    if run.secagg:
        # secure aggregation's key setup precedes training: no setup, no gradient
        secagg.require_ready(context, server_round)
    device = compute_setup(context, run)
    phases.lap("setup")
    plan = plan_round(context, config, run, ident)
    phases.lap("plan")
    objective, dp, sensitivity, x, cfg = (plan.objective, plan.dp, plan.sensitivity, plan.x,
                                          plan.cfg)
    ledger, run_id = plan.ledger, plan.run_id
    input_shape = tuple(int(d) for d in config[INPUT_SHAPE])
    model = objective.build_model(input_shape)
    # names, dtypes, shapes and sizes checked against the local model before anything is
    # decoded (GlobalModelError: a refusal, the local model and state untouched)
    global_state = decode_global_model(msg.content["arrays"], model)
    local = context.state.array_records.get(LOCAL_MODEL_KEY)
    mixing = merge(model, global_state, local.to_torch_state_dict() if local else None,
                   run.algorithm, run.fedema_tau, run.fedu_threshold)
    pub = ident.ledger_path.with_suffix(".pub")
    if dp and not pub.exists():  # nothing is written for a round refused above
        # the key that verifies the ledger; a round without DP writes no ledger entry (at
        # 10,000 simulated clients, each new client's fsynced write cost ~1 ms of its round)
        pub.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(pub, public_pem(plan.key))
    phases.lap("model")

    cpu = time.process_time()
    result = train_local(model, objective, x, augment_for(input_shape, run.dataset), cfg,
                         device=device)
    cpu = time.process_time() - cpu  # below the wall time: the process waited for a core
    phases.lap("train")
    state = model.cpu().state_dict()
    if get_algorithm(run.algorithm).keeps_local_model:  # kept node-local for next round
        context.state[LOCAL_MODEL_KEY] = ArrayRecord(state)
    shared = {k: state[k] for k in global_state}  # only the parts the server averages

    epsilon = lifetime_epsilon = 0.0
    if dp:
        epsilon, lifetime_epsilon = _record_round(ledger, ident.client_id, run, cfg, result,
                                                  server_round, run_id, sensitivity)
    phases.lap("ledger")
    metrics = MetricRecord({
        "num-examples": result.num_examples,
        "loss": result.loss,
        "steps": result.steps,
        "epsilon": epsilon,  # the run's: what the run's report claims (ledger "epsilon")
        "lifetime-epsilon": lifetime_epsilon,  # every run of this site composed
        "noise-multiplier": cfg.noise_multiplier,
        "sample-rate": result.sample_rate,
        "train-seconds": result.seconds,
        "train-cpu-seconds": cpu,
        "seconds": time.perf_counter() - start,
        **mixing,
        **phases.seconds,
    })
    status = ConfigRecord({"status": "ok", "client": ident.client_id,
                           "identity": secagg.identity_name(context, ident.client_id)})
    if dp and "state-dir" in context.node_config:
        # a site: the server keeps a verified copy of the signed ledger in its run directory
        status["ledger"] = ident.ledger_path.read_text()
        status["ledger-pub"] = pub.read_bytes()
    if run.secagg:
        # the server must learn only the sum: keep the quantised update on this node
        _keep_masked_update(context, run, int(config[SECAGG_NUM_CLIENTS]), shared,
                            global_state, cfg.seed)
        metrics[PHASE_PREFIX + "reply"] = phases.lap("reply")
        return Message(RecordDict({"metrics": metrics, "status": status}), reply_to=msg)
    content = RecordDict({
        "arrays": ArrayRecord(shared), "metrics": metrics, "status": status,
    })
    metrics[PHASE_PREFIX + "reply"] = phases.lap("reply")
    return Message(content, reply_to=msg)


class PhaseClock:
    """Seconds of a client round's phases, sent with its reply (``phase-<name>`` metrics;
    summed per round in metrics.jsonl as ``client_phase_seconds``): what a researcher reads
    to see where a simulated client's time goes (issue 24: setup = threads and device, plan
    = every pre-gradient check, the records and the noise plan, model = build, decode and
    merge, train = ``train_local``, ledger = the signed entry, reply = the update's encoding
    and message)."""

    def __init__(self, start: float) -> None:
        self.last = start
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> float:
        """Close phase ``name`` now; returns its seconds."""
        now = time.perf_counter()
        self.seconds[PHASE_PREFIX + name] = spent = now - self.last
        self.last = now
        return spent


def round_train_config(run: RunSpec, context: Context, server_round: int, num_rounds: int,
                       dp: bool) -> TrainConfig:
    """The local training of round ``server_round`` of ``num_rounds`` (:class:`~fedssl.
    client.trainer.TrainConfig`), derived from the round's settings (checked by the server;
    not re-validated): the optimiser, DP-SGD's clip norm, the run's recipe (augmentation
    multiplicity, EMA of the local iterates, which is what is sent, learning-rate schedule
    over the run's rounds) and a seed per run, round and site. The noise multiplier is
    planned separately (:func:`plan_noise`).

    Args:
        run: the round's settings.
        context: the node's Flower context (its ``partition-id`` seeds the round).
        server_round: the round's number.
        num_rounds: the run's number of rounds.
        dp: DP-SGD is on.
    """
    return TrainConfig(
        epochs=run.local_epochs, batch_size=run.batch_size, lr=run.lr, momentum=run.momentum,
        seed=run.seed * 100_003 + server_round * 1009
        + int(context.node_config.get("partition-id", 0)),
        dp=dp, max_grad_norm=run.max_grad_norm, amp=run.amp,
        views=run.views, ema_decay=run.ema_decay, trainable=run.trainable,
        lr_schedule=run.lr_schedule,
        warmup_rounds=run.warmup_rounds, round_index=server_round,
        total_rounds=max(server_round, num_rounds),
    )


def _plan_round_noise(run: RunSpec, config: ConfigRecord, ledger: Ledger,
                      budget: SiteBudget | None,
                      cfg: TrainConfig, num_records: int, server_round: int,
                      sensitivity: float, run_id: str) -> float:
    """The round's noise multiplier (:func:`plan_noise`), checked against the site's own
    lifetime budget before any gradient (BudgetExceededError: the round is refused)."""
    check_delta(run.delta, num_records, "this site's data")
    sample_rate = min(1.0, cfg.batch_size / num_records)
    planned = cfg.epochs * steps_per_epoch(num_records, cfg.batch_size, dp=True)
    sigma = plan_noise(run, config, ledger, sample_rate, planned, server_round, sensitivity)
    if budget is not None:  # the site's own lifetime limit, checked before any gradient
        entries = ledger.entries()
        budget.check(segments(entries), (sigma / sensitivity, sample_rate, planned),
                     {rid: segments(es) for rid, es in ledger_runs(entries).items()
                      if rid != (run_id or LEGACY_RUN)})
    return sigma


def _record_round(ledger: Ledger, client_id: str, run: RunSpec, cfg: TrainConfig,
                  result: TrainResult, server_round: int, run_id: str, sensitivity: float
                  ) -> tuple[float, float]:
    """Append the round's signed entry to the ledger; returns the run's epsilon (this run's
    rounds only, what the run's report claims) and the lifetime one (every round of every
    run of this site)."""
    delta, accountant = run.delta, run.accountant
    entry = LedgerEntry(
        round=server_round, client=client_id, noise_multiplier=cfg.noise_multiplier,
        sample_rate=result.sample_rate, steps=result.steps, max_grad_norm=cfg.max_grad_norm,
        delta=delta, accountant=accountant, epsilon=0.0, run_id=run_id,
        extra={"sensitivity": sensitivity} if sensitivity != 1 else {},
    )
    epsilon = epsilon_of([*ledger.history(run_id), entry.segment()], delta, accountant)
    lifetime_epsilon = epsilon_of([*ledger.history(), entry.segment()], delta, accountant)
    entry.epsilon, entry.lifetime_epsilon = epsilon, lifetime_epsilon
    ledger.append(entry)
    log.info("client %s round %d: run epsilon %.4g (run %s), lifetime epsilon %.4g "
             "(all runs) at delta %g", client_id, server_round, epsilon,
             run_id or LEGACY_RUN, lifetime_epsilon, delta)
    return epsilon, lifetime_epsilon


def _keep_masked_update(context: Context, run: RunSpec, num_clients: int,
                        shared: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor],
                        seed: int) -> None:
    """Secure aggregation: quantise the update (with distributed DP: clipped, scaled,
    rounded and with this client's Skellam noise share) and keep it on this node for the
    masking stage; the server learns only the sum.

    Raises:
        TrainingError: if the update holds NaN or Inf.
    """
    new = {k: v.detach().cpu().numpy() for k, v in shared.items()}
    update = flatten(new) - flatten({k: v.numpy() for k, v in global_state.items()})
    if not np.isfinite(update).all():
        raise TrainingError("the local update contains NaN or Inf; not sending it")
    if run.client_dp == "distributed":
        # clip, scale, round and add this client's Skellam noise share before masking
        plan = SkellamPlan.make(
            run.client_clip, run.secagg_clip, run.client_noise_multiplier,
            run.client_dp_min_clients, num_clients, update.size)
        q = encode_with_noise(update, plan, rng=np.random.default_rng(seed))
    else:
        quantizer = Quantizer(run.secagg_clip, num_clients)
        q = quantizer.encode(update, rng=np.random.default_rng(seed))
    store_update(context, q)


def _secagg_stage(stage: str):
    def handler(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        ident = identify(context, config)
        if stage == "identify" and INPUT_SHAPE in config:
            # the server sent the round's settings: would this client train? A refusal now
            # (before any key is set up) lets the server skip a round that secure
            # aggregation could not complete, before anybody spends privacy on it
            try:
                plan_round(context, config, round_spec(config), ident)
            except REFUSALS as exc:
                return secagg.decline(msg, context, ident.client_id, str(exc))
        return secagg.handle(stage, msg, context, ident.state_dir, ident.client_id)

    handler.__name__ = f"secagg_{stage}"
    handler.__doc__ = f"Secure-aggregation stage '{stage}' (see fedssl.client.secagg)."
    return handler


def make_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp with fedssl's handlers: ``train`` and one ``train.secagg_<stage>`` per
    secure-aggregation stage, wrapped in ``mods`` (Flower client mods, outermost first; the
    simulator's fault model, never the production app's). The simulator adds its start-up
    query to its own app (:mod:`fedssl.simulations.client_app`)."""
    client_app = ClientApp(mods=list(mods))
    client_app.train()(train)
    for stage in secagg.STAGES:
        client_app.train(f"secagg_{stage}")(_secagg_stage(stage))
    return client_app


#: the production ClientApp (``flwr run .``, ``fedssl client``): no simulation-only mods
app = make_client_app()
