"""The baseline of ``benchmarks/simulation.py``: a vanilla Flower 1.41 app on the same workload.

What: :func:`make_vanilla_apps` builds the ``ServerApp``/``ClientApp`` pair as a Flower tutorial
writes it (``flwr.serverapp.strategy.FedAvg``; a ``train`` handler that regenerates its own
MNIST-1D partition for every message, builds a fresh SimSiam model, trains it with
:func:`fedssl.client.trainer.train_local` and replies with the full ``state_dict``);
:func:`child_flower` runs it with ``flwr.simulation.run_simulation`` under the same Ray backend
config as fedssl's simulator (1 CPU per client, ``num_cpus`` = cores) and returns the round
timestamps and the clients' summed training seconds per round.

Why a module of its own: it is the "what would plain Flower cost" row, separate from fedssl's
own setting and from the compute floors, and it only depends on the workload sizes
(:mod:`sim_workload`). Imported by ``simulation.py``, which puts ``benchmarks/`` on
``sys.path``.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from sim_workload import DATASET, METHOD, pool_samples


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
        objective = get_objective(METHOD)
        model = objective.build_model(data.input_shape)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        rnd = int(msg.content["config"]["server-round"])
        result = train_local(model, objective, data.x_train, augment_for(data.input_shape, DATASET),
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
        model = get_objective(METHOD).build_model((1, 40))
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
