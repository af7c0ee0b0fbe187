"""``fedssl simulate``: a multi-site federated SSL run on Flower's simulation engine (Ray).

The driver checks everything it can before any actor starts (config values, the data source,
the partition sizes, DP soundness of the method), so that bad input fails in a second with a
clear message rather than inside a Ray worker. It then runs the real fedssl ServerApp and
ClientApp with ``flwr.simulation.run_simulation`` and returns the run directory, whose layout
is docs/simulation.md's "Run directory" (and docs/architecture.md). Ray is started on this
machine, or, with ``--ray-address``, an existing Ray cluster is joined
(:mod:`fedssl.simulations.ray_cluster`).

Why ``run_simulation``, which Flower 1.41 marks deprecated (issue 15, item 2; its banner is
dropped by :mod:`fedssl.quiet`): Flower 1.41 has no in-process simulation entry point that is
not deprecated. ``flwr.simulation`` exports ``run_simulation`` (deprecated: "Please use `flwr
run` in the CLI instead"), ``start_simulation`` (deprecated since 1.13), and
``run_simulation_process`` / ``SimulationIoConnection``, the body of the ``flwr-simulation``
process, which Flower documents as internal to ``flwr run`` (flwrlabs/flower#5739): it pulls a
run from a SuperLink's Runtime API with a token, installs the FAB, loads the apps by name and
calls the private ``_run_simulation``. The supported path is ``flwr run`` against a SuperLink
with the simulation runtime (docs/simulation.md: ``flwr run . local``), where the engine runs
in that separate ``flwr-simulation`` process, and fedssl's simulator cannot keep its work there:

- its event-driven, pipelined dispatcher and backend (:mod:`fedssl.simulations.dispatch`)
  are process-wide patches installed before the engine starts. In ``flwr-simulation`` fedssl
  code runs only as the apps Flower loads: the ServerApp in a thread started alongside the
  engine (a patch from there races the engine's start) and the ClientApp, loaded by the
  private ``start_vce`` just before it builds the backend (a patch from there depends on
  that private order, and would make the production ClientApp carry simulator code, which
  ``client/`` may not import);
- Ray is started by Flower's backend there, with a ``runtime_env`` (every actor through a
  runtime-env setup worker) and only ``num_cpus``/``num_gpus``/logging from the federation
  config: no ``max_direct_call_object_size``, no ``--ray-address``;
- what this driver does before and around the engine (checks that fail in a second, the
  sites' keys, budgets and the data cache, Ctrl-C/SIGTERM teardown, ``--resume``, the
  progress display) would be split between the ``flwr`` CLI, the SuperLink and that process.

Measured here on 2 cores shared with two other benchmark jobs (load average 6-10), the same
runs (``--num-samples 3000 --eval-samples 300 --few-label '' --no-dp --partitioner iid
--batch-size 32``, secure aggregation on, 3 rounds) with ``fedssl simulate`` and with ``flwr
run . local --federation-config num-supernodes=N --run-config ... --stream`` against a
SuperLink (``flower-superlink --insecure --simulation --isolation subprocess``, no runtime
dependency installation) started first: 10 clients, wall 25.0 / 28.4 s vs 37.0 / 35.5 s,
rounds 2-3 1.8-2.7 s vs 3.2-3.8 s (round 1: 1.5-1.8 s vs 10-12 s: no warm-up under ``flwr
run``); 50 clients, wall 25.1 s vs 47.3 s, rounds 2-3 2.1-2.4 s vs 6.5-7.0 s. That is
benchmarks/simulation.py's "flower" row (Flower's own engine: 1.42x, 1.55x, 2.25x slower per
round than fedssl at 10, 100, 1000 clients, benchmarks/results/simulation.json) plus the
``flwr run`` start. So fedssl keeps ``run_simulation`` until Flower offers an in-process
entry point with a backend hook; :mod:`fedssl.simulations.flower_engine_adapter` refuses any
Flower but 1.41.0, so an upgrade revisits this.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w

from fedssl.atomic import atomic_write_text
from fedssl.processes import await_exit, descendants
from fedssl.quiet import quiet_output
from fedssl.run_layout import RunLayout
from fedssl.run_lock import RunLock
from fedssl.run_spec import check_resume, resume_changes
from fedssl.server.extension import extension_costs
from fedssl.simulations import ray_cluster
from fedssl.simulations.config import ConfigError, ExperimentConfig
from fedssl.ssl_core.data_cache import DataSpec, cached_dataset, partition_labels, write_cache
from fedssl.ssl_core.datasets import TRAINING_ONLY, SSLDataset, evaluation_labels
from fedssl.ssl_core.evaluation import FEW_LABEL_SKIPPED
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.partitioners import partition_indices

log = logging.getLogger("fedssl.simulate")

#: Ray passes task arguments and results up to this size inline (its default is 100 KiB)
DIRECT_CALL_BYTES = 4 * 1024 * 1024


def data_spec(cfg: ExperimentConfig) -> DataSpec:
    """The data set of the run, as the server and the clients name it."""
    return DataSpec(cfg.dataset, cfg.data_path, cfg.num_samples, cfg.seed, cfg.image_size)


def preflight(cfg: ExperimentConfig, say: Callable[[str], None] = print) -> SSLDataset:
    """Fail fast on anything the clients would trip over; returns the (checked) data set.

    Every data choice is printed with ``say``: the dataset (and whether it was inferred from
    the data path), records, channels, labels, the evaluation split and how it was made.

    Args:
        cfg: the experiment's settings.
        say: prints a line.

    Raises:
        DPSoundnessError: under DP, for a method that is not per-record decomposable.
        AccountingError: under DP, for a delta not below 1 / the pool's records.
    """
    from fedssl.privacy.accounting.budget import check_delta
    from fedssl.privacy.dp_sgd.opacus_engine import require_dp_sound

    objective = get_objective(cfg.method)
    if cfg.dp:
        require_dp_sound(objective)
    data = cached_dataset(data_spec(cfg))
    if cfg.dp:  # each client holds at most the pool: its exact check is the client's own
        check_delta(cfg.delta, len(data.x_train), "the training pool")
    labelled = evaluation_labels(data, "the simulation's evaluation data")
    partition_indices(partition_labels(data, cfg.partitioner), cfg.num_clients, 0,
                      cfg.partitioner, cfg.dirichlet_alpha, cfg.shards_per_client,
                      seed=cfg.seed)
    inferred = getattr(cfg, "inferred_dataset", False)  # set by ExperimentConfig.validate
    how = (f"inferred from --data-path {cfg.data_path}" if inferred and cfg.data_path
           else "the default (no --data-path)" if inferred else "as given")
    say(f"[fedssl simulate] dataset {cfg.dataset} ({how})")
    say(f"[fedssl simulate] data: {data.describe()}")
    for note in data.notes:
        say(f"[fedssl simulate] data: {note}")
    if not labelled:
        say(f"[fedssl simulate] evaluation: {TRAINING_ONLY}")
    if data.label_kind == "multi-label":
        say(f"[fedssl simulate] evaluation: {data.num_classes} binary probes, one per label; "
            "linear probe and kNN accuracy are mean per-label accuracies (AUCs in "
            f"report.json); {FEW_LABEL_SKIPPED}")
    return data


def _start_ray(init_args: dict) -> None:
    """Start Ray here rather than in Flower's backend: Flower's ``ray.init`` adds a
    ``runtime_env`` (PYTHONPATH) that makes Ray start every actor through a runtime-env
    setup worker instead of its pre-started workers (measured: 2.5 s vs 0.1 s for two
    actors, plus 1 s of init). fedssl is an installed package, so workers import it without
    that PYTHONPATH; the driver's environment is inherited as is."""
    import ray

    if not ray.is_initialized():
        ray.init(**init_args, _system_config={
            # messages and replies up to 4 MiB (a model's weights plus its config) go
            # straight from the driver to the actor over gRPC instead of through the
            # object store: measured at 100 clients (600 KB messages), the raylet's CPU
            # fell from 5.4 % to 0.9 % of a core and the driver's from 9.5 % to 6.6 %
            "max_direct_call_object_size": DIRECT_CALL_BYTES,
        })


#: the signals that stop a run cleanly; the exit status is 128 + the signal number, the shell
#: convention: 130 for SIGINT (Ctrl-C), 143 for SIGTERM
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds a stop waits for the ServerApp and engine threads once the engine is down (they
#: notice within 0.1 s unless the server is in the middle of an evaluation)
STOP_WAIT_SECONDS = 60.0
#: seconds a SIGKILLed process of the run may take to go (it frees its memory first; slow on
#: a loaded machine)
KILL_WAIT_SECONDS = 20.0


class _Signalled(KeyboardInterrupt):
    """Raised in the main thread by a stop signal (a KeyboardInterrupt, so Flower's
    ``except Exception`` clauses let it through and its ``finally`` clauses stop the engine)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunInterruptedError(Exception):
    """The run was stopped by a signal. The simulation is torn down; the run directory keeps
    every complete round, and ``--resume`` continues after the last one."""

    def __init__(self, run_dir: Path | None, signum: int, kept: int | None, total: int,
                 lingering: bool = False) -> None:
        self.run_dir, self.signum, self.kept, self.total = run_dir, signum, kept, total
        #: a thread of the run did not stop in time (the process must exit hard)
        self.lingering = lingering
        super().__init__(self.describe())

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    def describe(self) -> str:
        """What was stopped, what was kept, and how to resume."""
        name = signal.Signals(self.signum).name + (" (Ctrl-C)" if self.signum == signal.SIGINT
                                                   else "")
        head = (f"stopped by {name}; the simulation is shut down (Flower's engine, the Ray "
                "actors and Ray's processes)")
        if self.run_dir is None or self.kept is None:
            return head + "; nothing of the run was written yet"
        if self.kept == 0:
            kept = ("no round completed (metrics.jsonl keeps round 0, the random-init "
                    "evaluation); a resume starts again at round 1")
        else:
            kept = (f"kept {RunLayout(self.run_dir).checkpoint(self.kept)}"
                    f" and metrics.jsonl rows 0-{self.kept}: round {self.kept} of {self.total}"
                    " is the last complete round; a round in progress was not counted and is "
                    "redone on resume")
        return (f"{head}; {kept}. Resume with: fedssl simulate --out {self.run_dir} --resume")


def _raise_stop(signum: int, _frame: Any) -> None:
    """The stop signals' handler while a run is on (see :func:`_stop_on_signals`)."""
    from fedssl.simulations import dispatch

    # at once, before the engine unwinds: replies that Ctrl-C's SIGINT to the actors (the
    # terminal signals the whole process group) turns into errors must not let the server
    # finish the round as a failed one and record it
    dispatch.stop_all()
    flower_log = logging.getLogger("flwr")
    if flower_log.level >= logging.WARNING:  # fedssl's own output (not --verbose)
        # the stop kills the actors mid-task: Flower logs each one's ActorDiedError with a
        # traceback, which is the stop itself, not a problem to report
        flower_log.setLevel(logging.CRITICAL)
    raise _Signalled(signum)


#: signals whose handler is :func:`_raise_stop` now (those not inherited as ignored)
_HANDLED: list[int] = []


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`_Signalled` in the main thread while the block runs.
    A signal the process inherited as ignored (e.g. SIGINT of a background job of a
    non-interactive shell) stays ignored, as Python itself does for SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _raise_stop)
    _HANDLED[:] = list(previous)
    try:
        yield
    finally:
        _HANDLED.clear()
        for sig, old in previous.items():
            signal.signal(sig, old)


def _reclaim_stop_signals() -> None:
    """Put :func:`_raise_stop` back after ``ray.init``: Ray's core worker installs its own C
    handler for SIGTERM in the driver (it logs "SIGTERM received" and dies on the spot, with
    no teardown), which replaces Python's."""
    if threading.current_thread() is threading.main_thread():
        for sig in _HANDLED:
            signal.signal(sig, _raise_stop)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """While a stop is under way (bounded by :data:`STOP_WAIT_SECONDS`), a repeated signal
    says so instead of breaking off the teardown half-way (which could orphan Ray's
    processes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        print(f"fedssl simulate: stopping (at most {STOP_WAIT_SECONDS:.0f} s)...",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _await_exit(processes: dict[int, int], timeout: float) -> None:
    """Wait until ``processes`` and this process's other descendants (orphans of the run
    come here: :func:`_reap_orphans`) have exited; SIGKILL those left after ``timeout``, and
    reap the ones that ended as this process's children (:func:`fedssl.processes.await_exit`)."""
    left = await_exit(processes, timeout, kill_wait=KILL_WAIT_SECONDS)
    if left:
        print(f"fedssl simulate: processes of the run still running after SIGKILL: "
              f"{sorted(left)}", file=sys.stderr)


@contextmanager
def _reap_orphans() -> Iterator[None]:
    """Make this process the child subreaper of its descendants (Linux ``prctl``) while the
    block runs: a Ray worker whose raylet died first (Ctrl-C signals the whole process group)
    is reparented here rather than to init, so a stop finds and ends it. Elsewhere, or if
    ``prctl`` is unavailable, nothing changes."""
    import ctypes

    pr_set_child_subreaper = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = sys.platform.startswith("linux") and libc.prctl(pr_set_child_subreaper, 1, 0, 0,
                                                             0) == 0
    except (OSError, AttributeError):
        ok = False
    try:
        yield
    finally:
        if ok:
            libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def _tear_down(threads_before: set[threading.Thread]) -> bool:
    """Stop what an interrupted simulation left running: every tuned grid raises at once
    (the ServerApp thread ends mid-round, before the round is recorded), Ray shuts down
    (actors, raylet, GCS: the processes ``ray.init`` started, each awaited and killed if it
    outlives the shutdown by 10 s), and the threads the run started are joined. Returns True
    if one of them is still alive after the wait."""
    import ray

    from fedssl.simulations import dispatch

    dispatch.stop_all()
    processes = descendants(os.getpid())  # Ray's processes and the actors (its workers)
    if ray.is_initialized():
        ray.shutdown()
    # Ray's workers notice their raylet's end on their own, a moment later: wait for them
    _await_exit(processes, timeout=10.0)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    started = [t for t in threading.enumerate()
               if t not in threads_before and not t.daemon and t is not threading.current_thread()]
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    return any(t.is_alive() for t in started)


def _saved_experiment(run_dir: Path) -> dict[str, Any]:
    """The whole TOML of ``RUN/config.toml`` (its ``[experiment]`` table is the run's
    config; other tables, e.g. ``[[change]]``, are kept as they are)."""
    path = RunLayout(run_dir).config
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the run's config {path}: {exc}") from exc
    if "experiment" not in raw:
        raise ConfigError(f"{path} is not a fedssl simulate config (no [experiment] table)")
    return raw


def _record_changes(run_dir: Path, raw: dict[str, Any], cfg: ExperimentConfig,
                    note: dict[str, str]) -> list[dict[str, Any]]:
    """Write ``cfg`` as the run's ``[experiment]`` and append one ``[[change]]`` (key, old,
    new, time, and ``note[key]`` if given) per setting that differs from the saved one
    (``out``, the run's location, is not a setting). Atomic; returns the changes."""
    old = dict(raw["experiment"])
    new = dataclasses.asdict(cfg)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # a key the saved file lacks (an option added since) at its default is no change; the
    # invocation's own settings (--out) are not the run's
    changes = [{"key": c.option.name, "old": old.get(c.option.name, ""), "new": c.new,
                "time": stamp, **({"note": note[c.option.name]} if c.option.name in note
                                  else {})}
               for c in resume_changes(old, new, ExperimentConfig)]
    if changes:
        new["out"] = old.get("out", new["out"])
        raw = {**raw, "experiment": new, "change": [*raw.get("change", []), *changes]}
        path = RunLayout(run_dir).config
        atomic_write_text(path, tomli_w.dumps(raw))
    return changes


def extension_notes(run_dir: Path, cfg: ExperimentConfig, done: int) -> list[tuple[bool, str]]:
    """What extending the run in ``run_dir`` to ``cfg.rounds`` rounds after round ``done``
    costs each client (:func:`fedssl.server.extension.extension_costs`); nothing without DP.

    Args:
        run_dir: the run directory.
        cfg: the experiment's settings (rounds and DP settings).
        done: the last round completed.

    Returns:
        ``(is_warning, text)`` pairs, one per client.
    """
    if not cfg.dp:
        return []
    return extension_costs(run_dir, cfg.rounds, done, target_epsilon=cfg.target_epsilon,
                           delta=cfg.delta, accountant=cfg.accountant)


def default_run_dir(cfg: ExperimentConfig) -> Path:
    return Path("runs") / f"{cfg.method}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def simulate(cfg: ExperimentConfig, verbose: bool = False, resume: bool = False,
             extend: bool = False) -> Path:
    """Run the experiment (or, with ``resume``, continue it after its last complete round);
    returns the run directory.

    Resuming with a different round count than the run's ``config.toml`` is refused unless
    ``extend`` (``--extend``) says so; an extension is recorded there as a ``[[change]]``
    and what it costs each client's privacy is printed first (:func:`extension_notes`).
    Any other setting that defines the experiment (``on_resume`` "fixed" on its field) must
    equal the recorded one, or the resume is refused before anything is written
    (:func:`fedssl.run_spec.check_resume`); those that may change are recorded as
    ``[[change]]``. A complete run (every round done, ``report.json`` written) is resumed
    only with ``extend``: otherwise it would redo nothing but overwrite its report.

    The run directory is locked (:class:`fedssl.run_lock.RunLock`) for the whole run,
    teardown included: a second simulate or server on it gets
    :class:`~fedssl.run_lock.RunInUseError`.

    SIGINT (Ctrl-C) and SIGTERM stop the run within seconds: the simulation is torn down
    (:func:`_tear_down`) and :class:`RunInterruptedError` says what was kept; its
    ``exit_code`` is 130 or 143.

    Args:
        cfg: the experiment's settings.
        verbose: show Flower's and Ray's output.
        resume: continue the run in the run directory (``cfg.out``).
        extend: let a resume add rounds.

    Returns:
        The run directory.

    Raises:
        ConfigError: for invalid settings, or a resume or extension that is refused.
        FileExistsError: if the run directory already holds a run and ``resume`` is off.
        FileNotFoundError: with ``resume``, if the run directory holds no round.
        RunInUseError: if another process holds the run directory.
        RunInterruptedError: on SIGINT or SIGTERM.
    """
    threads_before = set(threading.enumerate())
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    # the run directory is this process's until it ends, teardown included: a second
    # simulate (or server) on it is refused before it reads or writes anything
    with _reap_orphans(), RunLock(RunLayout(run_dir).lock, "run directory"):
        try:
            with _stop_on_signals():
                return _simulate(cfg, run_dir, verbose, resume, extend)
        except _Signalled as exc:
            signum = exc.signum
        except KeyboardInterrupt:  # SIGINT before our handler was installed, or not in main
            signum = signal.SIGINT
        with _signals_deferred():
            lingering = _tear_down(threads_before)
    from fedssl.server.checkpoint import CheckpointError, resume_point

    kept: int | None = None
    try:
        point = resume_point(run_dir)
        kept = point.round if point is not None else None
    except CheckpointError:
        kept = None
    raise RunInterruptedError(run_dir, int(signum), kept, cfg.rounds, lingering) from None


def _simulate(cfg: ExperimentConfig, run_dir: Path, verbose: bool, resume: bool,
              extend: bool) -> Path:
    """:func:`simulate` without the signal handling."""
    # Flower's telemetry off, as in every fedssl deployment process (server, SuperLink,
    # SuperNode): a simulation otherwise sends usage events to Flower's servers at its
    # start and end (and, offline, waits on them at exit). Read when Flower's telemetry
    # module is first imported, i.e. below; Ray's workers inherit it from this process.
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    from flwr.simulation import run_simulation

    from fedssl.client.privacy_guard import write_site_file
    from fedssl.privacy.identity.keys import load_or_create_identity, write_registry
    from fedssl.server.app import make_server_app
    from fedssl.server.checkpoint import resume_point
    from fedssl.simulations import dispatch, warmup
    from fedssl.simulations.client_app import simulation_app as client_app

    cfg.validate()
    if cfg.ray_address:  # an unreachable cluster is refused now, before anything is written
        ray_cluster.probe(cfg.ray_address)
    layout = RunLayout(run_dir)
    if extend and not resume:
        raise ConfigError("--extend continues a run: it needs --resume (and --out RUN_DIR)")
    point = resume_point(run_dir) if resume else None
    if resume:
        if point is None:
            raise FileNotFoundError(f"nothing to resume: {run_dir} holds no round (no "
                                    "metrics.jsonl or checkpoint)")
        saved = _saved_experiment(run_dir)
        # what defines the experiment stays as recorded (a changed --method would have
        # relabelled its report, a changed --num-clients re-partitioned the data mid-run)
        check_resume(resume_changes(saved["experiment"], dataclasses.asdict(cfg),
                                    ExperimentConfig), run_dir, cls=ExperimentConfig)
        planned = int(saved["experiment"].get("rounds", cfg.rounds))
        _check_rounds(run_dir, planned, cfg, point.round, extend)
        if not extend and point.round >= planned and layout.report.exists():
            raise ConfigError(
                f"the run in {run_dir} is complete (round {point.round} of {planned}, "
                f"{layout.report.name} written): there is nothing to resume, and its report "
                "and encoder are kept as they are. To train more rounds: --resume --extend "
                f"--rounds N (N > {planned}); to score its encoder on other data: fedssl "
                "evaluate (nothing was changed)")
    data = preflight(cfg)
    if resume:
        changes = _record_changes(run_dir, saved, cfg, {"rounds": (
            f"extended with --resume --extend after round {point.round}")})
        for c in changes:
            print(f"fedssl simulate: resume changes {c['key']} from {c['old']!r} to "
                  f"{c['new']!r} (recorded in {RunLayout(run_dir).config})", file=sys.stderr)
        layout.report.unlink(missing_ok=True)
    elif layout.metrics.exists():
        raise FileExistsError(f"run directory {run_dir} already holds a run; choose another "
                              "--out or pass --resume (nothing was overwritten)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(layout.config, cfg.to_toml())
        for cid, eps in cfg.parsed_site_budgets().items():  # each site's own local config
            write_site_file(layout.client_dir(cid), eps, cfg.delta)
        # each site's identity key, and the public registry distributed out of band; a key
        # costs two fsyncs (~0.7 ms), which threads overlap (a third less at 1,000 keys)
        names = [f"client-{i:03d}" for i in range(cfg.num_clients)]
        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            keys = dict(zip(names, pool.map(
                load_or_create_identity, (layout.client_site(n).identity for n in names)),
                strict=True))
        write_registry(layout.identities, keys)
    write_cache(run_dir.resolve(), data_spec(cfg), data)  # generated once, mapped by all
    run_config = cfg.to_run_config(str(run_dir.resolve()))
    run_config["resume"] = resume

    if not verbose:  # Flower's INFO log; its known banners: quiet_output below
        logging.getLogger("flwr").setLevel(logging.WARNING)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray_logs = {"logging_level": logging.INFO if verbose else logging.ERROR,
                "log_to_driver": verbose}
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cfg.cpus_per_client, "num_gpus": cfg.gpus_per_client},
    }
    if cfg.ray_address:  # joined before the engine starts, so Flower's backend does not init
        where, workers = _join_cluster(cfg, run_dir, run_config, ray_logs, verbose)
    else:
        cores = os.cpu_count() or 1
        backend_config["init_args"] = init_args = {"num_cpus": cores,
                                                   "include_dashboard": False, **ray_logs}
        # one worker per cpus-per-client cores
        where, workers = f"Ray ({cores} CPUs)", int(cores // cfg.cpus_per_client)
    # each worker loads code and data while the server evaluates the initial encoder (the
    # "query.warmup" message)
    run_config["warmup-workers"] = min(cfg.num_clients, max(1, workers))
    print(f"[fedssl simulate] start-up: {where} and Flower's simulation engine "
          f"for {cfg.num_clients} clients ({run_config['warmup-workers']} worker(s))",
          flush=True)
    with quiet_output(verbose):  # Flower's and Ray's banners about fedssl's own choices
        if not cfg.ray_address:
            _start_ray(init_args)
            _reclaim_stop_signals()
        # replies and new messages wake the engine instead of 0.1 s polls; each actor holds
        # its next message while it trains (not with simulated stragglers: they sleep in it);
        # Flower's own dispatcher and backend are put back when the simulation ends
        with dispatch.installed(pipeline_depth=1 if cfg.straggler_prob > 0 else 2):
            run_simulation(
                server_app=make_server_app(run_config, prepare_grid=warmup.prepare_grid),
                client_app=client_app,
                num_supernodes=cfg.num_clients, backend_config=backend_config,
                verbose_logging=verbose,
            )
    if not layout.report.exists():
        raise RuntimeError(f"the simulation ended without a report in {run_dir}; rerun with "
                           "--verbose to see the server's log")
    return run_dir


def _join_cluster(cfg: ExperimentConfig, run_dir: Path, run_config: dict[str, Any],
                  ray_logs: dict[str, Any], verbose: bool) -> tuple[str, int]:
    """Join the Ray cluster at ``cfg.ray_address`` (:mod:`fedssl.simulations.ray_cluster`)
    and check that every node that can host a client runs fedssl on this run directory and
    data; returns how to name the cluster in the start-up line and the number of client
    actors it holds. A relative ``--data-path`` is made absolute for the clients (a node's
    workers start in the directory ``ray start`` ran in there)."""
    address = cfg.ray_address
    print(f"[fedssl simulate] start-up: joining the Ray cluster at {address}", flush=True)
    if cfg.data_path:
        run_config["data-path"] = str(Path(cfg.data_path).resolve())
    with quiet_output(verbose):
        ray_cluster.connect(address, **ray_logs)
        _reclaim_stop_signals()  # Ray's driver installs its own SIGTERM handler
        nodes = ray_cluster.check_nodes(address, run_dir.resolve(),
                                        str(run_config.get("data-path", "")),
                                        cfg.cpus_per_client, cfg.gpus_per_client)
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    return (f"the Ray cluster at {address} ({len(nodes)} node(s) for clients, {cpus:g} CPUs)",
            sum(n["slots"] for n in nodes))


def _check_rounds(run_dir: Path, saved: int, cfg: ExperimentConfig, done: int,
                  extend: bool) -> None:
    """Refuse a resume that would change the run's round count unless ``extend``; with
    ``extend``, require more rounds and print each client's privacy cost of them."""
    if cfg.rounds == saved:
        if extend:
            raise ConfigError(f"--extend: the run in {run_dir} already has {saved} rounds; "
                              "give the new total with --rounds N (more than that)")
        return
    if not extend:
        raise ConfigError(
            f"rounds: the run in {run_dir} was configured for {saved} rounds (its "
            f"config.toml) and {done} are complete; --resume --rounds {cfg.rounds} would "
            f"change its plan (and each client's per-round privacy spend). Pass --extend to "
            f"extend it to {cfg.rounds} rounds (recorded in config.toml), or drop --rounds "
            "(nothing was changed)")
    if cfg.rounds < max(saved, done):
        raise ConfigError(f"--extend only adds rounds: the run has {saved} (done: {done}), "
                          f"--rounds {cfg.rounds} would shorten it")
    notes = extension_notes(run_dir, cfg, done)
    print(f"fedssl simulate: extending {run_dir} from {saved} to {cfg.rounds} rounds "
          f"({cfg.rounds - done} more after round {done})", file=sys.stderr)
    for warn, text in notes:
        print(f"fedssl simulate: {'WARNING: ' if warn else ''}{text}", file=sys.stderr)
