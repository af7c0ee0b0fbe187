"""Local SSL training of one client's encoder, with or without DP-SGD.

Flower-free on purpose: the same loop trains a federated client's round, a centralized
baseline and the benchmarks. One call runs ``epochs`` passes over the local records:

- without DP: shuffled mini-batches, mean loss, SGD with momentum;
- with DP: Poisson sampling at rate ``batch_size / n``, one gradient per record summed over
  all its views, clipped and noised by one of two engines with identical sampling, clipping,
  noise and accounting (``TrainConfig.dp_engine``):
  :class:`fedssl.privacy.dp_sgd.fast_clip.FastDPSGD`
  (book-keeping / ghost norms, one backward; the default for every model it supports) or
  :class:`fedssl.privacy.dp_sgd.opacus_engine.DPSGD` (Opacus hooks mode; any model Opacus supports).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedssl.privacy.dp_sgd.opacus_engine import DPSoundnessError
from fedssl.run_spec import LR_SCHEDULES as RUN_LR_SCHEDULES
from fedssl.ssl_core.host_memory import retain_freed_memory
from fedssl.ssl_core.objectives.base import Objective
from fedssl.ssl_core.trainable import trainable_names, trainable_subset

if TYPE_CHECKING:
    from fedssl.privacy.dp_sgd.fast_clip import FastDPSGD


class TrainingError(RuntimeError):
    """Raised when local training diverges (NaN/Inf loss) or has nothing to train on."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one local training call."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    dp: bool = False
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    #: DP-SGD engine: "fast" (:mod:`fedssl.privacy.dp_sgd.fast_clip`; raises for models it cannot
    #: handle exactly), "hooks" (Opacus), or "auto" (fast where its static model check passes,
    #: else hooks; a model that passes but fails a runtime check still raises, never falls back)
    dp_engine: str = "auto"
    #: seed of DP-SGD's Poisson sampling and noise. None (always, outside tests and
    #: benchmarks): 63 bits from the OS, because the guarantee needs both to be unpredictable
    #: to whoever sees the update - ``seed`` is derived from the run config, which the server
    #: knows, so noise drawn from it could be regenerated and subtracted
    dp_seed: int | None = None
    #: mixed precision (bfloat16 autocast) on CUDA without DP; refused under DP, where the
    #: clip bound must hold for the per-record norms actually computed
    amp: bool = False
    #: keep freed host memory in the process between steps (glibc ``mallopt``, process-wide;
    #: see :mod:`fedssl.ssl_core.host_memory`): page faults otherwise cost a DP-SGD step
    #: 10-20 % on a VM, at the price of RSS staying near the step's peak
    retain_host_memory: bool = True
    #: augmentation multiplicity K: views drawn per record and step (0: the objective's
    #: ``num_views``). All K views of a record enter that record's one gradient row and are
    #: clipped together, so the sensitivity stays C (De et al. 2022, "Unlocking high-accuracy
    #: differentially private image classification through scale", Sec. 3.1)
    views: int = 0
    #: parameter EMA of the local iterates (0: off). The model left in place (what a client
    #: sends) is the EMA ``e <- d e + (1 - d) theta`` over this call's optimizer steps,
    #: started at the first iterate: post-processing of the DP-SGD iterates, no privacy cost
    #: (De et al. 2022 use 0.999 over a whole run; a round has few steps, so use ~0.8-0.95)
    ema_decay: float = 0.0
    #: learning-rate schedule over the whole run: "constant" or "cosine" (from ``lr`` to 0
    #: at the end of round ``total_rounds``), per optimizer step
    lr_schedule: str = "constant"
    #: linear warm-up of the learning rate over the run's first ``warmup_rounds`` rounds
    warmup_rounds: int = 0
    #: this call's round (1-based) and the run's rounds, for the schedule
    round_index: int = 1
    total_rounds: int = 1
    #: which parameters are trained (:mod:`fedssl.ssl_core.trainable`): "all", or e.g.
    #: "norm-bias" (the rest stay at the values received, e.g. a public warm start's: DP-SGD's
    #: noise then spans far fewer coordinates)
    trainable: str = "all"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option.

        Why it is kept beside :meth:`fedssl.run_spec.RunSpec.validate`: :func:`train_local`
        is a library function that ``fedssl pretrain``, the benchmarks and docs/examples call
        with a TrainConfig of their own, no RunSpec involved; a config the ClientApp derives
        from a validated RunSpec (:func:`fedssl.client.app.round_train_config`) passes it
        trivially.

        Raises:
            ValueError: the first invalid option, by name.
        """
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.views < 0:
            raise ValueError(f"views (augmentation multiplicity) must be >= 0, got "
                             f"{self.views}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got "
                             f"{self.lr_schedule!r}")
        if self.warmup_rounds < 0:
            raise ValueError(f"warmup_rounds must be >= 0, got {self.warmup_rounds}")
        if self.total_rounds < 1 or not 1 <= self.round_index <= self.total_rounds:
            raise ValueError(f"round_index must be in [1, total_rounds={self.total_rounds}], "
                             f"got {self.round_index}")
        if self.trainable not in trainable_names():
            raise ValueError(f"trainable must be one of {trainable_names()}, got "
                             f"{self.trainable!r}")


#: the learning-rate schedules of :class:`TrainConfig` (named with the run's settings,
#: :data:`fedssl.run_spec.LR_SCHEDULES`; implemented by :func:`scheduled_lr`)
LR_SCHEDULES = RUN_LR_SCHEDULES


def scheduled_lr(cfg: TrainConfig, step: int, steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``steps`` in round
    ``cfg.round_index`` of ``cfg.total_rounds``: linear warm-up over ``warmup_rounds``, then
    ``lr`` (constant) or ``lr * (1 + cos(pi * progress)) / 2`` (cosine; Loshchilov & Hutter,
    "SGDR", ICLR 2017), ``progress`` the fraction of the run's steps done.

    Args:
        cfg: the round's training config.
        step: the optimizer step, 0-based.
        steps: the steps of the round.
    """
    done = cfg.round_index - 1 + step / max(1, steps)  # rounds done, fractional
    factor = 1.0
    if cfg.warmup_rounds and done < cfg.warmup_rounds:
        factor = (done + 1 / max(1, steps)) / cfg.warmup_rounds
    if cfg.lr_schedule == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * min(1.0, done / cfg.total_rounds)))
    return cfg.lr * factor


@dataclass
class TrainResult:
    """What a local training call did (sent to the server and recorded in the ledger)."""

    loss: float
    steps: int
    sample_rate: float
    num_examples: int
    seconds: float
    #: the DP-SGD engine that ran ("fast" / "hooks"), "" without DP
    dp_engine: str = ""


def steps_per_epoch(num_examples: int, batch_size: int, dp: bool) -> int:
    """Optimizer steps in one epoch: ``1/q`` Poisson batches under DP, else ceil(n/B).

    Args:
        num_examples: the local records.
        batch_size: the (expected) batch size.
        dp: DP-SGD is on (Poisson sampling).
    """
    if dp:
        return max(1, int(1 / min(1.0, batch_size / num_examples)))
    return -(-num_examples // batch_size)


def train_local(
    model: torch.nn.Module,
    objective: Objective,
    x: np.ndarray | torch.Tensor,
    augment,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train ``model`` in place on the records ``x`` with ``objective``.

    Args:
        model: the model, trained in place.
        objective: the SSL objective.
        x: the local records.
        augment: ``augment(batch, generator)`` returns one augmented view of a batch.
        cfg: the round's training config.
        device: the device to train on.

    Returns:
        What the training did (loss, steps, sample rate, records, seconds, DP engine).

    Raises:
        TrainingError: on an empty data set or a non-finite loss.
        DPSoundnessError: if ``cfg.dp`` and the objective is not per-record decomposable.
    """
    cfg.validate()
    num_views = cfg.views or objective.num_views
    if num_views != objective.num_views and not getattr(objective, "multi_view", False):
        raise ValueError(f"method {objective.name!r} takes {objective.num_views} view(s) per "
                         f"record; augmentation multiplicity views={cfg.views} is supported "
                         "by the multi-view objectives only (simsiam, byol)")
    device = torch.device(device)
    if cfg.retain_host_memory:
        retain_freed_memory()
    data = torch.as_tensor(x, dtype=torch.float32)
    if len(data) == 0:
        raise TrainingError("no local records to train on")
    if cfg.amp and cfg.dp:
        raise DPSoundnessError("mixed precision is refused under DP: per-record norms in "
                               "reduced precision could exceed the clip bound unnoticed")
    model.to(device).train()
    with trainable_subset(model, cfg.trainable):
        stepper, engine, sample_rate, seconds = _train(model, objective, data, augment, cfg,
                                                       device, num_views)
    if stepper.ema is not None:
        stepper.ema.copy_to(model)
    losses = stepper.losses
    return TrainResult(
        loss=float(np.mean(losses)) if losses else float("nan"), steps=stepper.steps,
        sample_rate=sample_rate, num_examples=len(data), seconds=seconds, dp_engine=engine,
    )


def _train(model: torch.nn.Module, objective: Objective, data: torch.Tensor, augment,
           cfg: TrainConfig, device: torch.device, num_views: int
           ) -> tuple[LocalStep, str, float, float]:
    """The epochs of :func:`train_local` on the model's trainable parameters; returns the
    stepper (steps, losses, EMA), the DP engine ("" without DP), the sample rate and the
    seconds taken."""
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    objective.start_round(model)
    start = time.perf_counter()
    stepper = LocalStep(model, objective, opt, augment, aug_gen, cfg, device, num_views,
                        planned=cfg.epochs * steps_per_epoch(len(data), cfg.batch_size,
                                                             cfg.dp))
    engine = ""
    if cfg.dp:
        engine, sample_rate = _dp_epochs(model, objective, opt, data, cfg, device, stepper)
    else:
        loader = DataLoader(TensorDataset(data), batch_size=cfg.batch_size, shuffle=True,
                            generator=gen, drop_last=len(data) > cfg.batch_size,
                            pin_memory=cuda)
        for _ in range(cfg.epochs):
            for (batch,) in loader:
                stepper(model, batch, opt)
        sample_rate = min(1.0, cfg.batch_size / len(data))
    return stepper, engine, sample_rate, time.perf_counter() - start


def _dp_epochs(model: torch.nn.Module, objective: Objective, opt: torch.optim.Optimizer,
               data: torch.Tensor, cfg: TrainConfig, device: torch.device,
               stepper: LocalStep) -> tuple[str, float]:
    """``cfg.epochs`` epochs of DP-SGD (Poisson batches, per-record or per-group clipping,
    Gaussian noise) through the engine ``cfg.dp_engine`` selects for ``model``: the fast exact
    engine, Opacus's hooks, or group clipping (hooks only). The sampling and noise generators
    are seeded from ``cfg.dp_seed`` (tests) or else from OS entropy, never from the run's
    seed, which config.toml records. Returns the engine that ran and the sample rate."""
    from fedssl.privacy.dp_sgd.fast_clip import FastDPSGD
    from fedssl.privacy.dp_sgd.group_clip import GroupDPSGD, group_engine
    from fedssl.privacy.dp_sgd.opacus_engine import DPSGD  # opacus: imported only when DP is on

    if objective.clip_unit == "group":  # clipped per group: hooks only (group_clip.py)
        engine, dp_cls = group_engine(cfg.dp_engine), GroupDPSGD
    else:
        engine = select_dp_engine(cfg.dp_engine, model, opt)
        dp_cls = FastDPSGD if engine == "fast" else DPSGD
    cuda = device.type == "cuda"
    secret = cfg.dp_seed if cfg.dp_seed is not None else secrets.randbits(63)
    sample_gen = torch.Generator().manual_seed(secret)
    noise_gen = (sample_gen if not cuda
                 else torch.Generator(device=device).manual_seed(secret ^ 0x5EED))
    with dp_cls(model, opt, data, cfg.batch_size, cfg.noise_multiplier, cfg.max_grad_norm,
                objective, generator=sample_gen, noise_generator=noise_gen,
                pin_memory=cuda) as dp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = dp if isinstance(dp, FastDPSGD) else None
        for _ in range(cfg.epochs):
            for (batch,) in dp.loader:
                stepper(dp.module, batch, dp.optimizer, fast)
    return engine, dp.sample_rate


class LocalStep:
    """One optimizer step of local training, the same for every engine: the scheduled
    learning rate, ``num_views`` augmented views of the batch, the objective's per-record
    losses (under the fast DP engine, recorded for its per-record norms; else, optionally,
    in bfloat16 autocast on CUDA), the step, the objective's after-step hook (e.g. BYOL's
    target update) and the parameter EMA. An empty Poisson batch under DP is still a step
    (noise only). Counts the steps and keeps the batch losses.

    Raises (when called):
        TrainingError: on a non-finite loss.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective,
                 opt: torch.optim.Optimizer, augment, aug_gen: torch.Generator,
                 cfg: TrainConfig, device: torch.device, num_views: int, planned: int) -> None:
        self.model, self.objective, self.opt, self.augment = model, objective, opt, augment
        self.aug_gen, self.cfg, self.device, self.num_views = aug_gen, cfg, device, num_views
        self.planned = planned
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if cfg.amp and device.type == "cuda" else contextlib.nullcontext())
        self.ema = ParameterEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.steps = 0
        self.losses: list[float] = []

    def __call__(self, module: torch.nn.Module, batch: torch.Tensor, optimizer,
                 fast: FastDPSGD | None = None) -> None:
        model, objective = self.model, self.objective
        for group in self.opt.param_groups:  # the wrapped optimizers share these groups
            group["lr"] = scheduled_lr(self.cfg, self.steps, self.planned)
        self.steps += 1
        if len(batch) == 0:  # an empty Poisson batch still costs a (noise-only) step
            if fast is not None:
                fast.empty_step()
            else:
                optimizer.zero_grad(set_to_none=True)
                for p in model.parameters():
                    if p.requires_grad:
                        p.grad_sample = torch.zeros(0, *p.shape, device=p.device)
                optimizer.step()
            if self.ema is not None:
                self.ema.update(model)
            return
        batch = batch.to(self.device, non_blocking=True)
        views = [self.augment(batch, self.aug_gen) for _ in range(self.num_views)]
        optimizer.zero_grad(set_to_none=True)
        if fast is not None:
            with fast.record():
                per_record = objective.per_record_loss(module, views)
        else:
            with self.autocast:
                per_record = objective.per_record_loss(module, views)
            per_record = per_record.float()
        loss = per_record.mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"local loss became {loss.item()} at step {self.steps}; "
                                "lower the learning rate or check the data")
        if fast is not None:
            fast.step(per_record)
        else:
            loss.backward()
            optimizer.step()
        objective.after_step(module)
        if self.ema is not None:
            self.ema.update(model)
        self.losses.append(float(loss.detach()))


class ParameterEMA:
    """Exponential moving average of a model's floating-point parameters and buffers over
    optimizer steps, started at the first iterate (Polyak & Juditsky 1992; De et al. 2022
    for DP-SGD). A function of the DP-SGD iterates only: post-processing."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current values into the average."""
        state = model.state_dict()
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in state.items()
                           if v.is_floating_point()}
            return
        for k, v in self.shadow.items():
            v.mul_(self.decay).add_(state[k].detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the average into ``model`` (no-op before the first update)."""
        if self.shadow is None:
            return
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)


def select_dp_engine(name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                     ) -> str:
    """Resolve ``TrainConfig.dp_engine`` to "fast" or "hooks" for ``model``.

    Args:
        name: "auto", "fast" or "hooks".
        model: the model to train.
        optimizer: the optimizer whose parameters the engine clips.

    Returns:
        "fast" or "hooks".

    Raises:
        ValueError: for an unknown engine name.
        UnsupportedModelError: for "fast" on a model the fast engine cannot handle exactly.
    """
    if name not in ("auto", "fast", "hooks"):
        raise ValueError(f"dp_engine must be 'auto', 'fast' or 'hooks', got {name!r}")
    if name != "auto":
        return name
    params = [p for group in optimizer.param_groups for p in group["params"]]
    from fedssl.privacy.dp_sgd.fast_clip import unsupported_reason

    return "fast" if unsupported_reason(model, params) is None else "hooks"
