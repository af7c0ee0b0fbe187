"""Apple's pfl-research on the workload of ``benchmarks/simulation.py`` (issue 24, item 4).

What: :func:`child_pfl` trains the same federation with ``pfl`` 0.6's ``SimulatedBackend``
and ``FederatedAveraging``: the same IID MNIST-1D partitions and initial model as the floors
(:func:`compute_floor._floor_setup`), the same SSL model and objective
(``get_objective(METHOD)``), the data set's own views (``augment_for(shape, DATASET)``, two
per record), the same local optimizer (SGD, lr 0.05, momentum 0.9, batches of
:data:`sim_workload.BATCH`, one epoch) and a plain average of the clients' models (central SGD
at lr 1 on the averaged difference). It runs in one process (``pfl``) or in two worker
processes through torchrun (``pfl-2proc``; pfl's own multi-process mode, each worker training
its half of the cohort, gloo all-reduce of the sums). Per-round wall seconds come from a pfl
callback on rank 0; the clients' summed local-training seconds from a timed training step.

Why a separate interpreter: pfl 0.6 pins ``dp-accounting<0.6`` while fedssl's audit needs
0.6, so pfl lives in its own virtual environment, ``.venv-pfl`` (``make bench-pfl-env``):
pfl and its pinned dependencies first, then fedssl's ``.venv`` site-packages (torch, fedssl
itself) through a ``.pth`` line. pfl is a benchmark dependency only, never a runtime one:
without ``.venv-pfl`` the pfl rows are skipped with a message.

Equal work: pfl's local loop (``PyTorchModel.do_multiple_epochs_of``) takes the user's
records in order, without shuffling (fedssl shuffles per round); the number of steps, the
batch size, the model, the loss and the views are the same, so a step costs the same.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sim_workload import BATCH, DATASET, METHOD

#: the interpreter of pfl's environment (``make bench-pfl-env``)
PFL_PYTHON = Path(__file__).resolve().parents[1] / ".venv-pfl" / "bin" / "python"
#: the local optimizer of a simulated fedssl client (RunSpec's defaults)
LR, MOMENTUM = 0.05, 0.9


def pfl_python() -> Path | None:
    """pfl's interpreter, if its environment was made and imports pfl; else None."""
    return PFL_PYTHON if PFL_PYTHON.is_file() else None


def command(workers: int, script_args: list[str]) -> list[str]:
    """How the parent starts a pfl setting: pfl's interpreter on this file, through
    torchrun (standalone, ``workers`` processes on this machine) for more than one."""
    python = str(pfl_python())
    if workers <= 1:
        return [python, str(Path(__file__).resolve()), *script_args]
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={workers}", str(Path(__file__).resolve()), *script_args]


def child_pfl(n: int, per: int, records: int, rounds: int, seed: int,
              t0: float) -> dict[str, Any] | None:
    """Run the workload under pfl; rank 0 returns the timings (other ranks None)."""
    import numpy as np
    import torch
    from compute_floor import _floor_setup
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops import get_ops
    from pfl.model.pytorch import PyTorchModel

    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.objectives import get_objective

    shape, parts, state = _floor_setup(n, records, seed)
    objective = get_objective(METHOD)
    augment = augment_for(shape, DATASET)
    compute = {"seconds": 0.0}

    class SSLTask(torch.nn.Module):
        """The fedssl SSL model with the ``loss``/``metrics`` pfl's PyTorchModel calls."""

        def __init__(self) -> None:
            super().__init__()
            self.net = objective.build_model(shape)
            self.net.load_state_dict(state)
            self.gen = torch.Generator().manual_seed(seed + 1)

        def loss(self, x: torch.Tensor, eval: bool = False) -> torch.Tensor:
            self.train(not eval)
            views = [augment(x, self.gen) for _ in range(objective.num_views)]
            return objective.per_record_loss(self.net, views).mean()

        def metrics(self, x: torch.Tensor, eval: bool = False) -> dict[str, Any]:
            return {}

    task = SSLTask()
    model = PyTorchModel(
        model=task,
        local_optimizer_create=lambda params, lr: torch.optim.SGD(params, lr=lr,
                                                                  momentum=MOMENTUM),
        central_optimizer=torch.optim.SGD(task.parameters(), lr=1.0))
    # time each client's local training (pfl's loop around our loss: the "own compute")
    train_loop = model.do_multiple_epochs_of

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return train_loop(*args, **kwargs)
        finally:
            compute["seconds"] += time.perf_counter() - start

    model.do_multiple_epochs_of = timed  # type: ignore[method-assign]
    users = {u: [np.asarray(p, np.float32)] for u, p in enumerate(parts)}
    train = FederatedDataset(lambda u: Dataset(users[u], user_id=u),
                             get_user_sampler("minimize_reuse", list(users)))
    val = FederatedDataset(lambda u: Dataset(users[u], user_id=u),
                           get_user_sampler("minimize_reuse", list(users)))
    ends: list[float] = []
    computes: list[float] = []

    class RoundClock(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics: Any, model: Any, *,
                                    central_iteration: int) -> tuple[bool, Any]:
            ends.append(time.perf_counter())
            computes.append(compute["seconds"])
            compute["seconds"] = 0.0
            return False, type(aggregate_metrics)()

    t_round0 = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=rounds,
                                           evaluation_frequency=rounds + 1,
                                           train_cohort_size=per, val_cohort_size=0),
        backend=SimulatedBackend(training_data=train, val_data=val),
        model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=LR, local_num_epochs=1,
                                              local_batch_size=BATCH),
        model_eval_params=NNEvalHyperParams(local_batch_size=BATCH),
        callbacks=[RoundClock()], send_metrics_to_platform=False)
    if get_ops().distributed.global_rank != 0:
        return None
    starts = [t_round0, *ends[:-1]]
    # the workers train side by side: rank 0's compute is half the cohort's; scale to all
    workers = get_ops().distributed.world_size
    return {"t_round0": t_round0, "t_end": time.perf_counter(),
            "round_seconds": [e - s for s, e in zip(starts, ends)],
            "client_compute_seconds": [c * workers for c in computes],
            "workers": workers}


def main() -> None:
    """``--result PATH`` plus the workload's sizes (``--users --cohort --records --rounds
    --seed``): run :func:`child_pfl`, write rank 0's JSON."""
    import argparse
    import json

    import torch

    torch.set_num_threads(1)  # as each simulated client gets
    ap = argparse.ArgumentParser()
    # names that are no prefix of a torchrun option (its parser would take "--n")
    for name in ("--users", "--cohort", "--records", "--rounds", "--seed"):
        ap.add_argument(name, type=int, required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = child_pfl(args.users, args.cohort, args.records, args.rounds, args.seed, t0)
    if res is not None:
        res["startup_seconds"] = res.pop("t_round0") - t0
        res["wall_seconds"] = res.pop("t_end") - t0
        Path(args.result).write_text(json.dumps(res))


if __name__ == "__main__":  # run as a script: benchmarks/ is on sys.path
    os.environ.setdefault("PFL_PYTORCH_DEVICE", "cpu")
    main()
