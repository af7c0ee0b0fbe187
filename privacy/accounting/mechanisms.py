"""The privacy mechanisms' common contract: each mechanism is a class that states its guarantee
(the pattern of pfl-research's ``pfl/privacy/gaussian_mechanism.py``).

A :class:`Mechanism` releases a noisy function of private data, and does so itself: its
:meth:`~Mechanism.constrain_sensitivity` bounds one unit's contribution (the clip) and its
:meth:`~Mechanism.add_noise` noises the sum of bounded contributions (pfl-research's
``constrain_sensitivity`` / ``add_noise``); the code that runs a mechanism calls these two,
so what the class states is what runs. Every implementation's docstring states, and its
class attributes record:

* **what is protected** (:attr:`Mechanism.privacy_unit`) and under which neighbouring relation
  (:attr:`Mechanism.neighbouring`: *add/remove* one unit, or *zero-out*: the unit's
  contribution replaced by zero);
* **sensitivity** (:attr:`Mechanism.sensitivity`): the L2 bound on how much one unit changes
  the pre-noise release, in units of the noise's reference scale (the clip norm), and what
  the bound rests on;
* **noise**: its distribution and :attr:`Mechanism.noise_multiplier` (noise standard deviation
  over that reference scale); the accountant composes releases at
  :attr:`Mechanism.effective_noise_multiplier` ``= noise_multiplier / sensitivity``;
* **which accountants apply** (:attr:`Mechanism.accountants`, names in the registry of
  :mod:`fedssl.privacy.accounting`; the first is the default) and what one release is to them;
* **assumptions** (:attr:`Mechanism.assumptions`) under which the guarantee holds.

Implementations:

=============================================== ============================== ================
mechanism                                       protects                       accountant
=============================================== ============================== ================
DP-SGD's subsampled Gaussian                    one record of a client's data  ``prv``, ...
(:class:`fedssl.privacy.dp_sgd.engine.PoissonEngine`
and its engines ``DPSGD``, ``FastDPSGD``,
``GroupDPSGD``)
central client-level Gaussian, DP-FedAvg        one client's whole data        ``prv``, ...
(:class:`fedssl.privacy.client_level.central.ClientLevelGaussian`)
distributed Skellam under secure aggregation    one client's whole data        ``skellam``
(:class:`fedssl.privacy.client_level.distributed.SkellamPlan`, one round)
=============================================== ============================== ================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from fedssl.privacy.accounting import gaussian_accountants

#: the accountants of the Poisson-subsampled Gaussian mechanism (registry names, derived from
#: the registry; the first is the default, the ones after it the audit's recomputations)
GAUSSIAN_ACCOUNTANTS = gaussian_accountants()


class Mechanism(ABC):
    """A privacy mechanism whose class states its guarantee and applies it (see the module
    docstring).

    Subclasses set the class attributes below, provide ``noise_multiplier`` and
    ``sensitivity`` (attributes or properties) and implement the two operations the
    guarantee rests on, :meth:`constrain_sensitivity` and :meth:`add_noise`.
    """

    #: what one neighbouring change adds or removes, e.g. "one record of a client's data"
    privacy_unit: ClassVar[str] = ""
    #: "add/remove" or "zero-out"
    neighbouring: ClassVar[str] = "add/remove"
    #: registry names of the accountants that compose this mechanism's releases
    accountants: ClassVar[tuple[str, ...]] = ()
    #: conditions the guarantee depends on
    assumptions: ClassVar[tuple[str, ...]] = ()

    noise_multiplier: float
    sensitivity: float

    @abstractmethod
    def constrain_sensitivity(self, contribution: Any) -> Any:
        """One privacy unit's contribution bounded so that :attr:`sensitivity` holds.

        Args:
            contribution: what one unit adds before noise (a client's update; for DP-SGD,
                the per-record gradient norms, whose clip factors are returned).

        Returns:
            The bounded contribution (or, for DP-SGD, the per-record clip factors).
        """

    @abstractmethod
    def add_noise(self, aggregate: Any) -> Any:
        """The mechanism's noise added to the sum of bounded contributions.

        Args:
            aggregate: the sum of :meth:`constrain_sensitivity` outputs (or, for the
                distributed mechanism, one client's encoded share of it).

        Returns:
            The noisy release.
        """

    @property
    def effective_noise_multiplier(self) -> float:
        """What the accountant composes: noise standard deviation over the L2 sensitivity."""
        return self.noise_multiplier / self.sensitivity

    def guarantee(self) -> dict[str, Any]:
        """The stated guarantee as data (for reports and logs).

        Returns:
            Its name, privacy unit, neighbouring relation, sensitivity, noise multipliers,
            accountants and assumptions.
        """
        return {"mechanism": type(self).__name__, "privacy_unit": self.privacy_unit,
                "neighbouring": self.neighbouring, "sensitivity": self.sensitivity,
                "noise_multiplier": self.noise_multiplier,
                "effective_noise_multiplier": self.effective_noise_multiplier,
                "accountants": list(self.accountants), "assumptions": list(self.assumptions)}
