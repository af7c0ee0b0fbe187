"""Image-encoder study (issue 21 item 3): readout, augmentation and step budget on mnist5k.

What: one configuration per call, either the random-init encoder (``--epochs 0``) or
centralized SSL (:func:`fedssl.client.trainer.train_local`, one call per epoch with a cosine
schedule over the run, as ``benchmarks/quality.py``'s ``centralized`` row does), evaluated
two ways on frozen features:

- ``val``: probes fitted on 3,000 records of the training pool, scored on the other 1,000
  (the split configurations are chosen on);
- ``test``: probes fitted on all 4,000 training records, scored on the 1,000 test digits.

Each gives a full-label linear probe, a kNN (k = 20) and a 5-labels-per-class linear probe
(mean over 3 label draws). ``--encoder raw`` scores logistic regression on the raw pixels.
One JSON line per call is appended to ``--out``.

Usage::

    python benchmarks/mnist5k.py --out /tmp/mnist5k.npz
    OMP_NUM_THREADS=1 python benchmarks/image_encoder.py --data /tmp/mnist5k.npz --epochs 0
    OMP_NUM_THREADS=1 python benchmarks/image_encoder.py --data /tmp/mnist5k.npz \\
        --pool 2 --aug digit --method simclr --epochs 15 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.ssl_core.augmentations import ImageAugment
from fedssl.ssl_core.datasets import load_dataset
from fedssl.ssl_core.encoders import ResNetEncoder2d
from fedssl.ssl_core.evaluation import (
    extract_features,
    few_label_subset,
    knn_accuracy,
    linear_probe_accuracy,
)
from fedssl.ssl_core.heads import mlp
from fedssl.ssl_core.objectives import get_objective

AUGS = {
    # ImageAugment's defaults before this study: crop area 0.5-1, no rotation or shift
    "default": ImageAugment(crop_min=0.5, rotate=0.0, translate=0.0),
    # digits and scans: mild crop, small rotations and shifts, no flips (now the default)
    "digit": ImageAugment(crop_min=0.6, rotate=15.0, translate=0.1, cutout=0.3),
    "digit-nocut": ImageAugment(crop_min=0.6, rotate=15.0, translate=0.1, cutout=0.0),
}


def probes(f_fit: np.ndarray, y_fit: np.ndarray, f_eval: np.ndarray, y_eval: np.ndarray
           ) -> dict[str, float]:
    shots = [linear_probe_accuracy(f_fit[s], y_fit[s], f_eval, y_eval)
             for s in (few_label_subset(y_fit, 5, seed) for seed in range(3))]
    return {"linear": linear_probe_accuracy(f_fit, y_fit, f_eval, y_eval),
            "knn": knn_accuracy(f_fit, y_fit, f_eval, y_eval),
            "linear_5shot": float(np.mean(shots))}


def evaluate(features, data) -> dict[str, dict[str, float]]:
    f_tr, f_te = features(data.x_train), features(data.x_test)
    perm = np.random.default_rng(123).permutation(len(f_tr))
    fit, val = perm[:3000], perm[3000:]
    return {"val": probes(f_tr[fit], data.y_train[fit], f_tr[val], data.y_train[val]),
            "test": probes(f_tr, data.y_train, f_te, data.y_test)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--encoder", default="resnet", choices=("resnet", "raw"))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--pool", type=int, default=1)
    p.add_argument("--multiscale", action="store_true")
    p.add_argument("--aug", default="default", choices=sorted(AUGS))
    p.add_argument("--method", default="simclr")
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--proj-hidden", type=int, default=0, help="0: 2 * feature_dim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/i21img/results.jsonl")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("npz", data_path=a.data, seed=0)
    row = {k: v for k, v in vars(a).items() if k not in ("data", "out")}
    t0 = time.time()
    if a.encoder == "raw":
        row |= evaluate(lambda x: x.reshape(len(x), -1), data)
    else:
        torch.manual_seed(a.seed)
        objective = get_objective(a.method)
        model = objective.build_model(data.input_shape)
        model.encoder = ResNetEncoder2d(data.input_shape[0], a.width, pool=a.pool,
                                        multiscale=a.multiscale)
        feat = model.encoder.feature_dim
        proj_dim = model.projector[-1].out_features
        model.projector = mlp(feat, a.proj_hidden or 2 * feat, proj_dim)
        row["encoder_params"] = sum(q.numel() for q in model.encoder.parameters())
        row["model_params"] = sum(q.numel() for q in model.parameters())
        row["feature_dim"] = feat
        aug = AUGS[a.aug]
        for epoch in range(1, a.epochs + 1):
            cfg = TrainConfig(epochs=1, batch_size=a.batch_size, lr=a.lr, momentum=0.9,
                              seed=a.seed * 1000 + epoch, lr_schedule="cosine",
                              round_index=epoch, total_rounds=a.epochs)
            res = train_local(model, objective, data.x_train, aug, cfg)
            print(f"epoch {epoch}/{a.epochs} loss {res.loss:.4f} "
                  f"{time.time() - t0:.0f}s", flush=True)
        row["train_seconds"] = round(time.time() - t0, 1)
        enc: nn.Module = model.encoder
        row |= evaluate(lambda x: extract_features(enc, x), data)
    row["total_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(row), flush=True)
    with open(a.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
