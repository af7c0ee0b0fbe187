"""InfoNCE with non-private negatives: a record against its own views and a public/synthetic bank.

InfoNCE / NT-Xent as in SimCLR (Chen et al., ICML 2020; van den Oord et al., "Representation
Learning with Contrastive Predictive Coding", 2018) and with a bank of negatives as in MoCo
(He et al., CVPR 2020), except that the negatives are embeddings of records that are *not*
private: a fixed :class:`~fedssl.ssl_core.negative_bank.NegativeBank` of procedurally generated
(default) or public records, embedded by the current model with no gradient. For record ``i``
with views ``v1, v2``, projections ``z1 = f(v1)``, ``z2 = f(v2)`` (L2-normalised) and bank
embeddings ``b_1..b_M`` (normalised, detached)::

    l_i = 1/2 [ -log e^{z1.z2/T} / (e^{z1.z2/T} + sum_m e^{z1.b_m/T})
                -log e^{z2.z1/T} / (e^{z2.z1/T} + sum_m e^{z2.b_m/T}) ]

Guarantee (record-level (epsilon, delta)-DP of DP-SGD with per-record clipping, sensitivity C):
    ``l_i`` is a function of record ``i``'s views, of the model parameters and of the bank only.
    The bank's records are fixed independently of the private data and its embeddings are
    computed under ``torch.no_grad()`` from the current parameters, which are earlier DP
    outputs. Hence ``grad l_i`` depends on record ``i`` alone, the loss is per-record
    decomposable, and every view of record ``i`` enters only record ``i``'s gradient row (the
    model is called once per view on the batch; the bank is embedded without gradient, so
    neither DP engine records it). Removing record ``i`` from a batch removes exactly its
    clipped row ``clip_C(sum over its views)``: the noise-free sum changes by at most ``C``,
    which is what the Poisson-subsampled Gaussian accountant assumes (Abadi et al., CCS 2016).

    What must hold of the bank: its records are not fitted to, selected from, or computed from
    the private data (a procedurally generated set from a fixed seed, or a public set disjoint
    from the private records and chosen without looking at them), and it is the same for
    neighbouring data sets. If a "public" set in fact contains private records, those records
    are not protected by this argument.

Caveat on learning: negatives from a different distribution than the private data give a weaker
uniformity pressure than in-batch negatives (nothing pushes two private records apart except
through the bank); a bank close to the data (public data of the same kind) works best.

Example:
    >>> from fedssl.ssl_core.heads import SSLModel
    >>> model = SSLModel((1, 40), predictor=False)
    >>> loss = PublicInfoNCE(bank_size=32)
    >>> loss.start_round(model)
    >>> views = [torch.randn(8, 1, 40), torch.randn(8, 1, 40)]
    >>> loss.per_record_loss(model, views).shape
    torch.Size([8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.negative_bank import NegativeBank
from fedssl.ssl_core.objectives.base import Objective


class PublicInfoNCE(Objective):
    """InfoNCE over two views with negatives from a non-private bank (per-record decomposable).

    Args:
        temperature: softmax temperature ``T``.
        bank: ``"synthetic"`` (procedural records) or a path to a public ``.npz``.
        bank_size: number of bank records ``M``.
        refresh_every: re-embed the bank every this many optimizer steps (1 = every step, with
            the current model; it is always re-embedded at the start of a round).
        seed: seed of the synthetic bank / of the public subset (public, not secret).
    """

    name = "infonce-public"
    num_views = 2
    decomposable = True
    needs_predictor = False
    #: any number K >= 2 of views per record (augmentation multiplicity), clipped together
    multi_view = True

    def __init__(self, temperature: float = 0.2, bank: str = "synthetic", bank_size: int = 256,
                 refresh_every: int = 1, seed: int = 0) -> None:
        if temperature <= 0 or bank_size < 1 or refresh_every < 1:
            raise ValueError("temperature must be positive, bank_size and refresh_every >= 1")
        self.temperature = temperature
        self.bank_source = bank
        self.bank_size = bank_size
        self.refresh_every = refresh_every
        self.seed = seed
        self.bank: NegativeBank | None = None
        self._negatives: torch.Tensor | None = None
        self._steps = 0

    def _ensure_bank(self, model: nn.Module) -> NegativeBank:
        if self.bank is None:
            shape = tuple(_unwrap(model).input_shape)
            self.bank = NegativeBank.from_source(self.bank_source, shape, self.bank_size,
                                                 self.seed)
        return self.bank

    def start_round(self, model: nn.Module) -> None:
        """Build the bank (once) and embed it with the freshly received model."""
        self._negatives = self._ensure_bank(model).embed(model)
        self._steps = 0

    def after_step(self, model: nn.Module) -> None:
        """Re-embed the bank with the updated model every ``refresh_every`` steps."""
        self._steps += 1
        if self._steps % self.refresh_every == 0:
            self._negatives = self._ensure_bank(model).embed(model)

    def negatives(self, model: nn.Module) -> torch.Tensor:
        """The current bank embeddings ``(M, d)``, detached."""
        if self._negatives is None:
            self._negatives = self._ensure_bank(model).embed(model)
        return self._negatives

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Mean over ordered pairs ``(a, b)``, ``a != b``, of the record's own views of
        ``-log e^{s_ab} / (e^{s_ab} + sum_m e^{s_am})`` (two views: the formula above)."""
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least 2 views per record, got {len(views)}")
        neg = self.negatives(model)
        zs = [F.normalize(model(v)[0], dim=-1) for v in views]  # one call per view
        t = self.temperature
        neg_lse = [torch.logsumexp(z @ neg.T / t, dim=1) for z in zs]  # (N,) per view
        total = zs[0].new_zeros(len(zs[0]))
        pairs = 0
        for a, za in enumerate(zs):
            for b, zb in enumerate(zs):
                if a != b:
                    s_ab = (za * zb).sum(-1) / t
                    total = total + torch.logaddexp(s_ab, neg_lse[a]) - s_ab
                    pairs += 1
        return total / pairs


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus GradSampleModule (or the module itself)."""
    return getattr(model, "_module", model)
