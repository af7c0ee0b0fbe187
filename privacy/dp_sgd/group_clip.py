"""Group clipping for DP-SGD: one clipped gradient per randomly drawn group of records.

Mechanism: each step Poisson-samples records at rate ``q`` (the same loader as
:mod:`fedssl.privacy.dp_sgd.opacus_engine`), gives every sampled record an independent uniform
group id among
``G`` fixed groups from the engine's secret generator, computes each group's gradient
``g_k = grad sum_{i in group k} l_i``, clips it to ``C``, sums, adds ``N(0, sigma^2 C^2 I)`` and
divides by the expected batch size. It serves objectives whose loss couples the records of a
group (``Objective.clip_unit == "group"``, e.g.
:class:`fedssl.ssl_core.objectives.group_infonce.GroupInfoNCE`).

How the group gradient is computed: Opacus's hooks mode gives one row per record, the gradient
of the *total* loss flowing through that record's activations (summed over all its views by
batch position). When the loss is ``sum_k L_k`` and ``L_k`` depends only on group ``k``'s
records, record ``i``'s row is the part of ``grad L_{g(i)}`` through record ``i``, so the sum of
the rows of group ``k`` is exactly ``grad L_k``. :func:`group_rows` forms these sums
(``index_add`` over the records), and Opacus's own clipping then clips each group row as one
unit. Empty groups give zero rows (no contribution).

Guarantee: (epsilon, delta)-DP at the record level with L2 sensitivity ``2C`` under add/remove
of one record (proof in :mod:`fedssl.ssl_core.objectives.group_infonce`): with noise std
``sigma C``, the accountant runs at noise multiplier ``sigma / 2``. The ledger records
``noise_multiplier = sigma`` with ``extra = {"sensitivity": 2}``; every epsilon computed over
it applies :func:`fedssl.privacy.identity.ledger.effective_noise_multiplier`.

Engines: only this one (Opacus hooks) clips groups. The fast book-keeping engine
(:mod:`fedssl.privacy.dp_sgd.fast_clip`) computes per-record norms (ghost norms) that have no exact
group form without cross-record terms, so it refuses group objectives, and ``dp_engine="auto"``
routes them here (:func:`group_engine`).

References: Abadi et al., CCS 2016 (DP-SGD); DP-GCL (arXiv 2604.26467) and "Towards
Differentially Private Contrastive Learning" (OpenReview JYBIzjsUY0) for group clipping of
contrastive losses; Opacus (Yousefpour et al. 2021).
"""

from __future__ import annotations

import secrets
import warnings

import torch
from torch import nn

from fedssl.privacy.dp_sgd.engine import DPSoundnessError, PoissonEngine
from fedssl.ssl_core.objectives.base import Objective

#: the L2 sensitivity of a group-clipped sum, in units of the clip norm (add/remove one record)
GROUP_SENSITIVITY = 2


def group_engine(name: str) -> str:
    """The DP engine a group objective runs on for ``TrainConfig.dp_engine = name``.

    Args:
        name: the run's ``dp_engine``: ``auto``, ``fast`` or ``hooks``.

    Returns:
        ``"hooks"``.

    Raises:
        DPSoundnessError: for ``"fast"`` (it clips per record only) or an unknown name.

    Raises:
        ValueError: an unknown engine name.
    """
    if name in ("auto", "hooks"):
        return "hooks"
    if name == "fast":
        raise DPSoundnessError(
            "dp_engine='fast' clips per record, but this objective's records are coupled "
            "within groups and must be clipped per group (sensitivity 2C); group clipping runs "
            "on the Opacus hooks engine: use dp_engine='hooks' or 'auto'")
    raise ValueError(f"dp_engine must be 'auto', 'fast' or 'hooks', got {name!r}")


def _require_group_objective(objective: Objective) -> None:
    if getattr(objective, "clip_unit", "record") != "group":
        raise DPSoundnessError(f"method {objective.name!r} is clipped per record; group "
                               "clipping is only for objectives with clip_unit='group'")


def group_rows(grad_sample: torch.Tensor, groups: torch.Tensor, num_groups: int
               ) -> torch.Tensor:
    """Per-group sums ``(num_groups, ...)`` of per-record rows ``(N, ...)``.

    Args:
        grad_sample: ``(N, ...)`` per-record gradient rows.
        groups: ``(N,)`` group id of each record, in ``[0, num_groups)``.
        num_groups: the number of groups.

    Returns:
        ``(num_groups, ...)`` per-group sums.

    Raises:
        DPSoundnessError: the ids do not match the rows or lie outside the range.
    """
    if len(groups) != len(grad_sample):
        raise DPSoundnessError(f"{len(grad_sample)} per-record gradient rows but "
                               f"{len(groups)} group ids")
    if len(groups) and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise DPSoundnessError(f"group ids must lie in [0, {num_groups})")
    out = grad_sample.new_zeros(num_groups, *grad_sample.shape[1:])
    return out.index_add_(0, groups.to(grad_sample.device), grad_sample)


def _group_optimizer_class():
    from opacus.optimizers import DPOptimizer

    class GroupDPOptimizer(DPOptimizer):
        """Opacus's ``DPOptimizer`` whose clipping unit is a group of records: before the
        per-row clipping, the per-record rows are replaced by their per-group sums."""

        def __init__(self, *args, group_source, num_groups: int, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.group_source = group_source
            self.num_groups = num_groups

        def clip_and_accumulate(self) -> None:
            rows = len(self.grad_samples[0])
            if rows:  # an empty Poisson batch keeps its empty rows (noise only)
                groups = self.group_source()
                if groups is None:
                    raise DPSoundnessError("no group ids for this step's gradient rows")
                for p in self.params:
                    p.grad_sample = group_rows(self._get_flat_grad_sample(p), groups,
                                               self.num_groups)
            super().clip_and_accumulate()

    return GroupDPOptimizer


class GroupDPSGD(PoissonEngine):
    """One round of group-clipped DP-SGD on Opacus (hooks mode); same protocol as
    :class:`fedssl.privacy.dp_sgd.opacus_engine.DPSGD` (``loader``, ``module``, ``optimizer``,
    ``sample_rate``; a context manager). While open, the objective draws its group ids from
    the engine's secret ``generator`` among ``G = objective.num_groups(q n)`` groups.
    """

    sensitivity = GROUP_SENSITIVITY
    clip_unit = "group"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: torch.Tensor,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        objective: Objective,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
        noise_generator: torch.Generator | None = None,
    ) -> None:
        _require_group_objective(objective)
        super().__init__(data, batch_size, noise_multiplier, max_grad_norm, objective,
                         generator, pin_memory)
        expected = self.expected_batch_size
        self.objective = objective
        self.num_groups = objective.num_groups(expected)
        # group ids: secret like the sampling; a CPU generator (the ids index CPU-side rows)
        seed = (int(torch.randint(0, 2**62, (1,), generator=generator).item())
                if generator is not None else secrets.randbits(63))
        self.group_generator = torch.Generator().manual_seed(seed)
        objective.bind(self.group_generator, self.num_groups)
        from opacus import GradSampleModule

        import fedssl.privacy.dp_sgd.ws_rules  # noqa: F401 (registers the WS conv grad samplers)

        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self.optimizer = _group_optimizer_class()(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected, loss_reduction="mean",
            generator=noise_generator or generator,
            group_source=objective.take_groups, num_groups=self.num_groups,
        )

    def __exit__(self, *exc: object) -> None:
        self.objective.bind(None, None)
        self.module._close()


def group_clipped_gradient_sum(
    model: nn.Module, objective: Objective, views: list[torch.Tensor], groups: torch.Tensor,
    num_groups: int, max_grad_norm: float,
) -> torch.Tensor:
    """Noise-free sum of per-group clipped gradients, flattened (``model.parameters()`` order),
    through the same optimizer class as training, for given group ids (the sensitivity tests
    hold the other records' groups fixed, as the proof's coupling does).

    Args:
        model: the model.
        objective: a group-clipped objective (``clip_unit = "group"``).
        views: the batch's views, one tensor per view.
        groups: ``(N,)`` group id of each record.
        num_groups: the number of groups.
        max_grad_norm: the clip norm ``C``.

    Returns:
        The flattened clipped sum.

    Raises:
        DPSoundnessError: the objective is not clipped per group.
    """
    _require_group_objective(objective)
    from opacus import GradSampleModule

    import fedssl.privacy.dp_sgd.ws_rules  # noqa: F401 (registers the WS conv grad samplers)

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = _group_optimizer_class()(
        torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
        max_grad_norm=max_grad_norm, expected_batch_size=max(1, len(views[0])),
        loss_reduction="sum", group_source=lambda: groups, num_groups=num_groups,
    )
    try:
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            objective.group_loss(gsm, views, groups).sum().backward()
        opt.clip_and_accumulate()
        return torch.cat([
            p.summed_grad.reshape(-1) if p.summed_grad is not None else torch.zeros(p.numel())
            for p in opt.params
        ])
    finally:
        gsm._close()
