"""Warm start: load an encoder pretrained on public or synthetic data, and make one.

DP-SGD from scratch on small private sets learns little (ViP, Yu et al., ICML 2024, pretrain
on synthetic Shaders21k images before DP-SGD; De et al. 2022 and Sander et al. 2023 likewise
start from public pretraining). ``--init-encoder PATH`` loads such an encoder (a safetensors
file with the encoder's state dict, keys without the ``encoder.`` prefix, as
``server/checkpoint.py``'s ``export_encoder`` writes) into the initial global model. Its
weights must not depend on the private data: the privacy guarantee covers only the private
training that follows, and using the private records to make the warm start would be an
unaccounted release.

:func:`pretrain_public` makes one from data that is NOT the private pool:

- ``mnist1d``: a *public split*: MNIST-1D records generated with a different generator seed
  (12345 by default; the private pool of every fedssl run is generated with the run's seed,
  0 in the demo and benchmarks), i.e. fresh draws from the public MNIST-1D generator (digit
  templates + random transformations), disjoint from the private records. It is in-
  distribution public data: the benchmark's ``public only`` row shows what it gives alone.

Other data sets have no built-in public split: pass your own encoder file.

Command::

    python -m fedssl.ssl_core.warm_start --dataset mnist1d --out public_encoder.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

#: data sets with a built-in public source for :func:`pretrain_public`
PUBLIC_SOURCES = ("mnist1d",)


class WarmStartError(ValueError):
    """Raised for a warm-start encoder file that does not fit the model."""


def load_init_encoder(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load the encoder weights of ``path`` into ``model.encoder``; returns the file's
    metadata.

    Raises:
        WarmStartError: if the file is missing or unreadable, or its keys or shapes differ
            from the model's encoder (every mismatch is named).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WarmStartError(f"init encoder {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
            metadata = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise WarmStartError(f"init encoder {str(path)!r} is not a readable safetensors "
                             f"file: {exc}") from exc
    own = model.encoder.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise WarmStartError(
            f"init encoder {str(path)!r} does not fit this model's encoder "
            f"(made for {metadata.get('input_shape', '?')} / {metadata.get('method', '?')}): "
            + "; ".join(filter(None, [
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {extra[:5]}" if extra else "",
                f"shape mismatch {shapes[:5]}" if shapes else ""])))
    model.encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    return metadata


def pretrain_public(dataset: str, input_shape: tuple[int, ...], out: str | Path,
                    method: str = "simsiam", num_samples: int = 5000, epochs: int = 10,
                    batch_size: int = 256, lr: float = 0.05, seed: int = 12345) -> Path:
    """Pretrain an encoder with SSL (no DP: the data is public) on ``dataset``'s public
    source and save it as safetensors at ``out``.

    Raises:
        WarmStartError: for a data set without a public source, or a shape that differs
            from ``input_shape`` (the private data's record shape).
    """
    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.server.checkpoint import export_encoder
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
