"""Benchmark: per-step cost of DP-SGD vs non-DP training, and faster *sound* alternatives.

Why: the issue "Simulation at scale and speed" targets DP-SGD at most 1.3x a non-DP step. A
client's local step under DP computes one gradient per record *summed over all views of that
record* (SimSiam: two views, the model called once per view), clips it, sums and adds noise.
This script times, for each encoder fedssl builds (:class:`fedssl.ssl_core.heads.SSLModel`):
the 1-D CNN on ``(1, 40)`` records (batch 64 and 256) and the small ResNet on ``(1, 28, 28)``
and ``(1, 8, 8)`` images:

* ``non-DP``  - augment two views, ``per_record_loss(...).mean()``, backward, SGD step (the
  no-DP branch of :func:`fedssl.client.trainer.train_local`);
* ``hooks``   - fedssl's engine, :class:`fedssl.privacy.dp_sgd.opacus_engine.DPSGD` (Opacus
  ``GradSampleModule`` hooks mode + ``DPOptimizer``), the same step as the DP branch of
  ``train_local`` with a fixed batch (no Poisson size jitter);
* ``opacus-functorch`` - Opacus ``GradSampleModule(force_functorch=True)`` (per-layer
  ``torch.func`` instead of the hand-written grad samplers; hooks still sum the views);
* ``opacus-ew`` - Opacus ``grad_sample_mode="ew"`` (PyTorch ExpandedWeights);
* ``vmap``    - ``torch.func.vmap(grad(loss_of_one_record))`` where the vmapped function
  computes one record's SimSiam loss from *both* of its views, so each per-sample gradient
  covers all views of the record; then per-record clipping, Gaussian noise and SGD by hand
  (the same arithmetic as Opacus's ``DPOptimizer``);
* ``opacus-ghost`` - Opacus 1.6's own ghost clipping (``grad_sample_mode="ghost"``:
  ``GradSampleModuleFastGradientClipping`` with ``use_ghost_clipping=True``,
  ``DPOptimizerFastGradientClipping``, the loss wrapped in ``DPTensorFastGradientClipping``;
  Li et al. 2022). Its CHECK compares its per-record norms with hooks mode's. It refuses a
  layer called more than once in a step ("Parameter tying is not supported with Ghost
  Clipping"), which every multi-view objective does (the encoder runs once per view), so it
  cannot clip all views of a record together: that is why fedssl keeps its own engine;
* ``fast``    - fedssl's book-keeping / ghost-norm engine,
  :class:`fedssl.privacy.dp_sgd.fast_clip.FastDPSGD` (one backward; per-record norms and the clipped
  sum from each layer's inputs and output gradients), the DP branch of ``train_local`` by
  default. It never materialises all per-sample gradients, so its CHECK compares what DP-SGD
  uses: the per-record norms with hooks mode's per-sample gradient norms, and the clipped sums
  at C = ``CLIP`` and at a C that clips every record with hooks mode's (max relative diff).

Every alternative is first CHECKED: its per-sample gradients for a fixed batch and model must
equal the hooks-mode ones (max abs diff reported; ``allclose(rtol=1e-4, atol=1e-6)``). One that
does not match (or raises) is reported as unsound/unsupported and not timed as a candidate.

Timing: ``torch`` threads = ``--threads`` (1, as each simulated client gets), ``--warmup``
steps, then the median of ``--steps`` steps, the modes of a setting interleaved step by step
(so a load swing on the shared machine hits every mode alike); ratio = median DP step /
median non-DP step. Like ``train_local``, the process first keeps freed host memory for
reuse (:mod:`fedssl.ssl_core.host_memory`; ``--default-malloc`` leaves glibc as it is, for a
before/after comparison in a separate run).
Also one end-to-end row per encoder through :func:`fedssl.client.trainer.train_local`
(``dp=False`` vs ``dp=True`` with ``dp_engine="hooks"`` and ``"fast"``, Poisson batches under
DP), and one per encoder from fresh processes that run only the non-DP and fast DP steps (as
a client process does), with glibc's malloc as it is and with freed host memory retained, in
the order default / retained / retained / default against drift. The machine is shared: the
load average is recorded.

Usage::

    python benchmarks/dp_sgd.py --quick     # fewer steps (~2 min)
    python benchmarks/dp_sgd.py             # (~6 min)

Results: ``benchmarks/results/dp_sgd.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

from fedssl.client.trainer import TrainConfig, train_local
from fedssl.privacy.dp_sgd.fast_clip import FastClipper, FastDPSGD
from fedssl.privacy.dp_sgd.opacus_engine import DPSGD, clipped_gradient_sum
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.host_memory import retain_freed_memory
from fedssl.ssl_core.objectives import get_objective

RESULTS = Path(__file__).resolve().parent / "results"
NOISE, CLIP, LR = 1.0, 1.0, 0.05
ALTERNATIVES = ("opacus-functorch", "opacus-ew", "opacus-ghost", "vmap", "fast")


@dataclass(frozen=True)
class Setting:
    """One encoder / record shape / batch size."""

    name: str
    shape: tuple[int, ...]
    batch: int


SETTINGS = (
    Setting("1-D CNN", (1, 40), 64),
    Setting("1-D CNN", (1, 40), 256),
    Setting("ResNet", (1, 28, 28), 64),
    Setting("ResNet", (1, 8, 8), 64),
    Setting("ResNet", (1, 8, 8), 256),
)

objective = get_objective("simsiam")
warnings.filterwarnings("ignore")


def build(shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return objective.build_model(shape)


def data_for(s: Setting, seed: int = 0) -> torch.Tensor:
    return torch.randn(s.batch, *s.shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ per-sample grads
def grads_opacus(model: nn.Module, views: list[torch.Tensor], mode: str
                 ) -> dict[str, torch.Tensor]:
    """Per-record gradients of ``per_record_loss`` (summed over views) from an Opacus module."""
    if mode == "opacus-ew":
        gsm: nn.Module = GradSampleModuleExpandedWeights(model, loss_reduction="sum")
    else:
        gsm = GradSampleModule(model, loss_reduction="sum",
                               force_functorch=mode == "opacus-functorch")
    try:
        objective.per_record_loss(gsm, views).sum().backward()
        return {n: p.grad_sample.detach().clone() for n, p in model.named_parameters()}
    finally:
        if hasattr(gsm, "_close"):
            gsm._close()
        for p in model.parameters():
            p.grad, p.grad_sample = None, None


def make_vmap_grads(model: nn.Module) -> Callable[..., dict[str, torch.Tensor]]:
    """``f(params, *views) -> per-record grads``: vmap over records of grad of the loss of
    ONE record computed from all its views (so the row covers every view of the record)."""

    def loss_of_record(params: dict[str, torch.Tensor], *views: torch.Tensor) -> torch.Tensor:
        def fwd(x: torch.Tensor) -> Any:
            return functional_call(model, params, (x,))

        return objective.per_record_loss(fwd, [v.unsqueeze(0) for v in views]).sum()

    return vmap(grad(loss_of_record), in_dims=(None, *([0] * objective.num_views)))


def grads_vmap(model: nn.Module, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    params = {n: p.detach() for n, p in model.named_parameters()}
    return make_vmap_grads(model)(params, *views)


def check_reference(s: Setting, records: int = 4) -> float:
    """Max abs diff of hooks-mode rows vs plain autograd on each record alone (both views)."""
    model = build(s.shape)
    x = data_for(s)
    gen = torch.Generator().manual_seed(1)
    aug = augment_for(s.shape)
    views = [aug(x, gen) for _ in range(objective.num_views)]
    ref = grads_opacus(model, views, "hooks")
    worst = 0.0
    for i in range(records):
        model.zero_grad(set_to_none=True)
        objective.per_record_loss(model, [v[i:i + 1] for v in views]).sum().backward()
        worst = max(worst, *(float((p.grad - ref[n][i]).abs().max())
                             for n, p in model.named_parameters()))
    model.zero_grad(set_to_none=True)
    return worst


def check_batch(s: Setting) -> tuple[nn.Module, list[torch.Tensor]]:
    """The model and the fixed views every CHECK compares on (seeded, as hooks mode sees)."""
    model = build(s.shape)
    x = data_for(s)
    gen = torch.Generator().manual_seed(1)
    aug = augment_for(s.shape)
    return model, [aug(x, gen) for _ in range(objective.num_views)]


def hooks_norms(model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Hooks mode's per-record gradient norms (all views of a record summed)."""
    ref = grads_opacus(model, views, "hooks")
    return torch.stack([g.flatten(1).norm(dim=1) for g in ref.values()]).norm(dim=0)


def check_fast(s: Setting) -> dict[str, Any]:
    """Compare the fast engine's per-record norms and clipped sums with hooks mode's."""
    model, views = check_batch(s)
    ref_norms = hooks_norms(model, views)
    worst = 0.0
    try:
        for c in (CLIP, 1e-3):
            with FastClipper(model) as clipper:
                with clipper.record():
                    losses = objective.per_record_loss(model, views)
                sums, norms = clipper.clipped_sum(losses, c)
            got = torch.cat([t.reshape(-1) for t in sums])
            want = clipped_gradient_sum(model, objective, views, c, engine="hooks")
            worst = max(worst, float((got - want).norm() / want.norm()),
                        float(((norms - ref_norms).abs() / ref_norms).max()))
    except Exception as exc:
        return {"sound": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"sound": worst < 1e-4, "max_abs_diff": worst, "diff_kind": "max rel diff"}


def ghost_norms(model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Per-record gradient norms from Opacus's ghost clipping (raises where it refuses)."""
    gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=CLIP,
                                               use_ghost_clipping=True, loss_reduction="sum")
    try:
        objective.per_record_loss(gsm, views).sum().backward()
        return gsm.get_norm_sample().detach().clone()
    finally:
        if hasattr(gsm, "_close"):
            gsm._close()
        for p in model.parameters():
            p.grad = None


def check_ghost(s: Setting) -> dict[str, Any]:
    """Opacus ghost clipping's per-record norms against hooks mode's (all views summed)."""
    model, views = check_batch(s)
    want = hooks_norms(model, views)
    try:
        got = ghost_norms(build(s.shape), views)
    except Exception as exc:  # an unsupported mode is a finding, not a crash
        return {"sound": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    diff = float((got - want).abs().max())
    return {"sound": bool(torch.allclose(got, want, rtol=1e-4, atol=1e-6)),
            "max_abs_diff": diff, "diff_kind": "max abs diff of per-record norms"}


def check(s: Setting, mode: str) -> dict[str, Any]:
    """Compare ``mode``'s per-sample gradients with hooks mode on one fixed batch."""
    if mode == "fast":
        return check_fast(s)
    if mode == "opacus-ghost":
        return check_ghost(s)
    model, views = check_batch(s)
    ref = grads_opacus(model, views, "hooks")
    try:
        got = grads_vmap(model, views) if mode == "vmap" else grads_opacus(model, views, mode)
    except Exception as exc:  # an unsupported mode is a finding, not a crash
        return {"sound": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    diff = max(float((got[n] - ref[n]).abs().max()) for n in ref)
    scale = max(float(ref[n].abs().max()) for n in ref)
    ok = all(got[n].shape == ref[n].shape and torch.allclose(got[n], ref[n], rtol=1e-4,
                                                             atol=1e-6) for n in ref)
    return {"sound": ok, "max_abs_diff": diff, "max_abs_grad": scale}


# ------------------------------------------------------------------------------ steps
def step_fn(s: Setting, mode: str) -> Callable[[], None]:
    """One optimizer step of ``mode`` on a fresh model (closure over its state)."""
    model = build(s.shape)
    x = data_for(s)
    gen = torch.Generator().manual_seed(2)
    aug = augment_for(s.shape)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)

    def views() -> list[torch.Tensor]:
        return [aug(x, gen) for _ in range(objective.num_views)]

    if mode == "non-DP":
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            objective.per_record_loss(model, views()).mean().backward()
            opt.step()
        return run

    if mode == "vmap":
        per_sample = make_vmap_grads(model)
        names = [n for n, _ in model.named_parameters()]
        params = dict(model.named_parameters())
        noise_gen = torch.Generator().manual_seed(3)

        def run() -> None:
            g = per_sample({n: p.detach() for n, p in params.items()}, *views())
            norms = torch.stack([g[n].flatten(1).norm(dim=1) for n in names]).norm(dim=0)
            factor = (CLIP / (norms + 1e-6)).clamp(max=1.0)
            for n in names:
                summed = torch.einsum("i,i...->...", factor, g[n])
                noise = torch.normal(0.0, NOISE * CLIP, summed.shape, generator=noise_gen)
                params[n].grad = (summed + noise) / s.batch
            opt.step()
        return run

    if mode == "fast":  # fedssl's default engine, exactly as train_local's DP branch uses it
        fast = FastDPSGD(model, opt, x, s.batch, NOISE, CLIP, objective)

        def run_fast() -> None:
            v = views()
            opt.zero_grad(set_to_none=True)
            with fast.record():
                losses = objective.per_record_loss(model, v)
            fast.step(losses)
        return run_fast

    if mode == "opacus-ghost":  # timed only where its CHECK passed
        ghost = GradSampleModuleFastGradientClipping(model, max_grad_norm=CLIP,
                                                     use_ghost_clipping=True,
                                                     loss_reduction="mean")
        ghost_opt = DPOptimizerFastGradientClipping(
            opt, noise_multiplier=NOISE, max_grad_norm=CLIP, expected_batch_size=s.batch,
            loss_reduction="mean")

        def run_ghost() -> None:
            ghost_opt.zero_grad(set_to_none=True)
            DPTensorFastGradientClipping(ghost, ghost_opt,
                                         objective.per_record_loss(ghost, views()),
                                         "mean").backward()
            ghost_opt.step()
        return run_ghost

    if mode == "hooks":  # Opacus engine, exactly as train_local's DP branch uses it
        dp = DPSGD(model, opt, x, s.batch, NOISE, CLIP, objective)
        module, optimizer = dp.module, dp.optimizer
    else:
        if mode == "opacus-ew":
            module = GradSampleModuleExpandedWeights(model, loss_reduction="mean")
        else:
            module = GradSampleModule(model, loss_reduction="mean", force_functorch=True)
        optimizer = DPOptimizer(opt, noise_multiplier=NOISE, max_grad_norm=CLIP,
                                expected_batch_size=s.batch, loss_reduction="mean")

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective.per_record_loss(module, views()).mean().backward()
        optimizer.step()
    return run


def end_to_end(s: Setting, dp: bool, batches: int, engine: str = "auto",
               retain: bool = True) -> float:
    """Seconds per step of a real ``train_local`` call (Poisson batches under DP)."""
    model = build(s.shape)
    x = torch.randn(s.batch * batches, *s.shape, generator=torch.Generator().manual_seed(4))
    cfg = TrainConfig(batch_size=s.batch, seed=5, dp=dp, noise_multiplier=NOISE,
                      max_grad_norm=CLIP, dp_engine=engine, dp_seed=5,
                      retain_host_memory=retain)
    train_local(model, objective, x[: s.batch * 2], augment_for(s.shape), cfg)  # warm-up
    res = train_local(model, objective, x, augment_for(s.shape), cfg)
    return res.seconds / res.steps


# ------------------------------------------------------------------------------ isolated runs
def isolated_steps(shape: tuple[int, ...], batch: int, steps: int, retain: bool
                   ) -> dict[str, float]:
    """Median non-DP and fast-DP step times measured in a fresh interpreter that runs only
    these two modes (interleaved), as a client process does; with or without the host memory
    retention of :mod:`fedssl.ssl_core.host_memory`, which is process-wide and would
    otherwise be shaped by the other modes' allocations."""
    cmd = [sys.executable, __file__, "--isolated", "x".join(map(str, shape)), str(batch),
           "--steps", str(steps), *([] if retain else ["--default-malloc"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_isolated(spec: str, batch: int, steps: int, warmup: int, retain: bool) -> None:
    """Child side of :func:`isolated_steps`: print one JSON line."""
    s = Setting("isolated", tuple(int(d) for d in spec.split("x")), batch)
    retained = retain_freed_memory() if retain else False
    fns = {m: step_fn(s, m) for m in ("non-DP", "fast")}
    times: dict[str, list[float]] = {m: [] for m in fns}
    for i in range(warmup + steps):
        for m, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[m].append(time.perf_counter() - t)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    print(json.dumps({"retained": retained, "nondp": med["non-DP"], "fast": med["fast"],
                      "ratio": med["fast"] / med["non-DP"]}))


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 per client)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (train_local otherwise keeps freed "
                         "memory in the process, fedssl.ssl_core.host_memory; the setting "
                         "is process-wide, so compare separate runs)")
    ap.add_argument("--out", default=str(RESULTS / "dp_sgd.json"))
    ap.add_argument("--isolated", nargs=2, metavar=("SHAPE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.isolated:
        torch.set_num_threads(args.threads)
        run_isolated(args.isolated[0], int(args.isolated[1]), args.steps or 30,
                     args.warmup or 5, not args.default_malloc)
        return
    retained = False if args.default_malloc else retain_freed_memory()
    warmup = args.warmup or (2 if args.quick else 3)
    steps = args.steps or (5 if args.quick else 15)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    modes = ("non-DP", "hooks", *ALTERNATIVES)
    for s in tqdm(SETTINGS, desc="settings", unit="setting"):
        fns: dict[str, Callable[[], None]] = {}
        cell: dict[str, dict[str, Any]] = {}
        for m in modes:
            row: dict[str, Any] = {"encoder": s.name, "shape": list(s.shape),
                                   "batch": s.batch, "mode": m, "loadavg": os.getloadavg()}
            cell[m] = row
            rows.append(row)
            if m == "hooks":
                row["max_abs_diff_vs_autograd"] = check_reference(s)
            if m in ALTERNATIVES:
                row.update(check(s, m))
                if not row["sound"]:
                    continue
            try:
                fns[m] = step_fn(s, m)
                for _ in range(warmup):
                    fns[m]()
            except Exception as exc:
                row.update({"sound": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                fns.pop(m, None)
        # interleaved: each repetition runs every mode once, so load swings hit all alike
        times: dict[str, list[float]] = {m: [] for m in fns}
        for _ in range(steps):
            for m, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[m].append(time.perf_counter() - t)
        for m, ts in times.items():
            cell[m]["step_seconds"] = statistics.median(ts)
            cell[m]["step_seconds_all"] = ts
    for s in SETTINGS:
        base = next(r for r in rows if r["mode"] == "non-DP" and r["batch"] == s.batch
                    and r["shape"] == list(s.shape))
        for r in rows:
            if r["batch"] == s.batch and r["shape"] == list(s.shape) and "step_seconds" in r:
                r["ratio_vs_nondp"] = r["step_seconds"] / base["step_seconds"]
    e2e = []
    for s in tqdm([s for s in SETTINGS if s.batch == 64], desc="train_local", unit="enc"):
        nb = 4 if args.quick else 8
        e2e.append({"encoder": s.name, "shape": list(s.shape), "batch": s.batch,
                    "nondp_step_seconds": end_to_end(s, False, nb, retain=retained),
                    "dp_step_seconds": end_to_end(s, True, nb, "hooks", retained),
                    "dp_fast_step_seconds": end_to_end(s, True, nb, "fast", retained)})
        e2e[-1]["ratio"] = e2e[-1]["dp_step_seconds"] / e2e[-1]["nondp_step_seconds"]
        e2e[-1]["ratio_fast"] = (e2e[-1]["dp_fast_step_seconds"]
                                 / e2e[-1]["nondp_step_seconds"])

    # host memory retention on/off, each in fresh processes (ABBA order against drift)
    iso = []
    for s in tqdm([s for s in SETTINGS if s.batch == 64], desc="isolated", unit="enc"):
        n = max(8, (steps * 2) if s.shape == (1, 28, 28) else steps * 6)
        runs = {True: [], False: []}
        for retain in (False, True, True, False):
            runs[retain].append(isolated_steps(s.shape, s.batch, n, retain))
        row: dict[str, Any] = {"encoder": s.name, "shape": list(s.shape), "batch": s.batch,
                               "steps": n}
        for retain, key in ((False, "default"), (True, "retained")):
            row[key] = {k: statistics.mean(r[k] for r in runs[retain])
                        for k in ("nondp", "fast", "ratio")}
        iso.append(row)

    lines = ["| encoder | input | batch | mode | sound (max abs diff vs hooks) | ms/step "
             "(median) | x non-DP |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if r["mode"] in ALTERNATIVES:
            diff = r.get("max_abs_diff", float("nan"))
            kind = " rel" if r.get("diff_kind") else ""
            sound = (f"yes ({diff:.1e}{kind})" if r.get("sound") else
                     f"NO: {r.get('error') or f'max abs diff {diff:.1e}'}")
        else:
            sound = (f"reference ({r['max_abs_diff_vs_autograd']:.1e} vs per-record "
                     "autograd)" if r["mode"] == "hooks" else "-")
        ms = f"{1e3 * r['step_seconds']:.1f}" if "step_seconds" in r else "-"
        ratio = f"{r['ratio_vs_nondp']:.2f}" if "ratio_vs_nondp" in r else "-"
        lines.append(f"| {r['encoder']} | {shape} | {r['batch']} | {r['mode']} | "
                     f"{sound[:90]} | {ms} | {ratio} |")
    lines += ["", "| encoder | input | batch | train_local ms/step non-DP | DP hooks (Poisson) "
                  "| x | DP fast (Poisson) | x |", "|---|---|---|---|---|---|---|---|"]
    for e in e2e:
        lines.append(f"| {e['encoder']} | {'x'.join(map(str, e['shape']))} | {e['batch']} | "
                     f"{1e3 * e['nondp_step_seconds']:.1f} | {1e3 * e['dp_step_seconds']:.1f} | "
                     f"{e['ratio']:.2f} | {1e3 * e['dp_fast_step_seconds']:.1f} | "
                     f"{e['ratio_fast']:.2f} |")
    lines += ["", "Fresh processes with only non-DP and fast DP (as a client runs), glibc malloc "
                  "as is vs freed host memory retained (mean of two runs each):", "",
              "| encoder | input | batch | non-DP ms | fast DP ms | x | non-DP ms (retained) "
              "| fast DP ms (retained) | x |", "|---|---|---|---|---|---|---|---|---|"]
    for r in iso:
        d, k = r["default"], r["retained"]
        lines.append(f"| {r['encoder']} | {'x'.join(map(str, r['shape']))} | {r['batch']} | "
                     f"{1e3 * d['nondp']:.1f} | {1e3 * d['fast']:.1f} | {d['ratio']:.2f} | "
                     f"{1e3 * k['nondp']:.1f} | {1e3 * k['fast']:.1f} | {k['ratio']:.2f} |")
    md = "\n".join(lines)
    print(md)
    print(f"\ntorch threads {args.threads}; freed host memory retained (glibc mallopt): "
          f"{retained}; load average start {load_start}, end {os.getloadavg()}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__},
        "threads": args.threads, "warmup": warmup, "steps": steps,
        "host_memory_retained": retained,
        "noise_multiplier": NOISE, "max_grad_norm": CLIP,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "steps_table": rows, "train_local": e2e, "isolated_processes": iso, "table": md,
    }, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
