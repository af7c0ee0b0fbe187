"""What happens after each round's aggregation, as callbacks in a registry.

A round's side effects — the checkpoint, the server's evaluation when it is due, the metrics
row in ``metrics.jsonl``, the TensorBoard scalars — are :class:`RoundCallback` objects (the
pattern of pfl-research's ``TrainingProcessCallback``), not steps wired into the round loop
(:class:`fedssl.server.app.Federation`). Each registered factory (:func:`register_callback`)
gets the run's :class:`RunContext` once and returns its callback, or None when the run does
not want it (TensorBoard without ``--tensorboard``); the loop calls, in registration order:

- :meth:`RoundCallback.after_aggregate` with the round's new global model; a callback may add
  entries to the round's metrics row (the evaluation adds its probe accuracies);
- :meth:`RoundCallback.after_row` with every finished row, round 0's included;
- :meth:`RoundCallback.close` when the run ends.

A new side effect is one class here (or anywhere imported before the run starts) decorated
with :func:`register_callback`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord

from fedssl.run_layout import RunLayout
from fedssl.run_spec import RunSpec
from fedssl.server.aggregation import Aggregation
from fedssl.server.checkpoint import save_checkpoint
from fedssl.server.evaluation import ServerEvaluation
from fedssl.server.progress import RunProgress
from fedssl.server.report import append_metrics
from fedssl.server.tensorboard_log import TensorBoardLog


@dataclass
class RunContext:
    """What a callback may use, fixed when the run's rounds start."""

    spec: RunSpec
    #: the run's id (``RUN/config.toml``; it labels the TensorBoard run)
    run_id: str
    layout: RunLayout
    evaluation: ServerEvaluation
    aggregation: Aggregation
    progress: RunProgress
    #: the first round this process trains (after a resume, the round after the checkpoint)
    start_round: int
    #: whether the run continues a checkpoint
    resumed: bool

    @property
    def rounds(self) -> int:
        return self.spec.rounds


@dataclass
class RoundState:
    """One round after aggregation: the new global model and the round's metrics row."""

    server_round: int
    arrays: ArrayRecord
    model: torch.nn.Module
    row: dict[str, Any] = field(default_factory=dict)


class RoundCallback:
    """A side effect of every round (see the module doc); every hook does nothing here."""

    def after_aggregate(self, state: RoundState) -> None:
        """The round's global model is final (``state.model`` holds it); may add to
        ``state.row``."""

    def after_row(self, row: dict[str, Any]) -> None:
        """A metrics row is final (round 0's, then every round's)."""

    def close(self) -> None:
        """The run's rounds are over."""


#: name -> factory, in the order the callbacks run (filled by :func:`register_callback`)
CALLBACKS: dict[str, Callable[[RunContext], RoundCallback | None]] = {}


def register_callback(name: str) -> Callable[[Callable[[RunContext], RoundCallback | None]],
                                              Callable[[RunContext], RoundCallback | None]]:
    """Decorator: register a factory (e.g. a :class:`RoundCallback` subclass taking a
    :class:`RunContext`, or a function returning one or None) under ``name``."""
    def add(factory: Callable[[RunContext], RoundCallback | None]
            ) -> Callable[[RunContext], RoundCallback | None]:
        CALLBACKS[name] = factory
        return factory
    return add


def make_callbacks(ctx: RunContext) -> list[RoundCallback]:
    """The run's callbacks: every registered factory's, skipping those that return None."""
    return [cb for factory in CALLBACKS.values() if (cb := factory(ctx)) is not None]


@register_callback("checkpoint")
class Checkpoint(RoundCallback):
    """``RUN/checkpoints/``: the global model and the server optimizer's state per round, so
    ``--resume`` continues after the last complete round."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def after_aggregate(self, state: RoundState) -> None:
        spec, aggregation = self.ctx.spec, self.ctx.aggregation
        save_checkpoint(self.ctx.layout.root, state.server_round,
                        {k: v.numpy() for k, v in state.arrays.items()},
                        {"seed": spec.seed, "method": spec.method},
                        server_momentum=aggregation.server_opt.state() or None)


@register_callback("evaluation")
class Evaluation(RoundCallback):
    """The server's probes of the global encoder every ``eval-every`` rounds and after the
    last (:class:`~fedssl.server.evaluation.ServerEvaluation`), added to the round's row."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def after_aggregate(self, state: RoundState) -> None:
        rounds, r = self.ctx.rounds, state.server_round
        if r % self.ctx.spec.eval_every == 0 or r == rounds:
            self.ctx.progress.phase(f"round {r}/{rounds}: evaluating")
            state.row.update(self.ctx.evaluation.during_run(state.model.encoder))


@register_callback("metrics")
class MetricsFile(RoundCallback):
    """``RUN/metrics.jsonl``: one JSON row per round."""

    def __init__(self, ctx: RunContext) -> None:
        self.root = ctx.layout.root

    def after_row(self, row: dict[str, Any]) -> None:
        append_metrics(self.root, row)


@register_callback("tensorboard")
def tensorboard(ctx: RunContext) -> RoundCallback | None:
    """``RUN/tensorboard/`` scalars of every row, with ``tensorboard = true``."""
    if not ctx.spec.tensorboard:
        return None
    return TensorBoard(TensorBoardLog(ctx.layout.root,
                                      ctx.start_round if ctx.resumed else 0, ctx.run_id))


class TensorBoard(RoundCallback):
    """Writes each row through a :class:`~fedssl.server.tensorboard_log.TensorBoardLog`."""

    def __init__(self, log: TensorBoardLog) -> None:
        self.log = log

    def after_row(self, row: dict[str, Any]) -> None:
        self.log.add_round(row)

    def close(self) -> None:
        self.log.close()
