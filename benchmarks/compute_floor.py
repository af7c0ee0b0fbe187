"""The compute floors of ``benchmarks/simulation.py``: the same training without a simulator.

What: :func:`child_floor` runs the sampled clients' ``train_local`` calls one after another in
one process (``torch`` threads = 1, as each simulated client gets) and float-averages their
weights; :func:`child_floor_parallel` spreads the same clients over ``cores`` plain worker
processes (``multiprocessing`` with ``fork``, no Flower, no Ray), the global state sent with
each task. Both return per-round wall seconds and the clients' summed ``train_local`` seconds.

Why a module of its own: the floors are the yardstick the simulators are divided by (``x
floor``, ``x ideal``, ``x parallel floor``), so they share one setup (:func:`_floor_setup`:
the data set, the IID partitions, the initial model) and only the workload sizes
(:mod:`sim_workload`) with the rest of the benchmark. Imported by ``simulation.py``, which
puts ``benchmarks/`` on ``sys.path``; the parallel floor's workers are forked, so they find
:func:`_floor_worker_init` and :func:`_floor_client` in this already-imported module.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sim_workload import BATCH, DATASET, METHOD, pool_samples


def _floor_setup(n: int, records: int, seed: int) -> tuple[tuple[int, ...], list, dict]:
    """Both floors' start: one thread, the data set, the IID partitions, the initial model
    state (record shape, partitions, state dict)."""
    import torch

    from fedssl.ssl_core.datasets import load_dataset
    from fedssl.ssl_core.objectives import get_objective
    from fedssl.ssl_core.partitioners import partition_indices

    torch.set_num_threads(1)
    data = load_dataset(DATASET, "", pool_samples(n, records), seed)
    parts = [data.x_train[partition_indices(data.y_train, n, c, "iid", seed=seed)]
             for c in range(n)]
    torch.manual_seed(seed)
    state = get_objective(METHOD).build_model(data.input_shape).state_dict()
    return data.input_shape, parts, state


def child_floor(n: int, per: int, records: int, rounds: int, seed: int,
                t0: float) -> dict[str, Any]:
    import random

    import torch

    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.objectives import get_objective

    shape, parts, global_state = _floor_setup(n, records, seed)
    objective = get_objective(METHOD)
    # the data set's own views (MNIST1DAugment), as the simulated clients build them: the
    # generic SignalAugment that augment_for(shape) gives is 10-15 % cheaper per client
    augment = augment_for(shape, DATASET)
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
                              TrainConfig(batch_size=BATCH, seed=seed * 100_003 + rnd * 1009 + cid))
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
    _FLOOR.update(parts=parts, shape=shape, seed=seed, objective=get_objective(METHOD),
                  augment=augment_for(shape, DATASET))


def _floor_client(task: tuple[int, int, dict]) -> tuple[float, dict]:
    """One client's ``train_local`` in a worker process of the parallel floor."""
    import torch

    from fedssl.client.trainer import TrainConfig, train_local

    cid, rnd, state = task
    f = _FLOOR
    model = f["objective"].build_model(f["shape"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    res = train_local(model, f["objective"], f["parts"][cid], f["augment"],
                      TrainConfig(batch_size=BATCH, seed=f["seed"] * 100_003 + rnd * 1009 + cid))
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
