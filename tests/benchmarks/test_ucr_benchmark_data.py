"""benchmarks/ucr.py parses the UEA/UCR ``.ts`` format into signals fedssl reads as signals
(no network: a small .ts text written here, and a fake wheel with a wrong digest)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ucr

TS = b"""@problemName toy
@univariate false
@classLabel true 1 2 10
@data
1,2,3:4,5,6:1
0,0,1:1,1,0:10
2,2,2:3,3,3:2
"""


def test_parse_ts_gives_records_channels_and_sorted_labels() -> None:
    x, y = ucr.parse_ts(TS)
    assert x.shape == (3, 2, 3) and x.dtype == np.float32
    assert x[0, 1].tolist() == [4, 5, 6]
    assert y.tolist() == [0, 2, 1]  # labels "1", "10", "2" in numeric order: 1, 2, 10


def test_a_file_whose_digest_differs_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "aeon-0.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, _ in ucr.MEMBERS.values():
            zf.writestr(member, TS)
    with pytest.raises(SystemExit, match="SHA-256"):
        ucr.fetch(wheel)
