"""Build ``japanese_vowels.npz``: a real multichannel time-series set for the quality benchmark.

What: JapaneseVowels from the UEA/UCR archive (Kudo, Toyama & Shimbo 1999; Bagnall et al.
2018): 640 utterances of /ae/ by 9 speakers, 12 LPC cepstrum coefficients per frame, the
equal-length version (25 frames), 270 train / 370 test, the speaker as the class. It is what a
site with multichannel signals (12-lead ECGs, wearables) has: records ``(12, 25)``, written as
``train_signals``/``test_signals`` so fedssl reads them as signals, not images
(:func:`fedssl.ssl_core.datasets.load_npz`).

Why this source: these machines reach package registries only, and the BSD-licensed ``aeon``
wheel ships the set's ``.ts`` files. The wheel is fetched with ``pip download --no-deps``
(nothing is installed), and each file is checked against the SHA-256 recorded here before it
is parsed (the ``.ts`` format: ``@`` header lines, then one record per line, channels
separated by ``:``, values by ``,``, the class label last).

Usage::

    python benchmarks/ucr.py --out /tmp/japanese_vowels.npz
    python benchmarks/quality.py --datasets npz:/tmp/japanese_vowels.npz --settings raw,random
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

#: the release whose files have the digests below
AEON_VERSION = "1.6.0"
MEMBERS = {
    "train": ("aeon/datasets/data/JapaneseVowels/JapaneseVowels_eq_TRAIN.ts",
              "8958279c6296b97c8e34038346407935222db171492b84dffa3b930d087bc2d6"),
    "test": ("aeon/datasets/data/JapaneseVowels/JapaneseVowels_eq_TEST.ts",
             "bb83bb1aa6bfb17faae269f6829b7cac71de36fdd3264ee34137fe90270d5895"),
}


def fetch(wheel: Path | None = None) -> dict[str, bytes]:
    """The train and test ``.ts`` files' bytes, from ``wheel`` or a downloaded aeon wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            f"aeon=={AEON_VERSION}", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("aeon-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            raw = {split: zf.read(member) for split, (member, _) in MEMBERS.items()}
    for split, (member, digest) in MEMBERS.items():
        got = hashlib.sha256(raw[split]).hexdigest()
        if got != digest:
            raise SystemExit(f"{member}: SHA-256 {got} is not the recorded {digest}")
    return raw


def parse_ts(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C, L)`` float32 records and ``(N,)`` labels 0..K-1 (the file's labels sorted)."""
    records, labels = [], []
    for line in raw.decode().splitlines():
        line = line.strip()
        if not line or line.startswith(("@", "#")):
            continue
        *channels, label = line.split(":")
        records.append([[float(v) for v in c.split(",")] for c in channels])
        labels.append(label)
    x = np.asarray(records, dtype=np.float32)
    names = sorted(set(labels), key=lambda s: (len(s), s))
    return x, np.asarray([names.index(v) for v in labels], dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    p.add_argument("--wheel", type=Path, default=None,
                   help="an aeon wheel already on disk (default: pip download it)")
    args = p.parse_args(argv)
    raw = fetch(args.wheel)
    (x_tr, y_tr), (x_te, y_te) = parse_ts(raw["train"]), parse_ts(raw["test"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, train_signals=x_tr, train_labels=y_tr, test_signals=x_te,
                        test_labels=y_te)
    print(f"wrote {args.out}: {len(x_tr)} train / {len(x_te)} test records of shape "
          f"{x_tr.shape[1:]}, {len(np.unique(y_tr))} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
