"""Client-level differential privacy for federated averaging (DP-FedAvg, central noise).

McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models",
ICLR 2018. Each round:

1. every client is included independently with probability ``q`` (Poisson sampling);
2. each included client's model *update* ``Delta_k = w_k - w`` is clipped to L2 norm ``S``
   (over all parameters together);
3. the server adds ``N(0, z^2 S^2 I)`` to the sum of clipped updates and divides by the
   *expected* number of clients ``q N`` (the fixed-denominator estimator), so that one client's
   presence changes the pre-noise sum by at most ``S``.

Guarantee: (epsilon, delta)-DP with respect to adding or removing *one client's entire data*,
with epsilon from composing the Poisson-subsampled Gaussian mechanism (rate ``q``, noise
multiplier ``z``) over the rounds (:func:`fedssl.privacy.accounting.budget.epsilon_of`). Assumption:
the server applies the mechanism honestly (central DP: the server sees individual updates). For
the distributed variant, where noise is added by the clients under secure aggregation, see the
secure-aggregation quantiser's noise hook.
"""

from __future__ import annotations

import numpy as np

from fedssl.privacy.accounting.mechanisms import GAUSSIAN_ACCOUNTANTS, Mechanism

Update = dict[str, np.ndarray]


def poisson_sample(ids: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Each id independently with probability ``rate`` (may return an empty list).

    Args:
        ids: the client ids to sample from.
        rate: the sampling rate ``q``, in (0, 1].
        rng: the sampling randomness (secret on a server).

    Returns:
        The sampled ids, in the order of ``ids``.

    Raises:
        ValueError: ``rate`` is not in (0, 1].
    """
    if not 0 < rate <= 1:
        raise ValueError(f"client sampling rate must be in (0, 1], got {rate}")
    keep = rng.random(len(ids)) < rate
    return [i for i, k in zip(ids, keep) if k]


def update_norm(update: Update) -> float:
    """L2 norm of an update over all its arrays together.

    Args:
        update: array name -> array.

    Returns:
        The norm, computed in float64.
    """
    return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64)))
                             for v in update.values())))


class ClientLevelGaussian(Mechanism):
    """Clip client updates to ``clip`` and release their noisy mean (DP-FedAvg).

    Guarantee: (epsilon, delta)-DP for **one client's entire data** (add/remove), epsilon
    from composing the Poisson-subsampled Gaussian mechanism (client sampling rate ``q``,
    noise multiplier ``z``) over the rounds with an accountant of
    :data:`~fedssl.privacy.accounting.mechanisms.GAUSSIAN_ACCOUNTANTS` (``prv`` by default).

    Sensitivity: every included update is clipped to L2 norm ``S``
    (:meth:`constrain_sensitivity`) and the sum is divided by the fixed expected count
    ``q N``, so one client moves the pre-noise sum by at most ``S`` (sensitivity 1 in units of
    ``S``); the noise is ``N(0, z^2 S^2 I)`` (:meth:`add_noise`).

    Assumptions: the server applies the mechanism honestly (central DP: it sees the
    individual updates), samples clients by Poisson sampling at rate ``q`` with secret
    randomness, and releases only the noisy mean.
    """

    privacy_unit = "one client's entire data"
    neighbouring = "add/remove"
    accountants = GAUSSIAN_ACCOUNTANTS
    assumptions = ("honest server (central DP: it sees individual updates)",
                   "Poisson client sampling at rate q with secret randomness",
                   "only the noisy mean is released")
    #: L2 sensitivity of the clipped sum in units of the clip norm ``S``
    sensitivity = 1.0

    def __init__(self, clip: float, noise_multiplier: float, expected_clients: float,
                 rng: np.random.Generator) -> None:
        if clip <= 0 or noise_multiplier < 0 or expected_clients <= 0:
            raise ValueError("client-level DP needs clip > 0, noise multiplier >= 0 and a "
                             "positive expected number of clients")
        self.clip_norm = clip
        self.noise_multiplier = noise_multiplier
        self.expected_clients = expected_clients
        self.rng = rng

    def constrain_sensitivity(self, contribution: Update) -> Update:
        """A client's update scaled down to L2 norm at most ``S`` (unchanged if within)."""
        scale = min(1.0, self.clip_norm / max(update_norm(contribution), 1e-12))
        return {k: (v * scale).astype(np.float64) for k, v in contribution.items()}

    def add_noise(self, aggregate: Update) -> Update:
        """The sum of clipped updates plus ``N(0, z^2 S^2 I)`` per coordinate (float64)."""
        std = self.noise_multiplier * self.clip_norm
        return {k: np.asarray(v, np.float64) + self.rng.normal(0.0, std, size=np.shape(v))
                for k, v in aggregate.items()}

    def noisy_mean(self, clipped: list[Update], template: Update) -> Update:
        """``add_noise(sum of clipped updates) / (q N)``, shaped like ``template`` (the
        noise is drawn even when no client replied: the round is accounted either way).

        Args:
            clipped: the clipped updates (:meth:`constrain_sensitivity`) of the clients that
                replied.
            template: an update whose names, shapes and dtypes the result takes.

        Returns:
            The noisy mean update.
        """
        total: Update = {k: np.zeros(ref.shape, np.float64) for k, ref in template.items()}
        for upd in clipped:
            for key in total:
                total[key] += upd[key]
        noisy = self.add_noise(total)
        return {k: (noisy[k] / self.expected_clients).astype(ref.dtype)
                for k, ref in template.items()}
