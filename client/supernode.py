"""``fedssl client``: a site's agent, a Flower SuperNode with TLS and node authentication.

Before anything connects, the site's own inputs are checked, so a site with a broken setup
never joins the federation: the CA certificate and node key must be readable (the key must be
an OpenSSH ECDSA key, the format Flower 1.41's ``--auth-supernode-private-key`` takes), the
privacy budget must be valid, and the data must load with
:func:`fedssl.ssl_core.datasets.load_dataset` (corrupt files, wrong shapes, NaN, empty folders
raise :class:`~fedssl.ssl_core.datasets.DataError`, reported with exit code 2).

Then ``flower-supernode`` is started with

- ``--superlink HOST:PORT --root-certificates CA``: HTTPS to the SuperLink, server verified
  against the federation's CA;
- ``--auth-supernode-private-key KEY``: every Fleet request is signed with the node key; a
  SuperLink started by ``fedssl server`` refuses keys its operator did not register;
- ``--node-config FILE.toml``: ``state-dir``, ``client-id``, ``data-path``, ``dataset``,
  ``image-size`` and the site's budget (``budget-epsilon``, ``budget-delta``), read by the
  fedssl ClientApp (:mod:`fedssl.client.app`): the budget comes from the site, never from the
  server;
- ``--port``: the SuperNode's local Runtime API (127.0.0.1 only), where its ClientApp
  process connects; each SuperNode on one machine needs its own port.

Progress is printed as it happens: connection, each round the site trains (from its signed
ledger, with the epsilon spent so far) and every warning (refused rounds, lost connection).
Flower's full output goes to ``STATE/flower/supernode.log``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedssl.atomic import atomic_write_private, atomic_write_text
from fedssl.privacy.identity.certs import CA_CERT, CertError, node_public_key
from fedssl.processes import start_process, stop_process
from fedssl.quiet import is_noise
from fedssl.run_layout import IDENTITIES_FILE, SiteLayout
from fedssl.run_spec import DEFAULTS
from fedssl.ssl_core.datasets import SSLDataset, load_dataset
from fedssl.ssl_core.datasets import infer_dataset as _infer_dataset
from fedssl.ssl_core.device import resolve_device

REGISTRY = IDENTITIES_FILE  # next to ca.crt at every site
DEFAULT_RUNTIME_PORT = 9094
RETRY_SECONDS = 3.0
#: substrings of Flower's SuperNode output worth showing without --verbose (the SuperNode ID
#: line is folded into fedssl's "connected" line; known banners are dropped: fedssl.quiet)
SHOWN = ("WARNING", "ERROR", "refuses", "Connection attempt failed",
         "Exit Code", "Traceback", "Error:")
#: Flower's SuperNode's line when its retries to reach the server are exhausted
GAVE_UP = re.compile(r"Giving up reconnection after ([0-9.]+) seconds")
#: how long a SuperNode that gave up reconnecting may take to exit before it is stopped
GIVE_UP_GRACE_SECONDS = 5.0
#: terminal colour codes in Flower's log lines (kept in the log file, not on the console)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ClientSetupError(ValueError):
    """Raised when the site's certificates, key, budget or options are unusable."""


@dataclass
class ClientOptions:
    """What ``fedssl client`` was asked to do (see ``fedssl client --help``)."""

    server: str
    ca_cert: Path
    node_key: Path
    data: Path
    state_dir: Path
    dataset: str = "auto"
    client_id: str = ""
    budget_epsilon: float | None = None
    budget_delta: float | None = None
    image_size: int = 28
    device: str = "auto"
    runtime_port: int = DEFAULT_RUNTIME_PORT
    join_timeout: float = 600.0  # 0: keep trying to (re)join for ever
    verbose: bool = False
    print_fn: Callable[[str], None] = field(default=print)


def infer_dataset(data: Path, dataset: str = "auto") -> str:
    """``npz`` for a ``.npz`` file, ``nifti``/``dicom`` for NIfTI/DICOM files or folders of
    them, ``imagefolder`` for another directory (unless given; a given format that cannot
    read the path is a DataError): see :func:`fedssl.ssl_core.datasets.infer_dataset`.

    Args:
        data: the data file or folder.
        dataset: the format, or "auto" to infer it.

    Returns:
        The data set format's name.

    Raises:
        DataError: if a given format cannot read the path.
    """
    return _infer_dataset(data, dataset)


def resolve_ca(certs: Path) -> Path:
    """``--certs`` may be the certificate directory (``DIR/ca.crt``) or the CA file itself."""
    path = certs / CA_CERT if certs.is_dir() else certs
    if not path.is_file():
        raise ClientSetupError(f"CA certificate not found: {path} (the server operator gives "
                               "you ca.crt)")
    try:
        from cryptography import x509

        x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ClientSetupError(f"{path}: not a PEM certificate ({exc})") from exc
    return path


def check_site(opts: ClientOptions) -> tuple[dict[str, object], bytes, SSLDataset]:
    """Validate everything local; returns (node config, node public key, the site's data).

    A site only trains: its data is loaded with ``with_test=False`` (every record trains,
    nothing is held out; labels are not needed)."""
    try:
        public = node_public_key(opts.node_key)
    except CertError as exc:
        raise ClientSetupError(str(exc)) from exc
    if opts.budget_epsilon is not None and not opts.budget_epsilon > 0:
        raise ClientSetupError(f"--budget-epsilon must be > 0, got {opts.budget_epsilon}")
    if opts.budget_delta is not None and not 0 < opts.budget_delta < 1:
        raise ClientSetupError(f"--budget-delta must be in (0, 1), got {opts.budget_delta}")
    dataset = infer_dataset(opts.data, opts.dataset)
    data = load_dataset(dataset, str(opts.data), image_size=opts.image_size,
                        with_test=False)  # DataError
    if opts.budget_delta is not None:
        from fedssl.privacy.accounting.budget import AccountingError, check_delta

        try:
            check_delta(opts.budget_delta, len(data.x_train), f"the site's data {opts.data}")
        except AccountingError as exc:
            raise ClientSetupError(f"--budget-delta: {exc}") from None
    node_config: dict[str, object] = {
        "state-dir": str(opts.state_dir.resolve()),
        "client-id": opts.client_id or opts.node_key.stem,
        "data-path": str(opts.data.resolve()),
        "dataset": dataset,
        "image-size": opts.image_size,
        "device": str(resolve_device(opts.device)),  # DeviceError: refused before joining
    }
    # the site's registered identity key and the public registry (secure aggregation, ledger)
    node_config.update(check_identity(opts))
    if opts.budget_epsilon is not None:
        node_config["budget-epsilon"] = float(opts.budget_epsilon)
        node_config["budget-delta"] = float(opts.budget_delta or DEFAULTS["delta"])
    return node_config, public, data


def check_identity(opts: ClientOptions) -> dict[str, object]:
    """The site's identity key and registry, checked before joining; their node config.

    ``identities.json`` (from ``fedssl certs``) must be next to the CA certificate and list
    this site under its node key's name; ``node-<i>.identity.pem`` next to the node key is
    copied (mode 0600) into the state directory, where the ClientApp signs the ledger and the
    secure-aggregation keys with it. A key already in the state directory is kept (it signs
    the site's existing ledger) but must be the registered one. Nothing is ever generated
    here: a key the registry does not list would be refused by secure aggregation and by the
    server's ledger check after the site had trained.

    Raises:
        ClientSetupError: naming the missing or mismatching file.
    """
    from fedssl.privacy.identity.keys import (
        IdentityError,
        load_private_key,
        load_registry,
        public_pem,
    )

    registry = (opts.ca_cert.parent if opts.ca_cert.is_file() else opts.ca_cert) / REGISTRY
    name = opts.node_key.stem
    if not registry.is_file():
        raise ClientSetupError(f"identity registry not found: {registry} (the server operator "
                               f"gives you {REGISTRY} with ca.crt; keep them side by side)")
    try:
        names = load_registry(registry)
    except IdentityError as exc:
        raise ClientSetupError(str(exc)) from None
    if name not in names:
        raise ClientSetupError(
            f"{name!r} is not in the identity registry {registry} "
            f"({', '.join(sorted(names))}): secure aggregation could not verify this site")
    registered = public_pem(names[name][1])
    source = opts.node_key.with_name(f"{name}.identity.pem")
    target = SiteLayout(opts.state_dir).identity
    key_file = target if target.is_file() else source
    if not key_file.is_file():
        raise ClientSetupError(f"identity key not found: {source} (the server operator gives "
                               f"you {source.name} with the node key; keep them side by side)")
    try:
        key = load_private_key(key_file)
    except IdentityError as exc:
        raise ClientSetupError(str(exc)) from None
    if public_pem(key) != registered:
        raise ClientSetupError(
            f"{key_file} is not the identity key {registry} registers for {name!r}"
            + (" (it signs this site's existing ledger, so it is not replaced: use the state "
               "directory it belongs to, or ask the operator to register it)"
               if key_file == target else ""))
    if key_file == source:
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_private(target, source.read_bytes(), exclusive=True)
    return {"identity-registry": str(registry.resolve()), "identity-name": name}


def leftover_supernodes(node_config_file: Path) -> list[int]:
    """Pids of running ``flower-supernode`` processes started for this state directory
    (their command line names its ``node-config.toml``): a SuperNode an earlier agent left
    (Linux ``/proc``; empty elsewhere)."""
    target = str(node_config_file.resolve())
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] == "Z" or int(entry.name) == os.getpid():
            continue
        if any("flower-supernode" in a for a in args[:2]) and any(
                a == "--node-config" and b == target for a, b in itertools.pairwise(args)):
            found.append(int(entry.name))
    return sorted(found)


#: how long a restarted agent lets a SuperNode of the agent it replaces finish exiting (one
#: whose agent was just killed gets SIGTERM and shuts down within seconds)
LEFTOVER_GRACE_SECONDS = 15.0


def check_not_running(opts: ClientOptions, node_config_file: Path,
                      grace: float = LEFTOVER_GRACE_SECONDS) -> None:
    """Refuse to start a second SuperNode for this site: a SuperNode still running for its
    state directory (left by an agent that was killed; one started by this release dies with
    its agent) would go on training on the site's data and make the new one fail with
    Flower's "address already in use"; so would any process on ``--runtime-port``. One that
    is still exiting (its agent was just stopped) is given ``grace`` seconds to finish.

    Args:
        opts: the agent's options (``--runtime-port``).
        node_config_file: the site's SuperNode node config file.
        grace: the seconds an exiting SuperNode is given.

    Raises:
        ClientSetupError: naming the pids (and how to stop them) or the busy port.
    """
    import socket

    pids = leftover_supernodes(node_config_file)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:  # one that is exiting now is not left over
        time.sleep(0.2)
        pids = leftover_supernodes(node_config_file)
    if pids:
        listed = " ".join(map(str, pids))
        raise ClientSetupError(
            f"a SuperNode of this site is still running (pid {listed}; started for "
            f"{node_config_file.parent.parent}), left by an agent that stopped without "
            "stopping it: it may still take part in rounds and write this site's ledger. "
            f"Stop it (kill {listed}), then start `fedssl client` again")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # a listener refuses this bind; connections of an agent that stopped (TIME_WAIT) not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", opts.runtime_port))
        except OSError as exc:
            raise ClientSetupError(
                f"--runtime-port {opts.runtime_port} on 127.0.0.1 is in use ({exc.strerror}):"
                " another agent or program listens there; stop it or give this agent "
                "another --runtime-port") from None


def supernode_command(opts: ClientOptions, ca: Path, node_config_file: Path) -> list[str]:
    """The ``flower-supernode`` command line for this site.

    Args:
        opts: the agent's options.
        ca: the CA certificate.
        node_config_file: the site's SuperNode node config file.
    """
    exe = Path(sys.executable).parent / "flower-supernode"
    cmd = [str(exe) if exe.exists() else "flower-supernode",
           "--superlink", opts.server, "--root-certificates", str(ca.resolve()),
           "--auth-supernode-private-key", str(opts.node_key.resolve()),
           "--node-config", str(node_config_file), "--port", str(opts.runtime_port)]
    if opts.join_timeout > 0:
        cmd += ["--max-wait-time", str(opts.join_timeout)]
    return cmd


class LedgerWatcher(threading.Thread):
    """Prints one line per new entry of the site's privacy ledger (one per trained round)."""

    def __init__(self, ledger: Path, budget: float | None, say: Callable[[str], None]) -> None:
        super().__init__(name="fedssl-ledger-watch", daemon=True)
        self.ledger, self.budget, self.say = ledger, budget, say
        self.stop_event = threading.Event()
        self.seen = self._count()

    def _count(self) -> int:
        try:
            return len(self.ledger.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def run(self) -> None:
        """Poll the ledger every second until stopped."""
        while not self.stop_event.wait(1.0):
            self.poll()

    def poll(self) -> None:
        """Print a line for each entry appended since the last poll."""
        try:
            lines = self.ledger.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines[self.seen:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # being written; read it next time
            self.say(format_ledger_entry(entry, self.budget))
            self.seen += 1


def format_ledger_entry(entry: dict, budget: float | None) -> str:
    """One console line for a ledger entry: the site's lifetime epsilon (all runs; what its
    budget bounds) against the budget, this run's epsilon, and the noise, with the effective
    noise (``noise / extra.sensitivity``, what the accountant uses) for a group-clipped
    method. An entry written before ``lifetime_epsilon`` existed has only the one figure.

    Args:
        entry: the ledger entry as a dict.
        budget: the site's budget epsilon, or None.
    """
    noise = float(entry.get("noise_multiplier", 0))
    sens = (entry.get("extra") or {}).get("sensitivity", 1)
    noise_text = f"noise {noise:.3g}"
    if float(sens) != 1:
        noise_text += f", effective {noise / float(sens):.3g} at sensitivity {float(sens):g}"
    run_eps = float(entry.get("epsilon", 0))
    life = entry.get("lifetime_epsilon")
    life_eps = run_eps if life is None else float(life)
    of_budget = f" of the site's budget {budget:g}" if budget else ""
    this_run = f" (this run {run_eps:.3f})" if life is not None else ""
    return (f"[fedssl client] round {entry.get('round')}: trained under DP-SGD "
            f"({noise_text}), site epsilon spent so far {life_eps:.3f}{of_budget}"
            f"{this_run} at delta {entry.get('delta')}")


def _classify_exit(output: list[str]) -> str:
    """Why the SuperNode stopped: "refused", "tls", "key", "unreachable" or "other"."""
    text = "\n".join(output[-60:])
    if "Failed to activate SuperNode" in text or "[code: 2004]" in text:
        return "refused"
    if "SSL/TLS handshake error" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        return "tls"
    if "Unable to parse the private key" in text:
        return "key"
    if "Giving up reconnection" in text or "Invalid SuperNode authentication" in text:
        return "unreachable"
    return "other"


EXPLAIN = {
    "refused": "the server does not accept this node: its public key is not registered there "
               "(yet), or the server still counts this node's previous connection as online "
               "(it lapses about a minute after that agent or SuperNode stopped). If the key "
               "is new, send your node's .pub file to the server operator "
               "(authorized_nodes.txt)",
    "tls": "TLS failed: the server's certificate is not signed by the given CA or does not "
           "name the address in --server (check --certs and --server)",
    "key": "Flower could not read the node key (an unencrypted OpenSSH ECDSA key is expected)",
    "unreachable": "the server could not be reached (or forgot this node after a restart)",
    "lost": "the connection to the server was lost",
}


class SuperNodeRunner:
    """Runs ``flower-supernode`` once, copying its output to the log and the console."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, verbose: bool,
                 say: Callable[[str], None]) -> None:
        self.cmd, self.env, self.log_path = cmd, env, log_path
        self.verbose, self.say = verbose, say
        self.output: list[str] = []
        self.connected = False
        self.proc: subprocess.Popen[str] | None = None
        #: seconds Flower's SuperNode had tried to reach the server when it logged "Giving
        #: up reconnection" (None: it did not): it no longer works after that, but need not
        #: exit (seen with Flower 1.41 between runs: the process stayed, idle, for ever)
        self.gave_up_after: float | None = None
        self._gave_up_at: float | None = None
        #: how long it may take to exit after giving up before it is stopped
        self.give_up_grace = GIVE_UP_GRACE_SECONDS

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "a") as log:
            for raw in self.proc.stdout:
                log.write(raw)
                log.flush()
                line = raw.rstrip("\n")
                self.output.append(line)
                del self.output[:-200]
                if (found := GAVE_UP.search(line)) is not None:
                    self.gave_up_after = float(found.group(1))
                    self._gave_up_at = time.monotonic()
                if "SuperNode ID" in line:
                    self.connected = True
                    node = line.rpartition("SuperNode ID:")[2].strip()
                    self.say("[fedssl client] connected and authenticated"
                             f"{f' (SuperNode ID {node})' if node else ''}; waiting for rounds")
                if self.verbose:
                    self.say(f"[flower] {line}")
                elif any(s in line for s in SHOWN) and not is_noise(line):
                    self.say(f"[flower] {ANSI.sub('', line)}")

    def run(self) -> int:
        """Start, wait for the exit, return its code (the pump thread is not waited for:
        Flower's SuperExec inherits the pipe and outlives the SuperNode by a moment)."""
        # same process group as `fedssl client`: Ctrl-C (or killing the group) stops it too;
        # and it dies with the agent, however the agent dies (`kill -9` of the agent alone
        # left it training on the site's data with no operator-visible process; Flower's
        # SuperExec and ClientApps exit once their SuperNode is gone). Called from the main
        # thread, which lives as long as the agent (the parent-death signal follows the
        # thread that started the child).
        self.proc = start_process(self.cmd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=self.env, text=True,
                                  errors="replace", bufsize=1, die_with_parent=True)
        pump = threading.Thread(target=self._pump, name="fedssl-supernode-output",
                                daemon=True)
        pump.start()
        while True:
            try:
                code = self.proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if (self._gave_up_at is not None
                    and time.monotonic() - self._gave_up_at > self.give_up_grace):
                # it gave up reconnecting but did not exit: stop it (its caller decides
                # whether to start another or to exit 3)
                stop_process(self.proc, timeout=10.0)
                code = self.proc.returncode
                break
        pump.join(timeout=2.0)
        return code

    def stop(self) -> None:
        """Terminate the SuperNode (its SuperExec and ClientApp exit with it)."""
        if self.proc is not None:
            stop_process(self.proc, timeout=10.0)


def run_client(opts: ClientOptions) -> int:
    """Check the site, then run its SuperNode until interrupted; an exit code.

    While the server is unreachable or does not (yet) accept this node's key, the SuperNode is
    restarted every few seconds for up to ``join_timeout`` seconds (a server that is started
    after its clients, or restarted to resume a run, is joined again); TLS and key errors stop
    at once. Once the server has been unreachable for ``join_timeout`` seconds (also between
    runs: Flower's SuperNode then logs "Giving up reconnection" and, in 1.41, may stay alive
    doing nothing; it is stopped) the agent exits with code 3 saying so; with
    ``join_timeout`` 0 it keeps retrying for ever.

    Raises:
        DataError, ClientSetupError: the site's inputs are unusable (nothing was started).
    """

    def say(text: str) -> None:  # progress lines carry the local time
        stamp = time.strftime("%H:%M:%S")
        opts.print_fn(text.replace("[fedssl client]", f"[fedssl client {stamp}]", 1))

    ca = resolve_ca(opts.ca_cert)
    node_config, public, data = check_site(opts)
    how = "inferred from the path" if opts.dataset == "auto" else "--dataset"
    say(f"[fedssl client] data OK: {node_config['dataset']} ({how}); {data.describe()}; "
        "every record trains (nothing held out: the server evaluates on its own data)")
    for note in data.notes:
        say(f"[fedssl client] data: {note}")
    say(f"[fedssl client] node key {opts.node_key} (public: {public.decode()[:60]}...)")
    if opts.budget_epsilon is not None:
        say(f"[fedssl client] this site's privacy budget: epsilon {opts.budget_epsilon:g}, "
            f"delta {node_config['budget-delta']:g} (rounds that would exceed it are refused)")
    state = opts.state_dir.resolve()
    flower_home = SiteLayout(state).flower
    flower_home.mkdir(parents=True, exist_ok=True)
    import tomli_w

    node_config_file = SiteLayout(state).node_config
    check_not_running(opts, node_config_file)
    atomic_write_text(node_config_file, tomli_w.dumps(node_config))
    log_path = flower_home / "supernode.log"
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(flower_home), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = supernode_command(opts, ca, node_config_file)
    say(f"[fedssl client] connecting to {opts.server} as {node_config['client-id']} "
        f"(TLS, node authentication); state: {state}; log: {log_path}")
    watcher = LedgerWatcher(SiteLayout(state).ledger, opts.budget_epsilon, say)
    watcher.start()
    last_ok = time.monotonic()
    runner: SuperNodeRunner | None = None
    try:
        while True:
            runner = SuperNodeRunner(cmd, env, log_path, opts.verbose, say)
            code = runner.run()
            if runner.connected:  # connected until it lost the server (then retried so long)
                last_ok = time.monotonic() - (runner.gave_up_after or 0.0)
            # the SuperNode never stops on its own while all is well: any exit is a problem
            # (a server restarted to resume a run no longer knows this node and answers 401,
            # upon which Flower's SuperNode shuts itself down with code 0)
            reason = _classify_exit(runner.output)
            if reason == "other" and runner.connected:
                reason = "lost"  # e.g. a restarted server no longer knows this node's id
            waited = time.monotonic() - last_ok
            if reason in ("tls", "key", "other") or (
                    opts.join_timeout > 0 and waited >= opts.join_timeout):
                gave_up = (f" for {waited:.0f} s (--join-timeout {opts.join_timeout:g} s); start"
                           " the agent again once the server is up, or give --join-timeout 0"
                           " to keep retrying" if reason == "unreachable" else "")
                say(f"[fedssl client] error: {EXPLAIN.get(reason, 'the SuperNode stopped')}"
                    f"{gave_up} (flower-supernode exit code {code}; log: {log_path})")
                return 3
            limit = f"{opts.join_timeout:g} s" if opts.join_timeout > 0 else "no limit"
            say(f"[fedssl client] {EXPLAIN[reason]}; rejoining in {RETRY_SECONDS:g} s "
                f"(without a connection for {waited:.0f} s; {limit})")
            time.sleep(RETRY_SECONDS)
    except KeyboardInterrupt:
        say("[fedssl client] interrupted; stopping the SuperNode")
        return 130
    finally:
        watcher.stop_event.set()
        if runner is not None:
            runner.stop()
