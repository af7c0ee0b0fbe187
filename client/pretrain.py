"""Pretrain a warm-start encoder on public data (never the private pool).

The encoder file and its loading are :mod:`fedssl.ssl_core.warm_start` (what the public split
is and why the warm start must not depend on the private data); this module trains one with the
local trainer (:func:`fedssl.client.trainer.train_local`, without DP: the data is public),
which is why it sits in ``client`` and not in ``ssl_core`` (see ``docs/architecture.md``).

Command::

    python -m fedssl.client.pretrain --dataset mnist1d --out public_encoder.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.ssl_core.warm_start import PUBLIC_SOURCES, WarmStartError, export_encoder


def pretrain_public(dataset: str, input_shape: tuple[int, ...], out: str | Path,
                    method: str = "simsiam", num_samples: int = 5000, epochs: int = 10,
                    batch_size: int = 256, lr: float = 0.05, seed: int = 12345) -> Path:
    """Pretrain an encoder with SSL (no DP: the data is public) on ``dataset``'s public
    source and save it as safetensors at ``out``.

    Raises:
        WarmStartError: for a data set without a public source, or a shape that differs
            from ``input_shape`` (the private data's record shape).
    """
    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.datasets import load_mnist1d
    from fedssl.ssl_core.objectives import get_objective

    if dataset not in PUBLIC_SOURCES:
        raise WarmStartError(f"no built-in public source for {dataset!r} (have: "
                             f"{PUBLIC_SOURCES}); pretrain on your own public data and pass "
                             "the encoder file")
    if seed == 0:
        raise WarmStartError("seed 0 generates the private pool of the default runs; use "
                             "another seed for the public split")
    public = load_mnist1d(num_samples=num_samples, seed=seed)
    if tuple(public.input_shape) != tuple(input_shape):
        raise WarmStartError(f"public records have shape {public.input_shape}, the private "
                             f"ones {tuple(input_shape)}")
    torch.manual_seed(seed)
    objective = get_objective(method)
    model = objective.build_model(public.input_shape)
    aug = augment_for(public.input_shape, public.name)
    for r in range(1, epochs + 1):
        train_local(model, objective, public.x_train, aug, TrainConfig(
            epochs=1, batch_size=batch_size, lr=lr, seed=seed + r, lr_schedule="cosine",
            round_index=r, total_rounds=epochs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_encoder(out, model.cpu(), {
        "method": method, "dataset": f"{dataset} public split (generator seed {seed})",
        "input_shape": ",".join(map(str, public.input_shape)), "epochs": str(epochs)})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pretrain a warm-start encoder on public data "
                                "(never the private pool) for --init-encoder.")
    p.add_argument("--dataset", default="mnist1d", choices=PUBLIC_SOURCES)
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--method", default="simsiam")
    p.add_argument("--num-samples", type=int, default=5000, help="public records generated")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=12345,
                   help="generator seed of the public split (not 0: the private pool's)")
    a = p.parse_args(argv)
    shape = (1, 40)
    path = pretrain_public(a.dataset, shape, a.out, a.method, a.num_samples, a.epochs,
                           a.batch_size, a.lr, a.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
