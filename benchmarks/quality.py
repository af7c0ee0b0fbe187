"""Quality benchmark: with k labels per class, is a site better off with the fedssl encoder?

SSL exists for label efficiency (``shared/research/label-efficiency.md``): every row is put
beside what a site has without fedssl, measured in the same run, on the same data, probe split,
label draws and seeds:

- ``raw input``: logistic regression (and kNN) on the raw records: no network at all;
- ``random init / from scratch``: the untrained encoder's frozen features, and the same
  network trained from scratch on the k labels (fine-tuned columns: the recipe every
  fine-tuned row shares, :mod:`fedssl.ssl_core.finetune`);
- ``warm start alone``: the warm-start encoder (``--init-encoder``: ``public`` pretrains one
  on MNIST-1D's public split, in-distribution public data; ``synthetic`` on procedural records
  with no data, :mod:`fedssl.client.pretrain`) before any private training: the private
  data's gain is the difference to the private rows;
- ``one site alone``: each of ``--site-rows`` sites training SSL on its own records only,
  same recipe and DP budget, averaged over those sites: what federation adds;
- ``centralized``: SSL on the pooled private training records with the SAME epoch budget as
  the federation (``rounds * local_epochs`` epochs, same batch size, schedule and K), no DP:
  the ceiling;
- ``federated``: FedAvg over ``--clients`` clients (IID or Dirichlet label skew), with
  sample-level DP-SGD at each ``--epsilons`` (delta ``--delta``; per client, over the whole
  run) or without DP;
- ``client-level DP``: DP-FedAvg (central Gaussian, :mod:`fedssl.privacy.client_level.central`) at
  ``--client-dp-clients`` clients, local training non-private (the privacy unit is a client),
  so in-batch SimCLR is allowed there;

each evaluated by a full-label linear probe and kNN on frozen features, the frozen linear probe
at each of ``--shots`` labels per class, and fine-tuned at each of them (encoder + linear head
end to end, :func:`fedssl.ssl_core.finetune.finetune`, the recipe ``fedssl evaluate
--finetune`` uses); mean and std over ``--seeds`` (each seed draws its own labelled records and
initialisations). Nothing here is tuned on the test split unless a result file says so;
``--validation N`` evaluates every row on N records held out of the training pool instead of
the test split (rows marked ``"split": "validation"``), so that a setting can be chosen
without looking at test accuracy.
Results: ``benchmarks/results/quality*.json`` (with the command) and a PNG, plus a printed
Markdown table.

The federation runs IN PROCESS: sequential FedAvg over :func:`fedssl.client.trainer.train_local`
(the function every Flower client calls, with the same TrainConfig, DP engines, Poisson
sampling and noise calibration as ``client/app.py``: the noise multiplier is calibrated for the
whole run's steps at the client's sample rate), weighted by the clients' record counts as the
server's strategy does. No Flower, no secure aggregation (which does not change the average);
``make demo`` runs the real simulation.

Usage::

    python benchmarks/quality.py --quick                        # smoke run, ~1 minute
    python benchmarks/quality.py --datasets mnist1d --settings raw,random,site,nodp,dp \\
        --partitions dirichlet --seeds 0,1,2
    python benchmarks/quality.py --help                         # every option
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedssl.client.pretrain import pretrain, pretrain_public
from fedssl.client.trainer import LR_SCHEDULES, TrainConfig, steps_per_epoch, train_local
from fedssl.privacy.accounting.budget import calibrate_noise, epsilon_of
from fedssl.privacy.client_level.central import ClientLevelGaussian, poisson_sample
from fedssl.privacy.dp_sgd.opacus_engine import clip_sensitivity
from fedssl.server.server_optimizer import ServerMomentum
from fedssl.ssl_core.aggregators import get_aggregator
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.collapse import collapse_metrics
from fedssl.ssl_core.datasets import SSLDataset, load_dataset
from fedssl.ssl_core.evaluation import evaluate_encoder, extract_features
from fedssl.ssl_core.finetune import finetune, label_subset
from fedssl.ssl_core.objectives import get_objective
from fedssl.ssl_core.partitioners import partition_indices
from fedssl.ssl_core.trainable import trainable_names
from fedssl.ssl_core.warm_start import load_init_encoder

RESULTS = Path(__file__).parent / "results"
SETTINGS = ("raw", "random", "public", "site", "centralized", "nodp", "dp", "clientdp")


@dataclass
class Recipe:
    """Local-training recipe of a federated or centralized SSL row."""

    method: str = "simsiam"
    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    views: int = 0
    ema_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_rounds: int = 0
    max_grad_norm: float = 1.0
    dp_engine: str = "auto"
    init_encoder: str = ""
    server_lr: float = 1.0
    server_momentum: float = 0.0
    aggregation: str = "fedavg"
    trainable: str = "all"
    extra: dict[str, Any] = field(default_factory=dict)

    def train_config(self, round_index: int, seed: int, **kw: Any) -> TrainConfig:
        return TrainConfig(
            epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
            momentum=self.momentum, seed=seed, views=self.views, ema_decay=self.ema_decay,
            lr_schedule=self.lr_schedule, warmup_rounds=self.warmup_rounds,
            round_index=round_index, total_rounds=self.rounds,
            max_grad_norm=self.max_grad_norm, dp_engine=self.dp_engine,
            trainable=self.trainable, **kw)


# ------------------------------------------------------------------------------ rows
def _objective(recipe: Recipe):
    """The recipe's objective, with its options (``--method-args``) if any."""
    return get_objective(recipe.method, **recipe.extra)


def _fresh_model(data: SSLDataset, recipe: Recipe, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = _objective(recipe).build_model(data.input_shape)
    if recipe.init_encoder:
        load_init_encoder(model, recipe.init_encoder)
    return model


def evaluate(encoder: torch.nn.Module | None, data: SSLDataset, probe: np.ndarray, seed: int,
             shots: tuple[int, ...], frozen: bool = True, scratch: torch.nn.Module | None = None
             ) -> dict[str, float]:
    """One encoder's row: full-label linear probe and kNN (fitted on the ``probe`` indices of
    the training pool, tested on the test split), the frozen linear probe and kNN at each
    ``k`` of ``shots`` labels per class and the collapse metrics (``frozen``), and the
    encoder fine-tuned at each ``k`` (``finetuned_<k>shot``; the network to fine-tune is
    ``scratch`` if given, else ``encoder``). Seed ``seed`` draws the labelled records
    (:func:`fedssl.ssl_core.finetune.label_subset`, the same records as the frozen probes')."""
    out: dict[str, float] = {}
    x, y = data.x_train[probe], data.y_train[probe]
    if frozen and encoder is not None:
        out = evaluate_encoder(encoder, x, y, data.x_test, data.y_test, labels_per_class=shots,
                               seed=seed)
        if not isinstance(encoder, torch.nn.Flatten):
            out.update(collapse_metrics(extract_features(encoder, data.x_test[:2000])))
    tuned = scratch if scratch is not None else encoder
    if tuned is not None and not isinstance(tuned, torch.nn.Flatten):
        aug = augment_for(data.input_shape, data.name)
        for k in shots:
            sub = label_subset(y, k, seed)
            out[f"finetuned_{k}shot"] = finetune(tuned, x[sub], y[sub], data.x_test,
                                                 data.y_test, seed=seed, augment=aug,
                                                 num_outputs=data.num_classes)["accuracy"]
    return out


def centralized(data: SSLDataset, recipe: Recipe, seed: int) -> torch.nn.Module:
    """SSL on the pooled training records: ``rounds * local_epochs`` epochs, same recipe."""
    model = _fresh_model(data, recipe, seed)
    objective = _objective(recipe)
    aug = augment_for(data.input_shape, data.name)
    for r in range(1, recipe.rounds + 1):
        train_local(model, objective, data.x_train, aug, recipe.train_config(r, seed * 1000 + r))
    return model.encoder


def _average(states: list[dict[str, torch.Tensor]], weights: list[float]
             ) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    return {k: sum(w / total * s[k].double() for s, w in zip(states, weights)).to(v.dtype)
            for k, v in states[0].items()}


def _ldawa(states: list[dict[str, torch.Tensor]], global_state: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """L-DAWA (Rehman et al., ICCV 2023): the server's own rule
    (:class:`fedssl.ssl_core.aggregators.LayerwiseDivergenceAware`, ``--aggregator ldawa``)
    applied to the clients' models, every client weighted alike as the paper does."""
    current = {k: v.detach().cpu().numpy() for k, v in global_state.items()}
    rule = get_aggregator("ldawa")(current, current)
    for s in states:
        rule.add({k: v.detach().cpu().numpy() for k, v in s.items()}, 1.0)
    return {k: torch.from_numpy(np.asarray(v)) for k, v in rule.result().items()}


def federated(data: SSLDataset, recipe: Recipe, seed: int, clients: int, partition: str,
              alpha: float, epsilon: float | None, delta: float,
              sites: list[int] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Sequential in-process FedAvg over ``train_local``; DP-SGD per client at ``epsilon``.
    ``sites``: only those clients of the ``clients``-way partition take part (one site:
    that site training alone, on its own records, with its own DP budget)."""
    model = _fresh_model(data, recipe, seed)
    objective = _objective(recipe)
    aug = augment_for(data.input_shape, data.name)
    parts = [partition_indices(data.y_train, clients, c, partition, alpha, seed=seed)
             for c in range(clients)]
    if sites is not None:
        parts = [parts[c] for c in sites]
    sigmas: dict[int, float] = {}
    eps_spent: list[float] = []
    if epsilon is not None:
        # as client/app.py: noise calibrated at the effective multiplier sigma / sensitivity
        # (2 for group-clipped objectives, 1 for per-record ones)
        sens = clip_sensitivity(objective)
        for c, idx in enumerate(parts):
            q = min(1.0, recipe.batch_size / len(idx))
            steps = recipe.local_epochs * steps_per_epoch(len(idx), recipe.batch_size, True)
            sigmas[c] = sens * calibrate_noise(epsilon, delta, q, steps * recipe.rounds)
            eps_spent.append(epsilon_of([(sigmas[c] / sens, q, steps * recipe.rounds)], delta))
    server_opt = ServerMomentum(recipe.server_lr, recipe.server_momentum)
    for r in range(1, recipe.rounds + 1):
        global_state = copy.deepcopy(model.state_dict())
        states, weights = [], []
        for c, idx in enumerate(parts):
            model.load_state_dict(global_state)
            cfg = recipe.train_config(r, seed * 100_003 + r * 1009 + c,
                                      dp=epsilon is not None,
                                      noise_multiplier=sigmas.get(c, 0.0))
            res = train_local(model, objective, data.x_train[idx], aug, cfg)
            states.append(copy.deepcopy(model.state_dict()))
            weights.append(res.num_examples)
        mean = (_ldawa(states, global_state) if recipe.aggregation == "ldawa"
                else _average(states, weights))
        if not server_opt.is_plain_fedavg:  # FedAvgM: post-processing of the average
            current = {k: v.numpy() for k, v in global_state.items()}
            mean = {k: torch.from_numpy(v) for k, v in server_opt.step(
                current, {k: v.numpy() for k, v in mean.items()}).items()}
        model.load_state_dict(mean)
    info = {"clients": len(parts), "partition": partition,
            "client_sizes": [len(p) for p in parts],
            "noise_multipliers": sorted(set(round(s, 4) for s in sigmas.values())),
            "max_client_epsilon": max(eps_spent) if eps_spent else None}
    return model.encoder, info


def client_level_dp(data: SSLDataset, recipe: Recipe, seed: int, clients: int,
                    partition: str, alpha: float, noise_multiplier: float, clip: float,
                    rate: float, delta: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """DP-FedAvg (McMahan et al. 2018): Poisson-sampled clients, updates clipped to ``clip``,
    Gaussian noise on the sum, fixed-denominator mean; local training without DP."""
    model = _fresh_model(data, recipe, seed)
    objective = _objective(recipe)
    aug = augment_for(data.input_shape, data.name)
    parts = [partition_indices(data.y_train, clients, c, partition, alpha, seed=seed)
             for c in range(clients)]
    mech = ClientLevelGaussian(clip, noise_multiplier, expected_clients=rate * clients,
                               rng=np.random.default_rng())
    rng = np.random.default_rng()
    for r in range(1, recipe.rounds + 1):
        glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
        template = {k: v.numpy() for k, v in glob.items()}
        clipped = []
        for c in poisson_sample(list(range(clients)), rate, rng):
            model.load_state_dict(glob)
            train_local(model, objective, data.x_train[parts[c]], aug,
                        recipe.train_config(r, seed * 100_003 + r * 1009 + c))
            upd = {k: (v.detach() - glob[k]).numpy() for k, v in model.state_dict().items()}
            clipped.append(mech.constrain_sensitivity(upd))
        mean = mech.noisy_mean(clipped, template)
        model.load_state_dict({k: glob[k] + torch.from_numpy(mean[k]).to(glob[k].dtype)
                               for k in glob})
    eps = epsilon_of([(noise_multiplier, rate, recipe.rounds)], delta)
    return model.encoder, {"clients": clients, "client_level_epsilon": eps,
                           "client_noise_multiplier": noise_multiplier, "client_clip": clip,
                           "client_rate": rate}


# ------------------------------------------------------------------------------ driver
def _summary(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for v in values for k in v})
    out = {}
    for k in keys:
        xs = [v[k] for v in values if k in v and v[k] is not None]
        if xs:
            out[k] = {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "n": len(xs)}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", default="mnist1d",
                   help="comma-separated: mnist1d, digits, or npz:PATH (28x28 images)")
    p.add_argument("--num-samples", type=int, default=25000,
                   help="MNIST-1D records generated (80 %% train pool)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated rows to run, from {SETTINGS}")
    p.add_argument("--partitions", default="dirichlet", help="iid and/or dirichlet")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--clients", type=int, default=10, help="clients of the sample-level rows")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (3 for mean +- std)")
    p.add_argument("--epsilons", default="8,3", help="sample-level DP targets (per client)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--method", default="simsiam", help="SSL method of the private rows")
    p.add_argument("--dp-method", default="", help="method of the DP rows (default --method)")
    p.add_argument("--method-args", default="",
                   help='JSON options of the private rows\' objective, e.g. '
                        '\'{"decoder": "map"}\' for masked-ae (default: its defaults)')
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256,
                   help="(expected, under DP) batch size; B/(sigma C) is the step's SNR")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--dp-lr", type=float, default=0.0, help="lr of the DP rows (0: --lr)")
    p.add_argument("--views", type=int, default=0, help="augmentation multiplicity K")
    p.add_argument("--dp-views", type=int, default=0, help="K of the DP rows (0: --views)")
    p.add_argument("--ema-decay", type=float, default=0.0, help="parameter EMA per round")
    p.add_argument("--trainable", default="all", choices=trainable_names(),
                   help="parameters the SSL rows train (fedssl.ssl_core.trainable); the rest "
                        "keep the warm start's values")
    p.add_argument("--dp-trainable", default="", choices=("", *trainable_names()),
                   help="parameters the DP rows train ('': --trainable)")
    p.add_argument("--lr-schedule", default="cosine", choices=LR_SCHEDULES)
    p.add_argument("--warmup-rounds", type=int, default=0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--server-lr", type=float, default=1.0,
                   help="server learning rate of FedAvgM (1 with momentum 0: FedAvg)")
    p.add_argument("--server-momentum", type=float, default=0.0,
                   help="server momentum of FedAvgM (fedssl.server.server_optimizer)")
    p.add_argument("--aggregation", default="fedavg", choices=("fedavg", "ldawa"),
                   help="the server's average: FedAvg (weighted by records) or L-DAWA "
                        "(layer-wise, weighted by the cosine to the global model)")
    p.add_argument("--init-encoder", default="",
                   help="warm-start encoder (safetensors) for the SSL rows; 'public' pretrains "
                        "one here on MNIST-1D's public split (in-distribution public data), "
                        "'synthetic' on procedural records (no data)")
    p.add_argument("--public-method", default="",
                   help="SSL method of the warm start (default simclr; mae for --method mae)")
    p.add_argument("--public-samples", type=int, default=5000,
                   help="records of the public or synthetic set")
    p.add_argument("--shots", default="1,5,10",
                   help="labels per class of the frozen and fine-tuned few-label columns")
    p.add_argument("--site-rows", type=int, default=3,
                   help="sites of the 'one site alone' rows (the first N of the partition)")
    p.add_argument("--public-epochs", type=int, default=10)
    p.add_argument("--probe-samples", type=int, default=5000,
                   help="labelled training records the full-label probes are fitted on")
    p.add_argument("--validation", type=int, default=0,
                   help="evaluate on this many records held out of the training pool (never "
                        "trained on) instead of the test split; 0: the test split")
    p.add_argument("--client-dp-clients", type=int, default=100)
    p.add_argument("--client-dp-rate", type=float, default=0.3)
    p.add_argument("--client-dp-noise", type=float, default=1.0)
    p.add_argument("--client-dp-clip", type=float, default=1.0)
    p.add_argument("--client-dp-method", default="simclr")
    p.add_argument("--out", default="", help="results JSON (default results/quality.json)")
    p.add_argument("--quick", action="store_true", help="tiny settings, for smoke tests")
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples, args.rounds, args.probe_samples = 3000, 2, 1000
        args.public_samples, args.public_epochs = 1000, 1
        args.client_dp_clients, args.batch_size = 20, 64
    bad = [s for s in args.settings.split(",") if s and s not in SETTINGS]
    if bad:
        p.error(f"unknown settings {bad}; choose from {SETTINGS}")
    if "site" in args.settings.split(",") and not {"dp", "nodp"} & set(args.settings.split(",")):
        p.error("'site' rows take their budgets from 'dp' (each of --epsilons) and/or 'nodp': "
                "add one of them to --settings")
    bad = [s for s in args.partitions.split(",") if s not in ("iid", "dirichlet")]
    if bad:
        p.error(f"unknown partitions {bad}; choose iid and/or dirichlet")
    if args.rounds < 1 or args.local_epochs < 1 or args.batch_size < 1:
        p.error("rounds, local-epochs and batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FEDSSL_THREADS", os.cpu_count() or 1)))
    settings = [s for s in args.settings.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    base = Recipe(method=args.method, rounds=args.rounds, local_epochs=args.local_epochs,
                  batch_size=args.batch_size, lr=args.lr, views=args.views,
                  ema_decay=args.ema_decay, lr_schedule=args.lr_schedule,
                  warmup_rounds=args.warmup_rounds, max_grad_norm=args.max_grad_norm,
                  server_lr=args.server_lr, server_momentum=args.server_momentum,
                  aggregation=args.aggregation, trainable=args.trainable,
                  extra=json.loads(args.method_args) if args.method_args else {})
    dp_recipe = replace(base, method=args.dp_method or args.method, lr=args.dp_lr or args.lr,
                        views=args.dp_views or args.views,
                        trainable=args.dp_trainable or args.trainable,
                        extra=base.extra if args.dp_method in ("", args.method) else {})
    out_path = Path(args.out) if args.out else RESULTS / "quality.json"
    results: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                               "args": vars(args), "in_process": True, "rows": []}

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))

    for dataset in [d for d in args.datasets.split(",") if d]:
        _run_dataset(dataset, args, base, dp_recipe, settings, seeds, epsilons, results, save,
                     out_path)
    report(results, out_path)
    return results


#: seed of the permutation that picks ``--validation``'s held-out records (fixed, so that every
#: run of a data set holds out the same records)
VALIDATION_SEED = 54321


def validation_split(data: SSLDataset, n: int) -> SSLDataset:
    """``data`` with ``n`` records of its training pool as the evaluation split in place of
    the test split, and removed from the pool (so no row trains on them).

    Args:
        data: a labelled data set.
        n: the records to hold out.

    Returns:
        The split data set.

    Raises:
        ValueError: unlabelled data, or ``n`` not below the pool's size.
    """
    if data.y_train is None:
        raise ValueError(f"--validation needs labels; {data.name} has none")
    if not 0 < n < len(data.x_train):
        raise ValueError(f"--validation {n} must be between 1 and the pool's "
                         f"{len(data.x_train) - 1} records")
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(data.x_train))
    held, kept = np.sort(order[:n]), np.sort(order[n:])
    return replace(data, x_train=data.x_train[kept], y_train=data.y_train[kept],
                   x_test=data.x_train[held], y_test=data.y_train[held],
                   notes=(*data.notes, f"evaluated on {n} records held out of the training "
                                       "pool (validation), not the test split"))


def _run_dataset(dataset: str, args: argparse.Namespace, base: Recipe, dp_recipe: Recipe,
                 settings: list[str], seeds: list[int], epsilons: list[float],
                 results: dict[str, Any], save, out_path: Path) -> None:
    """Every requested row of one data set, appended to ``results['rows']`` as measured."""
    name, path = [*dataset.split(":", 1), ""][:2]
    data = load_dataset(name, data_path=path, num_samples=args.num_samples, seed=0)
    if args.validation:
        data = validation_split(data, args.validation)
    probe = np.random.default_rng(0).permutation(len(data.x_train))[:args.probe_samples]
    shots = tuple(int(k) for k in args.shots.split(",") if k)
    init = _warm_start(args, data, base, out_path)
    recipe = replace(base, init_encoder=init)
    dpr = replace(dp_recipe, init_encoder=init)
    warm = f" (from {args.init_encoder} warm start)" if init else ""

    def row(label: str, fn, partition: str = "", frozen: bool = True, **meta: Any) -> None:
        """Run ``fn(seed)`` per seed (an encoder, a list of them, averaged, or either with
        an info dict) and evaluate what it returns."""
        per_seed, infos = [], []
        t0 = time.perf_counter()
        for seed in seeds:
            res = fn(seed)
            enc, info = res if isinstance(res, tuple) else (res, {})
            encoders = enc if isinstance(enc, list) else [enc]
            per_seed.append(_mean_dicts([evaluate(e, data, probe, seed, shots, frozen)
                                         for e in encoders]))
            infos.append(info)
        entry = {"dataset": data.name, "setting": label, "partition": partition,
                 "split": "validation" if args.validation else "test", **meta,
                 "seeds": seeds, "per_seed": per_seed, "summary": _summary(per_seed),
                 "info": infos, "seconds": time.perf_counter() - t0}
        results["rows"].append(entry)
        save()
        s = entry["summary"]
        cells = "  ".join(f"{name} {s[key]['mean']:.3f}" for key, name in (
            ("linear_probe_accuracy", "linear"), ("linear_probe_5shot", "frozen 5-shot"),
            ("finetuned_5shot", "fine-tuned 5-shot")) if key in s)
        print(f"[{data.name}] {label:<40} {partition:<9} {cells}  ({entry['seconds']:.0f} s)",
              flush=True)

    if "raw" in settings:
        row("raw input (logistic regression, kNN)", lambda s: torch.nn.Flatten())
    if "random" in settings:
        row("random init (frozen) / from scratch (fine-tuned)",
            lambda s: _fresh_model(data, replace(base, init_encoder=""), s).encoder)
    if "public" in settings and init:
        row(f"{args.init_encoder} warm start alone", lambda s: _fresh_model(data, recipe,
                                                                             s).encoder)
    if "centralized" in settings:
        row(f"centralized {recipe.method} no DP (same budget){_trained(recipe)}{warm}",
            lambda s: centralized(data, recipe, s), **{"recipe": asdict(recipe)})
    cdr = replace(recipe, method=args.client_dp_method, extra={})
    sites = list(range(min(args.site_rows, args.clients)))
    for partition in args.partitions.split(","):
        if "site" in settings:
            budgets = ([None] if "nodp" in settings else []) + (
                epsilons if "dp" in settings else [])
            for eps in budgets:
                r = recipe if eps is None else dpr
                tag = "no DP" if eps is None else f"DP eps={eps:g}"
                tag += _trained(r)
                row(f"one site alone {r.method} {tag}{warm}",
                    lambda s, pt=partition, e=eps, r=r: _sites_alone(
                        data, r, s, args.clients, pt, args.alpha, e, args.delta, sites),
                    partition, epsilon=eps, sites=sites, recipe=asdict(r))
        if "nodp" in settings:
            row(f"federated {recipe.method} no DP{_server_tag(recipe)}{warm}",
                lambda s, pt=partition: federated(
                data, recipe, s, args.clients, pt, args.alpha, None, args.delta),
                partition, recipe=asdict(recipe))
        if "dp" in settings:
            for eps in epsilons:
                row(f"federated {dpr.method} DP eps={eps:g}{_server_tag(dpr)}{warm}",
                    lambda s, pt=partition, e=eps: federated(
                        data, dpr, s, args.clients, pt, args.alpha, e, args.delta),
                    partition, epsilon=eps, delta=args.delta, recipe=asdict(dpr))
        if "clientdp" in settings:
            row(f"client-level DP {cdr.method} ({args.client_dp_clients} clients){warm}",
                lambda s, pt=partition: client_level_dp(
                    data, cdr, s, args.client_dp_clients, pt, args.alpha,
                    args.client_dp_noise, args.client_dp_clip, args.client_dp_rate,
                    args.delta), partition, recipe=asdict(cdr))


def _server_tag(recipe: Recipe) -> str:
    """How the server combines the updates, where it is not plain FedAvg, and which
    parameters the clients train, where not all (row labels of the federated rows)."""
    tags = [f"FedAvgM {recipe.server_momentum:g}"] if recipe.server_momentum else []
    tags += ["L-DAWA"] if recipe.aggregation == "ldawa" else []
    tags += [f"{recipe.trainable} trained"] if recipe.trainable != "all" else []
    return f" ({', '.join(tags)})" if tags else ""


def _trained(recipe: Recipe) -> str:
    """Which parameters a centralized or one-site row trains, where not all (row labels)."""
    return f" ({recipe.trainable} trained)" if recipe.trainable != "all" else ""


def _warm_start(args: argparse.Namespace, data: SSLDataset, base: Recipe, out_path: Path
                ) -> str:
    """The warm-start encoder file of the SSL rows: ``--init-encoder`` as given, or one
    pretrained here on ``public`` (MNIST-1D's public split) or ``synthetic`` records."""
    init = args.init_encoder
    if init not in ("public", "synthetic"):
        return init
    path = str(out_path.with_name(f"{init}_encoder_{data.name}.safetensors"))
    method = args.public_method or ("mae" if base.method == "mae" else "simclr")
    t0 = time.perf_counter()
    if init == "public":
        pretrain_public(data.name, data.input_shape, path, method,
                        num_samples=args.public_samples, epochs=args.public_epochs,
                        batch_size=base.batch_size, lr=base.lr, seed=12345)
    else:
        pretrain("synthetic", data.input_shape, path, method,
                 num_samples=args.public_samples, epochs=args.public_epochs,
                 batch_size=base.batch_size, lr=base.lr, seed=12345,
                 augment=data.name if data.name == "mnist1d" else "")
    print(f"[{data.name}] {init} warm start ({method}) pretrained in "
          f"{time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return path


def _sites_alone(data: SSLDataset, recipe: Recipe, seed: int, clients: int, partition: str,
                 alpha: float, epsilon: float | None, delta: float, sites: list[int]
                 ) -> tuple[list[torch.nn.Module], dict[str, Any]]:
    """Each of ``sites`` training on its own records only (a one-client federation over its
    partition, same recipe and DP budget as in the federation)."""
    encoders, infos = [], []
    for c in sites:
        enc, info = federated(data, recipe, seed, clients, partition, alpha, epsilon, delta,
                              sites=[c])
        encoders.append(enc)
        infos.append(info)
    return encoders, {"sites": infos}


def _mean_dicts(values: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of several evaluations (a row averaged over sites)."""
    keys = [k for k in values[0] if all(k in v and v[k] is not None for v in values)]
    return {k: float(np.mean([v[k] for v in values])) for k in keys}


def _fmt(s: dict[str, Any], key: str) -> str:
    if key not in s:
        return "-"
    m = s[key]
    return f"{m['mean']:.3f} ± {m['std']:.3f}" if m["n"] > 1 else f"{m['mean']:.3f}"


def _shots_of(results: dict[str, Any]) -> list[int]:
    """The few-label ``k`` values the rows hold (frozen or fine-tuned), in order."""
    keys = {k for r in results["rows"] for k in r["summary"]}
    return sorted({int(k.rsplit("_", 1)[1].removesuffix("shot")) for k in keys
                   if k.endswith("shot") and k.startswith(("linear_probe_", "finetuned_"))})


def report(results: dict[str, Any], out_path: Path) -> None:
    """Print the Markdown table (full-label linear and kNN, the frozen linear probe and the
    fine-tuned network at each k labels per class) and write the PNG next to the JSON."""
    shots = _shots_of(results)
    cols = ([("linear_probe_accuracy", "linear"), ("knn_accuracy", "kNN")]
            + [(f"linear_probe_{k}shot", f"frozen {k}/class") for k in shots]
            + [(f"finetuned_{k}shot", f"fine-tuned {k}/class") for k in shots])
    print("\n| dataset | setting | partition | " + " | ".join(c for _, c in cols)
          + " | seeds |")
    print("|---" * (len(cols) + 4) + "|")
    for r in results["rows"]:
        s = r["summary"]
        print(f"| {r['dataset']} | {r['setting']} | {r['partition'] or '-'} | "
              + " | ".join(_fmt(s, key) for key, _ in cols) + f" | {len(r['seeds'])} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    if not rows:
        print("no rows measured: no plot")
        return
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(11 * len(datasets), 1.6 + 0.5 * max(
        len([r for r in rows if r["dataset"] == d]) for d in datasets)), squeeze=False)
    bars = (("linear_probe_accuracy", "linear probe (all labels)", "C0"),
            ("linear_probe_5shot", "frozen, 5 labels/class", "C1"),
            ("finetuned_5shot", "fine-tuned, 5 labels/class", "C2"))
    for ax, dataset in zip(axes[0], datasets):
        rs = [r for r in rows if r["dataset"] == dataset]
        labels = [f"{r['setting']}" + (f" [{r['partition']}]" if r["partition"] else "")
                  for r in rs]
        y = np.arange(len(rs))
        for i, (key, name, colour) in enumerate(bars):
            vals = [r["summary"].get(key, {"mean": math.nan, "std": 0.0}) for r in rs]
            ax.barh(y + (i - 1) * 0.27, [v["mean"] for v in vals], 0.27,
                    xerr=[v["std"] for v in vals], color=colour, label=name)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="test accuracy (mean ± std over seeds)", xlim=(0.0, 1.0))
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08 - 2 / len(rs) / 10),
                  ncol=3, frameon=False)
    fig.tight_layout()
    png = out_path.with_suffix(".png")
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"\nwrote {out_path} and {png}")


if __name__ == "__main__":
    main()
