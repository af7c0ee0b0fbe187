"""Adapter for the Flower internals fedssl's strategy uses (written for Flower 1.41.0).

:class:`~fedssl.server.strategy.FedSSLStrategy` subclasses Flower's public ``FedAvg``
(``flwr.serverapp.strategy``) and, to sample and address clients exactly as ``FedAvg`` does,
calls two of its helpers that are not public API:

- ``flwr.serverapp.strategy.strategy_utils.sample_nodes(grid, min_available_nodes,
  sample_size)`` (a module not exported by ``flwr.serverapp.strategy``): waits until
  ``min_available_nodes`` nodes are connected, then draws ``sample_size`` of them uniformly
  without replacement. fedssl's fixed-size sampling (without client-level DP) is Flower's.
- ``FedAvg._construct_messages(record, node_ids, message_type)`` (a private method): one
  ``Message`` per node carrying the same ``RecordDict``. fedssl's messages are built as
  ``FedAvg``'s are (and follow it if a release changes how).

Each helper first checks that the installed Flower is the release this adapter was written
for (:func:`fedssl.flower_version.require_flower`): another release raises
:class:`~fedssl.flower_version.FlowerVersionError` instead of sampling or addressing
clients through a helper whose contract may have changed.
"""

from __future__ import annotations

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedssl.flower_version import flower_internals, require_flower

#: the Flower release whose internals this module was written against
FLOWER_VERSION = "1.41.0"
CONCERN = "the strategy (FedAvg._construct_messages, strategy_utils.sample_nodes)"

with flower_internals(FLOWER_VERSION, concern=CONCERN):  # moved in another release: clear error
    from flwr.serverapp.strategy import strategy_utils


def check() -> None:
    """Raise :class:`~fedssl.flower_version.FlowerVersionError` unless Flower is 1.41.0."""
    require_flower(FLOWER_VERSION, concern=CONCERN)


def sample_nodes(grid: Grid, min_available_nodes: int,
                 sample_size: int) -> tuple[list[int], list[int]]:
    """(sampled node ids, all connected node ids): Flower's ``sample_nodes`` (waits for
    ``max(min_available_nodes, sample_size)`` nodes, then a uniform sample)."""
    check()
    return strategy_utils.sample_nodes(grid, min_available_nodes, sample_size)


def construct_messages(strategy: FedAvg, record: RecordDict, node_ids: list[int],
                       message_type: str) -> list[Message]:
    """One message per node in ``node_ids`` carrying ``record``, built by ``strategy``'s
    ``FedAvg._construct_messages``."""
    check()
    return list(strategy._construct_messages(record, node_ids, message_type))
