"""Simulated faults for researchers: client dropouts and stragglers.

Real federations lose clients mid-round and wait for slow ones; a simulator that never does
flatters every algorithm. With ``dropout-prob`` a simulated client vanishes (its message fails,
as if the process died) at each message it receives with that probability, so dropouts happen
at every stage, including between secure-aggregation stages. With ``straggler-prob`` it first
sleeps ``straggler-delay`` seconds; the server's ``round-timeout`` decides whether it still
counts. Draws come from a generator seeded by (seed, round, client, stage): reproducible.
Only simulated clients (those with a ``partition-id``) are ever faulted.

The fault model is simulation-only: it reaches the ClientApp as a Flower client mod,
:func:`fault_mod`, which the simulator's ClientApp carries
(``fedssl.simulations.client_app.simulation_app``) and the production one
(``fedssl.client.app:app``) does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import Context, Message

from fedssl.round_protocol import SERVER_ROUND
from fedssl.run_spec import read_settings

#: the message type of a secure-aggregation stage is ``train.<SECAGG_PREFIX><stage>``
SECAGG_PREFIX = "secagg_"

STAGE_IDS = {"train": 0, "setup": 1, "share": 2, "mask": 3, "unmask": 4, "consistency": 5}


class SimulatedDropoutError(RuntimeError):
    """The simulated client vanished (the server sees a failed reply)."""


def planned_fault(seed: int, server_round: int, partition_id: int, stage: str,
                  dropout_prob: float, straggler_prob: float) -> str:
    """What the run's fault model does to one message: ``"drop"``, ``"slow"`` or ``"ok"``.

    A pure function of (seed, round, client, stage) and the two probabilities, so a
    researcher (or a test) can say in advance which client drops or straggles where.

    Args:
        seed: the run's seed.
        server_round: the round's number.
        partition_id: the simulated client's partition.
        stage: the message's stage.
        dropout_prob: the probability that the message is dropped.
        straggler_prob: the probability that it is delayed.
    """
    rng = np.random.default_rng([int(seed), int(server_round), int(partition_id),
                                 STAGE_IDS.get(stage, 9)])
    drop, slow = rng.random(2)
    if drop < dropout_prob:
        return "drop"
    return "slow" if slow < straggler_prob else "ok"


def maybe_fault(config: Mapping[str, Any], node_config: Mapping[str, Any], stage: str) -> None:
    """Apply this run's simulated faults to one message of one client (every message: the
    secure-aggregation stages carry only the fault settings, read typed here).

    Args:
        config: the message's config (the fault settings, the round).
        node_config: the node's config (``partition-id``).
        stage: the message's stage.

    Raises:
        SimulatedDropoutError: if the fault model drops the message.
    """
    p_drop, p_slow, delay, seed = read_settings(config, "dropout_prob", "straggler_prob",
                                                "straggler_delay", "seed")
    if (p_drop <= 0 and p_slow <= 0) or "partition-id" not in node_config:
        return
    fate = planned_fault(seed, int(config.get(SERVER_ROUND, 0)),
                         int(node_config["partition-id"]), stage, p_drop, p_slow)
    if fate == "drop":
        raise SimulatedDropoutError(f"simulated dropout at stage {stage!r}")
    if fate == "slow":
        time.sleep(delay)


def stage_of(message_type: str) -> str | None:
    """The fault model's stage of a message type: ``"train"`` for a training round, the
    secure-aggregation stage name (:data:`fedssl.client.secagg.STAGES`) for
    ``train.secagg_<stage>``, ``None`` for a message that is never faulted (``query.warmup``)."""
    category, _, action = message_type.partition(".")
    if category != "train":
        return None
    if not action or action == "default":
        return "train"
    if action.startswith(SECAGG_PREFIX):
        return action[len(SECAGG_PREFIX):]
    return None


def fault_mod(msg: Message, context: Context,
              call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower client mod applying the run's simulated faults before the handler runs.

    A dropout raises :class:`SimulatedDropoutError` out of the ClientApp (the server sees a
    failed reply), a straggler sleeps ``straggler-delay`` seconds first; any other message
    (and every message of a real site: no ``partition-id``) passes through unchanged.

    Args:
        msg: the incoming message.
        context: the node's Flower context.
        call_next: the next mod or the handler.

    Returns:
        The handler's reply.

    Raises:
        SimulatedDropoutError: if the fault model drops the message.
    """
    stage = stage_of(msg.metadata.message_type)
    if stage is not None and "config" in msg.content:
        maybe_fault(msg.content["config"], context.node_config, stage)
    return call_next(msg, context)
