"""The k-regular communication graph of SecAgg+ (Bell et al. 2020, CCS).

What: in SecAgg+ ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead") each
client shares keys and pairwise masks only with its ``k`` neighbours in a random ``k``-regular
graph, with ``k = O(log n)``, instead of with all ``n - 1`` other clients as in the original
SecAgg (Bonawitz et al. 2017). Client work drops from ``O(n d)`` to ``O(k d)``.

How: a Harary-style random circulant. The node ids are shuffled by a Fisher-Yates shuffle
driven by an AES-256-CTR keystream keyed from the round's seed (so every party derives the
same graph, and nobody can predict it before the seed is fixed). Position ``i`` is joined to
positions ``i +- 1, ..., i +- floor(k / 2)`` (mod n), plus the diametric position ``i + n/2``
when ``k`` is odd (which needs ``n`` even: a k-regular graph on n nodes needs ``n k`` even,
so an odd ``k`` with odd ``n`` is raised to ``k + 1`` by :func:`effective_degree`).

Threshold: each node's secrets are shared among its ``k`` neighbours and itself (``k + 1``
holders); any ``t`` reconstruct. :func:`default_threshold` takes a strict majority of the
holders, ``t = floor((k + 1) / 2) + 1``, the usual choice for an honest-majority neighbourhood.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import SecAggError

Graph = dict[int, frozenset[int]]


def default_degree(num_nodes: int) -> int:
    """``k = 2 ceil(log2 n)`` capped at ``n - 1`` (Bell et al.: k = O(log n)).

    Args:
        num_nodes: ``n``.

    Returns:
        ``k``.

    Raises:
        SecAggError: fewer than 2 nodes.
    """
    if num_nodes < 2:
        raise SecAggError("secure aggregation needs at least 2 nodes")
    return effective_degree(num_nodes, 2 * math.ceil(math.log2(num_nodes)))


def default_threshold(degree: int) -> int:
    """A strict majority of the ``k + 1`` share holders (neighbours plus the node itself).

    Args:
        degree: ``k``.

    Returns:
        ``t``.
    """
    return (degree + 1) // 2 + 1 if degree >= 2 else degree + 1


def effective_degree(num_nodes: int, degree: int) -> int:
    """Clamp ``degree`` to ``[1, n - 1]`` and make ``n * k`` even (odd k, odd n -> k + 1).

    Args:
        num_nodes: ``n``.
        degree: the requested ``k``.

    Returns:
        The degree used.

    Raises:
        SecAggError: fewer than 2 nodes.
    """
    if num_nodes < 2:
        raise SecAggError("secure aggregation needs at least 2 nodes")
    k = max(1, min(degree, num_nodes - 1))
    if k % 2 == 1 and num_nodes % 2 == 1:
        k += 1
    return k


def validate_parameters(num_nodes: int, degree: int, threshold: int) -> None:
    """Raise :class:`SecAggError` unless ``(n, k, t)`` describe a valid SecAgg+ round.

    Args:
        num_nodes: ``n``.
        degree: ``k``.
        threshold: ``t``.

    Raises:
        SecAggError: fewer than 2 nodes, no ``k``-regular graph on ``n`` nodes, or ``t`` not
            in ``[1, k + 1]``.
    """
    if num_nodes < 2:
        raise SecAggError("secure aggregation needs at least 2 nodes")
    if not 1 <= degree <= num_nodes - 1 or (degree * num_nodes) % 2:
        raise SecAggError(f"no {degree}-regular graph on {num_nodes} nodes")
    if not 1 <= threshold <= degree + 1:
        raise SecAggError(f"threshold {threshold} must be in [1, k + 1 = {degree + 1}]")


def _shuffle(items: list[int], seed: bytes) -> list[int]:
    """Fisher-Yates shuffle driven by AES-256-CTR(SHA-256(seed)); unbiased (rejection)."""
    key = hashlib.sha256(b"fedssl/secagg/v1/graph" + seed).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            r = int.from_bytes(enc.update(bytes(8)), "little")
            if r < limit:
                break
        j = r % bound
        out[i], out[j] = out[j], out[i]
    return out


def build_graph(node_ids: Sequence[int], degree: int, seed: bytes) -> Graph:
    """Neighbour sets (excluding the node itself) of the random k-regular circulant.

    Args:
        node_ids: the round's nodes.
        degree: ``k``.
        seed: the randomness of the node order (the round digest).

    Returns:
        Node id -> its ``k`` neighbours.

    Raises:
        SecAggError: the ids are not distinct.
    """
    n = len(node_ids)
    if len(set(node_ids)) != n:
        raise SecAggError("node ids must be distinct")
    validate_parameters(n, degree, 1)
    order = _shuffle(sorted(node_ids), seed)
    offsets = list(range(1, degree // 2 + 1))
    if degree % 2 == 1:
        offsets.append(n // 2)
    graph: dict[int, set[int]] = {node: set() for node in order}
    for i, node in enumerate(order):
        for off in offsets:
            other = order[(i + off) % n]
            graph[node].add(other)
            graph[other].add(node)
    result = {node: frozenset(nbrs) for node, nbrs in graph.items()}
    if any(len(nbrs) != degree or node in nbrs for node, nbrs in result.items()):
        raise SecAggError("internal error: graph is not k-regular")  # pragma: no cover
    return result
