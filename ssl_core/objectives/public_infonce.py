"""InfoNCE with non-private negatives: a record against its own views and a public/synthetic bank.

InfoNCE / NT-Xent as in SimCLR (Chen et al., ICML 2020; van den Oord et al., "Representation
Learning with Contrastive Predictive Coding", 2018) with keys from a momentum encoder as in MoCo
(He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020),
except that the negatives are embeddings of records that are *not* private: a fixed
:class:`~fedssl.ssl_core.negative_bank.NegativeBank` of public (default for MNIST-1D: the public
MNIST-1D split) or procedurally generated records, embedded with no gradient. For record ``i``
with views ``v_1..v_K``, queries ``q_a = f_theta(v_a)`` (online model, with gradient), keys
``k_b = f_xi(v_b)`` (EMA copy ``xi``, no gradient) and bank embeddings ``n_1..n_M = f_xi(bank)``
(no gradient), all L2-normalised::

    l_i = mean_{a != b} -log e^{q_a.k_b/T} / (e^{q_a.k_b/T} + sum_m e^{q_a.n_m/T})

Guarantee (record-level (epsilon, delta)-DP of DP-SGD with per-record clipping, sensitivity C):
    ``l_i`` is a function of record ``i``'s own views, of the parameters ``theta``, of the key
    encoder ``xi`` and of the bank only. ``xi`` is an EMA of earlier online parameters, i.e.
    post-processing of earlier DP outputs (as BYOL's target); the bank's records are fixed
    independently of the private data and embedded under ``torch.no_grad()``. Hence ``grad
    l_i`` depends on record ``i`` alone: the loss is per-record decomposable, and every view of
    record ``i`` enters only record ``i``'s gradient row (the online model is called once per
    view on the batch; keys and bank are computed without gradient, so neither DP engine
    records them). Removing record ``i`` from a batch removes exactly its clipped row
    ``clip_C(sum over its K views)``: the noise-free sum changes by at most ``C``, which is
    what the Poisson-subsampled Gaussian accountant assumes (Abadi et al., CCS 2016).

    What must hold of the bank: its records are not fitted to, selected from, or computed from
    the private data (a procedurally generated set from a fixed seed, or a public set disjoint
    from the private records and chosen without looking at them), and it is the same for
    neighbouring data sets. If a "public" set in fact contains private records, those records
    are not protected by this argument.

What learns (measured on MNIST-1D, see the report of issue 13): with keys and bank from the
online model itself (``momentum=None``), the loss rises to ``log(M + 1)`` within a few steps
and the features collapse: the negatives move with every update (nothing pushes them, no
gradient flows through them), so only the alignment term acts. The slowly moving EMA key
encoder (MoCo) avoids that chase (with the public MNIST-1D bank the loss then falls). A bank
close to the data (public records of the same kind) gives the negatives something to
discriminate; how much a procedural bank gives is not measured yet.

Example:
    >>> from fedssl.ssl_core.heads import SSLModel
    >>> model = SSLModel((1, 40), predictor=False)
    >>> loss = PublicInfoNCE(bank="synthetic", bank_size=32)
    >>> loss.start_round(model)
    >>> views = [torch.randn(8, 1, 40), torch.randn(8, 1, 40)]
    >>> loss.per_record_loss(model, views).shape
    torch.Size([8])
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.negative_bank import NegativeBank
from fedssl.ssl_core.objectives.base import Objective


class PublicInfoNCE(Objective):
    """InfoNCE over K >= 2 views with negatives from a non-private bank (per-record
    decomposable).

    Args:
        temperature: softmax temperature ``T``.
        bank: ``"auto"`` (``"mnist1d-public"`` for ``(1, 40)`` records, else
            ``"synthetic"``), ``"synthetic"`` (procedural records), ``"mnist1d-public"`` (the
            public MNIST-1D split, :mod:`fedssl.ssl_core.warm_start`'s) or a path to a public
            ``.npz``.
        bank_size: number of bank records ``M``.
        momentum: ``None``: keys (the other views) and bank embedded by the online model (no
            gradient through the bank); a float ``m``: MoCo-style keys from a frozen EMA copy
            of the model, ``xi <- m xi + (1 - m) theta`` after every step (He et al., CVPR
            2020), for the other views and the bank, which then move slowly.
        refresh_every: re-embed the bank every this many optimizer steps (it is always
            re-embedded at the start of a round).
        seed: seed of the synthetic bank / of the public subset (public, not secret).
    """

    name = "infonce-public"
    num_views = 2
    decomposable = True
    needs_predictor = False
    #: any number K >= 2 of views per record (augmentation multiplicity), clipped together
    multi_view = True

    def __init__(self, temperature: float = 0.2, bank: str = "auto",
                 bank_size: int = 256, momentum: float | None = 0.99, refresh_every: int = 1,
                 seed: int = 0) -> None:
        if temperature <= 0 or bank_size < 1 or refresh_every < 1:
            raise ValueError("temperature must be positive, bank_size and refresh_every >= 1")
        if momentum is not None and not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) or None, got {momentum}")
        self.temperature = temperature
        self.bank_source = bank
        self.bank_size = bank_size
        self.momentum = momentum
        self.refresh_every = refresh_every
        self.seed = seed
        self.bank: NegativeBank | None = None
        self.target: nn.Module | None = None
        self._negatives: torch.Tensor | None = None
        self._steps = 0

    def _ensure_bank(self, model: nn.Module) -> NegativeBank:
        if self.bank is None:
            shape = tuple(_unwrap(model).input_shape)
            source = self.bank_source
            if source == "auto":  # the public MNIST-1D split fits MNIST-1D-shaped models only
                source = "mnist1d-public" if shape == (1, 40) else "synthetic"
            self.bank = NegativeBank.from_source(source, shape, self.bank_size, self.seed)
        return self.bank

    def _key_model(self, model: nn.Module) -> nn.Module:
        return self.target if self.target is not None else model

    def start_round(self, model: nn.Module) -> None:
        """Build the bank (once), copy the key encoder, embed the bank."""
        if self.momentum is not None:
            self.target = copy.deepcopy(_unwrap(model)).requires_grad_(False)
        self._negatives = self._ensure_bank(model).embed(self._key_model(model))
        self._steps = 0

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """EMA update of the key encoder; re-embed the bank every ``refresh_every`` steps."""
        self._steps += 1
        if self.target is not None and self.momentum is not None:
            for t, o in zip(self.target.parameters(), _unwrap(model).parameters()):
                t.mul_(self.momentum).add_(o.detach(), alpha=1 - self.momentum)
        if self._steps % self.refresh_every == 0:
            self._negatives = self._ensure_bank(model).embed(self._key_model(model))

    def negatives(self, model: nn.Module) -> torch.Tensor:
        """The current bank embeddings ``(M, d)``, detached.

        Args:
            model: the model being trained (the bank is embedded by its key encoder on
                first use).

        Returns:
            The bank embeddings.
        """
        if self._negatives is None:
            if self.momentum is not None and self.target is None:
                self.start_round(model)
            else:
                self._negatives = self._ensure_bank(model).embed(self._key_model(model))
        assert self._negatives is not None
        return self._negatives

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Mean over ordered pairs ``(a, b)``, ``a != b``, of the record's own views of
        ``-log e^{s_ab} / (e^{s_ab} + sum_m e^{s_am})``, ``s_ab = q_a . k_b / T`` with queries
        ``q`` from the online model and keys ``k`` from the key encoder (two views and no
        momentum: the formula above)."""
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least 2 views per record, got {len(views)}")
        neg = self.negatives(model)
        qs = [F.normalize(model(v)[0], dim=-1) for v in views]  # one call per view
        if self.target is not None:
            with torch.no_grad():
                self.target.train(model.training)
                ks = [F.normalize(self.target(v)[0], dim=-1) for v in views]
        else:
            ks = qs
        t = self.temperature
        neg_lse = [torch.logsumexp(q @ neg.T / t, dim=1) for q in qs]  # (N,) per view
        total = qs[0].new_zeros(len(qs[0]))
        pairs = 0
        for a, qa in enumerate(qs):
            for b, kb in enumerate(ks):
                if a != b:
                    s_ab = (qa * kb).sum(-1) / t
                    total = total + torch.logaddexp(s_ab, neg_lse[a]) - s_ab
                    pairs += 1
        return total / pairs


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus GradSampleModule (or the module itself)."""
    return getattr(model, "_module", model)
