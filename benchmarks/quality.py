"""Quality benchmark: how good are encoders after federated, private SSL pretraining?

For each data set (MNIST-1D generated locally with >= 20k training records; sklearn digits)
and each SSL method, one run measures the linear-probe (and kNN) accuracy of:

- the randomly initialised encoder (the floor every method must beat),
- centralized SSL (all training records in one place, same epochs budget),
- federated SSL with ``fedssl simulate`` (10 clients, Dirichlet(0.5) label skew) without DP,
- the same with DP-SGD at epsilon = 8 and epsilon = 3 (delta = 1e-5), for the methods that are
  per-record decomposable (SimCLR is refused under DP by design),
- the supervised reference (same encoder + linear head trained on all labels),

with the seconds each took, as a Markdown table, a JSON file and a plot of accuracy against
epsilon under ``benchmarks/results/``.

Usage::

    python benchmarks/quality.py                   # full table (long: tens of minutes)
    python benchmarks/quality.py --quick           # small smoke version
    python benchmarks/quality.py --datasets mnist1d --methods mae,simclr
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.simulations.config import ExperimentConfig
from fedssl.simulations.simulate import simulate
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.datasets import SSLDataset, load_dataset
from fedssl.ssl_core.evaluation import evaluate_encoder
from fedssl.ssl_core.objectives import OBJECTIVES, get_objective

RESULTS = Path(__file__).parent / "results"

#: per-method local-training hyper-parameters (batch size, learning rate)
HPARAMS: dict[str, dict[str, Any]] = {
    "simclr": {"batch_size": 256, "lr": 0.05},
    "simsiam": {"batch_size": 128, "lr": 0.05},
    "byol": {"batch_size": 128, "lr": 0.05},
    "mae": {"batch_size": 128, "lr": 0.05},
}


def supervised_reference(data: SSLDataset, epochs: int, seed: int) -> float:
    """Test accuracy of the same encoder plus a linear head trained on all labels."""
    torch.manual_seed(seed)
    encoder = get_objective("simclr").build_model(data.input_shape).encoder
    model = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.feature_dim, data.num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.as_tensor(data.x_test[i:i + 1024])).argmax(1)
                          for i in range(0, len(data.x_test), 1024)])
    return float((pred.numpy() == data.y_test).mean())


def centralized(data: SSLDataset, method: str, epochs: int, seed: int) -> dict[str, float]:
    """SSL on the pooled training records, then the probes."""
    torch.manual_seed(seed)
    objective = get_objective(method)
    model = objective.build_model(data.input_shape)
    hp = HPARAMS.get(method, {})
    for epoch in range(epochs):
        train_local(model, objective, data.x_train, augment_for(data.input_shape, data.name),
                    TrainConfig(epochs=1, batch_size=hp.get("batch_size", 128),
                                lr=hp.get("lr", 0.05), seed=seed + epoch))
    return evaluate_encoder(model.encoder, data.x_train, data.y_train, data.x_test, data.y_test)


def federated(dataset: str, num_samples: int, method: str, rounds: int, local_epochs: int,
              epsilon: float | None, seed: int, workdir: Path) -> dict[str, Any]:
    """A ``fedssl simulate`` run; returns its report."""
    hp = HPARAMS.get(method, {})
    out = workdir / f"{dataset}-{method}-{epsilon or 'nodp'}"
    cfg = ExperimentConfig(
        dataset=dataset, num_samples=num_samples, num_clients=10, partitioner="dirichlet",
        dirichlet_alpha=0.5, rounds=rounds, method=method, local_epochs=local_epochs,
        batch_size=hp.get("batch_size", 128), lr=hp.get("lr", 0.05), dp=epsilon is not None,
        target_epsilon=epsilon or 0.0, delta=1e-5, secagg=False, eval_every=rounds,
        eval_samples=20000, few_label="", seed=seed, out=str(out),
    )
    simulate(cfg)
    return json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist1d,digits")
    parser.add_argument("--methods", default=",".join(sorted(OBJECTIVES)))
    parser.add_argument("--num-samples", type=int, default=25000,
                        help="MNIST-1D records generated (80 %% train pool)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--epsilons", default="8,3")
    parser.add_argument("--supervised-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for smoke tests")
    args = parser.parse_args()
    if args.quick:
        args.num_samples, args.rounds, args.local_epochs, args.supervised_epochs = 3000, 2, 1, 3
    torch.set_num_threads(os.cpu_count() or 1)
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    methods = [m for m in args.methods.split(",") if m]
    rows: list[dict[str, Any]] = _Rows()
    workdir = Path(tempfile.mkdtemp(prefix="fedssl-quality-"))
    try:
        for dataset in args.datasets.split(","):
            data = load_dataset(dataset, num_samples=args.num_samples, seed=args.seed)
            t0 = time.perf_counter()
            sup = supervised_reference(data, args.supervised_epochs, args.seed)
            rows.append({"dataset": dataset, "method": "-", "setting": "supervised reference",
                         "linear_probe": sup, "knn": None,
                         "seconds": time.perf_counter() - t0})
            for method in tqdm(methods, desc=dataset):
                torch.manual_seed(args.seed)
                model = get_objective(method).build_model(data.input_shape)
                t0 = time.perf_counter()
                rnd = evaluate_encoder(model.encoder, data.x_train, data.y_train, data.x_test,
                                       data.y_test)
                rows.append({"dataset": dataset, "method": method, "setting": "random init",
                             "linear_probe": rnd["linear_probe_accuracy"],
                             "knn": rnd["knn_accuracy"], "seconds": time.perf_counter() - t0})
                t0 = time.perf_counter()
                cen = centralized(data, method, args.rounds * args.local_epochs, args.seed)
                rows.append({"dataset": dataset, "method": method, "setting": "centralized",
                             "linear_probe": cen["linear_probe_accuracy"],
                             "knn": cen["knn_accuracy"], "seconds": time.perf_counter() - t0})
                settings: list[float | None] = [None]
                if OBJECTIVES[method].decomposable:
                    settings += epsilons
                for eps in settings:
                    t0 = time.perf_counter()
                    rep = federated(dataset, args.num_samples, method, args.rounds,
                                    args.local_epochs, eps, args.seed, workdir)
                    rows.append({
                        "dataset": dataset, "method": method,
                        "setting": "federated" + (f" DP eps={eps:g}" if eps else ""),
                        "epsilon": eps, "linear_probe": rep["linear_probe_accuracy"],
                        "knn": rep["knn_accuracy"], "seconds": time.perf_counter() - t0,
                        "max_client_epsilon": max((c["epsilon"] for c in
                                                   ((rep.get("privacy") or {}).get("clients")
                                                    or {}).values()), default=None),
                    })
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args)


class _Rows(list):
    """Rows that are saved to ``results/quality_partial.json`` as soon as they are added, so
    an interrupted benchmark keeps what it measured."""

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "quality_partial.json").write_text(json.dumps(list(self), indent=2))


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print the Markdown table; write JSON and the accuracy-vs-epsilon plot."""
    print("| dataset | method | setting | linear probe | kNN | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        knn = f"{r['knn']:.3f}" if r["knn"] is not None else "-"
        print(f"| {r['dataset']} | {r['method']} | {r['setting']} | {r['linear_probe']:.3f} | "
              f"{knn} | {r['seconds']:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                     indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for method in sorted({r["method"] for r in rows if r["dataset"] == dataset} - {"-"}):
            pts = [(r["epsilon"] or np.inf, r["linear_probe"]) for r in rows
                   if r["dataset"] == dataset and r["method"] == method
                   and r["setting"].startswith("federated")]
            if not pts:
                continue
            pts.sort()
            xs = [p[0] if np.isfinite(p[0]) else 12.0 for p in pts]
            ax.plot(xs, [p[1] for p in pts], marker="o", label=method)
        sup = [r["linear_probe"] for r in rows if r["dataset"] == dataset
               and r["setting"] == "supervised reference"]
        if sup:
            ax.axhline(sup[0], color="k", ls="--", lw=1, label="supervised")
        ax.set(title=f"{dataset}: federated linear probe", xlabel="epsilon (12 = no DP)",
               ylabel="accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "quality_vs_epsilon.png", dpi=120)
    print(f"\nwrote {RESULTS / 'quality.json'} and {RESULTS / 'quality_vs_epsilon.png'}")


if __name__ == "__main__":
    main()
