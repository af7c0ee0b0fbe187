"""``fedssl simulate --ray-address HOST:PORT``: the simulation on an existing Ray cluster.

Without ``--ray-address`` the simulator starts a Ray of its own on this machine
(``fedssl.simulations.simulate._start_ray``). With it, the driver (this process: the
ServerApp, the server-side evaluation, Flower's simulation engine and fedssl's dispatcher)
joins the cluster whose head's GCS listens at ``HOST:PORT`` (what ``ray start --head``
prints) and the ClientApp actors run on the cluster's nodes, one actor per
``cpus-per-client`` cores (and ``gpus-per-client`` GPU share) of each node, as Flower sizes
its actor pool (``flwr.simulation.ray_transport.ray_actor.pool_size_from_resources``).

What each node needs, checked before the first round (:func:`check_nodes`, a task pinned to
every node that can host a client):

- the same fedssl install: the actors import ``fedssl.client.app`` from the node's own Python
  (Ray starts its workers with the interpreter that ran ``ray start``), so the node must
  import it, at the driver's fedssl version;
- the run directory, at the same absolute path, shared (NFS or the like) and writable: a
  simulated client reads its identity key and its site budget there (``clients/<id>/``,
  written by the driver), reads ``identities.json`` for secure aggregation, memory-maps the
  generated data set the driver wrote to ``cache/`` and appends its signed ledger entries to
  ``ledger/<id>.jsonl``, which the server verifies. A node with its own empty copy of the path
  would train with a fresh key and no site budget, so this is refused, not worked around;
- ``--data-path`` (file data sets) at the same absolute path.

Connecting never hangs on a wrong address: ``ray.init(address=...)`` retries an unreachable
GCS for minutes (measured: still retrying after 5 min), so :func:`probe` first opens a TCP
connection with a short time-out and a refused, unresolvable or silent address is a
:class:`~fedssl.run_spec.ConfigError` naming it (``fedssl simulate`` exits with 2).
Ray's own settings cannot be set by a driver that joins a cluster (``_system_config``,
``num_cpus``); the 4 MiB direct-call size the local start sets (``DIRECT_CALL_BYTES``) is
set when the head starts: ``ray start --head --system-config
'{"max_direct_call_object_size": 4194304}'`` (docs/simulation.md, "Past one machine").
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedssl.run_layout import RunLayout

#: seconds :func:`probe` waits for a TCP connection to the head's GCS
PROBE_SECONDS = 5.0
#: seconds :func:`check_nodes` waits for every node's report (a node starts a worker process
#: and imports the ClientApp: torch and the rest, seconds on a loaded node)
NODE_CHECK_SECONDS = 180.0


def _error(address: str, problem: str) -> Exception:
    from fedssl.run_spec import ConfigError

    return ConfigError(f"ray-address {address}: {problem}")


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a ``HOST:PORT`` address (``[v6]:PORT`` for IPv6). Raises
    :class:`~fedssl.run_spec.ConfigError` for anything else, Ray Client's ``ray://`` included:
    the driver joins the cluster as one of its own drivers."""
    if "://" in address:
        raise _error(address, "give the head node's GCS address HOST:PORT (what `ray start "
                     "--head` prints), not a URL; Ray Client (ray://) is not supported: "
                     "fedssl simulate runs its driver as a Ray driver of the cluster")
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _error(address, "expected HOST:PORT, the head node's GCS address (what `ray "
                     "start --head` prints, e.g. 10.0.0.5:6379)")
    return host, int(port)


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail fast unless something accepts TCP connections at ``address``: a
    :class:`~fedssl.run_spec.ConfigError` naming the address and why (refused, unknown host,
    no answer within ``timeout`` seconds).

    Args:
        address: the Ray head's ``host:port``.
        timeout: the seconds to wait for an answer.

    Raises:
        ConfigError: if nothing accepts connections at ``address``.
    """
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        raise _error(address, f"unknown host {host!r} ({exc.strerror})") from None
    except TimeoutError:
        raise _error(address, f"no answer within {timeout:.0f} s; is the head node "
                     "reachable from here (firewall, address)?") from None
    except OSError as exc:
        raise _error(address, f"no Ray cluster there ({exc.strerror or exc}); start one with "
                     f"`ray start --head --port {port}` or check the address") from None


def connect(address: str, logging_level: int, log_to_driver: bool) -> None:
    """Join the Ray cluster at ``address`` as this process's driver (after :func:`probe`).
    A process already connected to a Ray (an earlier run in the same process) is
    disconnected first. Ray's refusals
    (version mismatch, not a GCS) become a :class:`~fedssl.run_spec.ConfigError`.

    Args:
        address: the Ray head's ``host:port``.
        logging_level: Ray's logging level.
        log_to_driver: forward the workers' logs to this process.

    Raises:
        ConfigError: if the address does not answer or Ray refuses to join.
    """
    import ray

    probe(address)
    if ray.is_initialized():
        ray.shutdown()
    try:
        ray.init(address=address, logging_level=logging_level, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _error(address, f"could not join the Ray cluster: {exc}") from None


def _client_slots(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """Clients (actors) of ``cpus`` cores and ``gpus`` GPU share one node's ``resources``
    hosts, as Flower counts them."""
    slots = int(resources.get("CPU", 0) / cpus)
    if gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) / gpus))
    return slots


def client_nodes(cpus: float, gpus: float) -> list[dict[str, Any]]:
    """The alive nodes of the connected cluster that can host at least one client, each
    with ``slots``, its number of client actors.

    Args:
        cpus: the CPUs a client needs.
        gpus: the GPUs a client needs.
    """
    import ray

    nodes = []
    for node in ray.nodes():
        if node.get("Alive") and node.get("Resources"):
            slots = _client_slots(node["Resources"], cpus, gpus)
            if slots > 0:
                nodes.append({**node, "slots": slots})
    return nodes


@dataclass(frozen=True)
class NodeReport:
    """What one node sees (:func:`node_report`, run there)."""

    host: str
    fedssl_version: str
    import_error: str
    config_digest: str
    run_dir_writable: bool
    data_path_found: bool


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def node_report(run_dir: str, data_path: str) -> NodeReport:
    """Run on a node: can it import the ClientApp, does it see the run directory (the digest
    of its config.toml) and may it write there, does it see the data path.

    Args:
        run_dir: the run directory.
        data_path: the data path ("": none).
    """
    import importlib
    import importlib.metadata

    try:
        importlib.import_module("fedssl.client.app")
        error = ""
    except Exception as exc:  # reported to the driver, which refuses the node
        error = f"{type(exc).__name__}: {exc}"
    return NodeReport(
        host=socket.gethostname(),
        fedssl_version=importlib.metadata.version("fedssl"), import_error=error,
        config_digest=_digest(RunLayout(run_dir).config),
        run_dir_writable=os.access(run_dir, os.W_OK | os.X_OK),
        data_path_found=not data_path or Path(data_path).exists())


def node_problems(where: str, report: NodeReport, config_digest: str, version: str,
                  run_dir: Path, data_path: str) -> list[str]:
    """What keeps the node ``where`` from running this run's clients, one line each (none:
    it can): ``report`` is what it sees, ``config_digest`` the driver's ``config.toml``
    digest and ``version`` its fedssl version.

    Args:
        where: names the node in the messages.
        report: the node's :class:`NodeReport`.
        config_digest: the digest of the driver's ``config.toml``.
        version: the driver's fedssl version.
        run_dir: the run directory (for the messages).
        data_path: the data path (for the messages).
    """
    problems = []
    if report.import_error:
        problems.append(f"{where} cannot import fedssl's ClientApp: {report.import_error}")
    if report.fedssl_version != version:
        problems.append(f"{where} has fedssl {report.fedssl_version}, this driver {version}")
    if report.config_digest != config_digest:
        problems.append(f"{where} does not see this run directory {run_dir} (its config.toml "
                        "is " + ("missing" if not report.config_digest else "another file")
                        + " there)")
    elif not report.run_dir_writable:
        problems.append(f"{where} cannot write to the run directory {run_dir}")
    if not report.data_path_found:
        problems.append(f"{where} has no {data_path} (--data-path)")
    return problems


def check_nodes(address: str, run_dir: Path, data_path: str, cpus: float, gpus: float,
                timeout: float = NODE_CHECK_SECONDS) -> list[dict[str, Any]]:
    """Check every node that can host a client (:func:`client_nodes`) with
    :func:`node_report` pinned to it; returns those nodes. A node that cannot import fedssl,
    has another fedssl version, does not see this run directory (its ``config.toml``, same
    bytes) or cannot write there, or lacks ``data_path`` is a
    :class:`~fedssl.run_spec.ConfigError` naming the node and what to fix, as is a cluster
    with no node for a client of this size.

    Args:
        address: the Ray head's address (for the messages).
        run_dir: the run directory.
        data_path: the data path ("": none).
        cpus: the CPUs a client needs.
        gpus: the GPUs a client needs.
        timeout: the seconds to wait for the nodes' reports.

    Raises:
        ConfigError: for a node that cannot run this run's clients, or no node that can.
    """
    import importlib.metadata

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = client_nodes(cpus, gpus)
    if not nodes:
        raise _error(address, f"no alive node has {cpus:g} CPU(s)"
                     + (f" and {gpus:g} GPU(s)" if gpus else "")
                     + " for a client (--cpus-per-client, --gpus-per-client)")
    expected = _digest(RunLayout(run_dir).config)
    version = importlib.metadata.version("fedssl")
    task = ray.remote(num_cpus=0, max_retries=0)(node_report)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote(str(run_dir), data_path) for node in nodes]
    problems = []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for node, ref in zip(nodes, refs, strict=True):
        where = f"node {node['NodeID'][:12]} ({node.get('NodeManagerAddress', '?')})"
        if ref not in ready:
            problems.append(f"{where} did not answer within {timeout:.0f} s")
            continue
        try:
            report: NodeReport = ray.get(ref)
        except Exception as exc:  # e.g. the node cannot unpickle fedssl code
            problems.append(f"{where} cannot run fedssl: {str(exc).strip().splitlines()[-1]}")
            continue
        where = f"node {node['NodeID'][:12]} ({report.host}, {node.get('NodeManagerAddress')})"
        problems += node_problems(where, report, expected, version, run_dir, data_path)
    if problems:
        raise _error(address, "; ".join(problems) + ". Every node that runs clients needs "
                     "the same fedssl install, the run directory at the same absolute path "
                     "on a file system all nodes share (--out), and the data path "
                     "(docs/simulation.md, 'Past one machine')")
    return nodes
