"""``fedssl simulate``: a multi-site federated SSL run on Flower's simulation engine (Ray).

The driver checks everything it can before any actor starts (config values, the data source,
the partition sizes, DP soundness of the method), so that bad input fails in a second with a
clear message rather than inside a Ray worker. It then runs the real fedssl ServerApp and
ClientApp with ``flwr.simulation.run_simulation`` and returns the run directory, whose layout
is DESIGN.md's run-directory contract.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from fedssl.client.data import DataSpec, cached_dataset, partition_labels, write_cache
from fedssl.simulations.config import ExperimentConfig
from fedssl.simulations.partitioners import partition_indices
from fedssl.ssl_core.datasets import SSLDataset, require_labels
from fedssl.ssl_core.evaluation import FEW_LABEL_SKIPPED
from fedssl.ssl_core.objectives import get_objective

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
    """
    from fedssl.privacy.dp_sgd import require_dp_sound

    objective = get_objective(cfg.method)
    if cfg.dp:
        require_dp_sound(objective)
    data = require_labels(cached_dataset(data_spec(cfg)), "the simulation's evaluation data")
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


def default_run_dir(cfg: ExperimentConfig) -> Path:
    return Path("runs") / f"{cfg.method}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def simulate(cfg: ExperimentConfig, verbose: bool = False, resume: bool = False) -> Path:
    """Run the experiment (or, with ``resume``, continue it from its last checkpoint);
    returns the run directory."""
    from flwr.simulation import run_simulation

    from fedssl.client.app import app as client_app
    from fedssl.client.privacy_guard import write_site_file
    from fedssl.privacy.identity import load_or_create_identity, write_registry
    from fedssl.server.app import make_server_app
    from fedssl.simulations import dispatch

    cfg.validate()
    data = preflight(cfg)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if resume:
        if not (run_dir / "checkpoints" / "state.json").exists():
            raise FileNotFoundError(f"nothing to resume: {run_dir} has no checkpoint")
        (run_dir / "report.json").unlink(missing_ok=True)
    elif (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"run directory {run_dir} already holds a run; choose another "
                              "--out or pass --resume (nothing was overwritten)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(cfg.to_toml())
        for cid, eps in cfg.parsed_site_budgets().items():  # each site's own local config
            write_site_file(run_dir / "clients" / cid, eps, cfg.delta)
        # each site's identity key, and the public registry distributed out of band
        keys = {f"client-{i:03d}": load_or_create_identity(
            run_dir / "clients" / f"client-{i:03d}" / "identity.pem")
            for i in range(cfg.num_clients)}
        write_registry(run_dir / "identities.json", keys)
    write_cache(run_dir.resolve(), data_spec(cfg), data)  # generated once, mapped by all
    run_config = cfg.to_run_config(str(run_dir.resolve()))
    run_config["resume"] = resume

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    cores = os.cpu_count() or 1
    init_args = {"num_cpus": cores, "include_dashboard": False,
                 "logging_level": logging.INFO if verbose else logging.ERROR,
                 "log_to_driver": verbose}
    backend_config = {
        "client_resources": {"num_cpus": cfg.cpus_per_client, "num_gpus": cfg.gpus_per_client},
        "init_args": init_args,
    }
    # one worker per cpus-per-client cores: each loads code and data while the server
    # evaluates the initial encoder (the "query.warmup" message)
    run_config["warmup-workers"] = min(cfg.num_clients, max(1, int(cores // cfg.cpus_per_client)))
    _start_ray(init_args)
    # replies and new messages wake the engine instead of 0.1 s polls; each actor holds its
    # next message while it trains (not with simulated stragglers: they sleep in the actor)
    dispatch.install(pipeline_depth=1 if cfg.straggler_prob > 0 else 2)
    run_simulation(
        server_app=make_server_app(run_config, prepare_grid=dispatch.tune_grid),
        client_app=client_app,
        num_supernodes=cfg.num_clients, backend_config=backend_config,
        verbose_logging=verbose,
    )
    if not (run_dir / "report.json").exists():
        raise RuntimeError(f"the simulation ended without a report in {run_dir}; rerun with "
                           "--verbose to see the server's log")
    return run_dir


def _encoder_row(name: str, m: dict) -> str:
    """One encoder's probes side by side ("-" where not measured, e.g. an old report)."""
    def f(key: str) -> str:
        v = m.get(key)
        return f"{v:.3f}" if isinstance(v, int | float) else "-"

    return (f"| {name} | {f('linear_probe_accuracy')} | {f('knn_accuracy')} | "
            f"{f('linear_probe_5shot')} | {f('knn_5shot')} |")


def format_report(run_dir: Path) -> str:
    """The result table printed after a run."""
    report = json.loads((run_dir / "report.json").read_text())
    base = report["random_init"]
    lines = [
        f"fedssl run: {report['method']} on {report['dataset']}, {report['clients']} clients, "
        f"{report['rounds']} rounds, {report['wall_seconds']:.1f} s, secure aggregation "
        f"{'on' if report.get('secure_aggregation') else 'off'}",
        "",
        "| encoder | linear probe | kNN | 5-shot linear | 5-shot kNN |",
        "|---|---|---|---|---|",
        _encoder_row("random init", base),
        *([_encoder_row("public warm start (round 0)", report["initial_encoder"])]
          if report.get("initial_encoder") else []),
        _encoder_row(f"federated {report['method']}",
                     {**report, **(report.get("few_label") or {})}),
    ]
    few = report.get("few_label") or {}
    shots = sorted({int(k.split("_")[-1].removesuffix("shot")) for k in few})
    if shots:
        lines += ["", "| labels per class | " + " | ".join(map(str, shots)) + " |",
                  "|---" * (len(shots) + 1) + "|",
                  "| linear probe | " + " | ".join(f"{few[f'linear_probe_{k}shot']:.3f}"
                                                  for k in shots) + " |",
                  "| kNN | " + " | ".join(f"{few[f'knn_{k}shot']:.3f}" for k in shots) + " |"]
    privacy = report.get("privacy")
    if privacy and privacy.get("clients"):
        lines += ["", f"privacy (delta = {privacy['delta']:g}, per client, from the signed "
                      "ledgers):", "", "| client | epsilon | steps | noise multiplier | "
                      "sample rate |", "|---|---|---|---|---|"]
        for cid, p in sorted(privacy["clients"].items()):
            lines.append(f"| {cid} | {float(p['epsilon']):.3f} | {p['steps']} | "
                         f"{p['noise_multiplier']:.3f} | {p['sample_rate']:.4f} |")
    elif not (privacy or {}).get("client_level"):
        lines += ["", "privacy: DP off (no epsilon guarantee)"]
    level = (privacy or {}).get("client_level")
    if level:
        lines += ["", f"client-level DP ({level['mechanism']}): epsilon = "
                      f"{level['epsilon']:.3f} at delta = {level['delta']:g} (noise multiplier "
                      f"{level['noise_multiplier']:g}, clip {level['clip']:g}, client rate "
                      f"{level['sample_rate']:.3f}, {level['rounds']} rounds)"]
        if "assumes" in level:
            lines.append(f"  assumes {level['assumes']} (at least {level['min_clients']})")
    for cid, items in sorted(report.get("refusals", {}).items()):
        rounds = ", ".join(str(i["round"]) for i in items)
        lines.append(f"{cid} refused round(s) {rounds}: {items[-1]['reason']}")
    lines += ["", f"run directory: {run_dir}"]
    return "\n".join(lines)
