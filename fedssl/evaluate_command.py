"""``fedssl evaluate``: a run's trained encoder on a labelled set the user gives.

What and why: the server evaluates the global encoder on its own evaluation data; a user who
takes the encoder downstream wants to know how it does on *their* labelled data. This command
loads the encoder (:func:`fedssl.load_encoder`, rebuilt from the file's architecture record),
loads the labelled set with the simulator's loaders (:func:`fedssl.ssl_core.datasets.
load_dataset`: the format is inferred from the path: ``.npz`` in the MedMNIST layout, a folder
of class sub-folders of PNG/JPEG images, DICOM or NIfTI), and runs the standard frozen-feature
protocol (:func:`fedssl.ssl_core.evaluation.evaluate_encoder`): a logistic-regression linear
probe, a weighted cosine kNN, and both again with only ``k`` labels per class
(``--few-label``). The same architecture at random initialisation is evaluated too (unless
``--no-baseline``), since the difference to it is what the training bought. It prints a table
and writes ``RUN/evaluation.json`` (or ``--out``).

The CLI registers it with::

    add_evaluate_parser(subparsers)       # in build_parser()
    return run_evaluate(args)             # when args.command == "evaluate"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fedssl.atomic import atomic_write_text
from fedssl.run_layout import RunLayout

EPILOG = """\
exit status: 0 = evaluated, 2 = usage error (no encoder in RUN, unreadable data, data of
another shape than the encoder was trained on, no labels).

examples:
  fedssl evaluate runs/demo --dataset mnist1d
  fedssl evaluate runs/derm --data data/dermamnist.npz --few-label 1,5,10
  fedssl evaluate runs/demo --dataset mnist1d --finetune 1,5,10   # label efficiency
  fedssl evaluate runs/xray/encoder.safetensors --data scans/ --out /tmp/xray-eval.json
"""


def add_evaluate_parser(subparsers: Any) -> None:
    """Register ``fedssl evaluate`` on the subparsers of the ``fedssl`` parser."""
    p = subparsers.add_parser(
        "evaluate", help="linear probe, kNN and few-label accuracy of a run's encoder on "
        "labelled data", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a run's trained encoder (RUN/encoder.safetensors, or an "
        "encoder file) on a labelled data set: linear probe, kNN and few-label probes on "
        "frozen features, next to the same architecture at random initialisation. Prints a "
        "table and writes RUN/evaluation.json (or --out).")
    p.add_argument("run", metavar="RUN", help="run directory or encoder .safetensors file")
    p.add_argument("--data", default="", metavar="PATH",
                   help="labelled data: .npz (MedMNIST layout: train_images/train_labels, "
                   "optional test_*), a folder with one sub-folder of PNG/JPEG images per "
                   "class (or train/ and test/ folders of them), DICOM or NIfTI; without "
                   "test arrays 20%% of the records are held out")
    p.add_argument("--dataset", default="auto",
                   help="format or generated data set: auto (inferred from --data), npz, "
                   "imagefolder, dicom, nifti, or mnist1d/digits without --data "
                   "(default: auto)")
    p.add_argument("--few-label", default="1,5,10", metavar="K,K,...",
                   help="labels per class for the few-label probes (empty: none; default: "
                   "1,5,10)")
    p.add_argument("--finetune", default="", metavar="K,K,...",
                   help="labels per class for the label-efficiency table: the encoder "
                   "fine-tuned end to end with a linear head, the same architecture trained "
                   "from scratch on the same labels by the same recipe, the frozen probe and "
                   "logistic regression on the raw input (empty: none; e.g. 1,5,10)")
    p.add_argument("--finetune-seeds", type=int, default=3, metavar="N",
                   help="label draws for --finetune, each its own labelled records and "
                   "initialisation; mean and std over them (default: 3)")
    p.add_argument("--image-size", type=int, default=0, metavar="N",
                   help="side images are resized to (default: the encoder's input size)")
    p.add_argument("--num-samples", type=int, default=4000, metavar="N",
                   help="records to generate for --dataset mnist1d (default: 4000)")
    p.add_argument("--max-train", type=int, default=0, metavar="N",
                   help="fit the probes on at most N labelled records (default: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the held-out split, the few-label draws and the baseline")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N, auto")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the randomly initialised encoder's row")
    p.add_argument("--out", default="", metavar="FILE",
                   help="JSON result (default: RUN/evaluation.json, or FILE.evaluation.json "
                   "next to an encoder file)")


def _shots(text: str, flag: str = "--few-label") -> tuple[int, ...]:
    try:
        shots = tuple(int(k) for k in str(text).split(",") if k.strip())
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if any(k < 1 for k in shots):
        raise ValueError(f"{flag} values must be >= 1, got {text!r}")
    return shots


def _check_shape(encoder_class: str, trained: tuple[int, ...] | None,
                 given: tuple[int, ...]) -> list[str]:
    """Refuse data the encoder cannot take; a note where it can but was trained otherwise."""
    if trained is None:
        return []
    if len(trained) != len(given) or trained[0] != given[0]:
        raise ValueError(
            f"the encoder was trained on records of shape {trained} "
            f"({'signals' if len(trained) == 2 else 'images'} with {trained[0]} channel(s)), "
            f"but the data has records of shape {given}")
    if trained != given:
        if encoder_class == "ViTEncoder":
            raise ValueError(f"the ViT encoder takes records of shape {trained} only (its "
                             f"patch grid is fixed), but the data has shape {given}: set "
                             "--image-size")
        return [f"records of shape {given}, the encoder was trained on {trained} (it pools "
                "globally, so it runs; results may differ from the training resolution)"]
    return []


def evaluate_run(run: str | Path, data_path: str = "", dataset: str = "auto",
                 shots: tuple[int, ...] = (1, 5, 10), image_size: int = 0,
                 num_samples: int = 4000, max_train: int = 0, seed: int = 0,
                 device: str = "cpu", baseline: bool = True, finetune: tuple[int, ...] = (),
                 finetune_seeds: int = 3) -> dict[str, Any]:
    """The evaluation as a dict (what ``evaluation.json`` holds); with ``finetune`` values,
    also the label-efficiency table (:func:`fedssl.ssl_core.finetune.label_efficiency`:
    fine-tuned, from scratch, frozen probe and raw-input logistic regression at each ``k``
    labels per class, over ``finetune_seeds`` draws) under ``label_efficiency``.

    Args:
        run: a run directory or encoder file.
        data_path: the labelled data ("": a generated ``dataset``).
        dataset: the data's format or generated set ("auto": inferred from ``data_path``).
        shots: the labels per class of the few-label probes.
        image_size: the images' side (0: the encoder's input size, else 28).
        num_samples: the records of a generated set.
        max_train: the most training records the probes are fitted on (0: all).
        seed: the seed of the data, the subset and the probes.
        device: the torch device.
        baseline: also evaluate a randomly initialised encoder of the same architecture.
        finetune: the labels per class of the label-efficiency table (empty: none).
        finetune_seeds: the draws per ``k``.

    Raises:
        ValueError: no encoder (:class:`~fedssl.ssl_core.encoder_file.EncoderFileError`),
            unreadable or unlabelled data (:class:`~fedssl.ssl_core.datasets.DataError`),
            records of another shape.
    """
    import numpy as np
    import torch

    from fedssl.ssl_core.datasets import GENERATED_DATASETS, load_dataset, require_labels
    from fedssl.ssl_core.device import resolve_device
    from fedssl.ssl_core.encoder_file import ENCODER_CLASSES, read_encoder
    from fedssl.ssl_core.evaluation import evaluate_encoder

    start = time.perf_counter()
    dev = resolve_device(device)
    encoder, info = read_encoder(run, dev)
    if not data_path and dataset in ("auto", ""):
        raise ValueError("give the labelled data with --data PATH (or --dataset "
                         f"{'/'.join(GENERATED_DATASETS)} for a generated set)")
    trained = info.input_shape
    size = image_size or (trained[-1] if trained and len(trained) == 3 else 28)
    data = require_labels(load_dataset(dataset, data_path, num_samples=num_samples, seed=seed,
                                       image_size=size, with_test=True),
                          "the evaluation data")
    notes = list(info.notes) + list(data.notes)
    notes += _check_shape(info.encoder_class, trained, data.input_shape)
    x_train, y_train = data.x_train, data.y_train
    if max_train and len(x_train) > max_train:
        pick = np.random.default_rng(seed).permutation(len(x_train))[:max_train]
        x_train, y_train = x_train[pick], y_train[pick]
        notes.append(f"probes fitted on {max_train} of {len(data.x_train)} labelled records")
    if data.label_kind == "multi-label" and shots:
        from fedssl.ssl_core.evaluation import FEW_LABEL_SKIPPED

        notes.append(FEW_LABEL_SKIPPED)
    split = (x_train, y_train, data.x_test, data.y_test)
    result: dict[str, Any] = {
        "encoder": evaluate_encoder(encoder, *split, labels_per_class=shots, device=dev,
                                    seed=seed)}
    if baseline:
        torch.manual_seed(seed)
        fresh = ENCODER_CLASSES[info.encoder_class](**info.encoder_kwargs)
        result["random_init"] = evaluate_encoder(fresh, *split, labels_per_class=shots,
                                                 device=dev, seed=seed)
    if finetune:
        from fedssl.ssl_core.augmentations import augment_for
        from fedssl.ssl_core.finetune import label_efficiency

        if finetune_seeds < 1:
            raise ValueError(f"--finetune-seeds must be >= 1, got {finetune_seeds}")
        result["label_efficiency"] = label_efficiency(
            x_train, y_train, data.x_test, data.y_test, {"trained encoder": encoder},
            lambda: ENCODER_CLASSES[info.encoder_class](**info.encoder_kwargs),
            shots=finetune, seeds=tuple(seed + i for i in range(finetune_seeds)),
            augment=augment_for(data.input_shape, data.name), device=dev)
    return {
        "run": str(run), "encoder_file": str(info.path),
        "encoder_class": info.encoder_class, "encoder_kwargs": info.encoder_kwargs,
        "trained": {k: info.metadata.get(k) for k in ("method", "dataset", "input_shape",
                                                       "rounds") if k in info.metadata},
        "data": {"dataset": data.name, "source": data.source or data_path,
                 "description": data.describe(), "train_records": len(x_train),
                 "test_records": len(data.x_test), "labels": data.label_kind,
                 "num_classes": data.num_classes},
        "few_label": list(shots), "seed": seed, **result, "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def format_evaluation(result: dict[str, Any]) -> str:
    """The printed table: one row per encoder, a column per metric."""
    rows = [(name, result[key]) for key, name in (("encoder", "trained encoder"),
                                                    ("random_init", "random init"))
            if key in result]
    metrics = [("linear_probe_accuracy", "linear"), ("knn_accuracy", "kNN"),
               ("linear_probe_auc", "linear AUC"), ("knn_auc", "kNN AUC")]
    metrics += [(f"{kind}_{k}shot", f"{k}-shot {label}") for k in result["few_label"]
                for kind, label in (("linear_probe", "linear"), ("knn", "kNN"))]
    metrics = [(key, label) for key, label in metrics if any(key in r for _, r in rows)]
    head = ["encoder", *(label for _, label in metrics)]
    body = [[name, *(f"{r[key]:.3f}" if key in r else "-" for key, _ in metrics)]
            for name, r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    trained = result.get("trained", {})
    out = [f"encoder: {result['encoder_file']} ({result['encoder_class']}; "
           f"{trained.get('method', '?')} on {trained.get('dataset', '?')})",
           f"data: {result['data']['description']}", "", line(head),
           line(["-" * w for w in widths]), *(line(r) for r in body)]
    if result.get("label_efficiency"):
        from fedssl.ssl_core.finetune import format_label_efficiency

        out += ["", format_label_efficiency(result["label_efficiency"])]
    out += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(out)


def default_out(run: str | Path) -> Path:
    """``RUN/evaluation.json``, or ``FILE.evaluation.json`` beside an encoder file."""
    path = Path(run)
    return RunLayout(path).evaluation if path.is_dir() else path.with_suffix(".evaluation.json")


def run_evaluate(args: argparse.Namespace) -> int:
    """``fedssl evaluate``: exit 0 when evaluated, 2 on a usage error."""
    try:
        result = evaluate_run(
            args.run, data_path=args.data, dataset=args.dataset,
            shots=_shots(args.few_label), image_size=args.image_size,
            num_samples=args.num_samples, max_train=args.max_train, seed=args.seed,
            device=args.device, baseline=not args.no_baseline,
            finetune=_shots(args.finetune, "--finetune"), finetune_seeds=args.finetune_seeds)
    except (ValueError, FileNotFoundError) as exc:  # EncoderFileError, DataError, DeviceError
        print(f"fedssl evaluate: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out(args.run)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(format_evaluation(result))
    print(f"\nwritten: {out}")
    return 0
