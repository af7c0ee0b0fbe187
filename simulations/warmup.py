"""Simulation start-up: each simulation worker loads its code and data while the server
evaluates the initial encoder, so that round 1 does not wait for imports and first calls.

What and why: on Flower's simulation engine a Ray actor imports torch, Opacus and fedssl and
maps the cached data only when its first message arrives, which on 2 cores costs several
seconds per worker; measured at round 1 that looked like slow clients. The simulator therefore
sends one ``query.warmup`` message per worker (:func:`start`) as soon as the ServerApp has its
grid, before the server loads its own data and evaluates round 0; the first exchange of round
1 waits for their replies first (at most the round timeout), so no training message queues
behind a worker that is still importing. Nothing of this runs in a deployment: the production
ServerApp (:mod:`fedssl.server.app`) only sees the grid ``fedssl simulate`` prepared
(:func:`prepare_grid`), and the production ClientApp has no ``query.warmup`` handler (the
simulator's, :mod:`fedssl.simulations.client_app`, adds :func:`warmup`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedssl.client.app import compute_setup, load_records
from fedssl.client.trainer import TrainConfig, train_local
from fedssl.round_protocol import NUM_ROUNDS, RUN_DIR
from fedssl.run_spec import CLIENT_KEYS, ServerRun, round_spec
from fedssl.server.federation_nodes import await_nodes
from fedssl.simulations import dispatch
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.objectives import get_objective

#: the message type of the start-up query (a Flower ``query`` message)
MESSAGE_TYPE = "query.warmup"


def warmup(msg: Message, context: Context) -> Message:
    """The client side: load this worker's code and data, and run two training steps (the
    round's DP engine included) of a throwaway model on random inputs shaped like the
    records. The site's records are only loaded: no gradient of them is computed, nothing is
    sent back but a status, and no privacy is spent.

    Args:
        msg: the server's warm-up query.
        context: the node's Flower context.

    Returns:
        A status reply ("ok" or why the warm-up failed).
    """
    config = msg.content["config"]
    start = time.perf_counter()
    try:
        run = round_spec(config)
        device = compute_setup(context, run)
        x = load_records(context, run)
        objective = get_objective(run.method)
        model = objective.build_model(tuple(int(d) for d in x.shape[1:]))
        batch = min(8, max(2, run.batch_size))
        noise = torch.randn(2 * batch, *x.shape[1:])
        dp = run.dp and (objective.decomposable or objective.clip_unit == "group")
        train_local(model, objective, noise, augment_for(tuple(x.shape[1:]), run.dataset),
                    TrainConfig(batch_size=batch, dp=dp, noise_multiplier=1.0), device=device)
        status = "ok"
    except Exception as exc:  # the round itself will report the problem properly
        status = f"warm-up failed: {exc}"
    return Message(RecordDict({"status": ConfigRecord({
        "status": status, "seconds": time.perf_counter() - start})}), reply_to=msg)


def warmup_config(run: ServerRun) -> ConfigRecord:
    """What a worker needs to load the code and data a round will: the clients' settings of
    ``run`` and the run directory (simulated partitions are cached there)."""
    settings = run.spec.to_run_config()
    config = ConfigRecord({k: settings[k] for k in CLIENT_KEYS})
    config[RUN_DIR] = run.spec.run_dir
    config[NUM_ROUNDS] = run.spec.rounds
    return config


def start(grid: Any, config: ConfigRecord, nodes: list[int]) -> set[str]:
    """Send ``query.warmup`` to ``nodes`` (one per simulation worker); returns the message
    ids whose replies :func:`await_replies` collects.

    Args:
        grid: the ServerApp's grid.
        config: the warm-up's config.
        nodes: the node ids to warm up.
    """
    messages = [Message(RecordDict({"config": ConfigRecord(dict(config))}), dst_node_id=node,
                        message_type=MESSAGE_TYPE) for node in nodes]
    return set(grid.push_messages(messages)) if messages else set()


def await_replies(grid: Any, ids: set[str], timeout: float) -> None:
    """Collect (and drop) the replies to ``ids``, waiting at most ``timeout`` seconds.

    Args:
        grid: the ServerApp's grid.
        ids: the message ids awaited; emptied as the replies arrive.
        timeout: the most seconds to wait.
    """
    end = time.monotonic() + timeout
    while ids and time.monotonic() < end:
        ids -= {m.metadata.reply_to_message_id for m in grid.pull_messages(ids)}
        if ids:
            time.sleep(0.01)


def prepare_grid(grid: Any, run: ServerRun) -> None:
    """``fedssl simulate``'s preparation of the ServerApp's grid (the ``prepare_grid`` of
    :func:`fedssl.server.app.make_server_app`): event-driven, streaming dispatch
    (:func:`fedssl.simulations.dispatch.tune_grid`), then the warm-up queries to
    ``run.warmup_workers`` workers, whose replies the grid's first ``send_and_receive``
    awaits before it sends anything. It first waits (at most the round timeout) until the
    engine has registered ``run.num_clients`` nodes
    (:func:`fedssl.server.federation_nodes.await_nodes`): Flower starts the ServerApp
    before it registers them.

    Args:
        grid: the ServerApp's in-memory grid.
        run: the checked run (warm-up workers, clients, round timeout).
    """
    dispatch.tune_grid(grid)
    workers = run.warmup_workers
    if workers <= 0:
        return
    # the engine registers the simulated nodes after the ServerApp starts: wait for them
    nodes = await_nodes(grid, max(workers, run.num_clients), run.spec.round_timeout)
    pending = start(grid, warmup_config(run), nodes[:workers])
    if not pending:
        return
    print(f"warm-up: {len(pending)} client worker(s) loading code and data while the server "
          "evaluates the initial encoder", flush=True)
    send = grid.send_and_receive
    timeout = run.spec.round_timeout

    def send_after_warmup(messages: Iterable[Message], **kwargs: Any) -> Iterable[Message]:
        if pending:  # the first call only: replies still missing then are not awaited again
            try:
                await_replies(grid, pending, timeout)
            finally:
                pending.clear()
        return send(messages, **kwargs)

    grid.send_and_receive = send_after_warmup
