"""Negatives that are not private records: synthetic or public records, embedded without gradient.

A contrastive loss needs negatives; in-batch negatives are other *private* records, which makes
every record's loss depend on every other record (not per-record decomposable, refused under
DP-SGD). :class:`NegativeBank` supplies negatives from records that are not the private data:

- ``"synthetic"`` (default): records generated procedurally from a fixed seed, with no access to
  any data. Signals ``(C, L)``: random piecewise-linear templates (3-12 knots, random length and
  circular position), a random linear trend and smooth correlated noise, in the spirit of
  MNIST-1D's generator but with *random* templates, not its digit templates. Images
  ``(C, H, W)``: random strokes (thick line segments) and Gaussian blobs on smooth noise, the
  procedural-image idea of Baradad et al., "Learning to See by Looking at Noise", NeurIPS 2021.
  Each record is standardised on its own (zero mean, unit variance), never with statistics of
  the private data.
- a path to a ``.npz`` file holding public records: array ``x`` of shape ``(N, *input_shape)``,
  or the MedMNIST layout (``train_images``); standardised with the public set's own mean/std.

What must hold for the DP argument of :mod:`fedssl.ssl_core.objectives.public_infonce`: the bank's
records are fixed before training and independently of the private data (not fitted to it, not
selected by looking at it, not a function of it), so neighbouring private data sets see the same
bank. The bank's *embeddings* are recomputed from the current model under ``torch.no_grad()``:
the model's parameters are earlier DP outputs (post-processing), and no gradient flows through
the negatives, so DP-SGD's per-record gradient rows never contain a bank term.

Example:
    >>> bank = NegativeBank.synthetic((1, 40), size=64, seed=0)
    >>> bank.records.shape
    torch.Size([64, 1, 40])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.datasets import DataError

#: generator seed of the public MNIST-1D split (as in :mod:`fedssl.ssl_core.warm_start`)
MNIST1D_PUBLIC_SEED = 12345


def _standardize_each(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per record (no statistics shared across records)."""
    flat = x.reshape(len(x), -1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, keepdim=True).clamp(min=1e-6)
    return ((flat - mean) / std).reshape(x.shape)


def synthetic_signals(n: int, channels: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, channels, length)`` procedural signals (no data involved).

    Args:
        n: how many signals.
        channels: channels per signal.
        length: samples per channel.
        gen: the randomness.

    Returns:
        The signals, each standardised.
    """
    t = torch.linspace(0, 1, length)
    out = torch.empty(n, channels, length)
    for i in range(n):
        for c in range(channels):
            k = int(torch.randint(3, 13, (1,), generator=gen))
            knots = torch.randn(k, generator=gen)
            frac = 0.3 + 0.5 * float(torch.rand(1, generator=gen))  # template length
            tl = max(2, round(frac * length))
            template = F.interpolate(knots[None, None], size=tl, mode="linear",
                                     align_corners=True)[0, 0]
            sig = torch.zeros(length)
            sig[:tl] = template
            sig = torch.roll(sig, int(torch.randint(0, length, (1,), generator=gen)))
            sig = sig + (2 * float(torch.rand(1, generator=gen)) - 1) * (t - 0.5)
            noise = torch.randn(length + 8, generator=gen)
            kernel = torch.exp(-0.5 * (torch.arange(-4, 5, dtype=torch.float32) / 2) ** 2)
            smooth = F.conv1d(noise[None, None], (kernel / kernel.norm())[None, None])[0, 0]
            out[i, c] = sig + 0.25 * smooth[:length]
    return _standardize_each(out)


def synthetic_images(n: int, channels: int, height: int, width: int, gen: torch.Generator
                     ) -> torch.Tensor:
    """``(n, channels, height, width)`` procedural images: strokes and blobs on smooth noise.

    Args:
        n: how many images.
        channels: channels per image.
        height: image height.
        width: image width.
        gen: the randomness.

    Returns:
        The images, each standardised.
    """
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width),
                            indexing="ij")
    out = torch.empty(n, channels, height, width)
    for i in range(n):
        for c in range(channels):
            low = torch.randn(1, 1, max(2, height // 4), max(2, width // 4), generator=gen)
            img = 0.3 * F.interpolate(low, size=(height, width), mode="bilinear",
                                      align_corners=False)[0, 0]
            for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
                p0, p1 = torch.rand(2, generator=gen), torch.rand(2, generator=gen)
                d = p1 - p0
                s = (((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / (d @ d + 1e-6)).clamp(0, 1)
                dist = torch.sqrt((xx - p0[0] - s * d[0]) ** 2 + (yy - p0[1] - s * d[1]) ** 2)
                thick = 0.03 + 0.07 * float(torch.rand(1, generator=gen))
                img = img + torch.exp(-((dist / thick) ** 2))
            for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
                cx, cy = torch.rand(2, generator=gen)
                r = 0.05 + 0.15 * float(torch.rand(1, generator=gen))
                img = img + torch.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
            out[i, c] = img
    return _standardize_each(out)


def load_public_records(path: str | Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Public records from a ``.npz`` (``x`` or MedMNIST ``train_images``), standardised with
    their own global mean/std.

    Args:
        path: the ``.npz`` file.
        input_shape: the shape each record must have.

    Returns:
        The records, float32.

    Raises:
        DataError: for a missing/unreadable file, no usable array, or a shape mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"public negative bank: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" in arrays.files:
                x = np.asarray(arrays["x"], dtype=np.float32)
            elif "train_images" in arrays.files:
                from fedssl.ssl_core.datasets import _images_to_nchw

                x = _images_to_nchw(arrays["train_images"], f"{path}:train_images")
            else:
                raise DataError(f"{path}: public negative bank needs an array 'x' or "
                                f"'train_images'; found {sorted(arrays.files)}")
    except DataError:
        raise
    except Exception as exc:  # a corrupt archive
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if x.ndim == len(input_shape):  # (N, L) signals without a channel axis
        x = x[:, None]
    if tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        raise DataError(f"{path}: public records have shape {tuple(x.shape[1:])} (n={len(x)}), "
                        f"the model's input shape is {tuple(input_shape)}")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: public records contain NaN or Inf")
    mean, std = float(x.mean()), float(x.std()) or 1.0
    return torch.from_numpy((x - mean) / std)


class NegativeBank:
    """A fixed set of non-private records whose embeddings serve as InfoNCE negatives."""

    def __init__(self, records: torch.Tensor, source: str) -> None:
        if records.dim() < 2 or len(records) == 0 or not torch.isfinite(records).all():
            raise DataError("negative bank: need a non-empty batch of finite records")
        self.records = records.float().contiguous()
        self.source = source

    @classmethod
    def synthetic(cls, input_shape: tuple[int, ...], size: int = 256, seed: int = 0
                  ) -> NegativeBank:
        """Procedural records for signals ``(C, L)`` or images ``(C, H, W)``.

        Args:
            input_shape: ``(C, L)`` or ``(C, H, W)``.
            size: how many records.
            seed: seeds the generator.

        Returns:
            The bank.

        Raises:
            DataError: another shape.
        """
        gen = torch.Generator().manual_seed(int(seed) + 0x5A17)
        if len(input_shape) == 2:
            return cls(synthetic_signals(size, *input_shape, gen), "synthetic")
        if len(input_shape) == 3:
            return cls(synthetic_images(size, *input_shape, gen), "synthetic")
        raise DataError(f"negative bank: no synthetic generator for input shape {input_shape}")

    @classmethod
    def mnist1d_public(cls, input_shape: tuple[int, ...], size: int = 256, seed: int = 0
                       ) -> NegativeBank:
        """Fresh MNIST-1D draws from the public generator with a public seed
        (:data:`MNIST1D_PUBLIC_SEED` + ``seed``; fedssl's private pools use the run's seed),
        the public split of :mod:`fedssl.ssl_core.warm_start`: in-distribution public data,
        disjoint from the private records, standardised with its own mean/std.

        Args:
            input_shape: must be ``(1, 40)``.
            size: how many records.
            seed: added to the public seed.

        Returns:
            The bank.

        Raises:
            DataError: another input shape.
        """
        if tuple(input_shape) != (1, 40):
            raise DataError(f"negative bank: mnist1d-public records have shape (1, 40), the "
                            f"model's input shape is {tuple(input_shape)}")
        from fedssl.ssl_core.data.generated import make_mnist1d

        data = make_mnist1d(int(size) + 20, MNIST1D_PUBLIC_SEED + int(seed), train_split=1.0)
        x = np.asarray(data["x"], dtype=np.float32)[:size, None, :]
        return cls(torch.from_numpy((x - x.mean()) / (x.std() or 1.0)), "mnist1d-public")

    @classmethod
    def from_source(cls, source: str, input_shape: tuple[int, ...], size: int = 256,
                    seed: int = 0) -> NegativeBank:
        """``"synthetic"``, ``"mnist1d-public"`` or a path to a public ``.npz``; at most
        ``size`` records, a fixed seeded subset of a larger public set.

        Args:
            source: where the records come from.
            input_shape: the shape each record must have.
            size: the most records kept.
            seed: seeds the generated records and the subset.

        Returns:
            The bank.

        Raises:
            DataError: the records cannot be made or read, or have another shape.
        """
        if source == "synthetic":
            return cls.synthetic(input_shape, size, seed)
        if source == "mnist1d-public":
            return cls.mnist1d_public(input_shape, size, seed)
        x = load_public_records(source, input_shape)
        if len(x) > size:
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size]]
        return cls(x, str(source))

    @torch.no_grad()
    def embed(self, model: nn.Module, chunk: int = 512) -> torch.Tensor:
        """L2-normalised projections ``(M, d)`` of the bank under the current ``model``,
        computed without gradient (so no DP-SGD hook records them).

        Args:
            model: returns ``(projection, prediction)`` for a batch.
            chunk: records per forward call.

        Returns:
            The embeddings, on the model's device.
        """
        dev = next(model.parameters()).device
        if self.records.device != dev:
            self.records = self.records.to(dev)
        zs = [model(self.records[i:i + chunk])[0] for i in range(0, len(self.records), chunk)]
        return F.normalize(torch.cat(zs), dim=-1).detach()

    def __len__(self) -> int:
        return len(self.records)


__all__ = ["NegativeBank", "load_public_records", "synthetic_images", "synthetic_signals"]
