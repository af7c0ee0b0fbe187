"""benchmarks/proc_memory.py: the tree sampler sees a process's memory grow, with PSS read
only when RSS grew (or rarely), so that the sampler does not load the cores it measures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import proc_memory  # benchmarks/ is not a package

GROW = ("import sys\n"
        "print('small', flush=True); sys.stdin.readline()\n"
        "block = b'x' * (160 * 2**20)\n"
        "print('big', flush=True); sys.stdin.readline()\n")
MIB = 1024  # KiB


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_pss_is_sampled_when_rss_grows(monkeypatch) -> None:
    monkeypatch.setattr(proc_memory, "PSS_EVERY", 10**9)  # only growth can trigger a sample
    child = subprocess.Popen([sys.executable, "-c", GROW], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "small"
        with proc_memory.TreeMemory(child.pid, interval=0.01) as mem:
            _wait(lambda: mem.peak_pss > 0, "the first sample")
            assert mem.peak_pss < 100 * MIB
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "big"
            _wait(lambda: mem.peak_pss >= 150 * MIB, "a PSS sample after the growth")
        assert mem.peak_rss >= 150 * MIB and mem.max_procs == 1 and child.pid in mem.pids
        assert mem.peak_pss_by_label and sum(mem.peak_pss_by_label.values()) == mem.peak_pss
    finally:
        child.kill()
        child.wait()
