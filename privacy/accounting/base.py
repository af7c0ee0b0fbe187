"""The accountant interface and its registry (the pattern of Opacus's ``IAccountant`` and
``opacus.accountants.registry``).

An :class:`Accountant` composes a *history* of mechanism applications into an
``(epsilon, delta)`` guarantee: :meth:`Accountant.epsilon` maps a history and ``delta`` to the
cumulative ``epsilon`` (``0.0`` for an empty history, ``inf`` once a noise-free release is in
it), :meth:`Accountant.epsilons` gives the cumulative epsilon after every item of the history.
Like Opacus's accountants, an instance also keeps its own history (:meth:`Accountant.compose`,
or ``step`` with the mechanism's parameters) and answers :meth:`Accountant.get_epsilon`.

What one history item is depends on the mechanism the accountant analyses
(:attr:`Accountant.event`): a :data:`Segment` ``(noise_multiplier, sample_rate, steps)`` of the
Poisson-subsampled Gaussian mechanism (DP-SGD, central DP-FedAvg), or a
:class:`~fedssl.privacy.accounting.skellam.SkellamRound` of the distributed Skellam mechanism.

Accountants are registered by name with :func:`register_accountant` and built with
:func:`create_accountant`; :data:`REGISTRY` lists them (``fedssl.privacy.accounting`` imports
every built-in one: ``prv``, ``rdp``, ``gdp`` on Opacus, ``pld`` and ``dpa-rdp`` on Google's
dp-accounting, ``skellam``).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar

#: steps of DP-SGD at one setting, as the accountants compose them:
#: ``(noise_multiplier, sample_rate, steps)``; a history is a sequence of them (the one
#: definition: :mod:`fedssl.privacy.accounting.budget`, the audit and the client's guard import it)
Segment = tuple[float, float, int]

E = TypeVar("E")


class AccountingError(ValueError):
    """Raised for an unknown accountant or an impossible privacy target."""


class Accountant(ABC, Generic[E]):
    """Composes a history of releases of one mechanism into ``(epsilon, delta)``-DP.

    Contract of a subclass:

    * :attr:`name`: its registry name; :attr:`upper_bound`: whether the epsilon it returns is
      a guaranteed upper bound of the mechanism's true epsilon (an approximation, such as the
      CLT of Gaussian DP, is not, and must never be used for a budget); :attr:`budget`:
      whether clients may plan and record their budgets with it (the run setting
      ``accountant``; :func:`budget_accountants` lists them, so a new one is added here
      alone); :attr:`audit`: whether ``fedssl audit`` recomputes every ledger claim with it
      (:func:`audit_accountants`: its columns, in registration order); :attr:`label`: who
      computes it and the paper, for reports;
    * :attr:`event`: what one history item is (e.g. :data:`Segment`);
    * :meth:`epsilon`: the cumulative epsilon of a whole history at ``delta``; composition is
      order-independent, so the result depends on the multiset of releases only.

    Usage (Opacus style)::

        acc = create_accountant("prv")
        acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
        acc.get_epsilon(delta=1e-5)
        # or stateless
        create_accountant("pld").epsilon([(1.0, 0.01, 1000)], 1e-5)
    """

    name: ClassVar[str] = ""
    upper_bound: ClassVar[bool] = True
    #: clients may budget with it (needs ``upper_bound`` and a Gaussian history, :meth:`
    #: GaussianAccountant.calibrate`); the ledger records its name
    budget: ClassVar[bool] = False
    #: ``fedssl audit`` recomputes every ledger claim with it (needs ``upper_bound`` and a
    #: Gaussian history); the audit's tables and ``audit.json`` name it by :attr:`name`
    audit: ClassVar[bool] = False
    #: who computes it and the paper, for reports (e.g. ``"Opacus PRV (Gopi et al. 2021)"``)
    label: ClassVar[str] = ""
    event: ClassVar[Any] = object

    def __init__(self) -> None:
        self.history: list[E] = []

    def compose(self, *events: E) -> None:
        """Append releases to this accountant's own history.

        Args:
            *events: the releases, each one history item (:attr:`event`).
        """
        self.history.extend(events)

    def get_epsilon(self, delta: float) -> float:
        """Cumulative epsilon at ``delta`` of this accountant's own history.

        Args:
            delta: the guarantee's delta.

        Returns:
            The epsilon of :attr:`history` (``0.0`` when empty).
        """
        return self.epsilon(self.history, delta)

    @abstractmethod
    def epsilon(self, history: Iterable[E], delta: float) -> float:
        """Cumulative epsilon at ``delta`` of ``history`` (``0.0`` when empty).

        Args:
            history: the releases, each one history item (:attr:`event`).
            delta: the guarantee's delta.

        Returns:
            The cumulative epsilon; ``inf`` once a noise-free release is in ``history``.
        """

    def epsilons(self, history: Sequence[E], deltas: Sequence[float]) -> list[float]:
        """Cumulative epsilon after each item of ``history``, item ``i`` at ``deltas[i]``.

        Args:
            history: the releases, in order.
            deltas: the delta of each item's guarantee; items past its end are left out.

        Returns:
            One cumulative epsilon per item of ``history`` (up to ``len(deltas)``).
        """
        history = list(history)
        return [self.epsilon(history[: i + 1], d)
                for i, d in enumerate(list(deltas)[: len(history)])]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, history={len(self.history)} items)"


class GaussianAccountant(Accountant[Segment]):
    """An accountant of the Poisson-subsampled Gaussian mechanism: history of
    :data:`Segment` ``(noise_multiplier, sample_rate, steps)``."""

    event = Segment

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` releases at this noise multiplier and sampling rate.

        Args:
            noise_multiplier: noise standard deviation over the clip norm.
            sample_rate: Poisson sampling rate, in (0, 1].
            steps: how many releases.
        """
        self.compose((float(noise_multiplier), float(sample_rate), int(steps)))

    def calibrate(self, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                  spent: Sequence[Segment] = ()) -> float:
        """Smallest noise multiplier (to 1 %) so that ``spent`` plus ``steps`` new steps at
        ``sample_rate`` stay within ``target_epsilon`` at ``delta``: a bisection on this
        accountant's own :meth:`epsilon`, which decreases as the noise grows.

        Args:
            target_epsilon: the epsilon the whole history may reach.
            delta: the guarantee's delta.
            sample_rate: Poisson sampling rate of the new steps, in (0, 1].
            steps: how many new steps.
            spent: the history already spent.

        Returns:
            The noise multiplier of the new steps.

        Raises:
            AccountingError: the target cannot be met (already spent, or too small).
        """
        spent = list(spent)
        if self.epsilon(spent, delta) >= target_epsilon:
            raise AccountingError(f"privacy budget epsilon={target_epsilon} is already spent")

        def eps(sigma: float) -> float:
            return self.epsilon([*spent, (sigma, sample_rate, steps)], delta)

        lo, hi = 0.0, 1.0
        while eps(hi) > target_epsilon:
            lo, hi = hi, hi * 2
            if hi > 1e4:
                raise AccountingError(f"cannot reach epsilon={target_epsilon} at delta={delta} "
                                      f"with sample rate {sample_rate:.4g} over {steps} steps: "
                                      "budget too small")
        while hi - lo > 0.01 * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
        return hi


#: registry name -> accountant class (filled by :func:`register_accountant`)
REGISTRY: dict[str, type[Accountant[Any]]] = {}

A = TypeVar("A", bound=type[Accountant[Any]])


def same_class(a: type, b: type) -> bool:
    """``a`` and ``b`` are one class imported twice under two module names (pytest's doctest
    collection imports ``privacy/x.py`` as ``privacy.x`` besides ``fedssl.privacy.x``).

    Args:
        a: a class.
        b: another class.

    Returns:
        True if both have the same qualified name and source file.
    """
    return a.__qualname__ == b.__qualname__ and (
        inspect.getsourcefile(a) == inspect.getsourcefile(b))


def register_accountant(cls: A) -> A:
    """Class decorator: register ``cls`` under ``cls.name`` (a later registration of another
    class replaces it; a second import of the same class keeps the first).

    Args:
        cls: an :class:`Accountant` subclass with a :attr:`Accountant.name`.

    Returns:
        ``cls``, unchanged.

    Raises:
        TypeError: ``cls`` has no registry name.
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no registry name")
    old = REGISTRY.get(cls.name)
    if old is None or not same_class(old, cls):
        REGISTRY[cls.name] = cls
    return cls


def create_accountant(name: str, **kwargs: Any) -> Accountant[Any]:
    """A fresh accountant registered as ``name`` (keyword arguments go to its constructor).

    Args:
        name: a registry name (:data:`REGISTRY`).
        **kwargs: the accountant's constructor arguments (e.g. ``interval`` of ``pld``).

    Returns:
        A new accountant with an empty history.

    Raises:
        AccountingError: no accountant is registered as ``name``.
    """
    cls = REGISTRY.get(name)
    if cls is None:
        raise AccountingError(f"unknown accountant {name!r}: choose one of "
                              f"{', '.join(REGISTRY)}")
    return cls(**kwargs)


def accountant_names(predicate: Callable[[type[Accountant[Any]]], bool] = lambda c: True
                     ) -> tuple[str, ...]:
    """Registered names whose class satisfies ``predicate``, in registration order.

    Args:
        predicate: tests an accountant class (default: every class).

    Returns:
        The registry names of the classes that pass.
    """
    return tuple(n for n, c in REGISTRY.items() if predicate(c))


def budget_accountants() -> tuple[str, ...]:
    """The accountants clients may budget with (:attr:`Accountant.budget`: guaranteed upper
    bounds of the Gaussian mechanism that can calibrate noise), in registration order.

    Returns:
        Registry names, e.g. ``("prv", "rdp")``.
    """
    return accountant_names(lambda c: c.budget and c.upper_bound
                            and issubclass(c, GaussianAccountant))


def gaussian_accountants() -> tuple[str, ...]:
    """Every accountant whose epsilon bounds the Poisson-subsampled Gaussian mechanism (the
    first is the default), in registration order.

    Returns:
        Registry names, e.g. ``("prv", "rdp", "pld", "dpa-rdp")``.
    """
    return accountant_names(lambda c: c.upper_bound and issubclass(c, GaussianAccountant))


def audit_accountants() -> tuple[str, ...]:
    """The accountants ``fedssl audit`` recomputes every claim with (:attr:`Accountant.audit`:
    guaranteed upper bounds of the Poisson-subsampled Gaussian mechanism), in registration
    order, which is the order of the audit's columns.

    Returns:
        Registry names, e.g. ``("prv", "pld", "dpa-rdp")``.
    """
    return accountant_names(lambda c: c.audit and c.upper_bound
                            and issubclass(c, GaussianAccountant))


@contextmanager
def quiet() -> Iterator[None]:
    """Silence dp-accounting's RDP convergence warnings (an excluded order only makes the RDP
    bound looser, never wrong) and Opacus PRV's numpy warnings at q = 1.

    Yields:
        Nothing; the warnings are restored on exit.
    """
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)
