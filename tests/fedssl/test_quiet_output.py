"""What a new user sees: no third-party banners by default, fedssl's own warnings and the
phases of a run always, everything with --verbose (issue 15 item 1).

The banners are produced by the installed Flower itself (its FedAvg, its deprecation helper
with the message its ``run_simulation`` passes, read from its source), never retyped here;
the slow test runs a real, tiny ``fedssl simulate`` and reads its output.
"""

from __future__ import annotations

import ast
import inspect
import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from fedssl.quiet import is_noise, quiet_output

#: what must not reach the default output of `fedssl simulate`
BANNERS = ("DEPRECATED FEATURE", "run_simulation", "fraction_evaluate is set to 0.0",
           "Tip: In future versions of Ray", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
           "not writable", "UserWarning", "FutureWarning", "DeprecationWarning")


@contextmanager
def flower_records() -> Iterator[list[str]]:
    """The messages of every record the ``flwr`` logger hands to its handlers."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("flwr")
    handler = Keep(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def _run_simulation_banner() -> str:
    """The message Flower's ``run_simulation`` passes to ``warn_deprecated_feature``."""
    from flwr.simulation import run_simulation as module

    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") ==
                "warn_deprecated_feature" and node.args):
            return ast.literal_eval(node.args[0])
    raise AssertionError("Flower's run_simulation no longer calls warn_deprecated_feature")


def test_flower_fraction_evaluate_banner_is_dropped_by_default_shown_when_verbose() -> None:
    from flwr.serverapp.strategy import FedAvg

    with flower_records() as seen, quiet_output():
        FedAvg(fraction_evaluate=0.0)
    assert not any("fraction_evaluate" in m for m in seen)
    with flower_records() as seen, quiet_output(verbose=True):
        FedAvg(fraction_evaluate=0.0)
    assert any("fraction_evaluate is set to 0.0" in m for m in seen)


def test_run_simulation_deprecation_banner_is_dropped_by_default() -> None:
    from flwr.supercore.logger import warn_deprecated_feature

    banner = _run_simulation_banner()
    with flower_records() as seen, quiet_output():
        warn_deprecated_feature(banner)
    assert seen == []
    with flower_records() as seen:  # outside the block the filter is gone
        warn_deprecated_feature(banner)
    assert len(seen) == 1 and "DEPRECATED FEATURE" in seen[0]


def test_other_warnings_stay_visible() -> None:
    from flwr.supercore.logger import warn_deprecated_feature

    fedssl_log = logging.getLogger("fedssl.simulate")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    fedssl_log.addHandler(handler)
    try:
        with flower_records() as seen, quiet_output(), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logging.getLogger("flwr").warning("Connection attempt failed, retrying")
            warn_deprecated_feature("some other Flower feature")
            fedssl_log.warning("these rounds add noise, not learning")
            warnings.warn("a library's new FutureWarning", FutureWarning, stacklevel=1)
            warnings.warn("Tip: In future versions of Ray, Ray will no longer override "
                          "accelerator (not from Ray's worker)", FutureWarning, stacklevel=1)
    finally:
        fedssl_log.removeHandler(handler)
    assert any("Connection attempt failed" in m for m in seen)
    assert any("some other Flower feature" in m for m in seen)
    assert "noise, not learning" in stream.getvalue()
    # only Ray's own warning, from Ray's module, is filtered: the same text elsewhere shows
    assert [str(w.message)[:24] for w in caught] == ["a library's new FutureWa",
                                                    "Tip: In future versions "]


def test_ray_accelerator_tip_from_rays_worker_is_dropped() -> None:
    import ray._private.worker as worker

    text = ("Tip: In future versions of Ray, Ray will no longer override accelerator "
            "visible devices env var if num_gpus=0 or num_gpus=None (default).")
    assert text[:60] in inspect.getsource(worker)  # the installed Ray's own message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_output():
            warnings.warn_explicit(text, FutureWarning, worker.__file__, 1,
                                   module="ray._private.worker")
        warnings.warn_explicit(text, FutureWarning, worker.__file__, 1,
                               module="ray._private.worker")
    assert len(caught) == 1  # the second one, after the block


def test_supernode_lines() -> None:
    banner = _run_simulation_banner()
    assert is_noise(f"\x1b[93mWARNING \x1b[0m:   DEPRECATED FEATURE: {banner}")
    assert is_noise("WARNING :   fraction_evaluate is set to 0.0. Federated evaluation will "
                    "be skipped.")
    assert not is_noise("WARNING :   Connection attempt failed, retrying in 0.52 seconds")


def test_features_of_read_only_data_without_torch_warning() -> None:
    from fedssl.ssl_core.evaluation import extract_features

    x = np.random.default_rng(0).standard_normal((10, 1, 40)).astype(np.float32)
    x.flags.writeable = False  # as the run's shared, memory-mapped data cache is
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = extract_features(encoder, x)
    assert features.shape == (10, 3) and features.dtype == np.float32
    assert not x.flags.writeable  # the caller's array is untouched


def test_progress_names_each_phase(capsys: pytest.CaptureFixture[str]) -> None:
    from fedssl.server.progress import RunProgress

    progress = RunProgress(rounds=2, enabled=True)
    progress.phase("round 0/2: evaluating the initial encoder")
    progress.start_rounds()
    progress.phase("round 1/2: training")
    progress.round_done({"round": 1, "loss": -0.25, "linear_probe_accuracy": 0.5,
                         "epsilon_max": 3.0})
    progress.close()
    err = capsys.readouterr().err
    assert "round 0/2: evaluating the initial encoder" in err
    assert "round 1/2: training" in err
    assert "loss=-0.25" in err and "probe accuracy=0.5" in err and "epsilon spent=3" in err
    quiet = RunProgress(rounds=2, enabled=False)
    quiet.phase("round 1/2: training")
    quiet.close()
    assert capsys.readouterr().err == ""


def test_server_round_lines_say_k_of_n() -> None:
    from fedssl.server.superlink import format_round

    line = format_round({"round": 2, "clients": 3, "loss": -0.5, "epsilon_max": 4.0}, 5)
    assert line.startswith("round 2/5") and "max epsilon 4" in line
    assert format_round({"round": 0}, 5).startswith("round 0/5  (initial encoder)")


def test_every_command_has_verbose() -> None:
    from fedssl.cli import build_parser

    parser = build_parser()
    for argv in (["simulate"], ["audit", "run"],
                 ["server", "--certs", "c"],
                 ["client", "--server", "h:1", "--certs", "c", "--node-key", "k", "--data",
                  "d", "--state-dir", "s"]):
        assert parser.parse_args([*argv, "--verbose"]).verbose is True
        assert parser.parse_args(argv).verbose is False


def _simulate(out: Path, *extra: str) -> str:
    """stdout + stderr of a tiny real `fedssl simulate` run (a Ray simulation)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "RAY_"))}
    done = subprocess.run(
        [sys.executable, "-m", "fedssl.cli", "simulate", "--num-clients", "2",
         "--num-samples", "300", "--eval-samples", "100", "--rounds", "1", "--no-dp",
         "--few-label", "", "--finetune", "", "--out", str(out), *extra],
        capture_output=True, text=True, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_simulate_default_output_is_fedssls_own_verbose_shows_flower(tmp_path: Path) -> None:
    out = _simulate(tmp_path / "quiet")
    for banner in BANNERS:
        assert banner not in out, f"{banner!r} in the default output:\n{out[-3000:]}"
    for phase in ("[fedssl simulate] data:", "[fedssl simulate] start-up:",
                  "round 0/1: evaluating the initial encoder", "warm-up:",
                  "round 1/1: training", "round 1/1: evaluating", "loss=",
                  "probe accuracy=", "final evaluation", "| encoder |"):
        assert phase in out, f"{phase!r} missing from the default output:\n{out[-3000:]}"

    loud = _simulate(tmp_path / "verbose", "--verbose")
    assert "DEPRECATED FEATURE" in loud  # Flower's log, banners included
    assert "fraction_evaluate is set to 0.0" in loud
    assert "Tip: In future versions of Ray" in loud
    assert "| encoder |" in loud
