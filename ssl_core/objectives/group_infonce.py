"""InfoNCE with group-restricted negatives: in-batch contrast inside small, randomly drawn groups.

Group-restricted negatives under DP follow DP-GCL (arXiv 2604.26467) and "Towards
Differentially Private Contrastive Learning" (OpenReview JYBIzjsUY0): SimCLR's NT-Xent
(Chen et al., ICML 2020), but a view's negatives are only the views of the other records of its
*group*, and DP-SGD clips each group's summed gradient as one unit
(:mod:`fedssl.privacy.dp_sgd.group_clip`). For record ``i`` in group ``g(i)`` with views ``v1,
v2``::

    l_i = 1/2 [ -log e^{s(z1_i, z2_i)} / sum_{k in views of g(i), k != z1_i} e^{s(z1_i, k)}
                + the same for z2_i ],        s(a, b) = a.b / T  (normalised projections)

The loss of group ``k``, ``L_k = sum_{i: g(i) = k} l_i``, depends only on the records of group
``k`` (pairs across groups are masked with ``-inf``, so they carry exactly zero weight and
zero gradient). A record alone in its group has loss 0 and gradient 0.

Group assignment (what the proof needs): every Poisson-sampled record draws its group id
uniformly from ``G`` fixed groups, independently of all other records, from the DP-SGD
engine's secret generator (seeded from OS entropy like the Poisson sampling). ``G`` is fixed
from public quantities only (expected batch size ``q n`` / ``group_size``). NOT by chunking a
permutation of the batch: there one record's presence shifts every later record's group.

Guarantee (record-level (epsilon, delta)-DP, add/remove neighbours, sensitivity 2C):
    The released sum is ``S = sum_k clip_C(grad L_k) + N(0, sigma^2 C^2 I)``. Let ``D' = D +
    {x}``. Couple the two runs: every record of ``D`` has the same Poisson inclusion and the
    same group id in both. Given that coupling (the other records' sample ``B`` and groups
    ``u``), with probability ``1 - q`` record ``x`` is not sampled and the sums are equal; with
    probability ``q`` it is sampled with group ``k ~ U[G]``, and only group ``k``'s term
    changes: ``||clip_C(grad L_k(B_k + x)) - clip_C(grad L_k(B_k))|| <= 2C``. So conditioned on
    ``(B, u)``, ``D`` gives ``N(f, sigma^2 C^2)`` and ``D'`` gives ``(1-q) N(f) + q E_k N(f +
    delta_k)`` with ``||delta_k|| <= 2C``. By joint convexity of the hockey-stick divergence
    (in both directions of the pair) over the mixtures over ``k`` and over ``(B, u)``, and by
    rotation invariance and monotonicity of the Gaussian in ``||delta||``, each step is dominated
    by the Poisson-subsampled Gaussian mechanism at rate ``q`` with sensitivity ``2C`` and noise
    ``sigma C``: the standard accountant at noise multiplier ``sigma / 2`` (adaptive composition
    over steps as usual). fedssl records ``noise_multiplier = sigma`` and ``extra.sensitivity =
    2`` in the ledger, and every epsilon (client, report, ``fedssl audit``) is computed at
    ``sigma / 2`` (:func:`fedssl.privacy.identity.ledger.effective_noise_multiplier`). Per-record
    clipping of this loss would be unsound (a record's row then changes when another record of
    its group is removed), so both ``DPSGD`` and the fast engine refuse it; it runs on
    :class:`fedssl.privacy.dp_sgd.group_clip.GroupDPSGD` (Opacus hooks mode).

Cost: a step has ``G ~ B / group_size`` clipped units and noise ``2C`` relative to each, so its
signal-to-noise is lower than per-record clipping's; small groups trade negatives for signal.

Example:
    >>> from fedssl.ssl_core.heads import SSLModel
    >>> model = SSLModel((1, 40), predictor=False)
    >>> views = [torch.randn(8, 1, 40), torch.randn(8, 1, 40)]
    >>> groups = torch.tensor([0, 0, 1, 1, 0, 1, 2, 2])
    >>> GroupInfoNCE().group_loss(model, views, groups).shape
    torch.Size([8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.objectives.base import Objective


class GroupInfoNCE(Objective):
    """NT-Xent with negatives restricted to randomly drawn groups; clipped per group under DP.

    Args:
        temperature: softmax temperature ``T``.
        group_size: target expected group size; ``G = max(1, round(expected batch /
            group_size))`` groups.
    """

    name = "infonce-group"
    num_views = 2
    decomposable = False  # record i's loss depends on its group: clipped per group instead
    needs_predictor = False
    clip_unit = "group"
    #: L2 sensitivity of the clipped sum in units of C under add/remove of one record
    sensitivity = 2

    def __init__(self, temperature: float = 0.2, group_size: int = 8) -> None:
        if temperature <= 0 or group_size < 2:
            raise ValueError("temperature must be positive and group_size at least 2")
        self.temperature = temperature
        self.group_size = group_size
        self._generator: torch.Generator | None = None
        self._num_groups: int | None = None
        self._fallback = torch.Generator().manual_seed(0)
        #: the group ids of the last :meth:`per_record_loss` call (read by the DP engine)
        self.last_groups: torch.Tensor | None = None
        #: draws since the DP engine last took the ids (exactly one per step is sound)
        self._draws = 0

    def num_groups(self, expected_batch_size: int) -> int:
        """``G`` from the (public) expected batch size.

        Args:
            expected_batch_size: ``q n``.

        Returns:
            ``G``, at least 1.
        """
        return max(1, round(expected_batch_size / self.group_size))

    def bind(self, generator: torch.Generator | None, num_groups: int | None) -> None:
        """Draw group ids from ``generator`` among ``num_groups`` fixed groups (the DP engine
        binds its secret generator for a round; ``bind(None, None)`` unbinds).

        Args:
            generator: the DP engine's secret generator, or None to unbind.
            num_groups: ``G`` for the round, or None to unbind.
        """
        self._generator, self._num_groups = generator, num_groups

    def draw_groups(self, n: int) -> torch.Tensor:
        """Independent uniform group ids for ``n`` records, shape ``(n,)``, on the CPU.

        Args:
            n: how many records.

        Returns:
            The group ids, from the bound generator (else a fixed-seed fallback, ``G`` from
            ``n``).
        """
        if self._generator is not None and self._num_groups is not None:
            return torch.randint(0, self._num_groups, (n,), generator=self._generator)
        # no DP engine bound (non-private training): the batch's own group count
        return torch.randint(0, self.num_groups(n), (n,), generator=self._fallback)

    def take_groups(self) -> torch.Tensor | None:
        """The group ids of this step's gradient rows, for the DP engine's clipping.

        Returns:
            The ids drawn by the one loss evaluation since the last take, or None if there
            was none.

        Raises:
            DPSoundnessError: if the loss was evaluated more than once since the last step
                (the ids were redrawn, so they no longer match every row's group and the
                2C bound would not hold).
        """
        from fedssl.ssl_core.dp_soundness import DPSoundnessError

        draws, self._draws = self._draws, 0
        if draws > 1:
            raise DPSoundnessError(
                f"the group loss was evaluated {draws} times in one DP-SGD step; group ids "
                "are drawn per evaluation, so the rows' groups would not match: evaluate "
                "it once per step")
        return self.last_groups if draws == 1 else None

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Draw the records' group ids (:meth:`draw_groups`, kept for :meth:`take_groups`) and
        return :meth:`group_loss` for them."""
        groups = self.draw_groups(len(views[0]))
        self.last_groups = groups
        self._draws += 1
        return self.group_loss(model, views, groups)

    def group_loss(self, model: nn.Module, views: list[torch.Tensor], groups: torch.Tensor
                   ) -> torch.Tensor:
        """Per-record losses ``(N,)`` for the given group ids ``(N,)``.

        Args:
            model: the model being trained.
            views: the batch's two views.
            groups: each record's group id.

        Returns:
            ``(N,)`` losses (0 for a record alone in its group).
        """
        z1, _ = model(views[0])
        z2, _ = model(views[1])
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=-1)
        g = groups.to(z.device).repeat(2)
        allowed = (g[:, None] == g[None, :]) & ~torch.eye(2 * n, dtype=torch.bool,
                                                          device=z.device)
        sim = (z @ z.T / self.temperature).masked_fill(~allowed, float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        pos = sim.gather(1, target[:, None])[:, 0]
        per_view = torch.logsumexp(sim, dim=1) - pos
        return 0.5 * (per_view[:n] + per_view[n:])
