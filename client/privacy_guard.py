"""The site's own privacy budget, enforced by the client before it trains.

A site's budget ``(epsilon, delta)`` comes from the site's *own* configuration — ``fedssl
client --budget-epsilon`` (node config ``budget-epsilon``/``budget-delta``) or the
``site.toml`` file in the client's state directory — never from the server. Before every round
the client composes its ledger's history with what the round would spend (the noise
multiplier, sample rate and steps the server's configuration implies) and refuses to train if
the result would exceed its budget. Spending is checked *before* any gradient is computed, so
a refused round spends nothing; the server records the refusal and carries on without it.

The budget is the site's *lifetime* budget: it is checked against the composition of every
entry of the site's ledger, all runs the site took part in (a run's own target epsilon is
the server's business and is planned against that run's entries only,
:func:`fedssl.client.app.plan_noise`). A refusal names what earlier runs already spent.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedssl.atomic import atomic_write_text
from fedssl.privacy.accounting.budget import AccountingError, Segment, epsilon_of
from fedssl.run_layout import SiteLayout
from fedssl.run_spec import DEFAULTS


class BudgetExceededError(AccountingError):
    """Raised when a round would take the site past its own privacy budget."""


@dataclass(frozen=True)
class SiteBudget:
    """A site's total privacy budget for all its rounds, in every run it takes part in."""

    epsilon: float
    delta: float
    accountant: str = DEFAULTS["accountant"]

    @classmethod
    def load(cls, node_config: Mapping[str, Any], state_dir: Path) -> SiteBudget | None:
        """The budget from the node config, else from ``state_dir/site.toml``; None if unset.

        Args:
            node_config: the node's config (``budget-epsilon``, ``budget-delta``).
            state_dir: the site's state directory.

        Raises:
            AccountingError: for an invalid ``site.toml`` or budget.
        """
        raw: dict[str, Any] = {}
        site_file = SiteLayout(state_dir).site_file
        if site_file.exists():
            try:
                raw = dict(tomllib.loads(site_file.read_text()).get("privacy", {}))
            except tomllib.TOMLDecodeError as exc:
                raise AccountingError(f"{site_file}: invalid TOML ({exc})") from exc
        for key in ("budget-epsilon", "budget-delta"):
            if key in node_config:
                raw[key.replace("-", "_")] = node_config[key]
        if "budget_epsilon" not in raw:
            return None
        eps, delta = float(raw["budget_epsilon"]), float(raw.get("budget_delta", DEFAULTS["delta"]))
        if not (eps > 0 and 0 < delta < 1):
            raise AccountingError(f"site budget must have epsilon > 0 and 0 < delta < 1, got "
                                  f"epsilon={eps}, delta={delta}")
        return cls(eps, delta, str(raw.get("accountant", DEFAULTS["accountant"])))

    def check(self, history: Sequence[Segment], planned: Segment,
              previous_runs: Mapping[str, Sequence[Segment]] | None = None) -> float:
        """Lifetime epsilon after the planned round; raises if it would exceed the budget.

        Args:
            history: every segment the site's ledger records (all runs): the composition
                of all of them bounds the site's total privacy loss.
            planned: what this round would spend.
            previous_runs: the segments of each *other* run (run id -> segments), only to
                name them in a refusal.
        """
        spent = epsilon_of(history, self.delta, self.accountant)
        after = epsilon_of([*history, planned], self.delta, self.accountant)
        if after > self.epsilon or math.isinf(after):
            earlier = ""
            prev = {rid: segs for rid, segs in (previous_runs or {}).items() if segs}
            if prev:
                all_prev = [s for segs in prev.values() for s in segs]
                prev_eps = epsilon_of(all_prev, self.delta, self.accountant)
                names = ", ".join(
                    f"id {rid}: epsilon {epsilon_of(segs, self.delta, self.accountant):.3f}"
                    for rid, segs in prev.items())
                earlier = (f"{'a previous run' if len(prev) == 1 else 'previous runs'} "
                           f"({names}) spent {prev_eps:.3f} of the site budget "
                           f"{self.epsilon:g}; ")
            raise BudgetExceededError(
                f"privacy budget would be exceeded: {earlier}this round would take the "
                f"site's lifetime epsilon from {spent:.3f} to {after:.3f} at "
                f"delta={self.delta:g}, above the site's budget of {self.epsilon:g}; "
                "not training"
            )
        return after


def write_site_file(state_dir: Path, epsilon: float, delta: float) -> Path:
    """Write a site's local ``site.toml`` (used by simulations to give each site a budget).

    Args:
        state_dir: the site's state directory (created if missing).
        epsilon: the site's budget epsilon.
        delta: the site's budget delta.

    Returns:
        The path written.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = SiteLayout(state_dir).site_file
    atomic_write_text(path, f"[privacy]\nbudget_epsilon = {epsilon!r}\nbudget_delta = {delta!r}\n")
    return path
