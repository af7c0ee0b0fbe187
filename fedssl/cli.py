"""``fedssl`` command line: ``simulate`` (researchers), ``certs``/``server``/``client`` (a real
federation), ``audit`` (privacy auditors), ``evaluate`` and ``compare`` (a run's encoder on
labelled data; several runs side by side)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fedssl.audit_command import add_audit_parser, run_audit
from fedssl.compare_command import add_compare_parser, run_compare
from fedssl.deploy_commands import add_deploy_parsers, run_deploy
from fedssl.evaluate_command import add_evaluate_parser, run_evaluate
from fedssl.run_layout import RunLayout
from fedssl.run_lock import RunInUseError
from fedssl.simulations.config import ConfigError, ExperimentConfig


def _add_experiment_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per ExperimentConfig field (the RunSpec settings simulate sets, plus the
    simulation's own: :mod:`fedssl.simulations.config`), help text taken from the field."""
    defaults = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        helptext = f"{f.metadata['help']} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=helptext)
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=type(default),
                                metavar=type(default).__name__.upper(), help=helptext)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedssl", description="Federated, differentially private self-supervised learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate", help="run a federated SSL experiment on Flower's simulation engine",
        description="Run a federated SSL experiment on Flower's simulation engine (Ray). "
        "Options come from --config (TOML, keys as below with _ or under [experiment]); "
        "command-line options override the file. Writes the run directory "
        "(config.toml, metrics.jsonl, ledger/, checkpoints/, encoder.safetensors, "
        "report.json, plots/) and prints the result table.")
    sim.add_argument("--config", metavar="TOML", help="experiment config file (relative "
                     "init_encoder and data_path in it are taken from its directory)")
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    sim.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpointed round, with "
                     "its saved config.toml (clients keep their ledgers: spent privacy is "
                     "never repeated). A round that was interrupted is redone. What defines "
                     "the experiment (data, partition, clients, method, DP, seed, ...) cannot "
                     "change: a different value is refused; the evaluation, timeouts, "
                     "simulated faults and resources may (recorded in config.toml). Changing "
                     "--rounds needs --extend; a complete run is resumed only with --extend")
    sim.add_argument("--extend", action="store_true",
                     help="with --resume: extend the run to --rounds N rounds (more than its "
                     "config.toml says; recorded there). Prints what the extra rounds cost "
                     "each client's privacy, with a warning when what is left of the target "
                     "epsilon forces far more noise than the run used so far")
    _add_experiment_options(sim)
    add_deploy_parsers(sub)
    add_audit_parser(sub)
    add_evaluate_parser(sub)
    add_compare_parser(sub)
    from fedssl.client.pretrain import add_arguments as add_pretrain_arguments

    add_pretrain_arguments(sub.add_parser(
        "pretrain", help="pretrain a warm-start encoder on synthetic or public data",
        description="Pretrain a warm-start encoder for --init-encoder on data that is not "
        "the private pool: procedurally generated records (no data, no privacy cost), your "
        "own public records, or MNIST-1D's public split. Writes a safetensors file."))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (code := run_deploy(args)) is not None:
        return code
    if args.command == "audit":
        return run_audit(args)
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "compare":
        return run_compare(args)
    if args.command == "pretrain":
        from fedssl.client.pretrain import run as run_pretrain
        from fedssl.ssl_core.warm_start import WarmStartError

        try:
            print(f"wrote {run_pretrain(args)}")
        except (WarmStartError, ValueError) as exc:
            print(f"fedssl pretrain: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "simulate":
        from fedssl.server.report_table import format_report, nobody_trained
        from fedssl.simulations.simulate import RunInterruptedError, simulate

        overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)
                     if getattr(args, f.name) is not None}
        try:
            if args.resume:  # the run's own resolved config, plus explicit overrides
                if not args.out:
                    raise ConfigError("--resume needs --out RUN_DIR")
                if args.config:  # was silently not read
                    raise ConfigError("--resume continues the run with its own config.toml; "
                                      "--config is not read on resume (give an option that "
                                      "may change on the command line)")
                config_path = RunLayout(args.out).config
                if not config_path.exists():
                    raise FileNotFoundError(f"nothing to resume: {config_path} not found")
                cfg = ExperimentConfig.load(config_path, overrides)
            else:
                cfg = ExperimentConfig.load(args.config, overrides, paths_from_file=True)
            run_dir = simulate(cfg, verbose=args.verbose, resume=args.resume,
                               extend=args.extend)
        except (ConfigError, ValueError, FileExistsError, FileNotFoundError,
                RunInUseError) as exc:
            print(f"fedssl simulate: error: {exc}", file=sys.stderr)
            return 2
        except RunInterruptedError as exc:  # SIGINT: 130, SIGTERM: 143
            print(f"\nfedssl simulate: {exc}", file=sys.stderr, flush=True)
            if exc.lingering:  # a thread of the run did not stop: don't wait for it at exit
                sys.stdout.flush()
                os._exit(exc.exit_code)
            return exc.exit_code
        print(format_report(run_dir))
        if reason := nobody_trained(run_dir):
            print(f"fedssl simulate: error: {reason}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
