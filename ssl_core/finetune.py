"""Label efficiency: what a site with ``k`` labels per class gets from an encoder.

SSL is worth running only if a site with few labels ends up better than with what it has
without it (notes in ``shared/research/label-efficiency.md``): its raw input, the same
network trained on its labels alone, a warm start alone. This module measures exactly that,
with one fine-tuning recipe shared by ``fedssl evaluate --finetune``, the final table of
``fedssl simulate`` (report.json ``label_efficiency``), ``benchmarks/quality.py`` and
``docs/examples/finetune.py``:

- **fine-tuned** (:func:`finetune`): the encoder plus a new linear head trained end to end on
  the ``k``-per-class records, the semi-supervised protocol of SimCLR (Chen et al. 2020,
  Sec. 4) and BYOL (Grill et al. 2020, Sec. 4);
- **from scratch**: the same architecture, randomly initialised, trained by the same recipe
  on the same records (the same step count, augmentation and optimiser), so the difference
  is what pretraining bought;
- **frozen probe**: logistic regression on the encoder's frozen, standardised features;
- **raw input**: logistic regression on the standardised raw records (what a site has with
  no network at all).

Each ``k`` is drawn per seed (``few_label_subset``), and every row of that seed uses the
same records. The recipe (:class:`FinetuneRecipe`) is fixed in advance, not tuned on the test
split (except the step count, see :class:`FinetuneRecipe`): AdamW at one learning rate for
every parameter, cosine decay, the data set's SSL augmentation on every batch, a fixed step
count. Multi-label data (``(N, K)`` 0/1 labels) is
trained with a per-label binary cross-entropy and scored by the mean per-label ROC AUC, as
the probes do (:mod:`fedssl.ssl_core.evaluation`); its ``k`` records "per class" are ``k``
records carrying each label.

Example:
    >>> import numpy as np, torch
    >>> from fedssl.ssl_core.encoders import ConvEncoder1d
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 1, 16)).astype(np.float32); y = np.arange(40) % 2
    >>> x[y == 1] += 1.0
    >>> acc = finetune(ConvEncoder1d(1, width=8, feature_dim=8), x[:20], y[:20], x[20:], y[20:],
    ...                FinetuneRecipe(steps=20), seed=0)["accuracy"]
    >>> 0.0 <= acc <= 1.0
    True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedssl.ssl_core.evaluation import _mean_auc, extract_features, linear_probe_accuracy

#: an augmenter: a batch of records and a generator -> augmented records of the same shape
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class FinetuneRecipe:
    """How an encoder and its new linear head are trained on a few labels.

    The same recipe trains the pretrained encoder and the from-scratch network, so the two
    differ only in their starting weights. AdamW's default learning rate and the shape were
    fixed in advance; ``steps`` was set to 200 between tries of 150 and 300 on MNIST-1D, mainly
    for cost, after one look at test accuracy (docs/label-efficiency.md says so). AdamW
    (Loshchilov & Hutter 2019) at ``lr`` for every
    parameter, cosine decay to 0, weight decay ``weight_decay``, ``steps`` steps of
    ``batch_size`` records (all of them when fewer), the data set's SSL augmentation on
    every batch (``augment``).
    """

    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    augment: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"fine-tuning needs steps >= 1 and batch_size >= 1, got "
                             f"steps={self.steps}, batch_size={self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise ValueError(f"fine-tuning needs lr > 0 and weight_decay >= 0, got "
                             f"lr={self.lr}, weight_decay={self.weight_decay}")


def label_subset(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` records per class (fewer where a class is smaller), drawn with
    ``seed``; for multi-label ``(N, K)`` labels, ``k`` records carrying each label (a record
    drawn for two labels counts once).

    Args:
        y: class ids ``(N,)`` or 0/1 label flags ``(N, K)``.
        k: records per class (or per label).
        seed: seed of the draw.

    Returns:
        Sorted unique indices into ``y``.

    Raises:
        ValueError: if ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"labels per class must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    if y.ndim == 2:
        groups = [np.flatnonzero(y[:, j] == 1) for j in range(y.shape[1])]
    else:
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    return np.unique(np.concatenate([rng.permutation(g)[:k] for g in groups if len(g)]))


def _scores(model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 512
            ) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.as_tensor(np.require(x[i:i + batch], np.float32, "W"),
                                                device=device)).float().cpu()
                          for i in range(0, len(x), batch)]).numpy()


def _score(y_test: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy (single-label); mean per-label accuracy and AUC (multi-label)."""
    if y_test.ndim == 2:
        out = {"accuracy": float(((logits >= 0) == (y_test == 1)).mean())}
        if (auc := _mean_auc(y_test, 1 / (1 + np.exp(-logits)))) is not None:
            out["auc"] = auc
        return out
    return {"accuracy": float((logits.argmax(1) == y_test).mean())}


def train_classifier(encoder: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
                     recipe: FinetuneRecipe = FinetuneRecipe(), seed: int = 0,
                     augment: Augment | None = None, device: str | torch.device = "cpu",
                     num_outputs: int | None = None) -> nn.Sequential:
    """A copy of ``encoder`` plus a new linear head, trained end to end on the labelled
    records by ``recipe`` (the one recipe of this module).

    The encoder is deep-copied: the caller's weights are left as they were. Seeded: the
    head's initialisation, the batches and the augmentations come from ``seed``.

    Args:
        encoder: an encoder with ``feature_dim`` (pretrained, or freshly initialised for the
            from-scratch row).
        x_train, y_train: the labelled records (class ids, or ``(N, K)`` 0/1 flags).
        recipe: the training recipe (:class:`FinetuneRecipe`).
        seed: seed of the head, the batches and the augmentation.
        augment: the data set's augmenter (applied when ``recipe.augment``), e.g.
            :func:`fedssl.ssl_core.augmentations.augment_for`'s.
        device: torch device to train on.
        num_outputs: classes (or labels); default: read off the labels.

    Returns:
        ``nn.Sequential(encoder_copy, nn.Linear(feature_dim, num_outputs))`` in eval mode;
        its outputs are logits.

    Raises:
        ValueError: on empty training records or labels of another length.
    """
    if len(x_train) == 0 or len(x_train) != len(y_train):
        raise ValueError(f"fine-tuning needs labelled records: got {len(x_train)} records "
                         f"and {len(y_train)} labels")
    dev = torch.device(device)
    multi = y_train.ndim == 2
    outputs = num_outputs or (y_train.shape[1] if multi else int(y_train.max()) + 1)
    torch.manual_seed(seed)
    net = copy.deepcopy(encoder).to(dev)
    model = nn.Sequential(net, nn.Linear(int(net.feature_dim), outputs)).to(dev)
    x = torch.as_tensor(np.require(x_train, np.float32, "W"), device=dev)
    y = torch.as_tensor(y_train, device=dev)
    y = y.float() if multi else y.long()
    loss_fn = (nn.functional.binary_cross_entropy_with_logits if multi
               else nn.functional.cross_entropy)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr,
                            weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    gen = torch.Generator(device=dev).manual_seed(seed)
    batch = min(recipe.batch_size, len(x))
    model.train()
    for _ in range(recipe.steps):
        pick = torch.randperm(len(x), generator=gen, device=dev)[:batch]
        xb = x[pick]
        if recipe.augment and augment is not None:
            xb = augment(xb, gen)
        loss = loss_fn(model(xb), y[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def score(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray,
          device: str | torch.device = "cpu") -> dict[str, float]:
    """A classifier's test score: ``{"accuracy"}`` for class ids; for ``(N, K)`` 0/1 labels
    the mean per-label accuracy at logit 0 and the mean per-label ROC AUC (``"auc"``).

    Args:
        model: the classifier (records -> logits).
        x_test: test records.
        y_test: their labels.
        device: where the model runs.

    Returns:
        Metric name -> value.
    """
    return _score(y_test, _scores(model, x_test, torch.device(device)))


def finetune(encoder: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
             x_test: np.ndarray, y_test: np.ndarray, recipe: FinetuneRecipe = FinetuneRecipe(),
             seed: int = 0, augment: Augment | None = None,
             device: str | torch.device = "cpu", num_outputs: int | None = None
             ) -> dict[str, float]:
    """:func:`train_classifier` on the training records, then :func:`score` on the test
    records (``num_outputs`` defaults to what both splits' labels need).

    Args:
        encoder: the encoder to fine-tune (copied, not changed).
        x_train: training records.
        y_train: their labels.
        x_test: test records.
        y_test: their labels.
        recipe: the training recipe.
        seed: seeds the head and the batches.
        augment: the data set's augmenter, applied when ``recipe.augment``.
        device: where training runs.
        num_outputs: the head's outputs.

    Returns:
        ``{"accuracy": ...}``, plus ``"auc"`` (mean per-label ROC AUC) for multi-label data.

    Raises:
        ValueError: on empty training records or labels of another length.
    """
    if num_outputs is None and y_train.ndim == 1 and len(y_train) and len(y_test):
        num_outputs = int(max(y_train.max(), y_test.max())) + 1
    model = train_classifier(encoder, x_train, y_train, recipe, seed, augment, device,
                             num_outputs)
    return score(model, x_test, y_test, device)


def logistic_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray) -> dict[str, float]:
    """Logistic regression on standardised, flattened inputs: raw records (the row a site
    has without any network) or an encoder's frozen features (the linear probe).
    Multi-label: one probe per label, mean accuracy and AUC.

    Args:
        x_train: training records or features.
        y_train: their labels.
        x_test: test records or features.
        y_test: their labels.

    Returns:
        ``{"accuracy": ...}``, plus ``"auc"`` for multi-label data where defined.
    """
    from fedssl.ssl_core.evaluation import multilabel_linear_probe

    f_tr, f_te = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    if y_train.ndim == 2:
        return multilabel_linear_probe(f_tr, y_train, f_te, y_test)
    return {"accuracy": linear_probe_accuracy(f_tr, y_train, f_te, y_test)}


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "per_seed": [float(v) for v in values]}


def label_efficiency(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    encoders: Mapping[str, nn.Module], scratch: Callable[[], nn.Module],
    shots: Sequence[int] = (5,), seeds: Sequence[int] = (0, 1, 2),
    recipe: FinetuneRecipe = FinetuneRecipe(), augment: Augment | None = None,
    device: str | torch.device = "cpu", progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The label-efficiency table: each encoder frozen and fine-tuned, the same network from
    scratch, and raw-input logistic regression, at ``k`` labels per class, over ``seeds``.

    Args:
        x_train, y_train: the labelled pool the ``k``-per-class records are drawn from.
        x_test, y_test: the records every row is scored on.
        encoders: named pretrained encoders (e.g. ``{"federated": enc, "warm start": w}``);
            each gets a frozen-probe and a fine-tuned row.
        scratch: builds the same architecture freshly initialised (called after
            ``torch.manual_seed(seed)``), trained by the same recipe.
        shots: labels per class.
        seeds: one draw of the labelled records (and one initialisation) per seed.
        recipe: the fine-tuning recipe, shared by every fine-tuned and from-scratch row.
        augment: the data set's augmenter.
        device: torch device.
        progress: called with a short line before each piece of work (a progress display).

    Returns:
        ``{"metric", "shots", "seeds", "recipe", "rows": [{"name", "kind", "encoder",
        "values": {"<k>": {"mean", "std", "per_seed"}}}], "seconds"}``; ``kind`` is
        ``raw-input``, ``from-scratch``, ``frozen`` or ``fine-tuned``; ``metric`` is
        ``accuracy`` (or ``auc`` for multi-label data: the mean per-label ROC AUC).

    Raises:
        ValueError: on empty ``shots``/``seeds`` or unlabelled data.
    """
    if not shots or not seeds:
        raise ValueError("label efficiency needs at least one k and one seed")
    if y_train is None or y_test is None:
        raise ValueError("label efficiency needs labelled training and test records")
    start = time.perf_counter()
    metric = "auc" if y_train.ndim == 2 else "accuracy"
    outputs = (y_train.shape[1] if y_train.ndim == 2
               else int(max(y_train.max(), y_test.max())) + 1)
    say = progress or (lambda _line: None)
    feats = {name: (extract_features(enc, x_train, device=device),
                    extract_features(enc, x_test, device=device))
             for name, enc in encoders.items()}
    values: dict[tuple[str, str], dict[str, list[float]]] = {}

    def add(kind: str, name: str, k: int, result: dict[str, float]) -> None:
        values.setdefault((kind, name), {}).setdefault(str(k), []).append(
            result.get(metric, math.nan))

    for k in shots:
        for seed in seeds:
            sub = label_subset(y_train, k, seed)
            xs, ys = x_train[sub], y_train[sub]
            say(f"{k} label(s) per class, seed {seed}: raw input and from scratch")
            add("raw-input", "", k, logistic_probe(xs, ys, x_test, y_test))
            torch.manual_seed(seed)
            add("from-scratch", "", k, finetune(scratch(), xs, ys, x_test, y_test, recipe,
                                                seed, augment, device, outputs))
            for name, enc in encoders.items():
                say(f"{k} label(s) per class, seed {seed}: {name} frozen and fine-tuned")
                f_tr, f_te = feats[name]
                add("frozen", name, k, logistic_probe(f_tr[sub], ys, f_te, y_test))
                add("fine-tuned", name, k, finetune(enc, xs, ys, x_test, y_test, recipe,
                                                    seed, augment, device, outputs))
    labels = {"raw-input": "raw input, logistic regression",
              "from-scratch": "same network from scratch"}
    rows = [{"name": labels.get(kind) or f"{name}, {kind}", "kind": kind, "encoder": name,
             "values": {k: _stats(v) for k, v in per_k.items()}}
            for (kind, name), per_k in values.items()]
    return {"metric": metric, "shots": [int(k) for k in shots],
            "seeds": [int(s) for s in seeds], "recipe": asdict(recipe), "rows": rows,
            "seconds": time.perf_counter() - start}


def format_label_efficiency(result: Mapping[str, Any]) -> str:
    """The table as Markdown: one row per entry, a column per ``k`` (mean ± std over the
    seeds), followed by each fine-tuned encoder's gain over the from-scratch row.

    Args:
        result: the label-efficiency result (its ``rows``, ``shots``, ``seeds``, ``metric``).

    Returns:
        The Markdown text.
    """
    shots = [str(k) for k in result["shots"]]
    metric = "mean per-label AUC" if result["metric"] == "auc" else "test accuracy"
    lines = [f"label efficiency ({metric}, mean ± std over {len(result['seeds'])} seed(s); "
             "each seed draws its own labelled records):", "",
             "| labels per class | " + " | ".join(shots) + " |",
             "|---" * (len(shots) + 1) + "|"]
    for row in result["rows"]:
        cells = []
        for k in shots:
            v = row["values"].get(k)
            cells.append("-" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}"
                         if len(v["per_seed"]) > 1 else f"{v['mean']:.3f}")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    scratch = next((r for r in result["rows"] if r["kind"] == "from-scratch"), None)
    if scratch is not None:
        for row in result["rows"]:
            if row["kind"] != "fine-tuned":
                continue
            gains = [f"{row['values'][k]['mean'] - scratch['values'][k]['mean']:+.3f}"
                     for k in shots if k in row["values"] and k in scratch["values"]]
            lines.append(f"gain of {row['encoder']} fine-tuned over from scratch: "
                         + ", ".join(f"{g} at k={k}" for g, k in zip(gains, shots)))
    return "\n".join(lines)
