"""Adapter for the Flower internals fedssl's strategy uses (written for Flower 1.41.0).

:class:`~fedssl.server.strategy.FedSSLStrategy` subclasses Flower's public ``FedAvg``
(``flwr.serverapp.strategy``) and, to sample and address clients exactly as ``FedAvg`` does,
calls one of its helpers that is not public API:

- ``FedAvg._construct_messages(record, node_ids, message_type)`` (a private method): one
  ``Message`` per node carrying the same ``RecordDict``. fedssl's messages are built as
  ``FedAvg``'s are (and follow it if a release changes how).

Flower's node sampler (``strategy_utils.sample_nodes``) is no longer used: it waits for its
minimum number of nodes without a bound, so one dead site hung every later round; the
strategy draws its sample as it does (``random.sample`` of the grid's node list) from the
nodes connected when a round starts (:meth:`fedssl.server.strategy.FedSSLStrategy.sample`).

The helper first checks that the installed Flower is the release this adapter was written
for (:func:`fedssl.flower_version.require_flower`): another release raises
:class:`~fedssl.flower_version.FlowerVersionError` instead of sampling or addressing
clients through a helper whose contract may have changed.
"""

from __future__ import annotations

from flwr.app import Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedssl.flower_version import require_flower

#: the Flower release whose internals this module was written against
FLOWER_VERSION = "1.41.0"
CONCERN = "the strategy (FedAvg._construct_messages)"

def check() -> None:
    """Raise :class:`~fedssl.flower_version.FlowerVersionError` unless Flower is 1.41.0."""
    require_flower(FLOWER_VERSION, concern=CONCERN)


def construct_messages(strategy: FedAvg, record: RecordDict, node_ids: list[int],
                       message_type: str) -> list[Message]:
    """One message per node in ``node_ids`` carrying ``record``, built by ``strategy``'s
    ``FedAvg._construct_messages``.

    Args:
        strategy: the Flower strategy that builds the messages.
        record: the content every message carries.
        node_ids: the destination nodes.
        message_type: Flower's message type (e.g. train).

    Returns:
        The messages, one per node.

    Raises:
        FlowerVersionError: if the installed Flower is not the one the adapter was written for.
    """
    check()
    return list(strategy._construct_messages(record, node_ids, message_type))
