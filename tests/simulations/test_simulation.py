"""End to end: ``fedssl simulate`` on Flower's simulation engine (Ray) writes the run directory
of docs/simulation.md's "Run directory", and bad input ends in a clear error before any actor
starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedssl.cli import build_parser
from fedssl.privacy.identity.keys import load_public_key
from fedssl.privacy.identity.ledger import read_ledger
from fedssl.simulations.config import ExperimentConfig
from fedssl.simulations.faults import planned_fault

FEDSSL = [sys.executable, "-m", "fedssl.cli"]


def _tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([*FEDSSL, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.slow
def test_three_clients_two_rounds_with_dp(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _run("simulate", "--num-clients", "3", "--rounds", "2", "--num-samples", "600",
                "--partitioner", "dirichlet", "--dirichlet-alpha", "1.0", "--dp",
                "--target-epsilon", "5", "--eval-samples", "300", "--out", str(out),
                "--site-budgets", "client-001=0.1", "--tensorboard", "--finetune", "5",
                "--finetune-seeds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| federated simsiam |" in proc.stdout and "client-002" in proc.stdout
    assert "client-001 refused round(s) 1, 2: privacy budget would be exceeded" in proc.stdout

    report = json.loads((out / "report.json").read_text())
    for key in ("method", "dataset", "clients", "rounds", "linear_probe_accuracy",
                "knn_accuracy", "wall_seconds", "privacy"):
        assert key in report
    assert report["clients"] == 3 and report["rounds"] == 2
    assert 0.1 < report["linear_probe_accuracy"] <= 1.0
    clients = report["privacy"]["clients"]
    assert sorted(clients) == ["client-000", "client-002"]  # client-001's budget is too small
    assert [r["round"] for r in report["refusals"]["client-001"]] == [1, 2]
    for cid, p in clients.items():
        assert 0 < p["epsilon"] <= 5.0
        entries = read_ledger(out / "ledger" / f"{cid}.jsonl",
                              load_public_key(out / "ledger" / f"{cid}.pub"))
        assert [e.round for e in entries] == [1, 2]
        assert p["steps"] == sum(e.steps for e in entries)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and "client-001" in r["refused"] for r in rows[1:])
    assert {"loss", "seconds", "linear_probe_accuracy", "knn_accuracy"} <= set(rows[2])
    assert {"linear_probe_1shot", "knn_10shot"} <= set(report["few_label"])
    # random init's few-label probes and every evaluation's collapse metric (issue 13)
    assert {"linear_probe_1shot", "knn_10shot"} <= set(report["random_init"])
    assert all({"feature_std_ratio", "effective_rank"} <= set(r) for r in (rows[0], rows[2]))
    assert "| 5-shot linear |" in proc.stdout
    # the label-efficiency table (issue 21 item 1): printed, and in report.json
    table = report["label_efficiency"]
    assert table["shots"] == [5] and table["seeds"] == [0, 1]
    assert [r["kind"] for r in table["rows"]] == ["raw-input", "from-scratch", "frozen",
                                                 "fine-tuned"]
    assert "gain of federated encoder fine-tuned over from scratch" in proc.stdout
    assert (out / "checkpoints" / "round-0002.safetensors").exists()
    assert json.loads((out / "checkpoints" / "state.json").read_text())["round"] == 2
    assert (out / "encoder.safetensors").stat().st_size > 1000
    assert ExperimentConfig.load(out / "config.toml").num_clients == 3
    for plot in ("loss", "accuracy", "epsilon", "collapse"):
        assert (out / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    # --tensorboard (issue 15 item 5a): the rows and the ledgers' epsilons as scalars
    scalars = _tensorboard(out)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2]
    assert [s for s, _ in scalars["eval/linear_probe_accuracy"]] == [0, 1, 2]
    assert [s for s, _ in scalars["privacy/epsilon/client-002"]] == [1, 2]
    assert "privacy/epsilon/client-001" not in scalars  # it never trained
    assert scalars["time/round_seconds"][-1][1] == pytest.approx(rows[2]["seconds"])
    # the exported encoder rebuilds from its own record (issue 15 item 4a)
    import fedssl

    assert fedssl.load_encoder(out).arch_kwargs["in_channels"] == 1

    again = _run("simulate", "--out", str(out), "--rounds", "1")
    assert again.returncode == 2 and "already holds a run" in again.stderr

    # crash after round 1's checkpoint: round 2 never happened anywhere
    (out / "checkpoints" / "round-0002.safetensors").unlink()
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    state.update(round=1, weights="round-0001.safetensors")
    (out / "checkpoints" / "state.json").write_text(json.dumps(state))
    (out / "report.json").unlink()
    for cid in ("client-000", "client-002"):
        ledger = out / "ledger" / f"{cid}.jsonl"
        ledger.write_text(ledger.read_text().splitlines()[0] + "\n")
    resumed = _run("simulate", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["refusals"]["client-001"]] == [1, 2]
    # the resumed run's events replace round 2's (purge_step), once
    assert [s for s, _ in _tensorboard(out)["train/loss"]] == [1, 2]
    for cid in ("client-000", "client-002"):
        entries = read_ledger(out / "ledger" / f"{cid}.jsonl",
                              load_public_key(out / "ledger" / f"{cid}.pub"))
        assert [e.round for e in entries] == [1, 2] and entries[-1].epsilon <= 5.0

    # a finished run is extended only explicitly (before: `--resume --rounds 3` silently
    # trained a third round at noise ~10 with config.toml still saying 2, and the table showed
    # that last noise as the client's)
    refused = _run("simulate", "--out", str(out), "--resume", "--rounds", "3", timeout=120)
    assert refused.returncode == 2 and "Pass --extend" in refused.stderr
    assert ExperimentConfig.load(out / "config.toml").rounds == 2
    extended = _run("simulate", "--out", str(out), "--resume", "--rounds", "3", "--extend")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "extending" in extended.stderr and "from 2 to 3 rounds" in extended.stderr
    assert "WARNING: client-000: 1 more round(s)" in extended.stderr  # the 5 are spent
    assert ExperimentConfig.load(out / "config.toml").rounds == 3
    assert "extended with --resume --extend" in (out / "config.toml").read_text()
    for cid in ("client-000", "client-002"):
        entries = read_ledger(out / "ledger" / f"{cid}.jsonl",
                              load_public_key(out / "ledger" / f"{cid}.pub"))
        assert [e.round for e in entries] == [1, 2, 3] and entries[-1].epsilon <= 5.0
        lo, hi = (min(e.noise_multiplier for e in entries),
                  max(e.noise_multiplier for e in entries))
        assert hi > 5 * lo and f"| {cid} |" in extended.stdout
        assert f"{lo:.3f}-{hi:.3f}" in extended.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "mocov9"], "unknown SSL method 'mocov9'"),
        (["--dataset", "npz", "--data-path", "/nonexistent/x.npz"], "not found"),
        (["--dataset", "npz"], "needs a data path"),
        (["--method", "simclr", "--dp"], "not per-record decomposable"),
        (["--rounds", "0"], "rounds: must be at least 1"),
        (["--config", "/nonexistent.toml"], "config file not found"),
    ],
)
def test_bad_input_fails_fast_with_clear_error(tmp_path: Path, args, message) -> None:
    proc = _run("simulate", "--out", str(tmp_path / "r"), *args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_help_documents_every_option() -> None:
    sim = build_parser()._subparsers._group_actions[0].choices["simulate"]
    text = sim.format_help()
    for name in ExperimentConfig.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
    assert "--config" in text
    helps = {a.dest: a.help for a in sim._actions}
    assert all(helps[name] for name in ExperimentConfig.__dataclass_fields__)


@pytest.mark.slow
def test_secure_aggregation_gives_the_plain_average(tmp_path: Path) -> None:
    """Same seed, equal-size IID partitions, no DP: the SecAgg+ round's model equals the
    plaintext FedAvg round's model up to the quantisation step."""
    from safetensors.numpy import load_file

    common = ["simulate", "--num-clients", "3", "--rounds", "1", "--num-samples", "300",
              "--partitioner", "iid", "--no-dp", "--eval-samples", "100", "--finetune", ""]
    for name, flag in (("plain", "--no-secagg"), ("secure", "--secagg")):
        proc = _run(*common, flag, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]
    plain = load_file(str(tmp_path / "plain" / "checkpoints" / "round-0001.safetensors"))
    secure = load_file(str(tmp_path / "secure" / "checkpoints" / "round-0001.safetensors"))
    assert set(plain) == set(secure)
    worst = max(float(np.abs(plain[k] - secure[k]).max()) for k in plain)
    assert worst < 1e-5
    report = json.loads((tmp_path / "secure" / "report.json").read_text())
    assert report["secure_aggregation"] is True


@pytest.mark.slow
def test_server_momentum_steps_from_the_aggregate_and_survives_a_resume(tmp_path: Path) -> None:
    """FedAvgM end to end: with the same seed, round 1 equals FedAvg's (the velocity is the
    first update), round 2 is FedAvg's round 2 plus momentum x round 1's velocity; a resume
    after round 1 restores the velocity from the checkpoint and gives the same round 2."""
    from safetensors.numpy import load_file

    common = ["simulate", "--num-clients", "2", "--rounds", "2", "--num-samples", "300",
              "--partitioner", "iid", "--no-dp", "--no-secagg", "--eval-samples", "100",
              "--few-label", "", "--finetune", ""]
    momentum = ["--server-momentum", "0.5"]
    for name, extra in (("plain", []), ("fedavgm", momentum)):
        proc = _run(*common, *extra, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr[-3000:]

    def ckpt(name: str, r: int, kind: str = "") -> dict[str, np.ndarray]:
        return load_file(str(tmp_path / name / "checkpoints" / f"round-{r:04d}{kind}.safetensors"))

    plain1, plain2, mom1, mom2 = ckpt("plain", 1), ckpt("plain", 2), ckpt("fedavgm", 1), \
        ckpt("fedavgm", 2)
    vel1, vel2 = ckpt("fedavgm", 1, ".server-momentum"), ckpt("fedavgm", 2, ".server-momentum")
    assert not list((tmp_path / "plain" / "checkpoints").glob("*server-momentum*"))
    floats = [k for k in mom1 if np.issubdtype(mom1[k].dtype, np.floating)]
    assert floats and set(vel1) == set(floats)
    for k in mom1:
        assert np.array_equal(mom1[k], plain1[k]), k  # round 1: v = the update itself
    for k in floats:  # round 2: FedAvg's step plus 0.5 x round 1's velocity
        assert np.allclose(mom2[k], plain2[k] + 0.5 * vel1[k], atol=1e-5), k
        assert np.allclose(vel2[k], 0.5 * vel1[k] + (plain2[k] - plain1[k]), atol=1e-5), k

    # crash after round 1: the resume takes round 1's velocity from its checkpoint
    run = tmp_path / "fedavgm"
    (run / "checkpoints" / "round-0002.safetensors").unlink()
    (run / "checkpoints" / "round-0002.server-momentum.safetensors").unlink()
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    state.update(round=1, weights="round-0001.safetensors")
    (run / "checkpoints" / "state.json").write_text(json.dumps(state))
    (run / "report.json").unlink()
    resumed = _run("simulate", "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = ckpt("fedavgm", 2)
    for k in floats:  # without the velocity it would be FedAvg's round 2
        assert np.allclose(again[k], mom2[k], atol=1e-5), k


@pytest.mark.slow
def test_dropouts_and_stragglers_cost_only_themselves(tmp_path: Path) -> None:
    """Simulated faults end to end: a dropout fails its own reply, a straggler sleeps past the
    round timeout and is recorded as timed out, the server moves on at the timeout, and every
    other client is averaged. Four actors (0.5 CPU each), all warmed up before round 1 (the
    warm-up sends one message per actor), one straggler per round: in round 2, round 1's
    straggler (still asleep) and round 2's hold two actors, the other two serve the rest."""
    n, p_drop, p_slow, delay, timeout = 6, 0.2, 0.25, 50.0, 20.0

    def fates(s: int, r: int) -> list[str]:  # the project's own fault model, train stage
        return [planned_fault(s, r, c, "train", p_drop, p_slow) for c in range(n)]

    seed = next(s for s in range(1000)  # a dropout and exactly one straggler in both rounds
                if all("drop" in fates(s, r) and fates(s, r).count("slow") == 1
                       for r in (1, 2)))
    out = tmp_path / "run"
    proc = _run("simulate", "--num-clients", str(n), "--rounds", "2", "--num-samples", "1200",
                "--no-dp", "--no-secagg", "--eval-samples", "300", "--few-label", "",
                "--finetune", "",
                "--seed", str(seed), "--dropout-prob", str(p_drop), "--straggler-prob",
                str(p_slow), "--straggler-delay", str(delay), "--round-timeout", str(timeout),
                "--cpus-per-client", "0.5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows[1:]:
        fate = fates(seed, row["round"])
        reasons = list(row["failed"].values())
        timed_out = [c for c, r in row["failed"].items()
                     if "no reply before the round timeout" in r]
        assert sum("simulated dropout" in r for r in reasons) == fate.count("drop")
        # every planned straggler times out; on a starved machine a healthy client may too
        # (tolerated: that costs only itself), but then it is counted as failed, not averaged
        assert len(timed_out) >= fate.count("slow")
        assert row["clients"] == n - fate.count("drop") - len(timed_out) > 0
        assert timeout - 1 < row["seconds"] < delay  # waited for the timeout, not the sleeper
