"""Audit finding kinds and severities are enums (issue 14): the reports carry the same strings
as before."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from fedssl.privacy.audit.auditor import (
    AuditResult,
    Finding,
    FindingKind,
    Severity,
    format_findings,
    write_audit,
)

ROOT = Path(__file__).resolve().parents[2]


def _result() -> AuditResult:
    res = AuditResult(run_dir="run", budget=8.0, budget_source="config", delta=1e-5,
                      tolerance=0.01, dp=True, method="simsiam")
    res.add(Severity.ERROR, FindingKind.EPSILON_UNDERSTATED, "recorded 1.0 < recomputed 2.0",
            "client-0", 3)
    res.add(Severity.WARNING, FindingKind.NO_IDENTITY_REGISTRY, "no registry")
    return res


def test_json_and_text_output_carry_the_same_strings_as_before(tmp_path: Path) -> None:
    res = _result()
    data = json.loads(json.dumps(res.to_dict()))
    assert [(f["severity"], f["kind"]) for f in data["findings"]] == [
        ("error", "epsilon-understated"), ("warning", "no-identity-registry")]
    written = json.loads(write_audit(res, tmp_path, plot=False)["json"].read_text())
    assert [f["kind"] for f in written["findings"]] == ["epsilon-understated",
                                                       "no-identity-registry"]
    assert format_findings(res).splitlines()[0] == (
        "[error] epsilon-understated (client-0 round 3): recorded 1.0 < recomputed 2.0")
    # the kinds still compare and hash as their strings (callers filter on them)
    assert {f.kind for f in res.findings} == {"epsilon-understated", "no-identity-registry"}
    assert FindingKind("report-mismatch") is FindingKind.REPORT_MISMATCH


def test_a_finding_with_a_bare_string_kind_or_severity_is_refused() -> None:
    with pytest.raises(TypeError, match="FindingKind"):
        Finding(Severity.ERROR, "epsilon-understated", "m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FindingKind"):
        _result().add(Severity.ERROR, "zero-noise", "m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Severity"):
        Finding("error", FindingKind.ZERO_NOISE, "m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Severity"):
        _result().add("warning", FindingKind.ZERO_NOISE, "m")  # type: ignore[arg-type]
    assert Severity("warning") is Severity.WARNING and f"{Severity.ERROR}" == "error"


def _enum_member(node: ast.expr, enum: type) -> bool:
    """Whether ``node`` is written ``Enum.MEMBER`` for ``enum``."""
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == enum.__name__ and node.attr in enum.__members__)


def test_every_finding_in_the_source_is_created_with_the_enum() -> None:
    """Every ``.add(severity, kind, ...)`` / ``Finding(...)`` call passes ``Severity.X`` and
    ``FindingKind.X``."""
    bad, calls = [], 0
    for path in [*(ROOT / "privacy").rglob("*.py"), *(ROOT / "fedssl").rglob("*.py"),
                 *(ROOT / "server").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            sev, kind = node.args[0], node.args[1]
            if name not in ("add", "Finding") or not (
                    _enum_member(sev, Severity) or _enum_member(kind, FindingKind)
                    or (isinstance(sev, ast.Constant) and sev.value in ("error", "warning"))):
                continue
            calls += 1
            if not (_enum_member(sev, Severity) and _enum_member(kind, FindingKind)):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls > 40
    assert bad == []
