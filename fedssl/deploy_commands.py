"""``fedssl certs``, ``fedssl server`` and ``fedssl client``: a real federation over the network.

Wiring (two lines in :mod:`fedssl.cli`)::

    add_deploy_parsers(sub)               # in build_parser()
    if (code := run_deploy(args)) is not None: return code   # in main()

The commands are thin: argument parsing and error reporting live here; the work is done by
:mod:`fedssl.privacy.identity.certs`, :mod:`fedssl.server.superlink` and
:mod:`fedssl.client.supernode`.
Bad input (missing or malformed certificates and keys, unreadable data, an invalid budget, a
run directory that already holds a run) is reported before anything is started, with exit
code 2; a run that fails or a client the server refuses exits non-zero (1, or 3 for a client).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from fedssl import run_spec
from fedssl.run_layout import RunLayout, SiteLayout
from fedssl.run_lock import RunInUseError, RunLock

DEPLOY_COMMANDS = ("certs", "server", "client")

#: run-config defaults of a real federation: the run's defaults (fedssl.run_spec.RunSpec: DP at
#: epsilon 8, delta 1e-5 and secure aggregation on, as in simulations and pyproject's
#: [tool.flwr.app.config]) with only what a deployment needs changed: no progress bar, its
#: own run directory and a round timeout for real networks
DEPLOY_OVERRIDES: dict[str, Any] = run_spec.DEPLOY_OVERRIDES

#: (flag, run-config key, type, help) of the server options mapped one-to-one on the run
#: config: the RunSpec settings that have a ``fedssl server`` help text
_SERVER_OPTIONS: tuple[tuple[str, str, type, str], ...] = tuple(
    (o.server_flag, o.key, o.type, o.server_help) for o in run_spec.options()
    if o.server_flag and o.server_help)


def _config_defaults() -> dict[str, Any]:
    return {**run_spec.DEFAULTS, **DEPLOY_OVERRIDES}


def add_deploy_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``certs``, ``server`` and ``client`` on the ``fedssl`` sub-command parser."""
    certs = subparsers.add_parser(
        "certs", help="create the CA, the server TLS certificate and node keys",
        description="Create the files a federation needs (with the `cryptography` package): a "
        "certificate authority (ca.crt, ca.key), a TLS certificate for the server signed by it "
        "(server.crt, server.key) naming every --host plus 127.0.0.1 and localhost, one "
        "authentication key pair per node (nodes/node-<i>.key in OpenSSH format and "
        "nodes/node-<i>.pub), one Ed25519 identity key per node (nodes/node-<i>.identity.pem: "
        "signs its secure-aggregation keys and its privacy ledger), the public identity "
        "registry identities.json, and authorized_nodes.txt listing the public keys the server "
        "will accept. Prints, per site, the 4 files it needs (ca.crt, identities.json, "
        "node-<i>.key, node-<i>.identity.pem) and its `fedssl client` command; keep ca.key "
        "offline.")
    certs.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="directory to write (created if missing)")
    certs.add_argument("--nodes", required=True, type=int, metavar="N",
                       help="number of node key pairs to create")
    certs.add_argument("--host", action="append", default=[], metavar="HOST",
                       help="DNS name or IP address the clients use to reach the server "
                       "(repeatable or comma separated; 127.0.0.1 and localhost are always "
                       "included)")
    certs.add_argument("--force", action="store_true",
                       help="replace an existing CA in DIR (invalidates the old certificates)")

    defaults = _config_defaults()
    server = subparsers.add_parser(
        "server", help="run the federation server (Flower SuperLink + the fedssl ServerApp)",
        description="Start a Flower SuperLink with TLS and SuperNode authentication (only the "
        "keys in CERTS/authorized_nodes.txt may join; the Control API answers local "
        "connections only), wait for the clients, run the federated SSL training and stop "
        "when it is done. Writes the run directory (metrics.jsonl, checkpoints/, "
        "report.json, encoder.safetensors, plots/) and Flower's logs under RUN/flower/. "
        "Every option below maps onto the run configuration; --set reaches the rest.")
    server.add_argument("--certs", required=True, type=Path, metavar="DIR",
                        help="directory made by `fedssl certs` (ca.crt, server.crt, "
                        "server.key, authorized_nodes.txt, and identities.json: the sites' "
                        "registered identity keys, needed with secure aggregation or DP)")
    server.add_argument("--address", default="0.0.0.0:9092", metavar="HOST:PORT",
                        help="address the SuperLink listens on (default: 0.0.0.0:9092, all "
                        "interfaces); clients connect to this port")
    server.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpointed round "
                        "(clients keep their ledgers: privacy already spent is never "
                        "repeated)")
    server.add_argument("--extend", action="store_true",
                        help="with --resume: change the run's round count to --rounds (more "
                        "rounds than planned; recorded in RUN/config.toml). Without it, "
                        "--resume keeps the run's own round count and refuses a different "
                        "--rounds, since each site's noise is planned for the run's rounds")
    server.add_argument("--min-clients", type=int, default=0, metavar="N",
                        help="start the run once N clients are connected (default: every "
                        "authorised node)")
    server.add_argument("--wait-clients-timeout", type=float, default=600.0, metavar="S",
                        help="give up if the clients have not connected within S seconds "
                        "(default: 600)")
    server.add_argument("--dataset", default="auto",
                        help="the server's own labelled evaluation data: npz, imagefolder, "
                        "dicom, nifti, digits or mnist1d (default: inferred from --data-path, "
                        "else "
                        f"{defaults['dataset']}); its record shape must match the clients' data")
    server.add_argument("--data-path", default="", metavar="PATH",
                        help="the server's labelled evaluation data (.npz in the MedMNIST "
                        "layout, an image folder, a folder of DICOM .dcm files or of NIfTI "
                        "volumes, one sub-folder per class); used for the linear probe and "
                        "kNN only, "
                        "never for training")
    for flag, key, typ, text in _SERVER_OPTIONS:  # generated from the RunSpec
        if typ is bool:
            server.add_argument(flag, dest=key.replace("-", "_"), default=None,
                                action=argparse.BooleanOptionalAction,
                                help=f"{text} (default: {defaults[key]})")
        else:
            server.add_argument(flag, dest=key.replace("-", "_"), type=typ, default=None,
                                metavar=typ.__name__.upper(),
                                help=f"{text} (default: {defaults[key]!r})")
    server.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other run-config key of the ServerApp (repeatable), e.g. "
                        "--set algorithm=fedema; keys: " + ", ".join(sorted(defaults)))
    server.add_argument("--verbose", action="store_true",
                        help="also print the ServerApp's log as it runs")

    client = subparsers.add_parser(
        "client", help="run a site's client agent (Flower SuperNode)",
        description="Check this site's data, key and budget, then connect to the server as a "
        "Flower SuperNode over TLS, authenticated with the node key, and train in every round "
        "the server runs. The data never leaves the site; the site's privacy budget is "
        "enforced here, not by the server. Runs until interrupted (Ctrl-C). Exit codes: 2 "
        "bad local input (nothing was started), 3 the connection failed or the server "
        "refused this node.")
    client.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="the server's address, as named in its certificate")
    client.add_argument("--certs", required=True, type=Path, metavar="PATH",
                        help="the federation's CA certificate (ca.crt) or a directory "
                        "holding it; the identity registry identities.json must be next to "
                        "it")
    client.add_argument("--node-key", required=True, type=Path, metavar="PATH",
                        help="this site's private authentication key (nodes/node-<i>.key "
                        "from `fedssl certs`, or any unencrypted OpenSSH ECDSA key whose .pub "
                        "the server operator registered); this site's registered identity "
                        "key node-<i>.identity.pem must be next to it")
    client.add_argument("--data", required=True, type=Path, metavar="PATH",
                        help="this site's training data: a .npz file in the MedMNIST layout "
                        "(train_images; labels are optional, training needs none), a folder "
                        "of PNG/JPEG images, a "
                        "folder of DICOM .dcm files (searched recursively) or NIfTI "
                        ".nii/.nii.gz volumes (sliced into 2-D images)")
    client.add_argument("--dataset", default="auto",
                        choices=("auto", "npz", "imagefolder", "dicom", "nifti"),
                        help="data format (default: inferred from --data)")
    client.add_argument("--state-dir", required=True, type=Path, metavar="DIR",
                        help="where this site keeps its state: identity.pem (ledger signing "
                        "key), ledger.jsonl (signed privacy ledger), site.toml (optional "
                        "budget), flower/ (logs)")
    client.add_argument("--client-id", default="", metavar="ID",
                        help="name of this site in the ledger and the server's report "
                        "(default: the node key's file name)")
    client.add_argument("--budget-epsilon", type=float, default=None, metavar="E",
                        help="this site's total privacy budget; rounds that would take it past "
                        "E are refused before any gradient is computed (default: site.toml "
                        "in --state-dir, else no site limit)")
    client.add_argument("--budget-delta", type=float, default=None, metavar="D",
                        help="delta of the site's budget (default: 1e-5)")
    client.add_argument("--image-size", type=int, default=28, metavar="PX",
                        help="side length images are resized to (must match the server's "
                        "--image-size; default: 28)")
    client.add_argument("--device", default="auto", metavar="DEV",
                        help="torch device this site trains on: auto (its GPU when torch sees "
                        "one), cpu, cuda or cuda:N; checked before connecting (default: auto)")
    client.add_argument("--runtime-port", type=int, default=9094, metavar="PORT",
                        help="local port (127.0.0.1) of the SuperNode's Runtime API, used by "
                        "its own training process; each client on one machine needs its own "
                        "(default: 9094)")
    client.add_argument("--join-timeout", type=float, default=600.0, metavar="S",
                        help="keep trying to (re)join for S seconds while the server is "
                        "unreachable or does not accept this node's key yet (a server started "
                        "after its clients, or restarted to resume, is joined again); then "
                        "exit with code 3 (default: 600; 0: for ever)")
    client.add_argument("--verbose", action="store_true", help="print all of Flower's output")


def _parse_value(key: str, raw: str, defaults: dict[str, Any]) -> Any:
    """``--set`` value typed like the ServerApp's default for ``key``."""
    if key not in defaults:
        raise ValueError(f"--set {key}: unknown run-config key; known: "
                         f"{', '.join(sorted(defaults))}")
    default = defaults[key]
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--set {key}={raw}: expected true or false")
        return raw.lower() in ("true", "1", "yes")
    try:
        return type(default)(raw)
    except ValueError as exc:
        raise ValueError(f"--set {key}={raw}: expected a {type(default).__name__}") from exc


def server_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run config ``fedssl server`` submits: defaults, then --set, then named options."""
    from fedssl.client.supernode import infer_dataset
    from fedssl.ssl_core.datasets import TRAINING_ONLY, evaluation_labels, load_dataset

    defaults = _config_defaults()
    cfg = dict(defaults)
    saved = _saved_run(server_run_dir(args)) if args.resume else None
    if saved is not None:  # the run's own settings, which the options below may change
        cfg.update({k: v for k, v in saved.items() if k in defaults})
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        cfg[key.strip()] = _parse_value(key.strip(), raw.strip(), defaults)
    for _flag, key, _typ, _text in _SERVER_OPTIONS:
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            cfg[key] = value
    if args.data_path:
        cfg["data-path"] = str(Path(args.data_path).resolve())
        cfg["dataset"] = infer_dataset(Path(args.data_path), args.dataset)
    elif args.dataset != "auto":
        cfg["dataset"] = args.dataset
    run_dir = Path(str(cfg["run-dir"]))
    if args.resume:
        cfg["resume"] = True
        _resume_rounds(cfg, run_dir, args.num_server_rounds, args.extend)
    elif args.extend:
        raise ValueError("--extend continues a run: it needs --resume")
    if cfg["num-server-rounds"] < 1:
        raise ValueError("--rounds must be at least 1")
    if cfg["round-timeout"] <= 0:
        raise ValueError("--round-timeout must be positive")
    # the same checks and errors as fedssl simulate's (a ConfigError: exit 2)
    cfg = run_spec.validate_run_config(cfg)
    if saved is not None:  # what defines the experiment stays as recorded
        run_spec.check_resume(run_spec.resume_changes(saved, cfg, keys=True), run_dir,
                              flag=_server_flag)
        _refuse_complete(run_dir, int(cfg["num-server-rounds"]), args.extend)
    # the server's evaluation data must load before anything starts (exit 2 otherwise)
    data = load_dataset(str(cfg["dataset"]), str(cfg["data-path"]), int(cfg["num-samples"]),
                        int(cfg["seed"]), int(cfg["image-size"]))
    labelled = evaluation_labels(data, "the server's evaluation data")
    _say(f"[fedssl server] evaluation data ({cfg['dataset']}): {data.describe()}")
    if not labelled:
        _say(f"[fedssl server] evaluation data: {TRAINING_ONLY}")
    for note in data.notes:  # e.g. the share held out to score the probes
        _say(f"[fedssl server] evaluation data: {note}")
    return cfg


def _saved_run(run_dir: Path) -> dict[str, Any] | None:
    """The settings a server run recorded (``RUN/config.toml``'s ``[run]`` table), or None
    if there is none (nothing to resume: :func:`fedssl.server.superlink.check_run_dir` says
    so). Unreadable TOML is a ValueError naming the file."""
    import tomllib

    path = RunLayout(run_dir).config
    if not path.is_file():
        return None
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML ({exc}); the run's settings cannot be "
                         "read") from exc
    table = raw.get("run")
    return dict(table) if isinstance(table, dict) else None


def _server_flag(option: run_spec.Option) -> str:
    """How ``fedssl server`` sets ``option`` (named in its resume refusals)."""
    own = {"dataset": "--dataset", "data-path": "--data-path"}
    return own.get(option.key) or option.server_flag or f"--set {option.key}="


def _refuse_complete(run_dir: Path, rounds: int, extend: bool) -> None:
    """A complete run (every round done, report.json written) is resumed only to extend it:
    resuming it otherwise redid nothing but overwrote its report (its wall_seconds too)."""
    from fedssl.server.checkpoint import resume_point

    layout = RunLayout(run_dir)
    point = resume_point(run_dir)
    if not extend and point is not None and point.round >= rounds and layout.report.exists():
        raise ValueError(
            f"the run in {run_dir} is complete (round {point.round} of {rounds}, "
            f"{layout.report.name} written): there is nothing to resume, and its report and "
            "encoder are kept as they are. To train more rounds: --resume --extend --rounds "
            f"N (N > {rounds}) (nothing was changed)")


def _resume_rounds(cfg: dict[str, Any], run_dir: Path, rounds: int | None,
                   extend: bool) -> None:
    """On ``--resume``, the round count is the run's own (``RUN/config.toml``) unless
    ``--extend`` changes it: a silently extended run would make every site spend what is left
    of its target on the extra rounds (noise far above the run's), so it must be asked for."""
    import tomllib

    from fedssl.run_layout import RunLayout

    path = RunLayout(run_dir).config
    try:
        saved = tomllib.loads(path.read_text()).get("run", {}).get("num-server-rounds")
    except (OSError, tomllib.TOMLDecodeError):
        saved = None  # no server-format config: check_run_dir reports what is missing
    if saved is None:
        return
    saved = int(saved)
    if rounds is None or rounds == saved:
        if extend:
            raise ValueError(f"--extend: the run in {run_dir} already has {saved} rounds; "
                             "give a larger --rounds")
        cfg["num-server-rounds"] = saved
    elif not extend:
        raise ValueError(
            f"the run in {run_dir} was configured for {saved} rounds; --resume --rounds "
            f"{rounds} would change its plan (and each site's per-round privacy spend): pass "
            f"--extend to extend it (recorded in {path}), or drop --rounds")
    elif rounds < saved:
        raise ValueError(f"--extend only adds rounds: the run has {saved}, --rounds {rounds}")
    else:
        _say_extension_costs(cfg, run_dir, saved, rounds)


def _say_extension_costs(cfg: dict[str, Any], run_dir: Path, saved: int, rounds: int) -> None:
    """Print what ``--extend`` costs each site (from the server's verified copies of the
    sites' ledgers, ``RUN/ledger``), with a warning where the extra rounds would only add
    noise (:func:`fedssl.server.extension.extension_costs`)."""
    from fedssl.server.checkpoint import resume_point
    from fedssl.server.extension import extension_costs

    point = resume_point(run_dir)
    done = point.round if point is not None else 0
    _say(f"[fedssl server] extending {run_dir} from {saved} to {rounds} rounds "
         f"({rounds - done} more after round {done})")
    if not cfg.get("dp", True):
        return
    for warn, text in extension_costs(run_dir, rounds, done,
                                      target_epsilon=float(cfg["target-epsilon"]),
                                      delta=float(cfg["delta"]),
                                      accountant=str(cfg["accountant"])):
        _say(f"[fedssl server] {'WARNING: ' if warn else ''}{text}")


def server_run_dir(args: argparse.Namespace) -> Path:
    """The run directory ``fedssl server`` will use: ``--run-dir``, else ``--set
    run-dir=...``, else the deployment default (as :func:`server_run_config` resolves it)."""
    if getattr(args, "run_dir", None):
        return Path(args.run_dir)
    for item in reversed(args.set):
        key, sep, raw = item.partition("=")
        if sep and key.strip() == "run-dir":
            return Path(raw.strip())
    return Path(str(_config_defaults()["run-dir"]))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _say(line: str) -> None:
    print(line, flush=True)


def run_deploy(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is certs/server/client; None for any other command."""
    command = getattr(args, "command", None)
    if command not in DEPLOY_COMMANDS:
        return None
    if command in ("server", "client"):
        # `kill PID` stops the SuperLink/SuperNode too (the finally blocks run)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from fedssl.quiet import quiet_output

    with quiet_output(bool(getattr(args, "verbose", False))):  # Flower's known banners
        return _run_deploy(command, args)


def _run_deploy(command: str, args: argparse.Namespace) -> int:
    """:func:`run_deploy` for one of :data:`DEPLOY_COMMANDS`, output filtering aside."""
    from fedssl.client.supernode import ClientSetupError
    from fedssl.privacy.identity.certs import CertError
    from fedssl.server.superlink import DeployError
    from fedssl.ssl_core.datasets import DataError

    try:
        if command == "certs":
            from fedssl.privacy.identity.certs import create_certs, handoff

            hosts = [h.strip() for item in args.host for h in item.split(",") if h.strip()]
            paths = create_certs(args.out, args.nodes, hosts, overwrite=args.force)
            _say(handoff(paths, args.nodes, f"{hosts[0] if hosts else '127.0.0.1'}:9092"))
            return 0
        if command == "server":
            from fedssl.server.superlink import ServerOptions, run_server

            # the run directory is this server's until it stops: a second server (or a
            # simulate) on it is refused before its settings are even read
            with RunLock(RunLayout(server_run_dir(args)).lock, "run directory"):
                cfg = server_run_config(args)
                return run_server(ServerOptions(
                    certs=args.certs, run_config=cfg, address=args.address,
                    min_clients=args.min_clients,
                    wait_clients_timeout=args.wait_clients_timeout, resume=args.resume,
                    verbose=args.verbose, print_fn=_say))
        from fedssl.client.supernode import ClientOptions, run_client

        # one agent per state directory (its identity key and ledger): a second is refused
        with RunLock(SiteLayout(args.state_dir).lock, "state directory"):
            return run_client(ClientOptions(
                server=args.server, ca_cert=args.certs, node_key=args.node_key,
                data=args.data, state_dir=args.state_dir, dataset=args.dataset,
                client_id=args.client_id, budget_epsilon=args.budget_epsilon,
                budget_delta=args.budget_delta, image_size=args.image_size,
                runtime_port=args.runtime_port, device=args.device,
                join_timeout=args.join_timeout, verbose=args.verbose, print_fn=_say))
    except (DataError, CertError, ClientSetupError, ValueError, RunInUseError) as exc:
        print(f"fedssl {command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except DeployError as exc:
        print(f"fedssl {command}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"fedssl {command}: interrupted", file=sys.stderr, flush=True)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m fedssl.deploy_commands ...``) until cli.py wires
    the commands in; behaves exactly like ``fedssl certs|server|client``."""
    parser = argparse.ArgumentParser(prog="fedssl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_deploy_parsers(sub)
    args = parser.parse_args(argv)
    code = run_deploy(args)
    return 0 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
