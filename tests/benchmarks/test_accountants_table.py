"""benchmarks/accountants.py: one column per audit accountant plus Opacus's RDP, in the
order of the bounds' tightness, written with its command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import accountants  # benchmarks/ is not a package

from fedssl.privacy.accounting import audit_accountants


def test_table_has_every_audit_accountant_and_tight_bounds_below_rdp(tmp_path: Path) -> None:
    out = tmp_path / "acc.json"
    assert accountants.main(["--settings", "0.01:1.0:200", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    eps = data["rows"][0]["epsilon"]
    assert list(eps) == [*audit_accountants(), "rdp"]
    assert eps["pld"] <= eps["prv"] <= eps["pld"] + 0.02  # PRV: upper end of a 0.01 band
    assert eps["pld"] < eps["dpa-rdp"] and abs(eps["dpa-rdp"] - eps["rdp"]) < 0.01
    assert data["command"].startswith("python benchmarks/accountants.py --settings")
    assert data["table"].count("\n") == 3  # header, rule, one row
