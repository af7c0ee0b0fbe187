"""Empirical privacy audit of DP-SGD in one training run, with white-box gradient canaries.

What and why: the accountants (:mod:`fedssl.privacy.audit.auditor`) prove an *upper* bound on
epsilon
for the mechanism the ledger *says* ran. They cannot see an implementation bug (noise scaled
wrongly, clipping skipped, a sampling rate that is not what was recorded). An empirical audit
runs the real mechanism and measures a statistically valid *lower* bound on its epsilon; if
the lower bound exceeds the claimed upper bound, the claim is false (with the stated
confidence), whatever the accountant says.

Procedure (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023, Algorithm 1 and Theorem 3 / Algorithm 2 of the paper):

1. ``m`` canaries; each is included in the training set independently with probability 1/2
   (``S_i ~ Bernoulli(1/2)``).
2. Train once on the included canaries with the mechanism under audit. Here that is Opacus's
   :class:`~opacus.optimizers.DPOptimizer` (the optimizer
   :mod:`fedssl.privacy.dp_sgd.opacus_engine` trains
   with) and Opacus's Poisson sampler, replaying the recorded segments ``(noise multiplier,
   sample rate, steps, clip norm)``. Canaries are *white-box gradient canaries*: canary ``i``'s
   per-record gradient is a Dirac vector ``10 C e_i`` (one coordinate of the model), so the
   optimizer's clipping brings it to norm ``C`` exactly and no two canaries interfere.
3. Score each canary by the inner product of the final model change with its direction (for
   SGD that is the sum over steps of the noisy clipped updates along ``e_i``: the strongest
   observation of the final model for this canary).
4. Guess "in" for the ``k`` highest scores and "out" for the ``k`` lowest (abstain on the rest),
   so ``r = 2k`` guesses, of which ``v`` are correct; or, one-sided, only "in" for the ``k``
   highest (``r = k``). The theorem holds for any guesser that sees only the output, abstaining
   included; the one-sided guess is what sees a mechanism that samples each canary rarely: a
   canary that was never sampled has no influence, so the lowest scores are a coin flip
   between "out" and "in but never sampled", while the highest are certain.
5. If the mechanism is (epsilon, delta)-DP, then (Theorem 3)
   ``P[v correct] <= beta + 2 m delta alpha`` with ``q = e^eps / (1 + e^eps)``,
   ``beta = P[Binomial(r, q) >= v]`` and
   ``alpha = max_{1<=i<=v} P[v > Binomial(r, q) >= v - i] / i``.
   The empirical lower bound is the largest epsilon that this p-value rejects at the chosen
   confidence (bisection, as in the paper's Algorithm 2).

Several values of ``k`` (symmetric and one-sided) are tried by default; the confidence is
split between them (Bonferroni), so the reported bound stays valid at the stated confidence.

What it can and cannot show. The audit gives a *lower* bound: it can refute a claim (the
lower bound exceeds the smallest upper bound the accountants give for the recorded mechanism:
``violation``), never confirm one. Whether "no violation" means anything depends on its power,
computed from the mechanism and ``m`` alone, not from the scores (:func:`detection_power`):

- ``max_detectable_epsilon``: the bound if *every* guess were right, the most these ``m``
  canaries can certify at this confidence (about ``ln(m)``, less once the ``2 m delta`` term
  dominates);
- ``noise_free_epsilon``: the bound a *noise-free* version of the recorded mechanism (same
  sampling, same steps, no noise) is expected to reach: every canary sampled at least once is
  then certain, the others indistinguishable from excluded ones.

If either is at most the claim, even a mechanism that adds no noise at all would (be expected
to) stay below the claim: the verdict is ``inconclusive``, never "ok". Otherwise a lower
bound at or below the claim is ``no-violation-detected``, with the power stated.

Example::

    from fedssl.privacy.audit.empirical import MechanismSegment, run_canary_audit

    res = run_canary_audit([MechanismSegment(4.0, 0.5, 20, 1.0)], delta=1e-5, canaries=10_000)
    assert res.epsilon_lower_bound <= res.claimed_epsilon
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from scipy import stats
from torch import nn

from fedssl.privacy.accounting.budget import Segment

#: a canary's raw gradient norm, in units of the clip norm: the optimizer must clip it to C
CANARY_NORM = 10.0
#: fractions 2k/m of canaries guessed that are tried by default (Bonferroni-corrected), each
#: symmetric (top k "in", bottom k "out") and one-sided (top k "in")
DEFAULT_GUESS_FRACTIONS = (0.01, 0.05, 0.2, 0.9)
#: the verdicts of an empirical audit (a one-run audit gives a lower bound only)
VERDICTS = ("violation", "no-violation-detected", "inconclusive")
#: largest expected per-step grad-sample block (floats) per chunk of canary coordinates
_BLOCK = 1 << 17


@dataclass(frozen=True)
class MechanismSegment:
    """Steps of DP-SGD with one setting (one ledger entry, or one CLI-given mechanism), as the
    canary audit replays them: the accountant's :data:`fedssl.privacy.accounting.budget.Segment`
    (``accounted``) plus the clip norm the replayed steps clip to. A separate type because it
    describes a mechanism to run, not a history to compose."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float = 1.0

    @property
    def accounted(self) -> Segment:
        """The ``(noise_multiplier, sample_rate, steps)`` the accountants compose."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass
class CanaryAuditResult:
    """Outcome of one canary audit.

    ``claimed_epsilon`` is the recorded claim (the ledger's epsilon) when there is one, else
    the tightest recomputed upper bound; ``claimed_by`` holds every figure (recorded, PRV,
    PLD). The lower bound is tested against ``tightest_bound``, the smallest of them: each is
    an upper bound *if* the mechanism is what was recorded, so a lower bound above any of them
    shows it is not (``violation``)."""

    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower_bound: float
    claimed_epsilon: float
    claimed_by: dict[str, float]
    max_detectable_epsilon: float
    noise_scale: float
    seconds: float
    segments: list[MechanismSegment]
    per_k: list[dict[str, float]] = field(default_factory=list)
    client: str | None = None
    tightest_bound: float = math.nan
    noise_free_epsilon: float = math.nan
    claim_source: str = "recomputed"

    @property
    def violation(self) -> bool:
        return self.epsilon_lower_bound > self.tightest_bound

    @property
    def power(self) -> float:
        """The most this audit can (be expected to) certify: the smaller of the all-correct
        bound and the noise-free mechanism's expected bound."""
        return min(self.max_detectable_epsilon, self.noise_free_epsilon)

    @property
    def verdict(self) -> str:
        """``violation``; else ``inconclusive`` if the audit could not have certified a
        bound above the claim even for a noise-free mechanism; else
        ``no-violation-detected``. Never "ok": a lower bound can't confirm a claim."""
        if self.violation:
            return "violation"
        return "inconclusive" if self.power <= self.tightest_bound else "no-violation-detected"

    @property
    def bound_text(self) -> str:
        """The upper bound the lower bound is compared with, named as what it is: the
        tightest of the recorded claim and the recomputations, with the recorded claim beside
        it when they differ (the claim itself is never replaced by a recomputed figure)."""
        text = f"tightest upper bound {self.tightest_bound:.3f}"
        if not math.isclose(self.claimed_epsilon, self.tightest_bound, rel_tol=1e-9):
            text += f" (claimed {self.claimed_epsilon:.3f}, {self.claim_source})"
        return text

    @property
    def reason(self) -> str:
        """One line saying why the verdict is what it is."""
        if self.violation:
            return (f"lower bound {self.epsilon_lower_bound:.3f} > {self.bound_text} of the "
                    "recorded mechanism")
        if self.max_detectable_epsilon <= self.tightest_bound:
            return (f"cannot certify above epsilon {self.max_detectable_epsilon:.3f} with "
                    f"{self.canaries} canaries even if every guess were right, <= "
                    f"{self.bound_text}")
        if self.noise_free_epsilon <= self.tightest_bound:
            return (f"even with no noise at all this mechanism's sampling is expected to "
                    f"certify only epsilon {self.noise_free_epsilon:.3f} <= {self.bound_text}")
        return (f"power: could certify up to epsilon {self.power:.3f} ({self.bound_text}); "
                f"found {self.epsilon_lower_bound:.3f}")

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (``audit.json``'s ``empirical`` items).

        Returns:
            Every field, the segments as dicts, and the derived verdict, reason and power.
        """
        out = asdict(self)
        out["segments"] = [asdict(s) for s in self.segments]
        out.update(violation=self.violation, verdict=self.verdict, reason=self.reason,
                   power=self.power)
        return out


# --------------------------------------------------------------------------------------------
# Steinke, Nasr & Jagielski 2023: p-value and epsilon lower bound
# --------------------------------------------------------------------------------------------
def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct out of ``r`` guesses on ``m`` canaries if the
    mechanism were (epsilon, delta)-DP (Theorem 3 of Steinke et al. 2023).

    Args:
        m: canaries.
        r: guesses made.
        v: correct guesses.
        epsilon: the epsilon tested.
        delta: the delta tested.

    Returns:
        The p-value, at most 1.

    Raises:
        ValueError: the counts or the (epsilon, delta) are impossible.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError("need epsilon >= 0 and 0 <= delta <= 1")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0:
        i = np.arange(1, v + 1)
        # P[v > Binomial(r, q) >= v - i] for i = 1..v, then the max over i of that / i
        window = np.cumsum(stats.binom.pmf(v - i, r, q))
        alpha = float(np.max(window / i))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95
                        ) -> float:
    """Largest epsilon rejected at ``confidence``: the mechanism is *not* (eps, delta)-DP for
    any smaller eps, except with probability ``1 - confidence`` (Algorithm 2 of the paper).

    Args:
        m: canaries.
        r: guesses made.
        v: correct guesses.
        delta: the claim's delta.
        confidence: probability that the bound holds, in (0, 1).

    Returns:
        The lower bound (0 when nothing is rejected, ``inf`` if no epsilon is).

    Raises:
        ValueError: ``confidence`` is not in (0, 1).
    """
    p = 1.0 - confidence
    if not 0 < p < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p_value(lo) < p <= p_value(hi)
    while p_value(m, r, v, hi, delta) < p:
        hi += 1.0
        if hi > 1e3:  # cannot happen for delta > 0 or v < r; keeps a bad input finite
            return math.inf
    for _ in range(30):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def guess_counts(included: np.ndarray, scores: np.ndarray, k: int,
                 rng: np.random.Generator, one_sided: bool = False) -> tuple[int, int]:
    """Guess "in" for the top ``k`` scores and "out" for the bottom ``k`` (only "in" with
    ``one_sided``; ties broken at random); returns ``(r, v)``: the number of guesses and of
    correct ones.

    Args:
        included: whether each canary was included.
        scores: each canary's score.
        k: guesses on each side.
        rng: breaks ties.
        one_sided: guess "in" only.

    Returns:
        ``(r, v)``: guesses made and correct ones.
    """
    m = len(scores)
    k = max(1, min(k, m if one_sided else m // 2))
    order = np.lexsort((rng.random(m), scores))  # ascending score, random among ties
    bottom, top = order[:k], order[m - k:]
    if one_sided:
        return k, int(included[top].sum())
    correct = int(included[top].sum()) + int((~included[bottom]).sum())
    return 2 * k, correct


def guess_sets(canaries: int, guesses: int | None) -> list[tuple[int, bool]]:
    """The ``(k, one_sided)`` guess sets tried: ``guesses`` given, that many symmetric guesses;
    else each of :data:`DEFAULT_GUESS_FRACTIONS`, symmetric and one-sided.

    Args:
        canaries: how many canaries.
        guesses: the number of guesses asked for, or None for the defaults.

    Returns:
        The ``(k, one_sided)`` pairs.
    """
    if guesses is not None:
        return [(max(1, guesses // 2), False)]
    ks = sorted({max(1, int(f * canaries / 2)) for f in DEFAULT_GUESS_FRACTIONS})
    return [(k, side) for k in ks for side in (False, True)]


def detection_power(segments: Sequence[MechanismSegment], canaries: int, delta: float,
                    sets: Sequence[tuple[int, bool]], level: float) -> tuple[float, float]:
    """``(max_detectable, noise_free)``: the largest lower bound the guess ``sets`` could
    certify at ``level`` if every guess were right, and the one a noise-free version of the
    mechanism is expected to reach (see the module docstring). Computed from the mechanism
    only (expected counts: ``m/2`` canaries included, each sampled at least once with
    probability ``1 - prod (1 - q)^T``), never from the observed scores.

    Args:
        segments: the mechanism as recorded.
        canaries: how many canaries.
        delta: the claim's delta.
        sets: the ``(k, one_sided)`` guess sets (:func:`guess_sets`).
        level: the confidence of each set's bound (after the Bonferroni split).

    Returns:
        ``(max_detectable, noise_free)``.
    """
    m = canaries
    n_in = m / 2
    never = math.prod((1.0 - s.sample_rate) ** s.steps for s in segments if s.steps > 0)
    n_seen = n_in * (1.0 - never)  # included and sampled: certain without noise
    zeros = m - n_seen  # excluded, or included and never sampled: indistinguishable
    frac_in_zero = (n_in - n_seen) / zeros if zeros > 0 else 0.0
    best_all = best_free = 0.0
    for k, one_sided in sets:
        r = k if one_sided else 2 * k
        best_all = max(best_all, epsilon_lower_bound(m, r, r, delta, level))
        top = min(k, n_seen) + max(0.0, k - n_seen) * frac_in_zero
        bottom = 0.0 if one_sided else min(k, zeros) * (1.0 - frac_in_zero)
        v = int(min(r, math.floor(top + bottom)))
        best_free = max(best_free, epsilon_lower_bound(m, r, v, delta, level))
    return best_all, best_free


# --------------------------------------------------------------------------------------------
# the canary experiment on Opacus's DPOptimizer
# --------------------------------------------------------------------------------------------
def _chunk_size(m: int, sample_rate: float) -> int:
    """Canary coordinates per chunk so that a step's grad-sample block stays small: the
    mechanism acts on each coordinate independently (Dirac canaries, i.i.d. noise), so
    running chunks one after another is the same experiment, only cache-friendlier."""
    rows_per_coord = max(sample_rate, 1e-6) / 2
    return int(max(256, min(m, math.sqrt(_BLOCK / rows_per_coord))))


def canary_scores(
    segments: Sequence[MechanismSegment],
    included: np.ndarray,
    noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Train on the included canaries with Opacus's DPOptimizer; return each canary's score.

    ``noise_scale`` multiplies the noise multiplier handed to the optimizer (1 = the recorded
    mechanism; 0.1 or 0 simulate a broken implementation that claims more noise than it adds).

    Args:
        segments: the mechanism as recorded.
        included: whether each canary is in the training set.
        noise_scale: multiplies the recorded noise multiplier.
        generator: seeds the sampling and the noise.
        progress: show a tqdm progress bar.

    Returns:
        One score per canary (the trained parameter's coordinate, negated).
    """
    from tqdm.auto import tqdm

    m = len(included)
    chunk = _chunk_size(m, max(s.sample_rate for s in segments))
    starts = range(0, m, chunk)
    scores = np.zeros(m)
    total = len(starts) * sum(s.steps for s in segments)
    with tqdm(total=total, disable=not progress, desc="canary audit", unit="step",
              leave=False) as bar:
        for start in starts:
            stop = min(m, start + chunk)
            members = torch.from_numpy(np.flatnonzero(included[start:stop]))
            param = nn.Parameter(torch.zeros(stop - start))
            for seg in segments:
                if seg.steps <= 0:
                    continue
                opt = DPOptimizer(
                    torch.optim.SGD([param], lr=1.0),
                    noise_multiplier=seg.noise_multiplier * noise_scale,
                    max_grad_norm=seg.max_grad_norm,
                    expected_batch_size=max(1, round(seg.sample_rate * len(members))),
                    loss_reduction="sum", generator=generator,
                )
                if len(members):
                    batches: Any = UniformWithReplacementSampler(
                        num_samples=len(members), sample_rate=seg.sample_rate,
                        generator=generator, steps=seg.steps)
                else:
                    batches = ([] for _ in range(seg.steps))
                for batch in batches:
                    rows = members[torch.as_tensor(batch, dtype=torch.long)]
                    grad_sample = torch.zeros(len(rows), stop - start)
                    grad_sample[torch.arange(len(rows)), rows] = CANARY_NORM * seg.max_grad_norm
                    param.grad_sample = grad_sample
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    bar.update()
            # SGD with lr 1 from 0: -param = sum over steps of the noisy clipped gradient sums
            scores[start:stop] = -param.detach().numpy()
    return scores


def claimed_epsilons(segments: Sequence[MechanismSegment], delta: float) -> dict[str, float]:
    """Upper bounds of the claimed mechanism: Opacus PRV and Google PLD (see privacy.audit).

    Args:
        segments: the mechanism as recorded.
        delta: the claim's delta.

    Returns:
        ``{"prv": ..., "pld": ...}``, the epsilon after the last segment.
    """
    from fedssl.privacy.audit.auditor import recompute

    history = tuple(s.accounted for s in segments)
    eps = recompute(history, (delta,) * len(history), accountants=("prv", "pld"))
    return {name: values[-1] for name, values in eps.items()}


def run_canary_audit(
    segments: Sequence[MechanismSegment],
    delta: float,
    canaries: int = 10_000,
    guesses: int | None = None,
    confidence: float = 0.95,
    noise_scale: float = 1.0,
    recorded_epsilon: float | None = None,
    seed: int = 0,
    progress: bool = True,
    client: str | None = None,
) -> CanaryAuditResult:
    """Run the one-run canary audit of the mechanism ``segments`` describe.

    Args:
        segments: the mechanism as recorded (each ledger entry is one segment).
        delta: the delta of the claim.
        canaries: ``m``, the number of randomised canaries.
        guesses: ``r`` (even); default tries :data:`DEFAULT_GUESS_FRACTIONS` of ``m`` with the
            confidence split between them.
        confidence: e.g. 0.95: the lower bound holds except with probability 5 %.
        noise_scale: multiplies the noise handed to the optimizer (1 = correct mechanism).
        recorded_epsilon: the ledger's claim, if any: shown as the claim; the lower bound is
            tested against the smallest of it and the recomputed PRV/PLD epsilons of
            ``segments`` (each an upper bound if the mechanism is as recorded).
        seed: seeds inclusion, Poisson sampling, noise and tie-breaking.
        progress: show a tqdm progress bar.

    Returns:
        The lower bound, the counts behind it, the claim and the verdict.

    Raises:
        ValueError: the mechanism has no steps or impossible parameters, or fewer than 4
            canaries.
    """
    segments = [s for s in segments if s.steps > 0]
    if not segments:
        raise ValueError("nothing to audit: the mechanism has no steps")
    for s in segments:
        if not (0 < s.sample_rate <= 1) or s.max_grad_norm <= 0 or s.noise_multiplier < 0:
            raise ValueError(f"invalid mechanism {s}")
    if canaries < 4:
        raise ValueError("need at least 4 canaries")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    included = rng.random(canaries) < 0.5
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny blocks: threading only adds overhead
    try:
        scores = canary_scores(segments, included, noise_scale, generator, progress)
    finally:
        torch.set_num_threads(threads)

    sets = guess_sets(canaries, guesses)
    level = 1.0 - (1.0 - confidence) / len(sets)  # Bonferroni over the guess sets tried
    per_k = []
    best: tuple[float, int, int] = (-1.0, 0, 0)
    for k, one_sided in sets:
        r, v = guess_counts(included, scores, k, rng, one_sided)
        lb = epsilon_lower_bound(canaries, r, v, delta, level)
        per_k.append({"guesses": r, "correct": v, "one_sided": one_sided,
                      "epsilon_lower_bound": lb})
        if lb > best[0]:
            best = (lb, r, v)
    max_detect, noise_free = detection_power(segments, canaries, delta, sets, level)

    claimed = claimed_epsilons(segments, delta)
    candidates = [e for e in claimed.values() if not math.isnan(e)]
    if recorded_epsilon is not None:
        candidates.append(recorded_epsilon)
    tightest = min(candidates) if candidates else math.inf
    return CanaryAuditResult(
        canaries=canaries, included=int(included.sum()), guesses=best[1], correct=best[2],
        confidence=confidence, delta=delta, epsilon_lower_bound=best[0],
        # the claim shown is the recorded one; the recomputations stand beside it
        claimed_epsilon=recorded_epsilon if recorded_epsilon is not None else tightest,
        claimed_by={**({"recorded": recorded_epsilon} if recorded_epsilon is not None
                       else {}), **claimed},
        max_detectable_epsilon=max_detect, noise_scale=noise_scale,
        seconds=time.perf_counter() - t0, segments=list(segments), per_k=per_k, client=client,
        tightest_bound=tightest, noise_free_epsilon=noise_free,
        claim_source="ledger" if recorded_epsilon is not None else "recomputed (min PRV, PLD)",
    )
