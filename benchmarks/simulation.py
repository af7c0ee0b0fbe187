"""Benchmark: seconds per federated round of ``fedssl simulate`` vs vanilla Flower vs the floor.

Why: the issue "Simulation at scale and speed" asks whether fedssl's simulator costs more than
the training it runs. One command measures the *same workload* three ways for N clients in
``--clients`` (default 10, 100, 1000) and prints medians next to each other:

* ``fedssl`` / ``fedssl+secagg`` - :func:`fedssl.simulations.simulate.simulate` with an
  :class:`~fedssl.simulations.config.ExperimentConfig`: MNIST-1D, SimSiam, no DP, IID
  partition, one local epoch of ``--batches`` batches of 32 records per client, secure
  aggregation off and on, 100 clients per round at N=1000 (all clients below). Server-side
  evaluation runs only after the last round (``eval_every`` beyond the run, no few-label probes,
  no label-efficiency fine-tunes), so steady-state rounds carry no evaluation; the first round
  carries the actors' lazy start. Its clients time their rounds by phase (setup, plan, model,
  train and its CPU seconds, ledger, reply; ``client_phase_seconds`` in metrics.jsonl),
  printed as a second table.
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
* ``fedssl+dp`` - the same with record-level DP-SGD on (the fast engine, each client
  calibrating its noise to epsilon 8 over the run, signed ledger entries): ``x fedssl`` in the
  table is its overhead over the same run without DP.
* ``pfl`` / ``pfl-2proc`` - Apple's pfl-research 0.6 on the same workload
  (``pfl_baseline.py``: the same partitions, initial model, objective, views and local
  optimizer), in one process and in two worker processes through torchrun; in its own
  environment (``make bench-pfl-env``: pfl pins an older dp-accounting), skipped with a
  message where that is missing. ``x pfl 2 proc`` divides a round by pfl's two-worker round.
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

Layout: this file holds the CLI, the measurement of one setting in a child process
(:func:`measure`, :func:`run_child`) and fedssl's own setting (:func:`child_fedssl`); the child
re-runs this file with ``--child``, so the entry point stays here. The rest lies beside it:
``sim_workload.py`` (sizes, kinds, steady rounds), ``proc_memory.py`` (peak memory of the
process tree), ``vanilla_flower.py`` (the Flower baseline), ``compute_floor.py`` (the
sequential and parallel floors) and ``sim_report.py`` (ratios, table, plot). The child is
started with :func:`fedssl.processes.start_process` (the same ``Popen``, in this process's
group). A child past ``--timeout`` is SIGKILLed at once, as before, not stopped with
:func:`fedssl.processes.stop_process`: that would SIGTERM it and ``wait`` up to 10 s
without draining its stdout pipe (a chatty child can block on a full pipe), and the timed-out
row's ``process_seconds`` would grow by that grace period.
"""

from __future__ import annotations

import argparse
import json
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

from fedssl.processes import start_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the modules beside this file (benchmarks/ is not a package; the --child run re-runs this file)
from compute_floor import child_floor, child_floor_parallel
from pfl_baseline import command as pfl_command
from pfl_baseline import pfl_python
from proc_memory import TreeMemory, any_alive
from sim_report import add_ratios, memory_table, phase_table, plot, table
from sim_workload import (
    BATCH,
    DATASET,
    KINDS,
    METHOD,
    PFL_WORKERS,
    per_round,
    pool_samples,
    records_per_client,
    steady,
)
from vanilla_flower import child_flower

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------ children
def child_fedssl(n: int, per: int, records: int, rounds: int, seed: int, secagg: bool,
                 t0: float, dp: bool = False) -> dict[str, Any]:
    from fedssl.simulations.config import ExperimentConfig
    from fedssl.simulations.simulate import simulate

    out = Path(tempfile.mkdtemp(prefix="fedssl-bench-"))
    cfg = ExperimentConfig(
        dataset=DATASET, num_samples=pool_samples(n, records), num_clients=n,
        clients_per_round=0 if per == n else per, rounds=rounds, partitioner="iid",
        method=METHOD, local_epochs=1, batch_size=BATCH, dp=dp, secagg=secagg,
        eval_every=10_000, few_label="", finetune="", seed=seed, out=str(out / "run"),
    )
    metrics = out / "run" / "metrics.jsonl"
    seen: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        """When round 0's row appears (the end of start-up), then stop: this thread runs in
        the measured process, so it must not compete with the rounds it times (it used to
        re-read and parse the whole file every 20 ms for the whole run: ~1/3 of the
        driver's busy samples at 10 clients)."""
        while not stop.is_set() and 0 not in seen:
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
    phases = [{**r.get("client_phase_seconds", {}),
               "train cpu": r.get("client_train_cpu_seconds", 0.0)}
              for r in rows if r["round"] >= 1]
    return {"t_round0": seen.get(0, t0), "t_end": end, "round_seconds": round_s,
            "client_compute_seconds": compute, "client_phase_seconds": phases,
            "run_dir": str(out / "run")}


def run_child(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    common = (args.n, args.per_round, args.records, args.rounds, args.seed)
    if args.child == "fedssl":
        res = child_fedssl(*common, secagg=False, t0=t0)
    elif args.child == "fedssl+secagg":
        res = child_fedssl(*common, secagg=True, t0=t0)
    elif args.child == "fedssl+dp":
        res = child_fedssl(*common, secagg=False, t0=t0, dp=True)
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
def measure(kind: str, n: int, rounds: int, records: int, seed: int,
            timeout: float) -> dict[str, Any]:
    per = per_round(n)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = fh.name
    base = {"kind": kind, "clients": n, "clients_per_round": per, "rounds": rounds,
            "records_per_client": records, "local_steps": records // BATCH}
    if kind in PFL_WORKERS:
        if pfl_python() is None:
            return {**base, "skipped": "pfl-research is not installed here: `make "
                    "bench-pfl-env` makes .venv-pfl (a benchmark dependency only)"}
        cmd = pfl_command(PFL_WORKERS[kind], [
            "--users", str(n), "--cohort", str(per), "--records", str(records),
            "--rounds", str(rounds), "--seed", str(seed), "--result", result_path])
    else:
        cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--per-round",
               str(per), "--records", str(records), "--rounds", str(rounds), "--seed",
               str(seed), "--result", result_path]
    load_before = os.getloadavg()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = start_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
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
        if not any_alive(mem.pids):
            break
        time.sleep(0.5)
    out: dict[str, Any] = {
        **base, "process_seconds": total, "peak_rss_mib": mem.peak_rss / 1024,
        "peak_pss_mib": mem.peak_pss / 1024, "max_processes": mem.max_procs,
        # where the memory was at the peak: MiB of PSS per kind of process (Ray's GCS,
        # raylet, workers, the driver, ...), for the "where each GiB goes"
        "peak_pss_mib_by_process": {k: round(v / 1024, 1) for k, v in sorted(
            mem.peak_pss_by_label.items(), key=lambda kv: -kv[1])},
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
    if res.get("client_phase_seconds"):
        # one client's round by phase (issue 24 item 1): the steady rounds' median of each
        # phase's per-round sum, over the clients of a round
        rounds_phases = steady(res["client_phase_seconds"])
        names = sorted({k for p in rounds_phases for k in p})
        out["client_phase_per_client"] = {
            k: statistics.median(p.get(k, 0.0) for p in rounds_phases) / per for k in names}
    return out


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
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n, kind in tqdm(settings, desc="settings", unit="run"):
        records = records_per_client(n, batches, args.max_pool)
        row = measure(kind, n, rounds, records, args.seed, args.timeout)
        if "skipped" in row:
            skipped.append(row)
            tqdm.write(f"N={n} {kind}: skipped: {row['skipped']}")
            continue
        rows.append(row)
        tqdm.write(f"N={n} {kind}: " + (row["error"].splitlines()[0] if "error" in row else
                   f"{row['seconds_per_round']:.2f} s/round, startup "
                   f"{row['startup_seconds']:.1f} s, peak PSS {row['peak_pss_mib']:.0f} MiB, "
                   f"load {row['loadavg_before'][0]:.1f}"))
    add_ratios(rows, cores)
    md = table(rows)
    print()
    print(md)
    if phases := phase_table(rows):
        print("\nOne simulated client's round, by phase (median seconds per client):\n")
        print(phases)
    if memory := memory_table(rows):
        print("\nWhere the memory is at each setting's peak (PSS by process):\n")
        print(memory)
    print(f"\ncores: {cores}, load average at the end: {os.getloadavg()}, "
          f"benchmark wall: {time.perf_counter() - started:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cores": cores, "python": platform.python_version(),
                    "platform": platform.platform()},
        "rounds": rounds, "batches": batches, "max_pool": args.max_pool,
        "loadavg_end": os.getloadavg(), "results": rows, "skipped": skipped, "table": md,
        "phase_table": phase_table(rows), "memory_table": memory_table(rows),
    }, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
