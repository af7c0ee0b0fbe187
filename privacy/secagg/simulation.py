"""Run a whole SecAgg+ round in one process, with scripted dropouts.

What: :func:`run_secagg` wires :class:`~.client.SecAggClient` and :class:`~.server.SecAggServer`
together exactly as a transport would (optionally through the byte encoding of every message),
for tests, benchmarks and simulations. :func:`run_round` is the general form (inputs produced
on demand), :func:`run_secagg_mean` adds the quantisation step and returns the decoded mean.

Dropouts are scripted per stage (Bonawitz et al. 2017 name the sets U1..U5):

* ``before_advertise``: never answers (not in U1);
* ``after_advertise``: advertises keys, then vanishes (in U1, not U2: nothing to recover);
* ``after_share_keys``: shares keys, sends no input (in U2, not U3: pairwise masks recovered
  from its neighbours' shares of ``s_sk``);
* ``after_masked_input``: sends its masked input, then vanishes before the consistency check
  (in U3, not U4: its input is in the sum and ``b_u`` is rebuilt from its neighbours' shares);
* ``after_consistency``: signs the survivor set, then vanishes (in U4, not U5: the same).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import ArrayLike, NDArray

from . import crypto
from .client import SecAggClient
from .quantization import NoiseHook, Quantizer
from .server import AggregationResult, SecAggServer


@dataclass(frozen=True)
class Dropouts:
    """Which node ids stop answering after which stage."""

    before_advertise: frozenset[int] = field(default_factory=frozenset)
    after_advertise: frozenset[int] = field(default_factory=frozenset)
    after_share_keys: frozenset[int] = field(default_factory=frozenset)
    after_masked_input: frozenset[int] = field(default_factory=frozenset)
    after_consistency: frozenset[int] = field(default_factory=frozenset)


def make_identities(node_ids: list[int]) -> dict[int, Ed25519PrivateKey]:
    """Fresh Ed25519 identity keys, one per node (long-lived in a real deployment).

    Args:
        node_ids: the nodes.

    Returns:
        Node id -> its private key.
    """
    return {u: crypto.generate_identity_key() for u in node_ids}


def run_secagg(
    inputs: Mapping[int, NDArray[np.uint32]],
    *,
    degree: int | None = None,
    threshold: int | None = None,
    dropouts: Dropouts | None = None,
    identity_keys: Mapping[int, Ed25519PrivateKey] | None = None,
    serialize: bool = True,
    round_id: bytes | None = None,
) -> AggregationResult:
    """Securely sum uint32 ``inputs`` (node id -> vector); returns the server's result.

    Raises :class:`~.errors.InsufficientParticipantsError` when dropouts leave fewer than
    ``threshold`` participants where shares are needed; ``inputs`` are never modified.
    ``round_id`` (32 bytes, default random) seeds the communication graph: whether a given
    set of dropouts leaves enough share holders depends on who neighbours whom, so a caller
    that scripts dropouts and expects success fixes it.

    Args:
        inputs: node id -> its uint32 input, all of one length.
        degree: ``k`` (default :func:`~.graph.default_degree`).
        threshold: ``t`` (default :func:`~.graph.default_threshold`).
        dropouts: which nodes stop answering when.
        identity_keys: node id -> its identity key (default: fresh keys).
        serialize: send every message as bytes, as a transport would.
        round_id: 32 bytes; seeds the graph.

    Returns:
        The server's result: the sum of the survivors' inputs.

    Raises:
        ValueError: the inputs are not 1-D vectors of one length.
        InsufficientParticipantsError: too many dropouts.
    """
    lengths = {np.asarray(v).shape for v in inputs.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError("all inputs must be 1-D vectors of the same length")
    return run_round(
        sorted(inputs),
        next(iter(lengths))[0],
        lambda u: np.asarray(inputs[u], dtype=np.uint32),
        degree=degree,
        threshold=threshold,
        dropouts=dropouts,
        identity_keys=identity_keys,
        serialize=serialize,
        round_id=round_id,
    )


def run_round(
    node_ids: Sequence[int],
    vector_length: int,
    get_input: Callable[[int], NDArray[np.uint32]],
    *,
    degree: int | None = None,
    threshold: int | None = None,
    dropouts: Dropouts | None = None,
    identity_keys: Mapping[int, Ed25519PrivateKey] | None = None,
    serialize: bool = True,
    stage_seconds: dict[str, float] | None = None,
    round_id: bytes | None = None,
) -> AggregationResult:
    """One round where client ``u``'s input is produced by ``get_input(u)`` when it is needed.

    Masked inputs are generated and consumed one client at a time, so memory stays ``O(d)``
    beyond what ``get_input`` holds. ``stage_seconds``, if given, receives the seconds each
    exchange took (``setup``, ``share``, ``mask``, ``consistency``, ``unmask``: every client's
    and the server's work for that stage, encoding included). ``round_id`` as in
    :func:`run_secagg`.

    Args:
        node_ids: the nodes.
        vector_length: ``d``.
        get_input: node id -> its uint32 input.
        degree: ``k`` (default :func:`~.graph.default_degree`).
        threshold: ``t`` (default :func:`~.graph.default_threshold`).
        dropouts: which nodes stop answering when.
        identity_keys: node id -> its identity key (default: fresh keys).
        serialize: send every message as bytes.
        stage_seconds: receives each stage's seconds.
        round_id: 32 bytes; seeds the graph.

    Returns:
        The server's result.

    Raises:
        InsufficientParticipantsError: too many dropouts.
    """
    ids = sorted(node_ids)
    drop = dropouts or Dropouts()
    keys = identity_keys if identity_keys is not None else make_identities(ids)
    registry = {u: crypto.identity_public_bytes(keys[u]) for u in ids}
    server = SecAggServer(ids, vector_length, degree=degree, threshold=threshold,
                          round_id=round_id, identity_registry=registry)
    clients = {u: SecAggClient(u, keys[u], registry) for u in ids}

    def wire(msg: Any) -> Any:
        return msg.to_bytes() if serialize else msg

    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        if stage_seconds is not None:
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + now - clock[0]
        clock[0] = now

    config = wire(server.setup())
    alive = [u for u in ids if u not in drop.before_advertise]
    directories = server.collect_advertisements([wire(clients[u].setup(config)) for u in alive])
    lap("setup")
    alive = [u for u in directories if u not in drop.after_advertise]
    bundles = server.collect_shares(
        [wire(clients[u].share_keys(wire(directories[u]))) for u in alive]
    )
    lap("share")
    alive = [u for u in bundles if u not in drop.after_share_keys]
    checks = server.collect_masked_inputs(
        wire(clients[u].mask_input(wire(bundles[u]), get_input(u))) for u in alive
    )
    lap("mask")
    alive = [u for u in checks if u not in drop.after_masked_input]
    requests = server.collect_consistency_signatures(
        [wire(clients[u].consistency_check(wire(checks[u]))) for u in alive]
    )
    lap("consistency")
    alive = [u for u in requests if u not in drop.after_consistency]
    result = server.collect_unmask_responses(
        [wire(clients[u].unmask(wire(requests[u]))) for u in alive]
    )
    lap("unmask")
    return result


def run_secagg_mean(
    vectors: Mapping[int, ArrayLike],
    quantizer: Quantizer,
    *,
    rng: np.random.Generator | None = None,
    noise_hook: NoiseHook | None = None,
    **kwargs: Any,
) -> tuple[NDArray[np.float64], AggregationResult]:
    """Quantise float ``vectors`` (lazily, per client), run a round, decode the mean.

    Args:
        vectors: node id -> its float vector, all 1-D of one length.
        quantizer: encodes the vectors and decodes the mean.
        rng: the stochastic rounding's coins.
        noise_hook: adds each client's noise share.
        **kwargs: passed on to :func:`run_round`.

    Returns:
        The mean of the survivors' vectors, and the server's result.

    Raises:
        ValueError: the vectors are not 1-D of one length.
    """
    gen = rng if rng is not None else np.random.default_rng()
    lengths = {np.shape(v) for v in vectors.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError("all vectors must be 1-D and of the same length")
    result = run_round(
        sorted(vectors),
        next(iter(lengths))[0],
        lambda u: quantizer.encode(vectors[u], rng=gen, noise_hook=noise_hook),
        **kwargs,
    )
    return quantizer.decode_mean(result.total, result.count), result
