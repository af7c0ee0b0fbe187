"""Benchmark: seconds per federated round of ``fedssl simulate`` vs vanilla Flower vs the floor.

Why: the issue "Simulation at scale and speed" asks whether fedssl's simulator costs more than
the training it runs. One command measures the *same workload* three ways for N clients in
``--clients`` (default 10, 100, 1000) and prints medians next to each other:

* ``fedssl`` / ``fedssl+secagg`` - :func:`fedssl.simulations.simulate.simulate` with an
  :class:`~fedssl.simulations.config.ExperimentConfig`: MNIST-1D, SimSiam, no DP, IID
  partition, one local epoch of ``--batches`` batches of 32 records per client, secure
  aggregation off and on, 100 clients per round at N=1000 (all clients below). Server-side
  evaluation runs only after the last round (``eval_every`` beyond the run, no few-label probes),
  so steady-state rounds carry no evaluation; the first round carries the actors' lazy start.
* ``flower`` - a vanilla Flower 1.41 app as a tutorial writes it, run with
  ``flwr.simulation.run_simulation`` under the same Ray backend config (1 CPU per client,
  ``num_cpus`` = cores): a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg``
  (``fraction_train`` = per-round / N, no client-side evaluation) and a ``ClientApp`` whose
  ``train`` handler, *for every message*, regenerates its own MNIST-1D partition
  (``load_mnist1d`` with ``num_samples`` = its record count and a per-partition seed, the
  "load_data(partition_id)" step of a tutorial), builds a fresh
  :class:`fedssl.ssl_core.heads.SSLModel`, loads the received weights, trains with the same
  objective through :func:`fedssl.client.trainer.train_local`, and replies with the full
  ``state_dict`` and ``num-examples``.
* ``floor`` - the compute floor: the same ``train_local`` calls for the same sampled clients in
  one process, one after another (``torch`` threads = 1, as each simulated client gets), plus
  the float average of their weights. ``client_compute_s`` is the sum of the clients'
  ``train_local`` seconds in a round; ``ideal_s`` = client compute / cores is what a perfect
  parallel simulator would take. Because this shared machine's speed drifts between settings
  (the same floor was measured at 1.3-2.1 s per round within an hour), fedssl and the vanilla
  app also report their *own* clients' summed ``train_local`` seconds, and ``x ideal (own)``
  divides the round by that compute / cores: the share of the wall time that is not model
  compute, independent of the drift.
* ``floor-parallel`` - the floor's clients spread over ``cores`` plain worker processes
  (``multiprocessing``, no Flower, no Ray), the global state sent with each task: what this
  machine's cores deliver running the training side by side. ``x parallel floor`` divides a
  round by this floor's round. It is the fair ideal where two processes on this VM do not run
  at twice one process's speed (measured: two concurrent DP-SGD benchmark processes each
  20-35 % slower than one alone).

Each setting runs in its own child process (fresh Ray, fresh interpreter). Reported per setting:
startup seconds (child start to the first round's messages: imports, data generation, Ray and
actor start, round-0 evaluation), the first (warm-up) round, the wall time of rounds 1-3 (the
issue's measure), the whole child process's wall time, the median of the steady rounds
(rounds 2..R-1, so neither the warm-up nor the final evaluation), rounds/s, client-updates/s,
peak memory of the whole process tree (the child and every descendant, i.e. Ray's GCS,
raylet and worker processes: the sum of RSS, an upper bound since shared pages count once per
process, and the sum of PSS from ``/proc/<pid>/smaps_rollup``), and ratios to the floor.
Other engineers' jobs may share the machine: ``os.getloadavg()`` is recorded before and after
each setting.

Usage::

    python benchmarks/simulation.py --quick          # N in {10, 100}, 3 rounds (~4 min)
    python benchmarks/simulation.py                  # N in {10, 100, 1000}, 4 rounds (~15 min)
    python benchmarks/simulation.py --clients 100 --rounds 5 --kinds fedssl,floor

Results: ``benchmarks/results/simulation.json`` and ``benchmarks/results/simulation.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 32
TEST_FRACTION = 0.2  # load_mnist1d keeps 80 % as the training pool
KINDS = ("fedssl", "fedssl+secagg", "flower", "floor", "floor-parallel")


# ------------------------------------------------------------------------------ workload
def per_round(n: int) -> int:
    """Clients per round: all of them up to 100, then 100 (the issue's 1000-client setting)."""
    return n if n <= 100 else 100


def records_per_client(n: int, batches: int, max_pool: int) -> int:
    """Training records per client: ``batches`` batches of 32, capped so that the whole pool
    stays below ``max_pool`` records (MNIST-1D generation costs ~0.25 ms per record, paid by
    every fedssl process that loads the pool)."""
    per = min(batches * BATCH, max(BATCH, (max_pool // n) // BATCH * BATCH))
    return per


def pool_samples(n: int, records: int) -> int:
    """``num_samples`` for mnist1d that gives exactly ``n * records`` training records."""
    return math.ceil(n * records / (1 - TEST_FRACTION))


# ------------------------------------------------------------------------------ memory
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from ``/proc``; psutil is not installed here)."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples the RSS and PSS sums of a process tree in a background thread."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            pids = process_tree(self.root)
            self.pids.update(pids)
            self.max_procs = max(self.max_procs, len(pids))
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
            self.peak_rss = max(self.peak_rss, rss)
            if tick % 4 == 0:  # PSS reads smaps_rollup: a little dearer, sample every 1 s
                pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
                self.peak_pss = max(self.peak_pss, pss)
            tick += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------ vanilla Flower
def make_vanilla_apps(n: int, per: int, records: int, rounds: int, seed: int,
                      stamps: list[float], computes: list[float]) -> tuple[Any, Any]:
    """The vanilla Flower ServerApp/ClientApp of this workload (see the module docstring)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch

        from fedssl.client.trainer import TrainConfig, train_local
        from fedssl.ssl_core.augmentations import augment_for
        from fedssl.ssl_core.datasets import load_mnist1d
        from fedssl.ssl_core.objectives import get_objective

        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        # tutorial style: load this partition's data on every message
        data = load_mnist1d(num_samples=pool_samples(1, records), seed=seed * 100_003 + pid)
        objective = get_objective("simsiam")
        model = objective.build_model(data.input_shape)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        rnd = int(msg.content["config"]["server-round"])
        result = train_local(model, objective, data.x_train, augment_for(data.input_shape),
                             TrainConfig(seed=seed * 100_003 + rnd * 1009 + pid))
        return Message(RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": result.num_examples,
                                     "loss": result.loss, "train-seconds": result.seconds}),
        }), reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        import torch

        from fedssl.ssl_core.objectives import get_objective

        torch.manual_seed(seed)
        model = get_objective("simsiam").build_model((1, 40))
        def compute(records: list, key: str) -> MetricRecord:
            # the clients' summed training seconds of the round (the benchmark's own metric)
            total = sum(float(r.metric_records["metrics"]["train-seconds"]) for r in records)
            computes.append(total)
            return MetricRecord({"train-seconds": total})

        strategy = FedAvg(fraction_train=per / n, fraction_evaluate=0.0,
                          min_train_nodes=per, min_available_nodes=n,
                          train_metrics_aggr_fn=compute)

        def stamp(server_round: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())  # round 0 = before round 1's messages

        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                       num_rounds=rounds, evaluate_fn=stamp)

    return server_app, client_app


def _backend_config() -> dict[str, Any]:
    import logging

    return {
        "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                      "logging_level": logging.ERROR, "log_to_driver": False},
    }


# ------------------------------------------------------------------------------ children
def child_fedssl(n: int, per: int, records: int, rounds: int, seed: int, secagg: bool,
                 t0: float) -> dict[str, Any]:
    from fedssl.simulations.config import ExperimentConfig
    from fedssl.simulations.simulate import simulate

    out = Path(tempfile.mkdtemp(prefix="fedssl-bench-"))
    cfg = ExperimentConfig(
        dataset="mnist1d", num_samples=pool_samples(n, records), num_clients=n,
        clients_per_round=0 if per == n else per, rounds=rounds, partitioner="iid",
        method="simsiam", local_epochs=1, batch_size=BATCH, dp=False, secagg=secagg,
        eval_every=10_000, few_label="", seed=seed, out=str(out / "run"),
    )
    metrics = out / "run" / "metrics.jsonl"
    seen: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:  # time each metrics row as it appears (round k ends)
        while not stop.is_set():
            if metrics.exists():
                for line in metrics.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    seen.setdefault(int(row["round"]), time.perf_counter())
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    simulate(cfg)
    end = time.perf_counter()
    stop.set()
    watcher.join()
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    round_s = [float(r["seconds"]) for r in rows if r["round"] >= 1]
    compute = [float(r.get("client_train_seconds", 0.0)) for r in rows if r["round"] >= 1]
    return {"t_round0": seen.get(0, t0), "t_end": end, "round_seconds": round_s,
            "client_compute_seconds": compute, "run_dir": str(out / "run")}


def child_flower(n: int, per: int, records: int, rounds: int, seed: int,
                 t0: float) -> dict[str, Any]:
    import logging

    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    stamps: list[float] = []
    computes: list[float] = []
    server_app, client_app = make_vanilla_apps(n, per, records, rounds, seed, stamps,
                                               computes)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                   backend_config=_backend_config(), verbose_logging=False)
    end = time.perf_counter()
    if len(stamps) != rounds + 1:
        raise RuntimeError(f"vanilla Flower run ended after {len(stamps) - 1} rounds")
    return {"t_round0": stamps[0], "t_end": end,
            "round_seconds": [b - a for a, b in itertools.pairwise(stamps)],
            "client_compute_seconds": computes}


def _floor_setup(n: int, records: int, seed: int) -> tuple[tuple[int, ...], list, dict]:
    """Both floors' start: one thread, the data set, the IID partitions, the initial model
    state (record shape, partitions, state dict)."""
    import torch

    from fedssl.ssl_core.datasets import load_dataset
    from fedssl.ssl_core.objectives import get_objective
    from fedssl.ssl_core.partitioners import partition_indices

    torch.set_num_threads(1)
    data = load_dataset("mnist1d", "", pool_samples(n, records), seed)
    parts = [data.x_train[partition_indices(data.y_train, n, c, "iid", seed=seed)]
             for c in range(n)]
    torch.manual_seed(seed)
    state = get_objective("simsiam").build_model(data.input_shape).state_dict()
    return data.input_shape, parts, state


def child_floor(n: int, per: int, records: int, rounds: int, seed: int,
                t0: float) -> dict[str, Any]:
    import random

    import torch

    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.objectives import get_objective

    shape, parts, global_state = _floor_setup(n, records, seed)
    objective = get_objective("simsiam")
    augment = augment_for(shape)
    rng = random.Random(seed)
    t_round0 = time.perf_counter()
    round_s, compute_s = [], []
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        chosen = rng.sample(range(n), per)
        acc: dict[str, torch.Tensor] = {k: torch.zeros_like(v, dtype=torch.float64)
                                        for k, v in global_state.items()}
        compute = 0.0
        for cid in chosen:
            model = objective.build_model(shape)
            model.load_state_dict(global_state)
            res = train_local(model, objective, parts[cid], augment,
                              TrainConfig(seed=seed * 100_003 + rnd * 1009 + cid))
            compute += res.seconds
            for k, v in model.state_dict().items():
                acc[k] += v.double()
        global_state = {k: (v / per).to(global_state[k].dtype) for k, v in acc.items()}
        round_s.append(time.perf_counter() - start)
        compute_s.append(compute)
    return {"t_round0": t_round0, "t_end": time.perf_counter(), "round_seconds": round_s,
            "client_compute_seconds": compute_s}


_FLOOR: dict[str, Any] = {}


def _floor_worker_init(parts: list, shape: tuple[int, ...], seed: int) -> None:
    import torch

    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.objectives import get_objective

    torch.set_num_threads(1)
    _FLOOR.update(parts=parts, shape=shape, seed=seed, objective=get_objective("simsiam"),
                  augment=augment_for(shape))


def _floor_client(task: tuple[int, int, dict]) -> tuple[float, dict]:
    """One client's ``train_local`` in a worker process of the parallel floor."""
    import torch

    from fedssl.client.trainer import TrainConfig, train_local

    cid, rnd, state = task
    f = _FLOOR
    model = f["objective"].build_model(f["shape"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    res = train_local(model, f["objective"], f["parts"][cid], f["augment"],
                      TrainConfig(seed=f["seed"] * 100_003 + rnd * 1009 + cid))
    return res.seconds, {k: v.numpy() for k, v in model.state_dict().items()}


def child_floor_parallel(n: int, per: int, records: int, rounds: int, seed: int,
                         t0: float) -> dict[str, Any]:
    """The floor's clients spread over ``cores`` plain worker processes (no Flower, no Ray):
    what this machine's cores deliver running the same training side by side."""
    import multiprocessing
    import random

    import numpy as np

    shape, parts, initial = _floor_setup(n, records, seed)
    state = {k: v.numpy() for k, v in initial.items()}
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(os.cpu_count() or 1, _floor_worker_init, (parts, shape, seed)) as pool:
        pool.map(abs, range(4 * (os.cpu_count() or 1)))  # workers up before round 1
        t_round0 = time.perf_counter()
        round_s, compute_s = [], []
        for rnd in range(1, rounds + 1):
            start = time.perf_counter()
            chosen = rng.sample(range(n), per)
            acc = {k: np.zeros(v.shape, np.float64) for k, v in state.items()}
            compute = 0.0
            for sec, new in pool.imap_unordered(_floor_client,
                                                [(c, rnd, state) for c in chosen]):
                compute += sec
                for k, v in new.items():
                    acc[k] += v
            state = {k: (v / per).astype(state[k].dtype) for k, v in acc.items()}
            round_s.append(time.perf_counter() - start)
            compute_s.append(compute)
    return {"t_round0": t_round0, "t_end": time.perf_counter(), "round_seconds": round_s,
            "client_compute_seconds": compute_s}


def run_child(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    common = (args.n, args.per_round, args.records, args.rounds, args.seed)
    if args.child == "fedssl":
        res = child_fedssl(*common, secagg=False, t0=t0)
    elif args.child == "fedssl+secagg":
        res = child_fedssl(*common, secagg=True, t0=t0)
    elif args.child == "flower":
        res = child_flower(*common, t0=t0)
    elif args.child == "floor-parallel":
        res = child_floor_parallel(*common, t0=t0)
    else:
        res = child_floor(*common, t0=t0)
    res["startup_seconds"] = res.pop("t_round0") - t0
    res["wall_seconds"] = res.pop("t_end") - t0
    Path(args.result).write_text(json.dumps(res))


# ------------------------------------------------------------------------------ parent
def steady(round_s: list[float]) -> list[float]:
    """Rounds 2..R-1 (no warm-up, no final evaluation); falls back for short runs."""
    if len(round_s) >= 3:
        return round_s[1:-1]
    return round_s[1:] or round_s


def measure(kind: str, n: int, rounds: int, records: int, seed: int,
            timeout: float) -> dict[str, Any]:
    per = per_round(n)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = fh.name
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--per-round", str(per),
           "--records", str(records), "--rounds", str(rounds), "--seed", str(seed),
           "--result", result_path]
    load_before = os.getloadavg()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)
    with TreeMemory(proc.pid) as mem:
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    total = time.perf_counter() - t0
    # wait for Ray's processes to go before the next setting starts
    for _ in range(60):
        if not any(_alive(p) for p in mem.pids):
            break
        time.sleep(0.5)
    out: dict[str, Any] = {
        "kind": kind, "clients": n, "clients_per_round": per, "rounds": rounds,
        "records_per_client": records, "local_steps": records // BATCH,
        "process_seconds": total, "peak_rss_mib": mem.peak_rss / 1024,
        "peak_pss_mib": mem.peak_pss / 1024, "max_processes": mem.max_procs,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if proc.returncode != 0 or not Path(result_path).stat().st_size:
        out["error"] = f"exit {proc.returncode}: {log[-3000:]}"
        return out
    res = json.loads(Path(result_path).read_text())
    Path(result_path).unlink(missing_ok=True)
    rs = res["round_seconds"]
    st = statistics.median(steady(rs))
    out.update(res)
    out.update({
        "first_round_seconds": rs[0], "last_round_seconds": rs[-1],
        # the issue's own measure: wall time of the first three rounds, warm-up round included
        "three_rounds_seconds": sum(rs[:3]) if len(rs) >= 3 else None,
        "seconds_per_round": st, "rounds_per_second": 1 / st,
        "client_updates_per_second": per / st,
    })
    if "client_compute_seconds" in res:
        out["client_compute_per_round"] = statistics.median(
            steady(res["client_compute_seconds"]))
    return out


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def add_ratios(rows: list[dict[str, Any]], cores: int) -> None:
    floors = {r["clients"]: r for r in rows if r["kind"] == "floor" and "error" not in r}
    flowers = {r["clients"]: r for r in rows if r["kind"] == "flower" and "error" not in r}
    parallel = {r["clients"]: r for r in rows
                if r["kind"] == "floor-parallel" and "error" not in r}
    for r in rows:
        if "error" not in r and r["clients"] in parallel:
            # against the same training run side by side in plain processes on this machine
            r["x_floor_parallel"] = (r["seconds_per_round"]
                                     / parallel[r["clients"]]["seconds_per_round"])
        f = floors.get(r["clients"])
        if "error" in r or f is None:
            continue
        r["x_floor"] = r["seconds_per_round"] / f["seconds_per_round"]
        r["ideal_seconds"] = f["client_compute_per_round"] / cores
        r["x_ideal"] = r["seconds_per_round"] / r["ideal_seconds"]
        if r.get("client_compute_per_round"):
            # against the compute this very run did (the machine's speed drifts between
            # settings by up to 1.6x here): wall / (its clients' summed train seconds / cores)
            r["x_ideal_in_run"] = r["seconds_per_round"] / (r["client_compute_per_round"] / cores)
        fl = flowers.get(r["clients"])
        if fl is not None:
            r["speedup_vs_flower"] = fl["seconds_per_round"] / r["seconds_per_round"]
            if r.get("three_rounds_seconds") and fl.get("three_rounds_seconds"):
                r["three_rounds_vs_flower"] = (fl["three_rounds_seconds"]
                                               / r["three_rounds_seconds"])
            r["wall_vs_flower"] = fl["process_seconds"] / r["process_seconds"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N | per round | steps | method | startup s | 1st round s | s/round (median) | "
            "rounds 1-3 s | process wall s | rounds/s | updates/s | x floor | "
            "x ideal (floor compute/cores) | x ideal (own compute/cores) | x parallel floor | "
            "vs Flower (steady / rounds 1-3 / wall) | "
            "peak RSS MiB | peak PSS MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['clients']} | {r['clients_per_round']} | "
                         f"{r['local_steps']} | {r['kind']} | failed: "
                         f"{r['error'].splitlines()[0][:60]} |")
            continue
        lines.append(
            f"| {r['clients']} | {r['clients_per_round']} | {r['local_steps']} | {r['kind']} | "
            f"{r['startup_seconds']:.1f} | {r['first_round_seconds']:.2f} | "
            f"{r['seconds_per_round']:.2f} | {_fmt(r.get('three_rounds_seconds'), '{:.2f}')} | "
            f"{r['process_seconds']:.1f} | {r['rounds_per_second']:.3f} | "
            f"{r['client_updates_per_second']:.1f} | {r.get('x_floor', float('nan')):.2f} | "
            f"{r.get('x_ideal', float('nan')):.2f} | "
            f"{_fmt(r.get('x_ideal_in_run'), '{:.2f}')} | "
            f"{_fmt(r.get('x_floor_parallel'), '{:.2f}')} | "
            f"{_fmt(r.get('speedup_vs_flower'), '{:.2f}x')} / "
            f"{_fmt(r.get('three_rounds_vs_flower'), '{:.2f}x')} / "
            f"{_fmt(r.get('wall_vs_flower'), '{:.2f}x')} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_pss_mib']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(KINDS)
    for i, kind in enumerate(KINDS):
        ys = [next((r.get("seconds_per_round", 0.0) for r in rows
                    if r["kind"] == kind and r["clients"] == n and "error" not in r), 0.0)
              for n in ns]
        ms = [next((r["peak_pss_mib"] / 1024 for r in rows
                    if r["kind"] == kind and r["clients"] == n), 0.0) for n in ns]
        xs = [j + i * width for j in range(len(ns))]
        axes[0].bar(xs, ys, width, label=kind)
        axes[1].bar(xs, ms, width, label=kind)
    for ax, title in zip(axes, ("seconds per round (median of steady rounds)",
                                "peak memory of the process tree (PSS, GiB)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))])
        ax.set_xticklabels([f"N={n}\n({per_round(n)}/round)" for n in ns])
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default=None, help="comma-separated N (default 10,100,1000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run (default 4)")
    ap.add_argument("--batches", type=int, default=8, help="local batches of 32 per client")
    ap.add_argument("--max-pool", type=int, default=128_000,
                    help="cap on the training pool (records); larger N get fewer batches")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {','.join(KINDS)}")
    ap.add_argument("--quick", action="store_true", help="N in {10, 100}, 3 rounds, 4 batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per setting")
    ap.add_argument("--out", default=str(RESULTS / "simulation.json"))
    # internal: one measured setting in a child process
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--per-round", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--records", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args)
        return

    from tqdm import tqdm

    clients = [int(c) for c in (args.clients or ("10,100" if args.quick else "10,100,1000"))
               .split(",")]
    rounds = args.rounds or (3 if args.quick else 4)
    batches = 4 if args.quick and args.batches == 8 else args.batches
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        ap.error(f"unknown kinds {sorted(unknown)}")
    cores = os.cpu_count() or 1
    settings = [(n, k) for n in clients for k in kinds]
    rows = []
    started = time.perf_counter()
    for n, kind in tqdm(settings, desc="settings", unit="run"):
        records = records_per_client(n, batches, args.max_pool)
        row = measure(kind, n, rounds, records, args.seed, args.timeout)
        rows.append(row)
        tqdm.write(f"N={n} {kind}: " + (row["error"].splitlines()[0] if "error" in row else
                   f"{row['seconds_per_round']:.2f} s/round, startup "
                   f"{row['startup_seconds']:.1f} s, peak PSS {row['peak_pss_mib']:.0f} MiB, "
                   f"load {row['loadavg_before'][0]:.1f}"))
    add_ratios(rows, cores)
    md = table(rows)
    print()
    print(md)
    print(f"\ncores: {cores}, load average at the end: {os.getloadavg()}, "
          f"benchmark wall: {time.perf_counter() - started:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cores": cores, "python": platform.python_version(),
                    "platform": platform.platform()},
        "rounds": rounds, "batches": batches, "max_pool": args.max_pool,
        "loadavg_end": os.getloadavg(), "results": rows, "table": md,
    }, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
