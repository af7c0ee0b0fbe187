"""What extending a finished (or resumed) run costs each client's privacy.

``fedssl simulate --resume --extend`` and ``fedssl server --resume --extend`` both add rounds
to a run whose clients calibrated their noise for the original round count. With a target
epsilon, each client then fits the extra rounds into what is left of its target, which can
force a noise multiplier far above the run's: such rounds spend budget on noise, not on
learning. This module reads the run's verified ledgers (``RUN/ledger``, the simulation's own
or the server's verified copies of the sites' ledgers) and says, per client, what the extra
rounds will cost, with a warning where they are useless."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedssl.server.report_table import run_ledgers

#: an extension whose rounds need more than this times the run's earlier noise multiplier is
#: warned about: per-step gradient noise variance grows with the square (25x at 5x), so such
#: rounds spend the rest of the budget on noise, not on learning
USELESS_NOISE_RATIO = 5.0


def _segment(entry: Any) -> tuple[float, float, int]:
    """An entry's ``(effective noise multiplier, sample rate, steps)`` for the accountant."""
    if hasattr(entry, "segment"):
        return entry.segment()
    return (float(entry.noise_multiplier), float(entry.sample_rate), int(entry.steps))


def extension_costs(run_dir: Path, rounds: int, done: int, *, target_epsilon: float,
                    delta: float, accountant: str) -> list[tuple[bool, str]]:
    """What extending the run in ``run_dir`` to ``rounds`` rounds after round ``done`` costs
    each client, from its signed ledger and the project's accountant: ``(is_warning, text)``
    pairs. With a target epsilon (> 0), the clients calibrate the remaining rounds to what is
    left of it; a warning says when that forces a noise multiplier above
    :data:`USELESS_NOISE_RATIO` times the run's earlier one (or when nothing is left). With a
    fixed noise multiplier (``target_epsilon <= 0``), the note says how far each client's
    epsilon will grow.

    Args:
        run_dir: the run directory, whose ``RUN/ledger`` holds the clients' ledgers.
        rounds: the run's new number of rounds.
        done: the last round completed.
        target_epsilon: the clients' target epsilon (<= 0: a fixed noise multiplier).
        delta: the run's delta.
        accountant: the privacy accountant's name.

    Returns:
        One ``(is_warning, text)`` pair per client.
    """
    from fedssl.privacy.accounting.budget import AccountingError, calibrate_noise, epsilon_of

    extra = rounds - done
    notes: list[tuple[bool, str]] = []
    for cid, entries in sorted(run_ledgers(run_dir).items()):
        spent = [_segment(e) for e in entries]
        eff, rate, steps = spent[-1]
        scale = entries[-1].noise_multiplier / eff if eff > 0 else 1.0  # recorded / effective
        earlier = min(s for s, _, _ in spent)
        eps_now = epsilon_of(spent, delta, accountant)
        if target_epsilon <= 0:
            eps_after = epsilon_of([*spent, (eff, rate, steps * extra)], delta, accountant)
            notes.append((False, f"{cid}: {extra} more round(s) at the fixed noise multiplier "
                                 f"{entries[-1].noise_multiplier:.3g} take its epsilon from "
                                 f"{eps_now:.3f} to about {eps_after:.3f}"))
            continue
        left = target_epsilon - eps_now
        try:
            need = calibrate_noise(target_epsilon, delta, rate, steps * extra, accountant,
                                   spent=spent)
        except AccountingError:
            notes.append((True, f"{cid}: its target epsilon {target_epsilon:g} is spent "
                                f"({eps_now:.3f} after {len(entries)} round(s)): the "
                                f"{extra} extra round(s) cannot train it"))
            continue
        text = (f"{cid}: {extra} more round(s) must fit in the {left:.4f} epsilon left of "
                f"its target {target_epsilon:g}: noise multiplier {need * scale:.3g} per "
                f"round, {need / earlier:.1f}x the run's earlier {earlier * scale:.3g}")
        if need > USELESS_NOISE_RATIO * earlier:
            notes.append((True, text + f" (over {USELESS_NOISE_RATIO:g}x: these rounds add "
                                       "noise, not learning)"))
        else:
            notes.append((False, text))
    return notes
