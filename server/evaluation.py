"""The server's evaluation of the global encoder on its labelled split.

Round 0 evaluates the initial encoder (the randomly initialised one, the baseline every
result is compared with, or a warm start), with the few-label probes; every ``eval-every``
rounds (and after the last) the global encoder gets a linear probe and kNN plus the collapse
metrics of its features (:func:`~fedssl.ssl_core.collapse.collapse_metrics`); after the
last round the final evaluation adds the few-label probes
(:func:`~fedssl.ssl_core.evaluation.evaluate_features`) and the label-efficiency table
(:func:`~fedssl.ssl_core.finetune.label_efficiency`: the encoder, and the warm start if any,
fine-tuned on ``k`` labels per class next to the same network trained from scratch, the
frozen probe and raw-input logistic regression; report.json's ``label_efficiency``). The
probes are fitted on a capped
random subset of the labelled training records (``eval-samples``) and tested on the test
split (at most ``eval-test-samples`` records of it); they only ever see the server's own
evaluation data, never a client's. An encoder's features are extracted once: the final
evaluation of the encoder the last round evaluated reuses its features and probes.

Evaluation data without labels makes a training-only run
(:data:`~fedssl.ssl_core.datasets.TRAINING_ONLY`): every evaluation reports the collapse
metrics of the encoder's features, which need no labels, and the final one nothing; the
exported encoder is scored later on labelled data (``fedssl evaluate``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.collapse import collapse_metrics
from fedssl.ssl_core.datasets import SSLDataset, evaluation_labels
from fedssl.ssl_core.evaluation import evaluate_features, extract_features
from fedssl.ssl_core.finetune import label_efficiency

#: records the collapse metrics of a training-only run are computed on
COLLAPSE_RECORDS = 2000


def eval_split(data: SSLDataset, max_train: int, seed: int, max_test: int = 0
               ) -> tuple[np.ndarray, ...]:
    """Labelled records the probes are fitted on (a capped subset) and tested on (all of the
    test split, or a capped random subset of it, in the split's order).

    Args:
        data: the server's dataset.
        max_train: the most training records the probes are fitted on.
        seed: the seed of the subsets' permutations.
        max_test: the most test records the probes are scored on (0: all).

    Returns:
        ``(x_train, y_train, x_test, y_test)``.
    """
    idx = np.random.default_rng(seed).permutation(len(data.x_train))[:max_train]
    x_test, y_test = data.x_test, data.y_test
    if max_test and x_test is not None and len(x_test) > max_test:
        keep = np.sort(np.random.default_rng(seed + 1).permutation(len(x_test))[:max_test])
        x_test, y_test = x_test[keep], (y_test[keep] if y_test is not None else None)
    return data.x_train[idx], data.y_train[idx], x_test, y_test


def fingerprint(encoder: torch.nn.Module) -> bytes:
    """A digest of the encoder's state (names and exact values): equal digests, equal
    features, so the server extracts an unchanged encoder's features once.

    Args:
        encoder: the encoder.

    Returns:
        16 bytes of BLAKE2b.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, value in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                      .numpy().tobytes())
    return digest.digest()


class ServerEvaluation:
    """Probes of an encoder on ``data``'s labelled split: ``max_train`` records to fit on
    (chosen with ``seed``), at most ``max_test`` test records (0: all), ``shots`` labels per
    class for the few-label probes, the feature extraction on ``device``. ``data`` without
    labels: collapse metrics only (:attr:`labelled` is False).

    ``finetune`` labels per class (over ``finetune_seeds`` draws) for the label-efficiency
    table (:meth:`label_efficiency`; none for unlabelled data).

    The features of the last encoder evaluated, and its full-label probes, are kept (keyed
    by :func:`fingerprint`): the final evaluation of the encoder the last round already
    evaluated only adds the few-label probes.

    Raises:
        DataError: for labelled data the probes cannot use (no test split, or one without
            labels).
    """

    def __init__(self, data: SSLDataset, max_train: int, seed: int, shots: tuple[int, ...],
                 device: torch.device | str, finetune: tuple[int, ...] = (),
                 finetune_seeds: int = 3, max_test: int = 0) -> None:
        self.labelled = evaluation_labels(data, "the server's evaluation data")
        self.finetune = finetune if self.labelled else ()
        self.finetune_seeds = tuple(seed + i for i in range(finetune_seeds))
        self.augment = augment_for(data.input_shape, data.name)
        self.split = eval_split(data, max_train, seed, max_test) if self.labelled else ()
        records = data.x_test if data.x_test is not None else data.x_train
        self.unlabelled = None if self.labelled else records[:COLLAPSE_RECORDS]
        self.seed, self.shots, self.device = seed, shots, device
        self._cached: tuple[bytes, np.ndarray, np.ndarray, dict[str, float]] | None = None

    def _collapse(self, encoder: Any) -> dict[str, float]:
        assert self.unlabelled is not None
        return collapse_metrics(extract_features(encoder, self.unlabelled, device=self.device))

    def _probes(self, encoder: Any, shots: tuple[int, ...], collapse: bool
                ) -> dict[str, float]:
        """Full-label probes (computed once per encoder state), the ``shots`` few-label
        probes and, with ``collapse``, the collapse metrics of the first test features."""
        key = fingerprint(encoder)
        if self._cached is None or self._cached[0] != key:
            x_train, _, x_test, _ = self.split
            self._cached = (key, extract_features(encoder, x_train, device=self.device),
                            extract_features(encoder, x_test, device=self.device), {})
        _, f_train, f_test, full = self._cached
        _, y_train, _, y_test = self.split
        if not full:
            full.update(evaluate_features(f_train, y_train, f_test, y_test))
        out = {**full, **evaluate_features(f_train, y_train, f_test, y_test, shots, self.seed,
                                           full=False)}
        if collapse:
            out.update(collapse_metrics(f_test[:COLLAPSE_RECORDS]))
        return out

    def initial(self, encoder: Any) -> dict[str, float]:
        """Round 0: probes, few-label probes and collapse metrics."""
        if not self.labelled:
            return self._collapse(encoder)
        return self._probes(encoder, self.shots, collapse=True)

    def during_run(self, encoder: Any) -> dict[str, float]:
        """A round's evaluation: probes and collapse metrics (no few-label probes)."""
        if not self.labelled:
            return self._collapse(encoder)
        return self._probes(encoder, (), collapse=True)

    def final(self, encoder: Any) -> dict[str, float]:
        """After the last round: probes and few-label probes (report.json's accuracies;
        nothing for a training-only run)."""
        if not self.labelled:
            return {}
        return self._probes(encoder, self.shots, collapse=False)

    def label_efficiency(self, encoders: Mapping[str, Any], scratch: Callable[[], Any],
                         progress: Callable[[str], None] | None = None
                         ) -> dict[str, Any] | None:
        """After the last round: each of ``encoders`` frozen and fine-tuned on ``k`` labels
        per class, the same network from scratch (``scratch`` builds it) and raw-input
        logistic regression, on the probes' split; None without ``finetune`` values or
        labels.

        Args:
            encoders: the encoders to fine-tune, by name.
            scratch: builds a freshly initialised encoder of the same network.
            progress: called with a line per step, or None.

        Returns:
            The label-efficiency table, or None without ``finetune`` values or labels.
        """
        if not self.finetune:
            return None
        return label_efficiency(*self.split, encoders, scratch, shots=self.finetune,
                                seeds=self.finetune_seeds, augment=self.augment,
                                device=self.device, progress=progress)
