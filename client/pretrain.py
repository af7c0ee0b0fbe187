"""Pretrain a warm-start encoder on data that is not the private pool: synthetic, public.

The encoder file and its loading are :mod:`fedssl.ssl_core.warm_start` (why the warm start
must not depend on the private data). This module trains one with the local trainer
(:func:`fedssl.client.trainer.train_local`, without DP: no private record is involved), which
is why it sits in ``client`` and not in ``ssl_core`` (see ``docs/architecture.md``).

Sources (:data:`SOURCES`, a registry; ``fedssl pretrain --source NAME``):

- ``synthetic``: procedurally generated records, fixed by a seed, with no access to any data
  (:func:`fedssl.ssl_core.negative_bank.synthetic_signals` and ``synthetic_images``: random
  piecewise-linear templates with trends and smooth noise; strokes and blobs on smooth
  noise). Pretraining on procedural data transfers to real data (Baradad et al., "Learning
  to See by Looking at Noise", NeurIPS 2021; ViP, Yu et al., ICML 2024, warm-starts DP-MAE on
  synthetic Shaders21k images). No privacy cost, any record shape: every data set, images
  included, has a warm start.
- ``public``: the user's own public records (``--public PATH``: a ``.npz`` with ``x`` or
  ``train_images``), standardised with their own statistics. Public means fixed
  independently of the private data: not selected or fitted by looking at it.
- ``mnist1d-public``: fresh draws from the MNIST-1D generator with another seed than the
  private pool's. In-distribution public data (the same digit templates as the private
  records): a warm start a real site would rarely have, labelled so in the file.

Commands::

    fedssl pretrain --source synthetic --input-shape 1,28,28 --out synthetic.safetensors
    fedssl pretrain --source public --public public.npz --input-shape 1,28,28 --out p.safetensors
    fedssl pretrain --source mnist1d-public --out public_encoder.safetensors
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedssl.ssl_core.warm_start import WarmStartError, export_encoder

#: generator seed of the public MNIST-1D split (never the private pool's)
PUBLIC_SEED = 12345


@dataclass(frozen=True)
class Source:
    """A warm-start data source: records of a shape, and how the file describes them."""

    name: str
    help: str
    #: (input shape, record count, seed, public path) -> records (N, *shape), description
    records: Callable[[tuple[int, ...], int, int, str], tuple[np.ndarray, str]]


def _synthetic(shape: tuple[int, ...], n: int, seed: int, _path: str
               ) -> tuple[np.ndarray, str]:
    from fedssl.ssl_core.negative_bank import synthetic_images, synthetic_signals

    gen = torch.Generator().manual_seed(seed)
    if len(shape) == 2:
        x = synthetic_signals(n, shape[0], shape[1], gen)
    elif len(shape) == 3:
        x = synthetic_images(n, shape[0], shape[1], shape[2], gen)
    else:
        raise WarmStartError(f"no synthetic generator for records of shape {shape}")
    return x.numpy(), f"synthetic (procedural, generator seed {seed}, no data)"


def _public(shape: tuple[int, ...], _n: int, _seed: int, path: str) -> tuple[np.ndarray, str]:
    from fedssl.ssl_core.negative_bank import load_public_records

    if not path:
        raise WarmStartError("--source public needs --public PATH (a .npz of public records)")
    return load_public_records(path, shape).numpy(), f"public records from {path}"


def _mnist1d_public(shape: tuple[int, ...], n: int, seed: int, _path: str
                    ) -> tuple[np.ndarray, str]:
    from fedssl.ssl_core.datasets import load_mnist1d

    if seed == 0:
        raise WarmStartError("seed 0 generates the private pool of the default runs; use "
                             "another seed for the public split")
    public = load_mnist1d(num_samples=n, seed=seed)
    if tuple(public.input_shape) != tuple(shape):
        raise WarmStartError(f"MNIST-1D public records have shape {public.input_shape}, the "
                             f"private ones {tuple(shape)}")
    return public.x_train, (f"mnist1d public split (generator seed {seed}; in-distribution "
                            "public data)")


#: warm-start sources by name (add one: a :class:`Source` here)
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("synthetic", "procedural signals or images, no data (default)", _synthetic),
    Source("public", "your own public records (--public PATH, .npz)", _public),
    Source("mnist1d-public", "MNIST-1D records from another generator seed "
           "(in-distribution public data)", _mnist1d_public),
)}


def pretrain(source: str, input_shape: tuple[int, ...], out: str | Path,
             method: str = "simclr", num_samples: int = 5000, epochs: int = 10,
             batch_size: int = 256, lr: float = 0.05, seed: int = PUBLIC_SEED,
             public_path: str = "", augment: str = "") -> Path:
    """Pretrain an encoder with SSL (no DP: no private record) on ``source``'s records of
    ``input_shape`` and save it as safetensors at ``out`` for ``--init-encoder``.

    Args:
        source: a name in :data:`SOURCES`.
        input_shape: the private records' shape, ``(C, L)`` or ``(C, H, W)``.
        out: the encoder file to write.
        method: the SSL objective (in-batch ``simclr`` is fine here: nothing is private).
        num_samples: records generated (synthetic, mnist1d-public).
        epochs, batch_size, lr: the local trainer's recipe.
        seed: generator and training seed (never the private pool's).
        public_path: the ``.npz`` of ``--source public``.
        augment: the augmenter's data set name (``mnist1d`` for MNIST-1D's own; default:
            the shape's, :func:`fedssl.ssl_core.augmentations.augment_for`).

    Returns:
        The path written.

    Raises:
        WarmStartError: an unknown source, a shape without a generator, public records of
            another shape, seed 0 for the MNIST-1D public split.
    """
    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.datasets import DataError
    from fedssl.ssl_core.objectives import get_objective

    if source not in SOURCES:
        raise WarmStartError(f"unknown warm-start source {source!r}; one of {sorted(SOURCES)}")
    try:
        records, description = SOURCES[source].records(tuple(input_shape), num_samples, seed,
                                                         public_path)
    except DataError as exc:
        raise WarmStartError(str(exc)) from exc
    records = np.ascontiguousarray(records, dtype=np.float32)
    torch.manual_seed(seed)
    objective = get_objective(method)
    model = objective.build_model(tuple(input_shape))
    aug = augment_for(tuple(input_shape), augment or ("mnist1d" if source == "mnist1d-public"
                                                      else ""))
    for r in range(1, epochs + 1):
        train_local(model, objective, records, aug, TrainConfig(
            epochs=1, batch_size=batch_size, lr=lr, seed=seed + r, lr_schedule="cosine",
            round_index=r, total_rounds=epochs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_encoder(out, model.cpu(), {
        "method": method, "dataset": description, "warm_start_source": source,
        "input_shape": ",".join(map(str, input_shape)), "epochs": str(epochs),
        "records": str(len(records))})
    return out


def pretrain_public(dataset: str, input_shape: tuple[int, ...], out: str | Path,
                    method: str = "simsiam", num_samples: int = 5000, epochs: int = 10,
                    batch_size: int = 256, lr: float = 0.05, seed: int = PUBLIC_SEED) -> Path:
    """:func:`pretrain` on ``dataset``'s built-in public source (``mnist1d``: its public
    split).

    Args:
        dataset: the data set whose public source is used.
        input_shape: the model's input shape.
        out: where the encoder is written.
        method: the SSL method.
        num_samples: the public records used.
        epochs: the training epochs.
        batch_size: the batch size.
        lr: the learning rate.
        seed: the seed.

    Returns:
        The path of the encoder written (:func:`pretrain`).

    Raises:
        WarmStartError: for a data set without one (pretrain on ``synthetic`` or your own
            public records instead), or a shape that differs from ``input_shape``.
    """
    if dataset != "mnist1d":
        raise WarmStartError(f"no built-in public source for {dataset!r}; use --source "
                             "synthetic or --source public --public PATH")
    return pretrain("mnist1d-public", input_shape, out, method, num_samples, epochs,
                    batch_size, lr, seed)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``.

    Raises:
        ValueError: for anything but 2 or 3 positive integers.
    """
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"--input-shape must be C,L or C,H,W (positive integers), got {text!r}")
    return shape


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fedssl pretrain`` (and ``python -m fedssl.client.pretrain``)."""
    p.add_argument("--source", default="synthetic", choices=sorted(SOURCES),
                   help="; ".join(f"{s.name}: {s.help}" for s in SOURCES.values()))
    p.add_argument("--input-shape", default="1,40", metavar="C,L|C,H,W",
                   help="the private records' shape (default: 1,40, MNIST-1D's)")
    p.add_argument("--public", default="", metavar="PATH", help="public .npz (--source public)")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--method", default="simclr",
                   help="SSL objective (default simclr: nothing here is private)")
    p.add_argument("--augment", default="", help="augmenter of a data set (mnist1d); "
                   "default: the record shape's")
    p.add_argument("--num-samples", type=int, default=5000, help="records generated")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=PUBLIC_SEED,
                   help="generator and training seed (not 0: the private pool's)")


def run(args: argparse.Namespace) -> Path:
    """Pretrain from parsed :func:`add_arguments` options; returns the file written."""
    return pretrain(args.source, parse_shape(args.input_shape), args.out, args.method,
                    args.num_samples, args.epochs, args.batch_size, args.lr, args.seed,
                    args.public, args.augment)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pretrain a warm-start encoder on synthetic or "
                                "public data (never the private pool) for --init-encoder.")
    add_arguments(p)
    print(f"wrote {run(p.parse_args(argv))}")


if __name__ == "__main__":
    main()
