"""The fedssl ServerApp: federated rounds of SSL training, evaluation, checkpoints, report.

Per round: sample clients, send them the global model and the round configuration, collect and
validate their updates (:class:`~fedssl.server.strategy.FedSSLStrategy`), average, checkpoint,
and every ``eval-every`` rounds (and after the last) evaluate the global encoder with a linear
probe and kNN on the server's labelled split. Round 0 evaluates the randomly initialised
encoder, the baseline every result is compared with. At the end the encoder is exported and
``report.json`` and the plots are written (see README.md, "Run directory", and
docs/architecture.md).

Configuration is Flower's run config (kebab-case keys, ``[tool.flwr.app.config]`` in
pyproject.toml for ``flwr run .``), whose settings, defaults and checks are
:class:`fedssl.run_spec.RunSpec`'s; ``fedssl simulate`` passes its resolved experiment config
through :func:`make_server_app`.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from threadpoolctl import threadpool_limits

from fedssl import run_spec
from fedssl.privacy.accountant import epsilon_of
from fedssl.privacy.client_dp import ClientLevelGaussian
from fedssl.privacy.distributed_dp import SkellamRound, skellam_epsilon
from fedssl.privacy.identity import load_registry
from fedssl.run_layout import RunLayout
from fedssl.run_spec import validate_run_config
from fedssl.server.checkpoint import resume_point, rewrite_metrics, save_checkpoint
from fedssl.server.ledger_copies import NOT_REGISTERED, store_copy
from fedssl.server.progress import RunProgress
from fedssl.server.report import (
    append_metrics,
    ledger_privacy,
    plot_run,
    read_metrics,
    write_report,
)
from fedssl.server.run_record import record_run
from fedssl.server.secure_aggregation import (
    DistributedDP,
    SecureAggregation,
    simulated_registry,
)
from fedssl.server.server_optimizer import ServerMomentum
from fedssl.server.strategy import FedSSLStrategy
from fedssl.server.tensorboard_log import TensorBoardLog
from fedssl.ssl_core.collapse import evaluate_with_collapse
from fedssl.ssl_core.data_cache import DataSpec, cached_dataset
from fedssl.ssl_core.datasets import SSLDataset, require_labels
from fedssl.ssl_core.device import resolve_device
from fedssl.ssl_core.evaluation import evaluate_encoder
from fedssl.ssl_core.model_parts import (
    ALGORITHMS,
    AlgorithmError,
    parse_shared,
    shared_state,
)
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.warm_start import export_encoder, load_init_encoder

log = logging.getLogger("fedssl.server")

#: run-config keys forwarded to every client in the round's ConfigRecord (RunSpec fields marked
#: for the clients)
CLIENT_KEYS = run_spec.CLIENT_KEYS

#: The run config's defaults, derived from :class:`fedssl.run_spec.RunSpec` (the one source):
#: ``[tool.flwr.app.config]`` in pyproject.toml (what ``flwr run .`` uses) holds every key with
#: the same value, ``fedssl simulate``'s ExperimentConfig is built from the same fields, and
#: ``fedssl server`` changes only what a deployment needs (run_spec.DEPLOY_OVERRIDES). DP
#: (epsilon 8 at delta 1e-5 per client over the run) and secure aggregation are on by default
#: everywhere; the default partitioner of simulated data is "dirichlet" (label skew, alpha
#: 0.5), as in ``fedssl simulate``.
DEFAULTS: dict[str, Any] = run_spec.DEFAULTS


def make_server_app(run_config: dict[str, Any] | None = None,
                    prepare_grid: Callable[[Grid], None] | None = None,
                    print_report: bool = False) -> ServerApp:
    """A ServerApp whose run config is ``run_config`` layered over Flower's run config;
    ``prepare_grid`` (e.g. the simulator's event-driven dispatch) sees the grid first. With
    ``print_report`` the result table of ``fedssl simulate`` (and the run directory) is
    printed when the run ends (``flwr run . --stream`` shows the ServerApp's output)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # the run config checked as fedssl simulate checks its options (same errors)
        cfg = validate_run_config({**dict(context.run_config), **(run_config or {})})
        if prepare_grid is not None:
            prepare_grid(grid)
        run_federation(grid, cfg)
        if print_report:
            from fedssl.server.report_table import format_report

            print(format_report(Path(str(cfg["run-dir"])).resolve()), flush=True)

    return server_app


#: the app ``flwr run .`` and ``fedssl server`` load (pyproject's [tool.flwr.app.components])
app = make_server_app(print_report=True)


def _eval_split(data: SSLDataset, max_train: int, seed: int) -> tuple[np.ndarray, ...]:
    """Labelled records the probes are fitted on (a capped subset) and tested on."""
    idx = np.random.default_rng(seed).permutation(len(data.x_train))[:max_train]
    return data.x_train[idx], data.y_train[idx], data.x_test, data.y_test


def _push_warmup(grid: Grid, config: ConfigRecord, workers: int) -> set[str]:
    """Simulation: ask ``workers`` nodes (one per simulation worker) to load code and data
    now, while the server evaluates the initial encoder; returns the message ids."""
    if workers <= 0:
        return set()
    nodes = sorted(grid.get_node_ids())[:workers]
    messages = [Message(RecordDict({"config": ConfigRecord(dict(config))}), dst_node_id=node,
                        message_type="query.warmup") for node in nodes]
    return set(grid.push_messages(messages))


def _await_replies(grid: Grid, ids: set[str], timeout: float) -> None:
    """Collect (and drop) the replies to ``ids``, waiting at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while ids and time.monotonic() < end:
        ids -= {m.metadata.reply_to_message_id for m in grid.pull_messages(ids)}
        if ids:
            time.sleep(0.01)


def store_reply_copy(run_dir: Path, cid: str, text: str, pub: bytes, identity: str | None,
                     registry: dict[str, Any] | None) -> str | None:
    """Store a reply's ledger copy (:func:`~fedssl.server.ledger_copies.store_copy`); None or
    why it was refused. The registry key is looked up by the identity name the reply gives
    (``identity``, e.g. ``node-1``; else the client id): with a registry, the ledger must be
    signed with that identity's registered key, not just any registered key."""
    name = identity or cid
    ident = (registry or {}).get(name)
    if registry is not None and ident is None:
        return (f"{NOT_REGISTERED}: {cid} replied as identity {name!r}, which the identity "
                "registry does not list; no copy kept")
    return store_copy(run_dir, cid, text, pub, ident, registry=registry)


def min_dp_clients(cfg: dict[str, Any], per_round: int) -> int:
    """Noise shares every distributed-DP release must hold: the configured number, else
    80 % of the clients sampled per round (so a few dropouts do not void a round)."""
    given = int(cfg["client-dp-min-clients"])
    return given if given > 0 else max(1, int(0.8 * per_round))


def run_federation(grid: Grid, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run all rounds; returns the report that is also written to ``report.json``."""
    wall_start = time.perf_counter()
    # One BLAS thread in the server: OpenBLAS's threaded sgemm was seen spinning for minutes
    # when called from this thread while Ray and torch's OpenMP pool shared 2 cores; the
    # server's own numerical work (probes on <= eval-samples records) is small.
    threadpool_limits(limits=1, user_api="blas")
    # with resume, a restarted server continues from the last checkpointed round: the global
    # model comes back from RUN/checkpoints, the clients' ledgers still hold what they spent
    seed = int(cfg["seed"])
    random.seed(seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(seed)
    run_dir = Path(str(cfg["run-dir"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(run_dir)
    rounds = int(cfg["num-server-rounds"])

    spec = DataSpec(str(cfg["dataset"]), str(cfg["data-path"]), int(cfg["num-samples"]),
                    seed, int(cfg["image-size"]))
    data = require_labels(cached_dataset(spec, str(run_dir.resolve())),
                          "the server's evaluation data")
    eval_data = _eval_split(data, int(cfg["eval-samples"]), seed)
    objective = get_objective(str(cfg["method"]))
    model = objective.build_model(data.input_shape)
    random_encoder = None  # report.json's random_init stays the random encoder
    if str(cfg["init-encoder"]):  # warm start from public/synthetic data, never private
        random_encoder = copy.deepcopy(model.encoder)
        load_init_encoder(model, str(cfg["init-encoder"]))
    device = resolve_device(str(cfg["device"]))  # the probes' feature extraction runs there
    shared = parse_shared(str(cfg["shared"]))
    if str(cfg["algorithm"]) not in ALGORITHMS:
        raise AlgorithmError(f"unknown algorithm {cfg['algorithm']!r}; one of {ALGORITHMS}")
    global_state = shared_state(model.state_dict(), shared)
    if not any(k.startswith("encoder.") for k in global_state):
        raise AlgorithmError("the encoder must be among the shared parts")
    reference = {k: v.detach().cpu().numpy() for k, v in global_state.items()}
    arrays = ArrayRecord(global_state)

    num_nodes = len(list(grid.get_node_ids())) or int(cfg.get("num-clients", 1))
    per_round = int(cfg["clients-per-round"]) or num_nodes
    client_dp, client_rate = None, per_round / max(1, num_nodes)
    if cfg["client-dp"] == "central":
        client_dp = ClientLevelGaussian(
            float(cfg["client-clip"]), float(cfg["client-noise-multiplier"]),
            expected_clients=client_rate * num_nodes,
            # OS entropy, not the run seed: config.toml holds the seed, and noise that can be
            # regenerated can be subtracted from the released model
            rng=np.random.default_rng())
    elif cfg["client-dp"] not in ("off", "distributed"):
        raise ValueError("client-dp must be 'off', 'central' or 'distributed', got "
                         f"{cfg['client-dp']!r}")
    strategy = FedSSLStrategy(
        reference=reference, client_dp=client_dp, client_rate=client_rate,
        # client-level DP's sampling must be unpredictable too (its amplification assumes it)
        rng=np.random.default_rng(None if client_dp is not None else seed + 11),
        fraction_train=client_rate,
        min_train_nodes=per_round, min_available_nodes=per_round, fraction_evaluate=0.0,
    )
    # FedAvgM (fedssl.server.server_optimizer): post-processing of each round's aggregate
    server_opt = ServerMomentum(float(cfg["server-lr"]), float(cfg["server-momentum"]))
    secure = None
    if cfg["secagg"]:
        if client_dp is not None:
            raise ValueError("client-level central DP clips individual updates, which secure "
                             "aggregation hides from the server: turn one of them off")
        registry = Path(str(cfg["identity-registry"]) or layout.identities)
        if not str(cfg["identity-registry"]) and not registry.exists():
            # `flwr run .` (no driver made the simulated sites' keys): make them now
            simulated_registry(run_dir, num_nodes)
        secure = SecureAggregation(strategy, registry, float(cfg["secagg-clip"]),
                                   float(cfg["round-timeout"]), run_dir.resolve())
        secure.fault_config = {k: cfg[k] for k in ("dropout-prob", "straggler-prob",
                                                   "straggler-delay", "seed")}
        if cfg["client-dp"] == "distributed":
            secure.dp = DistributedDP(float(cfg["client-clip"]),
                                      float(cfg["client-noise-multiplier"]),
                                      min_dp_clients(cfg, per_round))
    elif cfg["client-dp"] == "distributed":
        raise ValueError("distributed client-level DP adds its noise under secure aggregation: "
                         "turn secure aggregation on")
    registry_file = Path(str(cfg["identity-registry"]) or layout.identities)
    registry_keys = ({name: pub for name, (_, pub) in load_registry(registry_file).items()}
                     if registry_file.exists() else {})
    train_config = ConfigRecord({k: cfg[k] for k in CLIENT_KEYS})
    train_config["num-rounds"] = rounds
    train_config["input-shape"] = list(data.input_shape)
    train_config["run-dir"] = str(run_dir.resolve())
    # the run's id (kept on resume) tells this run's ledger entries from a site's other runs;
    # RUN/config.toml makes the run directory auditable (fedssl.server.run_record)
    train_config["run-id"] = cfg["run-id"] = record_run(run_dir, cfg)

    start_round = 1
    released: list[SkellamRound] = []  # distributed-DP rounds whose sum was unmasked
    point = resume_point(run_dir) if cfg["resume"] else None
    previous = point.rows if point is not None else read_metrics(run_dir)
    if point is not None:
        # continue after the last *complete* round (checkpoint and metrics row written); a
        # round interrupted or crashed before its row is redone, never counted as trained
        if point.weights is not None:
            model.load_state_dict({k: torch.from_numpy(v) for k, v in point.weights.items()},
                                  strict=False)
            arrays = ArrayRecord(shared_state(model.state_dict(), shared))
        start_round = point.round + 1
        if point.server_momentum is not None:
            server_opt.load_state(point.server_momentum)
        elif not server_opt.is_plain_fedavg and point.round > 0:
            log.warning("resuming with server momentum but round %d's checkpoint holds no "
                        "velocity: the momentum restarts from zero", point.round)
        released = [SkellamRound(**r["distributed_dp"]) for r in previous
                    if r.get("distributed_dp")]
        rewrite_metrics(run_dir, previous)
        log.warning("resuming after round %d, the last complete round%s", point.round,
                    f" (round {point.checkpointed}'s checkpoint has no metrics row: redone)"
                    if point.checkpointed > point.round else "")
    elif previous:
        raise FileExistsError(f"{run_dir} already holds a run; set resume to continue it")
    progress = RunProgress(rounds, start_round, enabled=bool(cfg["progress"]))
    tensorboard = (TensorBoardLog(run_dir, start_round if point is not None else 0,
                                  str(cfg["run-id"])) if cfg.get("tensorboard") else None)
    warming = _push_warmup(grid, train_config, int(cfg.get("warmup-workers", 0)))
    shots = tuple(int(k) for k in str(cfg["few-label"]).split(",") if k.strip())
    progress.phase(f"round 0/{rounds}: evaluating the initial encoder")
    if previous and previous[0]["round"] == 0:
        baseline = {k: v for k, v in previous[0].items()
                    if k not in ("round", "clients", "seconds")}
    else:  # the initial encoder, few-label probes included (report.json's random_init)
        baseline = evaluate_with_collapse(model.encoder, *eval_data, labels_per_class=shots,
                                          seed=seed, device=device)
        append_metrics(run_dir, {"round": 0, "clients": 0, "seconds": 0.0, **baseline})
        if tensorboard is not None:
            tensorboard.add_round({"round": 0, "clients": 0, "seconds": 0.0, **baseline})
    log.info("initial encoder: %s", baseline)
    random_init = baseline
    if random_encoder is not None:  # round 0 was the warm start: measure random init too
        random_init = evaluate_with_collapse(random_encoder, *eval_data,
                                             labels_per_class=shots, seed=seed, device=device)
    if warming:
        progress.phase(f"warm-up: {len(warming)} client worker(s) loading code and data")
    _await_replies(grid, warming, timeout=float(cfg["round-timeout"]))

    refusals: dict[str, list[dict[str, Any]]] = {}
    reported: dict[str, dict[str, Any]] = {}  # what clients' replies claimed (deployments)
    for row in previous:
        for cid, reason in (row.get("refused") or {}).items():
            refusals.setdefault(cid, []).append({"round": row["round"], "reason": reason})
    eval_every = int(cfg["eval-every"])
    progress.start_rounds()
    for server_round in range(start_round, rounds + 1):
        progress.phase(f"round {server_round}/{rounds}: training" + (
            " (clients first calibrate their DP noise)"
            if server_round == start_round and cfg["dp"] and float(cfg["target-epsilon"]) > 0
            else ""))
        t0 = time.perf_counter()
        train_config["server-round"] = server_round
        if secure is not None:
            new_arrays, agg = secure.run(server_round, grid, arrays, train_config)
        else:
            messages = strategy.configure_train(server_round, arrays, train_config, grid)
            # a grid that can stream replies (the simulation's) lets the strategy screen and
            # average each one as it arrives
            send = getattr(grid, "send_and_stream", grid.send_and_receive)
            replies = send(messages, timeout=float(cfg["round-timeout"]))
            new_arrays, agg = strategy.aggregate_train(server_round, replies)
        outcome = strategy.last_outcome
        if new_arrays is None:
            log.warning("round %d: no valid update (refused: %s, rejected: %s, failed: %s); "
                        "the global model is unchanged", server_round, outcome.refused,
                        outcome.rejected, outcome.failed)
        elif server_opt.is_plain_fedavg:
            arrays = new_arrays
        else:  # FedAvgM: the aggregate is a pseudo-gradient step from the current model
            stepped = server_opt.step({k: v.numpy() for k, v in arrays.items()},
                                      {k: v.numpy() for k, v in new_arrays.items()})
            arrays = ArrayRecord({k: Array(v) for k, v in stepped.items()})
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        save_checkpoint(run_dir, server_round,
                        {k: v.numpy() for k, v in arrays.items()},
                        {"seed": seed, "method": cfg["method"]},
                        server_momentum=server_opt.state() or None)
        row: dict[str, Any] = {
            "round": server_round,
            "loss": float(agg["loss"]) if agg and "loss" in agg else None,
            "clients": len(outcome.accepted),
            "refused": outcome.refused, "rejected": outcome.rejected, "failed": outcome.failed,
        }
        for cid, reason in outcome.refused.items():
            refusals.setdefault(cid, []).append({"round": server_round, "reason": reason})
        ledger_problems = {cid: store_reply_copy(run_dir, cid, text, pub,
                                                 outcome.ledger_identities.get(cid),
                                                 registry_keys if registry_file.exists()
                                                 else None)
                           for cid, (text, pub) in outcome.ledgers.items()}
        for cid, problem in {**ledger_problems, **outcome.ledger_refused}.items():
            if problem is not None:
                log.warning("round %d: ledger copy of %s refused: %s", server_round, cid,
                            problem)
                row.setdefault("ledger_refused", {})[cid] = problem
        for cid, m in outcome.client_metrics.items():
            seen = reported.setdefault(cid, {"steps": 0, "rounds": 0})
            seen.update(epsilon=m.get("epsilon", 0.0), noise_multiplier=m.get(
                "noise-multiplier", 0.0), sample_rate=m.get("sample-rate", 0.0))
            seen["steps"] += int(m.get("steps", 0))
            seen["rounds"] += 1
        # the clients' own training seconds: how much of the round was model compute
        row["client_train_seconds"] = sum(m.get("train-seconds", 0.0)
                                          for m in outcome.client_metrics.values())
        eps = [m.get("epsilon", 0.0) for m in outcome.client_metrics.values()]
        if cfg["dp"] and eps:
            row["epsilon_max"] = max(eps)
        if agg and "divergence" in agg and cfg["algorithm"] != "fedavg":
            row["divergence"] = float(agg["divergence"])
        if client_dp is not None:
            row["client_level_epsilon"] = epsilon_of(
                [(client_dp.noise_multiplier, client_rate, server_round)], float(cfg["delta"]))
        if secure is not None and secure.dp is not None:
            if secure.released is not None:
                released.append(secure.released.round_record())
                row["distributed_dp"] = asdict(released[-1])
            row["client_level_epsilon"] = skellam_epsilon(released, float(cfg["delta"]))
        if server_round % eval_every == 0 or server_round == rounds:
            progress.phase(f"round {server_round}/{rounds}: evaluating")
            row.update(evaluate_with_collapse(model.encoder, *eval_data, device=device))
        row["seconds"] = time.perf_counter() - t0
        append_metrics(run_dir, row)
        if tensorboard is not None:
            tensorboard.add_round(row)
        progress.round_done(row)

    if tensorboard is not None:
        tensorboard.close()
    progress.phase("final evaluation" + (" (few-label probes)" if shots else ""))
    shots = tuple(int(k) for k in str(cfg["few-label"]).split(",") if k.strip())
    final = evaluate_encoder(model.encoder, *eval_data, labels_per_class=shots, seed=seed,
                             device=device)
    model.cpu()
    export_encoder(layout.encoder, model, {
        "method": str(cfg["method"]), "dataset": data.name,
        "input_shape": ",".join(map(str, data.input_shape)), "rounds": str(rounds),
    })
    privacy = (ledger_privacy(run_dir, float(cfg["delta"]), str(cfg["run-id"])) if cfg["dp"]
               else None)
    if privacy is not None and not privacy["clients"] and reported:
        # no verified ledger copy arrived (sites without DP ledgers to send): the replies
        privacy["clients"] = reported
        privacy["source"] = "client replies (no verified ledger copy in RUN/ledger)"
    if client_dp is not None:
        privacy = privacy or {"delta": float(cfg["delta"]), "clients": {}}
        privacy["client_level"] = {
            "mechanism": "DP-FedAvg (central Gaussian)", "delta": float(cfg["delta"]),
            "epsilon": epsilon_of([(client_dp.noise_multiplier, client_rate, rounds)],
                                  float(cfg["delta"])),
            "noise_multiplier": client_dp.noise_multiplier, "clip": client_dp.clip_norm,
            "sample_rate": client_rate, "rounds": rounds,
        }
    if secure is not None and secure.dp is not None:
        privacy = privacy or {"delta": float(cfg["delta"]), "clients": {}}
        privacy["client_level"] = {
            "mechanism": "distributed Skellam under secure aggregation",
            "delta": float(cfg["delta"]),
            "epsilon": skellam_epsilon(released, float(cfg["delta"])),
            "noise_multiplier": secure.dp.noise_multiplier, "clip": secure.dp.clip,
            "min_clients": secure.dp.min_clients, "sample_rate": 1.0,
            "rounds": len(released), "released": [asdict(r) for r in released],
            "assumes": "at least min_clients honest clients' noise shares in every unmasked "
                       "sum; no amplification by client sampling is claimed",
        }
    report = {
        "method": cfg["method"], "algorithm": cfg["algorithm"], "shared": list(shared),
        "dataset": data.name, "clients": num_nodes, "rounds": rounds,
        "clients_per_round": per_round,
        "linear_probe_accuracy": final["linear_probe_accuracy"],
        "knn_accuracy": final["knn_accuracy"],
        "few_label": {k: v for k, v in final.items() if "shot" in k},
        "random_init": random_init,
        "initial_encoder": baseline if random_encoder is not None else None,
        "wall_seconds": time.perf_counter() - wall_start,
        "privacy": privacy,
        "secure_aggregation": bool(cfg["secagg"]),
        "run_id": cfg["run-id"],
        "refusals": refusals,
        "labels": data.label_kind,  # multi-label: accuracies are mean per-label, plus AUCs
        **{k: v for k, v in final.items() if k.endswith("_auc")},
    }
    progress.phase("writing the report and plots")
    write_report(run_dir, report)
    plot_run(run_dir, read_metrics(run_dir), privacy)
    progress.phase("done")
    progress.close()
    return report
