"""Benchmark: seconds SecAgg+ adds to a round, ours vs Flower 1.41's SecAgg+ vs plaintext.

What is timed (one process, every client and the server run one after another, so the numbers
are the total compute a round costs on this machine; medians over ``--repeats``):

* plaintext - each client serialises its float32 update (``tobytes``), the server parses and
  sums them (float64) and divides by n. This is the baseline subtracted from both protocols.
* ours - :func:`fedssl.privacy.secagg.run_secagg_mean`: per client quantisation (clip 8.0,
  stochastic rounding into ``floor((2^32-1)/n)`` levels), X25519 key pairs, Ed25519 signatures
  and their verification, Shamir sharing of ``b_u`` and ``s_sk_u``, AES-GCM share encryption,
  AES-256-CTR masks, every message encoded to and parsed from bytes; server routing, masked-sum,
  Shamir reconstruction, mask removal, decoding the mean. Long-term Ed25519 identity keys are
  generated once, outside the timing (they are per node, not per round). Includes the
  consistency check (every survivor signs U3, the server verifies the n signatures against the
  registry and relays t, every client verifies those t before unmasking); ``cons`` is the
  signing exchange alone (the clients' t verifications each are timed in the unmask stage).
* flower - Flower 1.41's own SecAgg+ code: the client stage functions of
  ``flwr.client.mod.secure_aggregation.secaggplus_mod`` (``_setup``: two SECP384R1 key pairs;
  ``_share_keys``: pycryptodome Shamir via ``create_shares`` + ECDH/HKDF + Fernet per neighbour;
  ``_collect_masked_vectors``: Fernet decryption, weighting, ``quantize`` (clip 8.0, 2^22
  levels), ``pseudo_rand_gen`` masks, ``ndarray_to_bytes``; ``_unmask``), called with the same
  configs their workflow sends, and the server steps of
  ``flwr.server.workflow.secure_aggregation.secaggplus_workflow`` re-composed line by line from
  its stage methods (neighbour graph, ciphertext routing, ``bytes_to_ndarray`` + sum + mod,
  ``combine_shares``, ``pseudo_rand_gen`` unmasking, ``dequantize``, offset and weight).
  Not timed: Flower's Grid/Message transport, ``ConfigRecord`` state round-trips and the strategy
  (framework overhead that is not SecAgg+ itself), so Flower's numbers are a lower bound.

Both protocols use the same graph degree ``k`` (Flower ``num_shares = k + 1``, its neighbour
sets include the node itself) and threshold ``t``; no dropouts.

Usage::

    python benchmarks/secagg.py --quick              # n in {10, 30}, d in {1e5, 1e6}
    python benchmarks/secagg.py                      # n in {10, 30, 100}, d in {1e5, 1e6, 1e7}
    python benchmarks/secagg.py --cells 30x1000000   # selected cells only
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedssl.privacy.secagg import (
    Quantizer,
    default_degree,
    default_threshold,
    make_identities,
    run_secagg_mean,
)

CLIP = 8.0
RESULTS = Path(__file__).resolve().parent / "results"
POOL = 4  # distinct client update vectors (client u uses pool[u % POOL]) to bound memory


# ----------------------------------------------------------------------------- plaintext
def plaintext_round(vectors: list[np.ndarray]) -> np.ndarray:
    payloads = [v.astype(np.float32, copy=False).tobytes() for v in vectors]
    acc = np.zeros(vectors[0].shape[0], dtype=np.float64)
    for p in payloads:
        acc += np.frombuffer(p, dtype=np.float32)
    return acc / len(vectors)


# ----------------------------------------------------------------------------- ours
def ours_round(vectors: list[np.ndarray], k: int, t: int, identities: dict[int, Any],
               stages: dict[str, float] | None = None) -> np.ndarray:
    n = len(vectors)
    quantizer = Quantizer(CLIP, n)
    mean, _ = run_secagg_mean(
        dict(enumerate(vectors)),
        quantizer,
        degree=k,
        threshold=t,
        identity_keys=identities,
        serialize=True,
        stage_seconds=stages,
    )
    return mean


# ----------------------------------------------------------------------------- Flower 1.41
def flower_round(vectors: list[np.ndarray], k: int, t: int) -> np.ndarray:
    """Flower 1.41 SecAgg+: its client stage functions + its workflow's server steps."""
    from flwr.client.mod.secure_aggregation.secaggplus_mod import (
        SecAggPlusState,
        _collect_masked_vectors,
        _setup,
        _share_keys,
        _unmask,
    )
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    n = len(vectors)
    num_shares, threshold = k + 1, t
    quantization_range, mod_range, max_weight = 1 << 22, 1 << 32, 1000.0
    node_ids = list(range(1, n + 1))  # Flower node ids are non-zero
    # --- workflow setup_stage: config + shuffled ring of num_shares (incl. self)
    cfg = {
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: CLIP,
        Key.TARGET_RANGE: quantization_range,
        Key.MOD_RANGE: mod_range,
        Key.MAX_WEIGHT: max_weight,
    }
    shuffled = list(node_ids)
    random.shuffle(shuffled)
    half = num_shares >> 1
    neighbours = {
        nid: {shuffled[(i + off) % n] for off in range(-half, half + 1)}
        for i, nid in enumerate(shuffled)
    }
    states: dict[int, Any] = {}
    pubkeys: dict[int, list[bytes]] = {}
    for nid in node_ids:  # client _setup
        st = SecAggPlusState()
        st.nid = nid
        res = _setup(st, dict(cfg))
        states[nid] = st
        pubkeys[nid] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
    active = set(node_ids)
    # --- share_keys_stage
    fwd_ct: dict[int, list[bytes]] = {nid: [] for nid in active}
    fwd_src: dict[int, list[int]] = {nid: [] for nid in active}
    for nid in node_ids:
        res = _share_keys(states[nid], {str(v): pubkeys[v] for v in neighbours[nid] & active})
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            if dst in fwd_ct:
                fwd_ct[dst].append(ct)
                fwd_src[dst].append(nid)
    # --- collect_masked_vectors_stage (server sums as replies arrive)
    masked_vector = None
    for i, nid in enumerate(node_ids):
        params = ndarrays_to_parameters([vectors[i]])  # the ClientApp's fit result
        res = _collect_masked_vectors(
            states[nid],
            {Key.CIPHERTEXT_LIST: fwd_ct[nid], Key.SOURCE_LIST: fwd_src[nid]},
            int(max_weight),
            params,
        )
        client_vec = [bytes_to_ndarray(b) for b in res[Key.MASKED_PARAMETERS]]
        masked_vector = (
            client_vec if masked_vector is None else parameters_addition(masked_vector, client_vec)
        )
    assert masked_vector is not None
    masked_vector = parameters_mod(masked_vector, mod_range)
    # --- unmask_stage
    active_nids, dead_nids = active, set()
    collected: dict[int, list[bytes]] = {nid: [] for nid in node_ids}
    for nid in node_ids:
        res = _unmask(
            states[nid],
            {
                Key.ACTIVE_NODE_ID_LIST: list(neighbours[nid] & active_nids),
                Key.DEAD_NODE_ID_LIST: list(neighbours[nid] & dead_nids),
            },
        )
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
            collected[owner].append(share)
    for nid, share_list in collected.items():
        secret = combine_shares(share_list)
        if nid in active_nids:
            mask = pseudo_rand_gen(secret, mod_range, get_parameters_shape(masked_vector))
            masked_vector = parameters_subtraction(masked_vector, mask)
        else:  # dropped: not exercised (no dropouts), kept for fidelity
            for other in neighbours[nid] - {nid}:
                key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(pubkeys[other][0])
                )
                mask = pseudo_rand_gen(key, mod_range, get_parameters_shape(masked_vector))
                op = parameters_addition if nid > other else parameters_subtraction
                masked_vector = op(masked_vector, mask)
    recon = parameters_mod(masked_vector, mod_range)
    q_total_ratio, recon = factor_extract(recon)
    inv_dq_total_ratio = quantization_range / q_total_ratio
    aggregated = dequantize(recon, CLIP, quantization_range)
    offset = -(len(active_nids) - 1) * CLIP
    for vec in aggregated:
        vec += offset
        vec *= inv_dq_total_ratio
    return aggregated[0]


# ----------------------------------------------------------------------------- driver
@dataclass
class Cell:
    n: int
    d: int
    k: int = 0
    t: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)

    def median(self, name: str) -> float | None:
        vals = self.times.get(name)
        return statistics.median(vals) if vals else None


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_cell(cell: Cell, repeats: int, budget: float, flower_rate: list[float]) -> None:
    rng = np.random.default_rng(cell.n * 1_000_003 + cell.d)
    pool = [(0.05 * rng.standard_normal(cell.d)).astype(np.float32) for _ in range(POOL)]
    vectors = [pool[i % POOL] for i in range(cell.n)]
    cell.k = default_degree(cell.n)
    cell.t = default_threshold(cell.k)
    truth = np.mean(np.stack(pool).astype(np.float64)[[i % POOL for i in range(cell.n)]], axis=0)
    identities = make_identities(list(range(cell.n)))
    work = cell.n * (cell.k + 1) * cell.d
    stages: dict[str, float] = {}

    def ours() -> np.ndarray:
        stages.clear()
        out = ours_round(vectors, cell.k, cell.t, identities, stages)
        cell.times.setdefault("consistency", []).append(stages["consistency"])
        return out

    runners: dict[str, Callable[[], np.ndarray]] = {
        "plaintext": lambda: plaintext_round(vectors),
        "ours": ours,
        "flower": lambda: flower_round(vectors, cell.k, cell.t),
    }
    for name, fn in runners.items():
        if name == "flower" and flower_rate:
            predicted = flower_rate[-1] * work * repeats  # rate of the largest cell so far
            if predicted > budget:
                cell.skipped[name] = (
                    f"predicted {predicted:.0f} s for {repeats} repeats "
                    f"> --cell-budget {budget:.0f} s"
                )
                continue
        cell.times[name] = []
        for _ in range(repeats):
            seconds, out = timed(fn)
            cell.times[name].append(seconds)
            cell.error[name] = float(np.max(np.abs(out - truth)))
        if name == "flower":
            flower_rate.append(statistics.median(cell.times[name]) / work)


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n in {10, 30}, d in {1e5, 1e6}")
    ap.add_argument(
        "--cells", nargs="*", default=None, help="explicit cells as NxD, e.g. 30x1000000"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "secagg.json"),
                    help="results JSON (medians per cell and the Markdown table docs/results.md "
                         "shows; '' = none)")
    ap.add_argument(
        "--cell-budget",
        type=float,
        default=150.0,
        help="skip Flower in a cell whose predicted time for all repeats exceeds this (s)",
    )
    args = ap.parse_args(argv)
    if args.cells:
        grid = [tuple(int(float(p)) for p in c.lower().split("x")) for c in args.cells]
    elif args.quick:
        grid = [(n, d) for n in (10, 30) for d in (100_000, 1_000_000)]
    else:
        grid = [(n, d) for n in (10, 30, 100) for d in (100_000, 1_000_000, 10_000_000)]
    grid.sort(key=lambda nd: nd[0] * (default_degree(nd[0]) + 1) * nd[1])
    import flwr

    load = os.getloadavg()[0]
    print(
        f"# secagg benchmark: python {platform.python_version()}, numpy {np.__version__}, "
        f"flwr {flwr.__version__}, {os.cpu_count()} CPUs, load average "
        f"{load:.2f} at start"
    )
    print(
        f"# repeats={args.repeats}, clip={CLIP}, medians in seconds; added = protocol - plaintext;"
        " cons = the consistency check inside ours"
    )
    cells: list[Cell] = []
    flower_rate: list[float] = []
    for n, d in grid:
        cell = Cell(n, d)
        run_cell(cell, args.repeats, args.cell_budget, flower_rate)
        cells.append(cell)
        print(f"#   done n={n} d={d}", file=sys.stderr, flush=True)
    header = (
        f"{'n':>4} {'d':>9} {'k':>3} {'t':>3} {'plain':>8} {'ours':>8} {'cons':>7} {'flower':>8} "
        f"{'ours+':>8} {'flower+':>8} {'ours+/flower+':>13} {'err ours':>9} {'err flwr':>9}"
    )
    print(header)
    print("-" * len(header))
    for c in sorted(cells, key=lambda c: (c.n, c.d)):
        plain, ours, flower = c.median("plaintext"), c.median("ours"), c.median("flower")
        ours_add = None if ours is None or plain is None else ours - plain
        flower_add = None if flower is None or plain is None else flower - plain
        ratio = None if ours_add is None or not flower_add else ours_add / flower_add
        print(
            f"{c.n:>4} {c.d:>9} {c.k:>3} {c.t:>3} {fmt(plain):>8} {fmt(ours):>8} "
            f"{fmt(c.median('consistency'), '.4f'):>7} "
            f"{fmt(flower):>8} {fmt(ours_add):>8} {fmt(flower_add):>8} {fmt(ratio):>13} "
            f"{fmt(c.error.get('ours'), '.1e'):>9} {fmt(c.error.get('flower'), '.1e'):>9}"
        )
    for c in cells:
        for name, why in c.skipped.items():
            print(f"skipped: n={c.n} d={c.d} {name}: {why}")
    if args.out:
        write_results(cells, args, load)
    return 0


def markdown_table(cells: list[Cell]) -> str:
    """The seconds each protocol adds to a round over plaintext, per cell (docs/results.md).

    Args:
        cells: the measured cells.

    Returns:
        A Markdown table: n, d, ours added, Flower added (or why not run), their ratio.
    """
    lines = ["| n | d | ours + s | Flower + s | ratio |", "|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c.n, c.d)):
        plain, ours, flower = c.median("plaintext"), c.median("ours"), c.median("flower")
        ours_add = None if ours is None or plain is None else ours - plain
        flower_add = None if flower is None or plain is None else flower - plain
        ratio = None if ours_add is None or not flower_add else ours_add / flower_add
        why = c.skipped.get("flower", "")
        flower_cell = fmt(flower_add) if flower_add is not None else (
            f"not run ({why})" if why else "-")
        lines.append(f"| {c.n} | {c.d:.0e} | {fmt(ours_add)} | {flower_cell} | "
                     f"{fmt(ratio)} |".replace("e+0", "e"))
    return "\n".join(lines)


def write_results(cells: list[Cell], args: argparse.Namespace, load: float) -> None:
    """``args.out``: the command, the machine, every cell's timings and medians, the table."""
    import json

    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs, load average {load:.2f} at start, python "
                   f"{platform.python_version()}",
        "repeats": args.repeats, "clip": CLIP,
        "cells": [{"n": c.n, "d": c.d, "k": c.k, "t": c.t, "times": c.times,
                   "medians": {name: c.median(name) for name in c.times},
                   "skipped": c.skipped, "max_error": c.error} for c in cells],
        "table": markdown_table(cells),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
