"""The fedssl ServerApp: federated rounds of SSL training, evaluation, checkpoints, report.

Per round: sample clients, send them the global model and the round configuration, collect,
validate and aggregate their updates (:class:`~fedssl.server.aggregation.Aggregation`: plain,
client-level DP or secure aggregation, then the server optimizer), checkpoint, write the
round's metrics row (:class:`~fedssl.server.round_metrics.RoundMetrics`), and every
``eval-every`` rounds (and after the last) evaluate the global encoder with a linear probe and
kNN on the server's labelled split (:class:`~fedssl.server.evaluation.ServerEvaluation`).
Round 0 evaluates the randomly initialised encoder, the baseline every result is compared
with. At the end the encoder is exported and ``report.json`` and the plots are written (see
docs/simulation.md, "Run directory", and docs/architecture.md). Nothing here is simulation-only: the
simulator prepares its grid through :func:`make_server_app`'s ``prepare_grid``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from threadpoolctl import threadpool_limits

from fedssl import run_spec
from fedssl.round_protocol import INPUT_SHAPE, NUM_ROUNDS, RUN_DIR, RUN_ID, SERVER_ROUND
from fedssl.run_layout import RunLayout
from fedssl.run_spec import RunSpec, ServerRun
from fedssl.server.aggregation import Aggregation
from fedssl.server.checkpoint import resume_point, rewrite_metrics
from fedssl.server.evaluation import ServerEvaluation
from fedssl.server.federation_nodes import await_nodes
from fedssl.server.ledger_copies import LedgerCopyKeeper
from fedssl.server.progress import RunProgress
from fedssl.server.report import (
    ledger_privacy,
    plot_run,
    read_metrics,
    write_report,
)
from fedssl.server.round_callbacks import RoundCallback, RoundState, RunContext, make_callbacks
from fedssl.server.round_metrics import RoundMetrics
from fedssl.server.run_record import record_run
from fedssl.ssl_core.data_cache import DataSpec, cached_dataset
from fedssl.ssl_core.datasets import TRAINING_ONLY, SSLDataset
from fedssl.ssl_core.device import resolve_device
from fedssl.ssl_core.federated_algorithms import get_algorithm
from fedssl.ssl_core.model_parts import (
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
                    prepare_grid: Callable[[Grid, ServerRun], None] | None = None,
                    print_report: bool = False) -> ServerApp:
    """A ServerApp whose run config is ``run_config`` layered over Flower's run config.
    ``prepare_grid(grid, run)`` sees the grid and the checked run (:class:`ServerRun`) first: the
    simulator's (:func:`fedssl.simulations.warmup.prepare_grid`) gives its in-memory grid
    event-driven, streaming dispatch and starts its workers' warm-up; the production app has
    none. With ``print_report`` the result table of ``fedssl simulate`` (and the run
    directory) is printed when the run ends (``flwr run . --stream`` shows the ServerApp's
    output).

    Args:
        run_config: settings layered over Flower's run config (None: Flower's alone).
        prepare_grid: called with the grid and the checked run before the rounds (None: none).
        print_report: print the result table when the run ends.

    Returns:
        The ServerApp; its main raises ConfigError for an invalid run config.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # the boundary: the run config checked as fedssl simulate checks its options (same
        # errors), typed once; only the ServerRun travels on
        run = ServerRun.from_run_config({**dict(context.run_config), **(run_config or {})})
        if prepare_grid is not None:
            prepare_grid(grid, run)
        run_federation(grid, run)
        if print_report:
            from fedssl.server.report_table import format_report

            print(format_report(Path(run.spec.run_dir).resolve()), flush=True)

    return server_app


#: the app ``flwr run .`` and ``fedssl server`` load (pyproject's [tool.flwr.app.components])
app = make_server_app(print_report=True)


def initial_model(spec: RunSpec, input_shape: tuple[int, ...]
                  ) -> tuple[torch.nn.Module, torch.nn.Module | None, tuple[str, ...]]:
    """The method's model for ``input_shape``, randomly initialised or warm-started from
    ``init-encoder`` (public or synthetic data, never private); the random encoder when it
    was warm-started (report.json's ``random_init`` stays the random one, else None); the
    model parts the server shares.

    Args:
        spec: the run's settings (method, algorithm, shared parts, ``init-encoder``).
        input_shape: the model's input shape.

    Returns:
        The model, the random encoder (None without a warm start) and the shared parts.

    Raises:
        AlgorithmError: for an unknown algorithm, or shared parts without the encoder.
    """
    model = get_objective(spec.method).build_model(input_shape)
    random_encoder = None
    if spec.init_encoder:
        random_encoder = copy.deepcopy(model.encoder)
        load_init_encoder(model, spec.init_encoder)
    shared = parse_shared(spec.shared)
    get_algorithm(spec.algorithm)  # AlgorithmError for an unknown one
    if not any(k.startswith("encoder.") for k in shared_state(model.state_dict(), shared)):
        raise AlgorithmError("the encoder must be among the shared parts")
    return model, random_encoder, shared


def round_config(run: ServerRun, input_shape: tuple[int, ...], run_dir: Path
                 ) -> tuple[ConfigRecord, str]:
    """The configuration every round sends the clients (its ``server-round`` is set per
    round): the clients' settings, the run's length, the model's input shape, the run
    directory and the run's id, which tells this run's ledger entries from a site's other
    runs (kept on resume; writing ``RUN/config.toml`` makes the run directory auditable,
    :func:`fedssl.server.run_record.record_run`). Returns the config and the run's id.

    The other boundary: the settings leave as the round's ConfigRecord (kebab-case keys),
    which each client reads once, typed (:func:`fedssl.run_spec.round_spec`).

    Args:
        run: the checked run.
        input_shape: the model's input shape, sent to the clients.
        run_dir: the run directory (``RUN/config.toml`` is written there).

    Returns:
        The round's ConfigRecord (without ``server-round``) and the run's id.

    Raises:
        ValueError: for an invalid ``RUN/run_id`` or config.toml.
        ConfigError: if a resume changes a setting that defines the experiment.
    """
    settings = run.spec.to_run_config()
    config = ConfigRecord({k: settings[k] for k in CLIENT_KEYS})
    config[NUM_ROUNDS] = run.spec.rounds
    config[INPUT_SHAPE] = list(input_shape)
    config[RUN_DIR] = str(run_dir.resolve())
    run_id = record_run(run_dir, run.to_run_config())
    config[RUN_ID] = run_id
    return config, run_id


class Start(NamedTuple):
    """Where a run starts (:func:`resume`)."""

    #: the first round to train
    round: int
    #: the global model to start from (None: the initial one)
    arrays: ArrayRecord | None
    #: the metrics rows of the rounds already done
    rows: list[dict[str, Any]]
    #: whether this continues a run (a checkpoint was found)
    resumed: bool


def resume(spec: RunSpec, run_dir: Path, model: torch.nn.Module,
           shared: tuple[str, ...], aggregation: Aggregation) -> Start:
    """Where the run starts: round 1, or, with ``resume``, the round after the last
    *complete* one (checkpoint and metrics row written; a round interrupted or crashed
    before its row is redone, never counted as trained), whose weights are loaded into
    ``model``, the server optimizer's velocity and the distributed-DP releases into
    ``aggregation``. The clients' ledgers still hold what they spent.

    Args:
        spec: the run's settings (``resume``).
        run_dir: the run directory.
        model: the global model; a resumed run's weights are loaded into it.
        shared: the model parts the server shares.
        aggregation: receives the resumed rounds' rows and server optimizer state.

    Returns:
        The first round to run, its global arrays (None for a fresh run), the metrics rows
        kept and whether the run was resumed.

    Raises:
        FileExistsError: if ``run_dir`` already holds a run and ``resume`` is off.
    """
    point = resume_point(run_dir) if spec.resume else None
    if point is None:
        previous = read_metrics(run_dir)
        if previous:
            raise FileExistsError(f"{run_dir} already holds a run; set resume to continue it")
        return Start(1, None, previous, resumed=False)
    arrays = None
    if point.weights is not None:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in point.weights.items()},
                              strict=False)
        arrays = ArrayRecord(shared_state(model.state_dict(), shared))
    aggregation.resume(point.rows, point.server_momentum, point.round)
    rewrite_metrics(run_dir, point.rows)
    log.warning("resuming after round %d, the last complete round%s", point.round,
                f" (round {point.checkpointed}'s checkpoint has no metrics row: redone)"
                if point.checkpointed > point.round else "")
    return Start(point.round + 1, arrays, point.rows, resumed=True)


@dataclass
class Federation:
    """What one run's rounds share, once set up (:func:`run_federation`): the settings, the
    run's id, its directory, the global model, the server's evaluation, the aggregation path, the
    metrics rows, the progress display and the round callbacks (checkpoint, evaluation,
    metrics file, TensorBoard: :mod:`fedssl.server.round_callbacks`)."""

    spec: RunSpec
    run_id: str
    layout: RunLayout
    model: torch.nn.Module
    evaluation: ServerEvaluation
    aggregation: Aggregation
    metrics: RoundMetrics
    progress: RunProgress
    callbacks: list[RoundCallback]

    @property
    def rounds(self) -> int:
        return self.spec.rounds

    def record(self, row: dict[str, Any]) -> None:
        """Hand a finished metrics row to every callback (``metrics.jsonl``, TensorBoard)."""
        for callback in self.callbacks:
            callback.after_row(row)

    def initial(self, previous: list[dict[str, Any]], random_encoder: torch.nn.Module | None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Round 0: the initial encoder's evaluation (read back from a resumed run's row 0,
        else measured, few-label probes included, and recorded), and the random
        initialisation's (measured too when round 0 was a warm start).

        Args:
            previous: the metrics rows kept (a resumed run's row 0 is reused).
            random_encoder: the random encoder of a warm-started run, else None.

        Returns:
            The initial encoder's evaluation and the random initialisation's (the same dict
            without a warm start).
        """
        self.progress.phase(f"round 0/{self.rounds}: evaluating the initial encoder")
        if previous and previous[0]["round"] == 0:
            baseline = {k: v for k, v in previous[0].items()
                        if k not in ("round", "clients", "seconds")}
        else:  # the initial encoder (report.json's random_init)
            baseline = self.evaluation.initial(self.model.encoder)
            self.record({"round": 0, "clients": 0, "seconds": 0.0, **baseline})
        log.info("initial encoder: %s", baseline)
        random_init = (self.evaluation.initial(random_encoder) if random_encoder is not None
                       else baseline)
        return baseline, random_init

    def train_round(self, server_round: int, first: bool, grid: Grid, arrays: ArrayRecord,
                    train_config: ConfigRecord) -> ArrayRecord:
        """One round: train and aggregate, step the server optimizer, then the callbacks
        (checkpoint, evaluation when due, the metrics row); returns the new global model.

        Args:
            server_round: the round's number.
            first: this is the run's first round (clients may calibrate their DP noise).
            grid: Flower's grid to the clients.
            arrays: the global model's shared arrays.
            train_config: the round's config; its ``server-round`` is set here.

        Returns:
            The new global arrays.
        """
        spec, rounds, aggregation = self.spec, self.rounds, self.aggregation
        self.progress.phase(f"round {server_round}/{rounds}: training" + (
            " (clients first calibrate their DP noise)"
            if first and spec.dp and spec.target_epsilon > 0 else ""))
        t0 = time.perf_counter()
        train_config[SERVER_ROUND] = server_round
        aggregate, agg = aggregation.run_round(server_round, grid, arrays, train_config)
        arrays = aggregation.step(server_round, arrays, aggregate)
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        row = self.metrics.row(server_round, aggregation.outcome, agg)
        row.update(aggregation.round_privacy(server_round))
        state = RoundState(server_round, arrays, self.model, row)
        for callback in self.callbacks:
            callback.after_aggregate(state)
        row["seconds"] = time.perf_counter() - t0
        self.record(row)
        self.progress.round_done(row)
        return arrays

    def finish(self, data: SSLDataset, shared: tuple[str, ...], num_nodes: int,
               baseline: dict[str, Any], random_init: dict[str, Any],
               warm_encoder: torch.nn.Module | None, wall_start: float) -> dict[str, Any]:
        """After the last round: the final evaluation (few-label probes included), the
        label-efficiency table (the federated encoder and the warm start ``warm_encoder``,
        if any, fine-tuned next to the same network from scratch), the exported encoder,
        ``report.json`` and the plots; returns the report.

        Args:
            data: the server's dataset (evaluation data, name, input shape).
            shared: the model parts the server shares.
            num_nodes: the number of clients in the federation.
            baseline: the initial encoder's evaluation.
            random_init: the random initialisation's evaluation.
            warm_encoder: the warm start as it was before training, or None.
            wall_start: ``time.perf_counter()`` at the run's start.

        Returns:
            The report, as written to ``report.json``.
        """
        spec, run_dir, rounds = self.spec, self.layout.root, self.rounds
        for callback in self.callbacks:
            callback.close()
        shots = self.evaluation.shots if self.evaluation.labelled else ()
        self.progress.phase("final evaluation" + (" (few-label probes)" if shots else ""))
        final = self.evaluation.final(self.model.encoder)
        encoders = {"federated encoder": self.model.encoder,
                    **({"warm start": warm_encoder} if warm_encoder is not None else {})}
        method, shape = spec.method, data.input_shape
        efficiency = self.evaluation.label_efficiency(
            encoders, lambda: get_objective(method).build_model(shape).encoder,
            progress=lambda line: self.progress.phase(f"label efficiency: {line}"))
        self.model.cpu()
        export_encoder(self.layout.encoder, self.model, {
            "method": spec.method, "dataset": data.name,
            "input_shape": ",".join(map(str, data.input_shape)), "rounds": str(rounds),
        })
        privacy = run_privacy(run_dir, spec, self.run_id, self.metrics.reported,
                              self.aggregation.run_privacy(rounds))
        report = {
            "method": spec.method, "algorithm": spec.algorithm, "shared": list(shared),
            "dataset": data.name, "clients": num_nodes, "rounds": rounds,
            "clients_per_round": self.aggregation.per_round,
            # None for a training-only run (evaluation data without labels)
            "linear_probe_accuracy": final.get("linear_probe_accuracy"),
            "knn_accuracy": final.get("knn_accuracy"),
            "few_label": {k: v for k, v in final.items() if "shot" in k},
            "random_init": random_init,
            "initial_encoder": baseline if warm_encoder is not None else None,
            "label_efficiency": efficiency,
            "wall_seconds": time.perf_counter() - wall_start,
            "privacy": privacy,
            "secure_aggregation": spec.secagg,
            "run_id": self.run_id,
            "refusals": self.metrics.refusals,
            "discarded": self.metrics.discarded,
            "labels": data.label_kind,  # multi-label: mean per-label accuracies, plus AUCs
            **{k: v for k, v in final.items() if k.endswith("_auc")},
        }
        self.progress.phase("writing the report and plots")
        write_report(run_dir, report)
        references = {"random init": random_init,
                      **({"warm start": baseline} if warm_encoder is not None else {})}
        plot_run(run_dir, read_metrics(run_dir), privacy, references,
                 spec.target_epsilon if spec.dp else None)
        self.progress.phase("done")
        self.progress.close()
        return report



def run_federation(grid: Grid, run: ServerRun) -> dict[str, Any]:
    """Run all rounds of ``run``; returns the report that is also written to
    ``report.json``.

    Args:
        grid: Flower's grid to the clients.
        run: the checked run (settings and the driver's runtime values).

    Returns:
        The report, as written to ``report.json``.

    Raises:
        FileExistsError: if the run directory already holds a run and ``resume`` is off.
        AlgorithmError: for an unknown algorithm, or shared parts without the encoder.
    """
    wall_start = time.perf_counter()
    # One BLAS thread in the server: OpenBLAS's threaded sgemm was seen spinning for minutes
    # when called from this thread while Ray and torch's OpenMP pool shared 2 cores; the
    # server's own numerical work (probes on <= eval-samples records) is small.
    threadpool_limits(limits=1, user_api="blas")
    spec = run.spec
    seed = spec.seed
    random.seed(seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(seed)
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(run_dir)
    rounds = spec.rounds

    data = cached_dataset(DataSpec(spec.dataset, spec.data_path, spec.num_samples, seed,
                                   spec.image_size), str(run_dir.resolve()))
    evaluation = ServerEvaluation(data, spec.eval_samples, seed, _ks(spec.few_label),
                                  resolve_device(spec.device), _ks(spec.finetune),
                                  spec.finetune_seeds, spec.eval_test_samples)
    if not evaluation.labelled:
        log.warning("the server's evaluation data has %s", TRAINING_ONLY)
    model, random_encoder, shared = initial_model(spec, data.input_shape)
    # the warm start as it was, for the label-efficiency table (before a resume loads weights)
    warm_encoder = copy.deepcopy(model.encoder) if random_encoder is not None else None
    global_state = shared_state(model.state_dict(), shared)
    reference = {k: v.detach().cpu().numpy() for k, v in global_state.items()}

    # Flower's simulation runtime registers its nodes after the ServerApp starts
    nodes = await_nodes(grid, run.num_clients, spec.round_timeout)
    num_nodes = len(nodes) or max(1, run.num_clients)
    keeper = LedgerCopyKeeper(run_dir, Path(spec.identity_registry or layout.identities))
    aggregation = Aggregation(spec, num_nodes, reference, seed, layout, ledger_gate=keeper,
                              min_clients=run.min_clients)
    aggregation.strategy.known_nodes = set(nodes)  # who is missing from a later round
    keeper.registry()  # read now (after a simulated one is made): a bad one fails at start
    train_config, run_id = round_config(run, data.input_shape, run_dir)
    start = resume(spec, run_dir, model, shared, aggregation)
    arrays = start.arrays if start.arrays is not None else ArrayRecord(global_state)
    progress = RunProgress(rounds, start.round, enabled=spec.progress)
    callbacks = make_callbacks(RunContext(spec, run_id, layout, evaluation, aggregation,
                                          progress, start.round, start.resumed))
    federation = Federation(
        spec, run_id, layout, model, evaluation, aggregation,
        RoundMetrics(start.rows, dp=spec.dp,
                     divergence=get_algorithm(spec.algorithm).keeps_local_model),
        progress, callbacks)

    baseline, random_init = federation.initial(start.rows, random_encoder)
    federation.progress.start_rounds()
    for server_round in range(start.round, rounds + 1):
        arrays = federation.train_round(server_round, server_round == start.round, grid,
                                        arrays, train_config)
    return federation.finish(data, shared, num_nodes, baseline, random_init, warm_encoder,
                             wall_start=wall_start)


def _ks(text: str) -> tuple[int, ...]:
    """Labels per class from a comma-separated setting (``"1,5,10"``; empty: none)."""
    return tuple(int(k) for k in text.split(",") if k.strip())


def run_privacy(run_dir: Path, spec: RunSpec, run_id: str,
                reported: dict[str, dict[str, Any]], client_level: dict[str, Any] | None
                ) -> dict[str, Any] | None:
    """report.json's ``privacy`` block: the clients' record-level spend from their verified
    ledger copies (under DP; the clients' replies only when no verified copy arrived,
    labelled as such) and the client-level mechanism's ``client_level`` block, if any.

    Args:
        run_dir: the run directory (``RUN/ledger`` holds the verified ledger copies).
        spec: the run's settings (``dp``, ``delta``).
        run_id: the run's id, which selects this run's ledger entries.
        reported: the spend the clients' replies reported, per client.
        client_level: the client-level mechanism's block, or None.

    Returns:
        The ``privacy`` block, or None without DP and client-level mechanism.
    """
    delta = spec.delta
    privacy = ledger_privacy(run_dir, delta, run_id) if spec.dp else None
    if privacy is not None and not privacy["clients"] and reported:
        # no verified ledger copy arrived (sites without DP ledgers to send): the replies
        privacy["clients"] = reported
        privacy["source"] = "client replies (no verified ledger copy in RUN/ledger)"
    if client_level is not None:
        privacy = privacy or {"delta": delta, "clients": {}}
        privacy["client_level"] = client_level
    return privacy
