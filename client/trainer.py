"""Local SSL training of one client's encoder, with or without DP-SGD.

Flower-free on purpose: the same loop trains a federated client's round, a centralized
baseline and the benchmarks. One call runs ``epochs`` passes over the local records:

- without DP: shuffled mini-batches, mean loss, SGD with momentum;
- with DP: Poisson sampling at rate ``batch_size / n``, one gradient per record summed over
  all its views, clipped and noised by one of two engines with identical sampling, clipping,
  noise and accounting (``TrainConfig.dp_engine``): :class:`fedssl.privacy.fast_clip.FastDPSGD`
  (book-keeping / ghost norms, one backward; the default for every model it supports) or
  :class:`fedssl.privacy.dp_sgd.DPSGD` (Opacus hooks mode; any model Opacus supports).
"""

from __future__ import annotations

import contextlib
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedssl.privacy.dp_sgd import DPSoundnessError
from fedssl.ssl_core.host_memory import retain_freed_memory
from fedssl.ssl_core.objectives.base import Objective

if TYPE_CHECKING:
    from fedssl.privacy.fast_clip import FastDPSGD


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
    #: DP-SGD engine: "fast" (:mod:`fedssl.privacy.fast_clip`; raises for models it cannot
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
    """Optimizer steps in one epoch: ``1/q`` Poisson batches under DP, else ceil(n/B)."""
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

    Raises:
        TrainingError: on an empty data set or a non-finite loss.
        DPSoundnessError: if ``cfg.dp`` and the objective is not per-record decomposable.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cfg.retain_host_memory:
        retain_freed_memory()
    data = torch.as_tensor(x, dtype=torch.float32)
    if len(data) == 0:
        raise TrainingError("no local records to train on")
    if cfg.amp and cfg.dp:
        raise DPSoundnessError("mixed precision is refused under DP: per-record norms in "
                               "reduced precision could exceed the clip bound unnoticed")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and cuda
                else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    objective.start_round(model)
    start = time.perf_counter()
    losses: list[float] = []
    steps = 0

    def step(module: torch.nn.Module, batch: torch.Tensor, optimizer,
             fast: FastDPSGD | None = None) -> None:
        nonlocal steps
        steps += 1
        if len(batch) == 0:  # an empty Poisson batch still costs a (noise-only) step
            if fast is not None:
                fast.empty_step()
                return
            optimizer.zero_grad(set_to_none=True)
            for p in model.parameters():
                if p.requires_grad:
                    p.grad_sample = torch.zeros(0, *p.shape, device=p.device)
            optimizer.step()
            return
        batch = batch.to(device, non_blocking=True)
        views = [augment(batch, aug_gen) for _ in range(objective.num_views)]
        optimizer.zero_grad(set_to_none=True)
        if fast is not None:
            with fast.record():
                per_record = objective.per_record_loss(module, views)
        else:
            with autocast:
                per_record = objective.per_record_loss(module, views)
            per_record = per_record.float()
        loss = per_record.mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"local loss became {loss.item()} at step {steps}; "
                                "lower the learning rate or check the data")
        if fast is not None:
            fast.step(per_record)
        else:
            loss.backward()
            optimizer.step()
        objective.after_step(module)
        losses.append(float(loss.detach()))

    engine = ""
    if cfg.dp:
        engine = select_dp_engine(cfg.dp_engine, model, opt)
        from fedssl.privacy.dp_sgd import DPSGD  # opacus: imported only when DP is on
        from fedssl.privacy.fast_clip import FastDPSGD

        dp_cls = FastDPSGD if engine == "fast" else DPSGD
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
                    step(dp.module, batch, dp.optimizer, fast)
        sample_rate = dp.sample_rate
    else:
        loader = DataLoader(TensorDataset(data), batch_size=cfg.batch_size, shuffle=True,
                            generator=gen, drop_last=len(data) > cfg.batch_size,
                            pin_memory=cuda)
        for _ in range(cfg.epochs):
            for (batch,) in loader:
                step(model, batch, opt)
        sample_rate = min(1.0, cfg.batch_size / len(data))
    return TrainResult(
        loss=float(np.mean(losses)) if losses else float("nan"), steps=steps,
        sample_rate=sample_rate, num_examples=len(data), seconds=time.perf_counter() - start,
        dp_engine=engine,
    )


def select_dp_engine(name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                     ) -> str:
    """Resolve ``TrainConfig.dp_engine`` to "fast" or "hooks" for ``model``.

    Raises:
        ValueError: for an unknown engine name.
        UnsupportedModelError: for "fast" on a model the fast engine cannot handle exactly.
    """
    if name not in ("auto", "fast", "hooks"):
        raise ValueError(f"dp_engine must be 'auto', 'fast' or 'hooks', got {name!r}")
    if name != "auto":
        return name
    params = [p for group in optimizer.param_groups for p in group["params"]]
    from fedssl.privacy.fast_clip import unsupported_reason

    return "fast" if unsupported_reason(model, params) is None else "hooks"
