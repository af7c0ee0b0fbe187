"""The accountants side by side: epsilon of the Poisson-subsampled Gaussian mechanism.

What: for each ``(sample rate q, noise multiplier sigma, steps)`` setting, the epsilon at
``delta`` of every accountant ``fedssl audit`` recomputes with
(:func:`fedssl.privacy.accounting.audit_accountants`: Opacus PRV, dp-accounting PLD and
RDP), next to Opacus's RDP (``rdp``, an accountant a site may budget with), as a Markdown
table in ``benchmarks/results/accountants.json`` (docs/results.md's "Accountants" table is
generated from it by ``benchmarks/results_tables.py``).

Why: an auditor reading a ledger sees several numbers for one history; this shows how far
apart the accountants are (RDP's conversion is 8-14 % looser at these settings; PRV sits at
the upper end of its 0.01 error band). Deterministic: no timing, no randomness.

Usage::

    python benchmarks/accountants.py [--delta 1e-5] [--settings 0.01:1.0:1000,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedssl.privacy.accounting import audit_accountants, create_accountant, quiet
from fedssl.privacy.audit.accounting import recompute

RESULTS = Path(__file__).resolve().parent / "results"
#: (q, sigma, steps): a small and a long run at q = 0.01, and a large sample rate
SETTINGS = "0.01:1.0:1000,0.01:1.0:10000,0.1:1.0:1000"
#: what each registry name is, for the table's header
LABELS = {"prv": "Opacus PRV", "pld": "dp-accounting PLD", "dpa-rdp": "dp-accounting RDP",
          "rdp": "Opacus RDP"}


def epsilons(q: float, sigma: float, steps: int, delta: float) -> dict[str, float]:
    """Epsilon at ``delta`` after ``steps`` steps at rate ``q`` and noise ``sigma``.

    Args:
        q: the Poisson sample rate.
        sigma: the noise multiplier (noise std / sensitivity).
        steps: the number of steps.
        delta: the guarantee's delta.

    Returns:
        Registry name -> epsilon: the audit's accountants, then Opacus's ``rdp``.
    """
    history = ((sigma, q, steps),)
    out = {name: values[-1] for name, values in recompute(history, (delta,)).items()}
    with quiet():
        out["rdp"] = create_accountant("rdp").epsilon(history, delta)
    return out


def table(rows: list[dict[str, float]], names: list[str]) -> str:
    """The Markdown table of ``rows`` (one per setting), a column per accountant."""
    head = "| q | sigma | steps | " + " | ".join(
        f"`{n}` ({LABELS.get(n, n)})" for n in names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    for r in rows:
        lines.append(f"| {r['q']} | {r['sigma']} | {r['steps']} | "
                     + " | ".join(f"{r['epsilon'][n]:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Compute the table, print it and write the JSON; an exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--settings", default=SETTINGS, help="comma-separated q:sigma:steps")
    ap.add_argument("--out", default=str(RESULTS / "accountants.json"))
    args = ap.parse_args(argv)
    names = [*audit_accountants(), "rdp"]
    rows = []
    for item in args.settings.split(","):
        q, sigma, steps = item.split(":")
        rows.append({"q": float(q), "sigma": float(sigma), "steps": int(steps),
                     "epsilon": epsilons(float(q), float(sigma), int(steps), args.delta)})
    text = table(rows, names)
    print(text)
    command = "python benchmarks/accountants.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    Path(args.out).write_text(json.dumps({"command": command.strip(), "delta": args.delta,
                                          "rows": rows, "table": text}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
