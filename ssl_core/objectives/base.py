"""The contract every SSL objective fulfils.

An objective turns ``num_views`` augmented views of a batch into one loss per record. It also
declares whether it is *per-record decomposable*: whether record ``i``'s loss depends on record
``i``'s views alone. Only decomposable objectives may be trained with DP-SGD's per-record
clipping, because only then does removing one record change the clipped gradient sum by at
most the clip norm (the sensitivity that the Gaussian mechanism's noise is calibrated to).
The property is checked empirically for every registered objective by
``tests/privacy/test_sensitivity.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Objective(ABC):
    """Base class of an SSL loss over augmented views."""

    #: registry name, e.g. ``"simsiam"``
    name: str = ""
    #: number of augmented views per record
    num_views: int = 2
    #: record i's loss depends only on record i's views (required under DP-SGD)
    decomposable: bool = False
    #: whether the model needs a predictor head
    needs_predictor: bool = False
    #: DP-SGD's clipping unit: "record" (one clipped row per record, sensitivity C) or
    #: "group" (records in randomly drawn groups, one clipped row per group, sensitivity 2C:
    #: :mod:`fedssl.privacy.dp_sgd.group_clip`); see
    #: :func:`fedssl.privacy.dp_sgd.opacus_engine.clip_sensitivity`
    clip_unit: str = "record"

    def build_model(self, input_shape: tuple[int, ...], width: int | None = None) -> nn.Module:
        """The network this objective trains; it must expose ``.encoder`` (records ->
        ``(N, feature_dim)`` features), the part that is evaluated and exported.

        Args:
            input_shape: one record's shape, e.g. ``(C, L)`` or ``(C, H, W)``.
            width: the encoder's width (default: the encoder's own).

        Returns:
            The model, freshly initialised.
        """
        from fedssl.ssl_core.heads import SSLModel

        return SSLModel(input_shape, predictor=self.needs_predictor, width=width)

    def start_round(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Called once before local training starts (e.g. to copy a target network).

        Args:
            model: the model about to be trained (the freshly received global one).
        """

    def after_step(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Called after every optimizer step (e.g. an EMA target update).

        Args:
            model: the model being trained.
        """

    @abstractmethod
    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Loss of each record, shape ``(N,)``, from ``num_views`` views of shape ``(N, ...)``.

        The model must be called once per view (never on the concatenation of views), so that
        DP-SGD's per-sample gradient hooks sum the contributions of all views of a record into
        that record's row.

        Args:
            model: the model being trained (:meth:`build_model`'s, possibly wrapped by a DP
                engine).
            views: the batch's views, one ``(N, ...)`` tensor per view.

        Returns:
            ``(N,)`` losses; their sum is what the optimizer minimises.

        Raises:
            ValueError: fewer views than the objective needs.
        """
