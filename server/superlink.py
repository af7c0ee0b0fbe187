"""``fedssl server``: a Flower SuperLink with TLS and SuperNode authentication, and the run.

How a real federation is started on Flower 1.41 (:func:`run_server`, which only orchestrates):

1. **SuperLink.** ``flower-superlink`` is started as a child process with TLS, node
   authentication and the local-control guard (:mod:`fedssl.server.superlink_process`).
2. **Node registration.** Through the Control API (``RegisterNode``, what
   ``flwr supernode register KEY.pub`` sends) for every key in ``authorized_nodes.txt``
   (:mod:`fedssl.server.superlink_control`).
3. **The run.** A FAB holding only a generated ``pyproject.toml`` for the installed fedssl
   apps and the fully resolved run config is submitted with the Control API's ``StartRun``
   (what ``flwr run`` sends). Progress is followed with ``ListRuns`` and
   ``RUN/metrics.jsonl``; the ServerApp's log is streamed (``StreamLogs``) to
   ``RUN/flower/serverapp.log``.

Hardening beyond stock Flower: the open-source SuperLink has no authentication on the Control
and Runtime APIs, and they share the Fleet port, so anyone who can reach the port could
register a node key or submit a run (whose code the ServerApp and every ClientApp would
execute). The SuperLink ``fedssl server`` starts therefore answers 403 to every request from
a non-local peer except the Fleet API (``/v1/fleet/``) and the health check
(:mod:`fedssl.server.superlink_guard`; the Flower internals it needs are in
:mod:`fedssl.server.flower_superlink_adapter`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedssl.privacy.identity.certs import CertPaths, read_authorized
from fedssl.run_layout import RunLayout
from fedssl.run_spec import ServerRun
from fedssl.server.federation_nodes import min_round_nodes
from fedssl.server.superlink_control import (
    DeployError,
    DeploySetupError,
    control_client,
    local_control_address,
    node_states,
    online_nodes,
    register_nodes,
    run_status,
    split_address,
    start_run,
)
from fedssl.server.superlink_process import SuperLinkProcess, flower_env, stream_logs, tail

__all__ = ["DEFAULT_ADDRESS", "DeployError", "DeploySetupError", "ServerOptions",
           "authorized_names", "check_run_dir", "deploy_config", "format_round",
           "require_registry", "run_server"]

DEFAULT_ADDRESS = "0.0.0.0:9092"


@dataclass
class ServerOptions:
    """What ``fedssl server`` was asked to do (see ``fedssl server --help``)."""

    certs: Path
    run_config: dict[str, Any]
    address: str = DEFAULT_ADDRESS
    min_clients: int = 0  # 0: every authorised node
    wait_clients_timeout: float = 600.0
    resume: bool = False
    verbose: bool = False
    print_fn: Callable[[str], None] = field(default=print)


def format_round(row: dict[str, Any], rounds: int | None = None) -> str:
    """One progress line for a ``metrics.jsonl`` row (``round k/rounds`` when given).

    Args:
        row: the metrics row.
        rounds: the run's number of rounds, or None.
    """
    parts = [f"round {row['round']}{f'/{rounds}' if rounds else ''}"]
    if row["round"] == 0:
        parts.append("(initial encoder)")
    else:
        parts.append(f"clients {row.get('clients', 0)}")
    for key, label in (("loss", "loss"), ("linear_probe_accuracy", "linear probe"),
                       ("knn_accuracy", "kNN"), ("epsilon_max", "max epsilon")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.4g}")
    for key in ("refused", "rejected", "failed"):
        if row.get(key):
            parts.append(f"{key}: {', '.join(sorted(row[key]))}")
    return "  ".join(parts)


def connection_changes(before: dict[int, tuple[str, str]], now: dict[int, tuple[str, str]],
                       minimum: int) -> list[str]:
    """Console lines for the sites that disconnected or reconnected between two
    :func:`~fedssl.server.superlink_control.node_states` snapshots (``node id -> (name,
    status)``); ``minimum`` is the fewest connected sites a round starts with.

    Args:
        before: the earlier snapshot.
        now: the current snapshot.
        minimum: the fewest connected sites a round starts with.

    Returns:
        One line per site that disconnected or connected (empty if none did).

    >>> connection_changes({7: ("node-1", "online"), 9: ("node-2", "online")},
    ...                    {7: ("node-1", "online"), 9: ("node-2", "offline")}, 1)[0][:52]
    'node-2 disconnected (not connected: node-2); 1 of 2 '
    """
    def online(states: dict[int, tuple[str, str]]) -> set[int]:
        return {n for n, (_, status) in states.items() if status == "online"}

    def name(node: int) -> str:
        return (now.get(node) or before.get(node) or ("", ""))[0] or f"SuperNode {node}"

    was, is_ = online(before), online(now)
    if was == is_:
        return []
    lines = []
    count = f"{len(is_)} of {len(now)} sites connected"
    missing = ", ".join(sorted(name(n) for n in now if n not in is_)) or "none"
    for node in sorted(was - is_, key=name):
        lines.append(f"{name(node)} disconnected (not connected: {missing}); {count}: the "
                     f"rounds go on with the connected sites while at least {minimum} "
                     f"{'is' if minimum == 1 else 'are'} "
                     "(fewer for --round-timeout stops the run, which --resume continues)")
    for node in sorted(is_ - was, key=name):
        lines.append(f"{name(node)} connected; {count}")
    return lines


def name_nodes(text: str, states: dict[int, tuple[str, str]]) -> str:
    """``text`` with each ``node-<Flower node id>`` (how the ServerApp names a site that
    never replied) replaced by the name the node was registered under.

    Args:
        text: the text to rewrite.
        states: the nodes' ``node id -> (name, status)``.
    """
    def named(match: re.Match[str]) -> str:
        found = states.get(int(match.group(1)))
        return found[0] if found and found[0] else match.group(0)

    return re.sub(r"\bnode-(\d{6,})\b", named, text)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return rows


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start over an existing run (or to resume nothing) before anything starts.

    Args:
        run_dir: the run directory.
        resume: the run is to be resumed.

    Raises:
        DeploySetupError: if ``run_dir`` holds a run and ``resume`` is off, or holds no
            checkpoint to resume.
    """
    layout = RunLayout(run_dir)
    metrics = layout.metrics
    if resume:
        if not layout.checkpoint_state.exists():
            raise DeploySetupError(f"nothing to resume: {layout.checkpoint_state} "
                              "not found")
    elif metrics.exists() and metrics.stat().st_size > 0:
        raise DeploySetupError(f"{run_dir} already holds a run: pass --resume to continue it or "
                          "choose another --run-dir")


def require_registry(certs: CertPaths) -> dict[str, Any]:
    """The identity registry ``CERTS/identities.json`` (site name -> Ed25519 key), or a
    :class:`DeploySetupError` naming the file: secure aggregation checks every site's round
    keys against it and the server keeps only ledgers signed by a key it lists."""
    from fedssl.privacy.identity.keys import IdentityError, load_registry

    if not certs.registry.is_file():
        raise DeploySetupError(
            f"{certs.registry} not found: secure aggregation and the sites' ledger keys need "
            "the identity registry `fedssl certs` writes next to ca.crt (copy it there; "
            "--no-secagg --no-dp runs without it)")
    try:
        registry = load_registry(certs.registry)
    except IdentityError as exc:
        raise DeploySetupError(str(exc)) from None
    if not registry:
        raise DeploySetupError(f"{certs.registry} lists no site: no client could take part")
    return registry


def authorized_names(path: Path) -> list[str | None]:
    """The node name of each key line of ``authorized_nodes.txt``: the OpenSSH key's comment
    when it is ``node-<i>``, as ``fedssl certs`` writes it; None for any other line (a key a
    site made itself carries ``user@host`` unless ``ssh-keygen -C`` said otherwise, which
    names nothing in the registry)."""
    names: list[str | None] = []
    for line in path.read_text().splitlines():
        fields = line.strip().split()
        if not fields or fields[0].startswith("#"):
            continue
        comment = fields[2] if len(fields) > 2 else ""
        names.append(comment if re.fullmatch(r"node-\d+", comment) else None)
    return names


def deploy_config(certs: CertPaths, run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` with the identity registry of ``certs`` (``CERTS/identities.json``).

    Read from the certificate directory, never the run directory, and checked here, before
    anything starts: with secure aggregation or DP on (the defaults) a missing or unreadable
    registry, or one that lacks a node ``authorized_nodes.txt`` lets connect (named by the
    key's comment ``node-<i>``, as ``fedssl certs`` writes it), is a
    :class:`DeploySetupError` naming the file and the nodes (``fedssl server`` exits 2).

    Args:
        certs: the certificate directory's paths.
        run_config: the run config.

    Returns:
        A copy of ``run_config`` with ``identity-registry`` set when the registry exists.

    Raises:
        DeploySetupError: for a missing or unreadable registry, or one lacking an authorised node.
    """
    cfg = dict(run_config)
    if cfg.get("secagg") or cfg.get("dp"):
        registry = require_registry(certs)
        if certs.authorized.is_file():
            # a node that may connect but has no registered identity key would drop out of
            # every secure setup and have its ledger copies refused: said now, not per round
            missing = [name for name in authorized_names(certs.authorized)
                       if name is not None and name not in registry]
            if missing:
                raise DeploySetupError(
                    f"{certs.authorized} authorises node(s) {', '.join(missing)} that the "
                    f"identity registry {certs.registry} does not list: they could connect "
                    "but never take part (secure aggregation and their ledger copies need "
                    "their registered identity key). Register them (the identities.json "
                    "`fedssl certs` wrote with their keys) or remove their lines from "
                    f"{certs.authorized.name}")
    if certs.registry.is_file():
        cfg["identity-registry"] = str(certs.registry)
    return cfg


def run_server(opts: ServerOptions) -> int:
    """Start the SuperLink, register the nodes, run the federation, stop; an exit code.

    0: the run completed; 1: it failed or was stopped; raises DeployError for setup problems.
    """

    def say(text: str) -> None:  # progress lines carry the local time
        stamp = time.strftime("%H:%M:%S")
        opts.print_fn(text.replace("[fedssl server]", f"[fedssl server {stamp}]", 1))

    certs = CertPaths(Path(opts.certs).resolve())
    certs.require_server()
    keys = read_authorized(certs.authorized)
    if not keys:
        raise DeploySetupError(f"{certs.authorized} lists no node keys: no client could join")
    cfg = deploy_config(certs, opts.run_config)
    run_dir = Path(str(cfg["run-dir"])).resolve()
    cfg["run-dir"] = str(run_dir)
    cfg["resume"] = bool(opts.resume or cfg.get("resume", False))
    if opts.min_clients > 0:  # the fewest sites a round starts with, too
        cfg["min-clients"] = opts.min_clients
    # the run config the ServerApp gets, typed here as the ServerApp types it (same errors)
    run = ServerRun.from_run_config(cfg)
    check_run_dir(run_dir, run.spec.resume)
    host, port = split_address(opts.address)
    flower_home = RunLayout(run_dir).flower  # Flower's home, logs
    superlink_log = flower_home / "superlink.log"
    need = opts.min_clients or len(keys)
    # the ServerApp's own floor (1, or 2 under secure aggregation) when --min-clients is not
    # given: the console says so when a site disconnects
    round_minimum = min_round_nodes(run.spec.secagg, run.min_clients)

    env = flower_env(flower_home)
    os.environ.update({k: env[k] for k in ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED",
                                           "FLWR_DISABLE_UPDATE_CHECK")})
    link = SuperLinkProcess(certs, host, port, flower_home, superlink_log)
    say(f"[fedssl server] starting the SuperLink on {host}:{port} (TLS, node authentication); "
        f"log: {superlink_log}")
    link.start()
    try:
        client = link.wait_ready(verbose=opts.verbose)
        ids = register_nodes(client, keys)
        say(f"[fedssl server] {len(ids)} authorised node key(s) registered; waiting for "
            f"{need} client(s) to connect (up to {opts.wait_clients_timeout:.0f} s)")
        deadline = time.monotonic() + opts.wait_clients_timeout
        seen = -1
        while (n := online_nodes(client)) < need:
            if n != seen:
                say(f"[fedssl server] {n}/{need} clients connected")
                seen = n
            if time.monotonic() > deadline:
                raise DeployError(f"only {n} of {need} clients connected within "
                                  f"{opts.wait_clients_timeout:.0f} s")
            if link.proc is not None and link.proc.poll() is not None:
                raise DeployError(f"the SuperLink exited; see {superlink_log}")
            time.sleep(1.0)
        say(f"[fedssl server] {online_nodes(client)} client(s) connected; starting "
            f"{'the resumed ' if run.spec.resume else ''}run of {run.spec.rounds} "
            f"rounds -> {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = start_run(client, cfg)
        say(f"[fedssl server] run {run_id} started; start-up: the ServerApp loads its "
            "evaluation data and evaluates the initial encoder (round 0) while the clients "
            "warm up")
        # made here, not in the thread: making one prints (unless verbose, swallowed here)
        log_client = control_client(local_control_address(host, port), certs.ca_cert,
                                    opts.verbose)
        log_thread = threading.Thread(
            target=stream_logs, daemon=True,
            args=(lambda: log_client, run_id,
                  flower_home / "serverapp.log", say if opts.verbose else None))
        log_thread.start()
        printed = len(_read_rows(RunLayout(run_dir).metrics)) if run.spec.resume else 0
        states = node_states(client)
        while True:
            rows = _read_rows(RunLayout(run_dir).metrics)
            for row in rows[printed:]:
                say("[fedssl server] "
                    + name_nodes(format_round(row, run.spec.rounds), states))
            printed = max(printed, len(rows))
            now = node_states(client)  # who is missing, said as it happens
            for line in connection_changes(states, now, round_minimum):
                say(f"[fedssl server] {line}")
            states = now
            status, sub_status, details = run_status(client, run_id)
            if status == "finished":
                break
            if link.proc is not None and link.proc.poll() is not None:
                raise DeployError(f"the SuperLink exited during the run; see {superlink_log}")
            time.sleep(1.0)
        log_thread.join(timeout=5)
        for row in _read_rows(RunLayout(run_dir).metrics)[printed:]:
            say("[fedssl server] "
                + name_nodes(format_round(row, run.spec.rounds), states))
        if sub_status == "completed":
            say(f"[fedssl server] run {run_id} completed: {RunLayout(run_dir).report}")
            from fedssl.server.report_table import format_report, nobody_trained

            opts.print_fn(format_report(run_dir))  # the table `fedssl simulate` prints
            if reason := nobody_trained(run_dir):
                say(f"[fedssl server] error: {reason}")
                return 1
            return 0
        say(f"[fedssl server] run {run_id} {sub_status}{': ' + details if details else ''}; "
            f"ServerApp log: {flower_home / 'serverapp.log'}\n"
            f"{tail(flower_home / 'serverapp.log')}")
        return 1
    finally:
        link.stop()
