"""Decoding a round's model message: the checked decoders against Flower's own deserialisation.

What: medians over repeats of the time to turn one model's ``ArrayRecord`` (what a round's
message carries) into arrays, for the MNIST-1D and the 28x28 image model:

- ``flower``: ``ArrayRecord.to_torch_state_dict()`` (``np.load`` per array, no checks): the
  baseline, measured in the same run;
- ``client``: :func:`fedssl.client.global_model.decode_global_model` (names, sizes, shapes,
  dtypes, finite values checked before anything is allocated);
- ``client, headers parsed``: the same with the byte-identical-header shortcut of
  :mod:`fedssl.npy_header` defeated (every ``.npy`` header parsed by NumPy's
  ``ast.literal_eval``), i.e. the decoder as it was before the shortcut;
- ``server``: :func:`fedssl.server.replies.decode_arrays` (a reply screened by the server).

Why: every simulated client decodes the global model once per round and the server decodes
every reply, so at 10,000 clients this is per-client fixed cost (issue 24). Writes
``benchmarks/results/model_decode.json``.

Usage::

    python benchmarks/model_decode.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from flwr.app import ArrayRecord

from fedssl.client import global_model
from fedssl.server.replies import decode_arrays
from fedssl.ssl_core.objectives import get_objective

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"mnist1d (1, 40)": (1, 40), "image (1, 28, 28)": (1, 28, 28)}


def _median_ms(fn: Callable[[], object], repeats: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` calls, in milliseconds."""
    for _ in range(max(1, repeats // 10)):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - start) / repeats)
    return 1e3 * statistics.median(times)


def measure(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Milliseconds per decode of one model of ``shape``'s records, by decoder.

    Args:
        shape: one record's shape (picks the encoder).
        repeats: calls per timed round.

    Returns:
        ``{decoder: median ms}``.
    """
    torch.manual_seed(0)
    model = get_objective("simsiam").build_model(shape)
    record = ArrayRecord(model.state_dict())
    reference = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {
        "flower": _median_ms(record.to_torch_state_dict, repeats),
        "client": _median_ms(lambda: global_model.decode_global_model(record, model), repeats),
    }
    with mock.patch.object(global_model, "npy_header", lambda dtype, shape: b"\x00"):
        out["client, headers parsed"] = _median_ms(
            lambda: global_model.decode_global_model(record, model), repeats)
    out["server"] = _median_ms(lambda: decode_arrays(record, reference), repeats)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default=str(RESULTS / "model_decode.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = {name: measure(shape, args.repeats) for name, shape in SHAPES.items()}
    decoders = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(f"{d} (ms)" for d in decoders)
             + " | client / flower | headers parsed / client |",
             "|---|" + "---|" * (len(decoders) + 2)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[d]:.3f}" for d in decoders)
                     + f" | {row['client'] / row['flower']:.2f}x"
                     + f" | {row['client, headers parsed'] / row['client']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "repeats": args.repeats, "threads": 1, "median_ms": rows, "table": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
