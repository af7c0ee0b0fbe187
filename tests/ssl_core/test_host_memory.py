"""Host memory retention (ssl_core/host_memory.py): a DP-SGD step stops faulting pages in.

Each check runs in a fresh interpreter (the setting is process-wide and cannot be undone) and
counts the process's minor page faults (``getrusage``) over real fast-engine DP-SGD steps of
the 8x8 ResNet SimSiam model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedssl.ssl_core import host_memory

pytestmark = pytest.mark.skipif(host_memory._mallopt() is None,
                                reason="needs glibc's mallopt (Linux)")

_STEPS = """
import json, resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "retain":
    from fedssl.ssl_core.host_memory import retain_freed_memory
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
from fedssl.privacy.dp_sgd.fast_clip import FastClipper
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.objectives import get_objective
obj = get_objective("simsiam")
torch.manual_seed(0)
model = obj.build_model((1, 8, 8))
x = torch.randn(64, 1, 8, 8)
aug, gen = augment_for((1, 8, 8)), torch.Generator().manual_seed(1)
clipper, faults = FastClipper(model), []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    views = [aug(x, gen) for _ in range(2)]
    with clipper.record():
        losses = obj.per_record_loss(model, views)
    clipper.clipped_sum(losses, 1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_is_reused_without_page_faults() -> None:
    faults = sorted(_faults("retain")[4:])  # after the first steps have sized the heap
    # one step touches ~10 MB of temporaries (~2500 pages): reused, almost none fault in
    assert faults[len(faults) // 2] < 100, faults


def test_train_local_retains_host_memory_unless_told_not_to(monkeypatch) -> None:
    import torch

    from fedssl.client.trainer import TrainConfig, train_local
    from fedssl.ssl_core.augmentations import augment_for
    from fedssl.ssl_core.objectives import get_objective

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr("fedssl.client.trainer.retain_freed_memory",
                        lambda *a: calls.append(a) or True)
    obj = get_objective("simsiam")
    x = torch.randn(16, 1, 40)
    for retain in (True, False):
        train_local(obj.build_model((1, 40)), obj, x, augment_for((1, 40)),
                    TrainConfig(batch_size=8, retain_host_memory=retain))
    assert len(calls) == 1


def test_refused_values_report_false(monkeypatch) -> None:
    monkeypatch.setattr(host_memory, "_outcomes", {})
    monkeypatch.setattr(host_memory, "_mallopt", lambda: (lambda param, value: 0))
    assert host_memory.retain_freed_memory() is False
    monkeypatch.setattr(host_memory, "_outcomes", {})
    monkeypatch.setattr(host_memory, "_mallopt", lambda: None)
    assert host_memory.retain_freed_memory() is False
