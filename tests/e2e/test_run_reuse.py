"""End to end (issue 16.2, 16.3a/b): sites that keep their state directories for a second
server run, and `fedssl audit` on the server's run directories.

Two consecutive `fedssl server` runs (different run directories, one round each) with the same
three `fedssl client` agents, which reconnect to the second SuperLink on their own. The second
run's round 1 must train (it was refused as "older than the last recorded round"), at the noise
a fresh site gets (its target is planned against this run's ledger entries only), while each
site's lifetime epsilon composes both runs. Both run directories must pass `fedssl audit`
(RUN/config.toml is written by the server; the ledger keys match the registry).
"""

from __future__ import annotations

import json

import pytest

from fedssl.privacy.accounting.budget import epsilon_of
from fedssl.privacy.identity.keys import load_public_key
from fedssl.privacy.identity.ledger import read_ledger
from tests.privacy.test_audit import audit

pytestmark = pytest.mark.slow

RUN_LIMIT = 900
TARGET = ("--target-epsilon", "3")  # twice 3 stays within the sites' budget of 10


def test_second_run_on_reused_sites_trains_and_both_runs_audit(federation) -> None:
    first, second = federation.tmp / "run1", federation.tmp / "run2"
    server = federation.server(*TARGET, "--run-dir", str(first), rounds=1)
    federation.wait_for(lambda: "registered" in server.output(), 120, "node registration",
                        [server])
    clients = [federation.client(site) for site in (1, 2, 3)]
    assert server.wait(timeout=RUN_LIMIT) == 0, server.output()[-4000:]
    server2 = federation.server(*TARGET, "--run-dir", str(second), rounds=1, name="server2")
    assert server2.wait(timeout=RUN_LIMIT) == 0, server2.output()[-4000:] + "\n".join(
        c.output()[-2000:] for c in clients)

    rows = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["clients"] == 3 and not rows[1]["refused"], rows[1]
    run1, run2 = ((d / "run_id").read_text().strip() for d in (first, second))
    assert run1 != run2
    report = json.loads((second / "report.json").read_text())
    assert report["run_id"] == run2 == report["privacy"]["run_id"]
    for site in (1, 2, 3):
        path = federation.tmp / f"site{site}" / "ledger.jsonl"
        entries = read_ledger(path, load_public_key(path.with_suffix(".pub")))
        assert [(e.run_id, e.round) for e in entries] == [(run1, 1), (run2, 1)]
        a, b = entries
        assert b.noise_multiplier == a.noise_multiplier  # planned like a fresh site
        assert b.epsilon == pytest.approx(a.epsilon) and b.epsilon <= 3.0 + 1e-6
        both = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
        assert b.lifetime_epsilon == pytest.approx(epsilon_of(both, 1e-5, b.accountant))
        row = report["privacy"]["clients"][f"site-{site}"]
        assert row["epsilon"] == b.epsilon and row["lifetime_epsilon"] == b.lifetime_epsilon
        assert list(row["other_runs"]) == [run1]
    for run in (first, second):
        assert (run / "config.toml").exists()
        assert audit(run) == 0, (run / "audit" / "report.md").read_text()
        data = json.loads((run / "audit" / "audit.json").read_text())
        assert all(c["registered"] for c in data["clients"].values())
