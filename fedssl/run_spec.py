"""The run's settings, declared once: :class:`RunSpec`.

Every setting of a federated run is one field of :class:`RunSpec`, with its type, its default
(the ServerApp's, which ``flwr run .`` gets from ``[tool.flwr.app.config]`` in pyproject.toml),
its help text, which side reads it (the server, or also the clients, which get it in every
round's ConfigRecord), its choices and its checks. Everything else is derived from it:

- the Flower run config's defaults (:data:`DEFAULTS`, kebab-case keys; ``fedssl.server.app``
  keeps the name) and the keys sent to the clients (:data:`CLIENT_KEYS`);
- ``fedssl simulate``'s ExperimentConfig (``fedssl.simulations.config``): the fields below
  plus the simulation's own (clients, resources, site budgets, ``--out``), and so its
  options and ``--help``;
- ``fedssl server``'s named options and ``--set`` keys (``fedssl.deploy_commands``; a real
  federation changes only the defaults in :data:`DEPLOY_OVERRIDES`);
- the server's typed run (:class:`ServerRun`) and the clients' typed reading of a round's
  config (:func:`round_spec`): the only places a run config's kebab-case keys are read.

Flower's run config (kebab-case keys, the scalar types Flower accepts) is met only at the
ServerApp/ClientApp boundary: :meth:`RunSpec.from_run_config` and :meth:`RunSpec.to_run_config`
convert, :func:`validate_run_config` checks a run config with the same errors ``fedssl
simulate`` gives (:meth:`RunSpec.validate`), so ``flwr run .`` and ``fedssl server`` refuse
what ``simulate`` refuses. Flower-free: nothing here imports Flower.

Where it sits (``tests/fedssl/test_import_graph.py``): above ``ssl_core`` and ``privacy`` (whose
registries name the choices: methods, data sets, partitioners, accountants), below ``client``,
``server`` and ``simulations``, which import it; ``ssl_core`` and ``privacy`` never do.

>>> spec = RunSpec(rounds=3, lr=0.1)
>>> spec.to_run_config()["num-server-rounds"], DEFAULTS["method"]
(3, 'simsiam')
>>> RunSpec.from_run_config({"num-server-rounds": 2, "lr": 1}).lr  # Flower's int -> float
1.0
>>> RunSpec(delta=2.0).validate()
Traceback (most recent call last):
...
fedssl.run_spec.ConfigError: delta: must be in (0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from fedssl.privacy.accounting import budget_accountants
from fedssl.privacy.accounting.budget import UPPER_BOUND_ACCOUNTANTS
from fedssl.privacy.dp_sgd.engine import DPSoundnessError, clip_sensitivity
from fedssl.ssl_core.aggregators import AGGREGATORS, aggregator_names
from fedssl.ssl_core.data import dataset_names
from fedssl.ssl_core.datasets import DATASETS, DEFAULT_DATASET, DataError, infer_dataset
from fedssl.ssl_core.federated_algorithms import algorithm_names
from fedssl.ssl_core.model_parts import PARTS, parse_shared
from fedssl.ssl_core.negative_bank import MNIST1D_PUBLIC_SEED
from fedssl.ssl_core.objectives import OBJECTIVES
from fedssl.ssl_core.partitioners import PARTITIONERS
from fedssl.ssl_core.trainable import trainable_names

#: the learning-rate schedules the local trainer implements (``fedssl.client.trainer``)
LR_SCHEDULES = ("constant", "cosine")
#: client-level DP modes
CLIENT_DP_MODES = ("off", "central", "distributed")
#: run-config keys a driver adds that are not settings of the run: the simulation's clients
#: and resources (``fedssl simulate``), its warm-up workers, the run's id, the fewest sites a
#: round of a deployment starts with (``fedssl server --min-clients``)
RUNTIME_KEYS = ("num-clients", "cpus-per-client", "gpus-per-client", "warmup-workers",
                "run-id", "min-clients")

#: what ``--resume`` may do with a setting (its field's ``on_resume``; issue 22 item 4):
#: FIXED settings define the experiment (data, partition, clients, method, DP, seed, ...):
#: a resume with another value is refused, naming it, before anything is written
FIXED = "fixed"
#: may change on resume (how long to wait, how often to evaluate, where to run and log):
#: the change is recorded in config.toml as a ``[[change]]`` (key, old, new, time)
MAY_CHANGE = "may change"
#: the round count: only with ``--extend``, recorded too
EXTEND = "extend"
#: describes one invocation, not the run (``--resume`` itself, the progress display):
#: neither compared nor recorded
INVOCATION = "invocation"
ON_RESUME = (FIXED, MAY_CHANGE, EXTEND, INVOCATION)


class ConfigError(ValueError):
    """Raised for an unknown option or an invalid value (the message names the option)."""


@dataclass(frozen=True)
class Option:
    """One setting, as the commands and the run config see it (from a :class:`RunSpec`
    field's metadata; :func:`options`)."""

    name: str
    """Python name (``batch_size``)."""
    key: str
    """Flower run-config key (``batch-size``)."""
    type: type
    default: Any
    """The run config's default (ServerApp, ``flwr run .``)."""
    help: str
    client: bool
    """Forwarded to the clients in every round's config (:data:`CLIENT_KEYS`)."""
    choices: tuple[str, ...] | None
    simulate: str | None
    """None: ``fedssl simulate --<name>`` sets it; else how simulate sets it instead."""
    simulate_default: Any
    """``fedssl simulate``'s default (differs only where simulate resolves it later)."""
    server_help: str | None
    """``fedssl server --<flag>``'s help if the server has a named option for it."""
    server_flag: str | None
    client_fallback: Any
    """What a client assumes when a round's config lacks the key (:func:`round_spec`)."""
    on_resume: str = FIXED
    """What ``--resume`` may do with it: :data:`FIXED`, :data:`MAY_CHANGE`, :data:`EXTEND`
    or :data:`INVOCATION` (:func:`resume_changes`)."""

    @property
    def flag(self) -> str:
        """The command-line flag (``--batch-size``; ``--rounds`` for the round count)."""
        return "--" + self.name.replace("_", "-")


_SAME: Any = object()
_REQUIRED: Any = object()  # a client needs the key in the round's config (KeyError if not)


def _opt(default: Any, help: str, *, client: bool = False, key: str | None = None,
         choices: tuple[str, ...] | None = None, simulate: str | None = None,
         simulate_default: Any = _SAME, server: str | None = None,
         server_flag: str | None = None, deploy: Any = _SAME,
         client_fallback: Any = _SAME, on_resume: str = FIXED) -> Any:
    assert on_resume in ON_RESUME, on_resume
    return field(default=default, metadata={
        "help": help, "client": client, "key": key, "choices": choices, "simulate": simulate,
        "simulate_default": simulate_default, "server": server, "server_flag": server_flag,
        "deploy": deploy, "client_fallback": client_fallback, "on_resume": on_resume})


@dataclass(frozen=True)
class RunSpec:
    """A federated SSL run's settings (the ServerApp's run config, typed). Frozen: made once
    at an app's boundary (:meth:`from_run_config`, :class:`ServerRun`, :class:`RoundConfig`)
    and only read after that."""

    # data
    dataset: str = _opt(
        DEFAULT_DATASET,
        f"data source: auto, {', '.join(DATASETS)}; auto infers it from --data-path (.npz "
        "file: npz, .nii/.nii.gz file or folder of them: nifti, folder of .dcm files: dicom, "
        f"other folder: imagefolder), else {DEFAULT_DATASET}; an explicit dataset that cannot "
        "read --data-path is an error", client=True, simulate_default="auto",
        client_fallback=_REQUIRED)
    data_path: str = _opt("", "file (.npz, .nii/.nii.gz, .dcm) or folder (PNG/JPEG images, "
                              "DICOM .dcm files, NIfTI volumes) for npz/imagefolder/dicom/"
                              "nifti data", client=True)
    num_samples: int = _opt(4000, "records to generate for mnist1d (80 %% train pool, 20 %% "
                                  "test)", client=True)
    image_size: int = _opt(28, "side length images are resized to (imagefolder, dicom, nifti)",
                           client=True, server="side length image-folder, DICOM and NIfTI "
                           "images are resized to (server and clients must agree)")
    # federation
    clients_per_round: int = _opt(0, "clients sampled per round (0 = all)",
                                  server="clients sampled per round (0: all connected clients)")
    rounds: int = _opt(5, "federated rounds", key="num-server-rounds",
                       server="number of federated rounds", on_resume=EXTEND)
    partitioner: str = _opt("dirichlet", f"how the pool is split: {', '.join(PARTITIONERS)}",
                            client=True, choices=PARTITIONERS, client_fallback="iid")
    dirichlet_alpha: float = _opt(0.5, "Dirichlet concentration for label skew (smaller = "
                                       "more)", client=True)
    shards_per_client: int = _opt(2, "label shards per client for the shard partitioner",
                                  client=True)
    # local training
    method: str = _opt("simsiam", f"SSL objective: {', '.join(sorted(OBJECTIVES))}",
                       client=True, server=f"SSL objective: {', '.join(sorted(OBJECTIVES))} "
                       "(simclr only without record-level DP: its in-batch negatives are "
                       "refused under DP-SGD)", client_fallback=_REQUIRED)
    algorithm: str = _opt("fedavg", "federated SSL algorithm: "
                                    f"{', '.join(algorithm_names())} (how a client merges "
                                    "the global model into its local one)",
                          client=True, choices=algorithm_names())
    shared: str = _opt("all", "model parts sent to and averaged by the server, "
                              f"comma-separated subset of {', '.join(PARTS)}, or all (default)",
                       simulate_default="")
    fedema_tau: float = _opt(0.7, "FedEMA: EMA weight = min(tau * divergence, 1)", client=True)
    fedu_threshold: float = _opt(0.5, "FedU: take the global predictor while the encoder "
                                      "divergence is below this", client=True)
    local_epochs: int = _opt(1, "local epochs per round", client=True,
                             server="local epochs per round on each client",
                             client_fallback=_REQUIRED)
    batch_size: int = _opt(32, "local batch size (expected batch size under DP)", client=True,
                           server="expected batch size (Poisson sampling under DP)",
                           client_fallback=_REQUIRED)
    lr: float = _opt(0.05, "local SGD learning rate", client=True,
                     server="client learning rate", client_fallback=_REQUIRED)
    momentum: float = _opt(0.9, "local SGD momentum", client=True)
    views: int = _opt(0, "augmentation multiplicity K: views per record and step, all clipped "
                         "together under DP (sensitivity stays C); 0 = the method's own "
                         "(2); K > 2 for simsiam/byol only", client=True)
    ema_decay: float = _opt(0.0, "parameter EMA of each client's local iterates over a round's "
                                 "steps, in [0, 1); the client sends the EMA (post-processing, "
                                 "no privacy cost); 0 = off, sends the last iterate",
                            client=True)
    trainable: str = _opt("all", "parameters each client trains: "
                                 f"{', '.join(trainable_names())} (norm-bias: normalisation "
                                 "gains and offsets and biases only, BiTFiT; the rest keep the "
                                 "values received, e.g. the warm start's, so DP-SGD's noise "
                                 "spans ~1 %% of the coordinates; norm-bias-last: "
                                 "also the encoder's last block); no privacy cost",
                          client=True, choices=trainable_names())
    lr_schedule: str = _opt("constant", "learning-rate schedule over the run's rounds, per "
                                        f"step: {', '.join(LR_SCHEDULES)}", client=True,
                            choices=LR_SCHEDULES)
    warmup_rounds: int = _opt(0, "linear learning-rate warm-up over the first k rounds",
                              client=True)
    server_lr: float = _opt(1.0, "server learning rate of FedAvgM on each round's aggregated "
                                 "update (1 with server momentum 0: plain FedAvg); "
                                 "post-processing of the aggregate, no privacy cost")
    server_momentum: float = _opt(0.0, "server momentum of FedAvgM (Hsu et al. 2019), in [0, "
                                       "1): a round's averaged update is only a few local "
                                       "steps long, momentum lengthens it; post-processing, "
                                       "no privacy cost")
    aggregator: str = _opt("mean", "how the server averages the accepted client models: "
                                   f"{', '.join(aggregator_names())} (mean: example-weighted "
                                   "FedAvg; ldawa: layer-wise divergence-aware weights, "
                                   "Rehman et al. 2023, needs --no-secagg); post-processing, "
                                   "no privacy cost", choices=aggregator_names())
    init_encoder: str = _opt("", "warm-start encoder (safetensors, keys without 'encoder.') "
                                 "pretrained on public or synthetic data, never the private "
                                 "records; make one with 'fedssl pretrain --source "
                                 "synthetic --input-shape C,H,W --out FILE'")
    # differential privacy
    dp: bool = _opt(True, "train with DP-SGD (per-record clipping over all views + noise)",
                    client=True, client_fallback=False,
                    server="train with DP-SGD on the clients")
    target_epsilon: float = _opt(8.0, "each client's epsilon budget for the whole run; the "
                                      "noise multiplier is calibrated to it (0 = use "
                                      "--noise-multiplier)", client=True,
                                 server="each client calibrates its noise so the whole run "
                                 "costs at most this epsilon (0: use --noise-multiplier)",
                                 client_fallback=0.0)
    noise_multiplier: float = _opt(0.0, "DP-SGD noise multiplier, used when target epsilon is "
                                        "0", client=True, server="fixed DP-SGD noise "
                                        "multiplier (when --target-epsilon is 0)",
                                   client_fallback=_REQUIRED)
    max_grad_norm: float = _opt(1.0, "per-record clip norm C", client=True,
                                server="per-record clipping norm of DP-SGD")
    delta: float = _opt(1e-5, "DP delta", client=True, server="DP delta of the run's guarantee",
                        client_fallback=_REQUIRED)
    accountant: str = _opt("prv", "privacy accountant: "
                                  f"{', '.join(UPPER_BOUND_ACCOUNTANTS)}", client=True,
                           server="privacy accountant: "
                                  f"{' or '.join(UPPER_BOUND_ACCOUNTANTS)}")
    secagg: bool = _opt(True, "secure aggregation (SecAgg+): the server learns only the sum of "
                              "the clients' updates (uniformly averaged)",
                        client_fallback=False, server="secure aggregation: the server learns "
                        "only the sum of the updates")
    secagg_clip: float = _opt(2.0, "secure aggregation: each update coordinate is clipped to "
                                   "[-c, c] before 32-bit quantisation",
                              client_fallback=_REQUIRED)
    client_dp: str = _opt("off", "client-level DP: 'off', 'central' (DP-FedAvg: Poisson client "
                                 "sampling at clients-per-round/num-clients, update clipping, "
                                 "Gaussian noise added by the server) or 'distributed' (each "
                                 "client clips its update and adds a Skellam noise share "
                                 "before secure aggregation; needs secagg)",
                          choices=CLIENT_DP_MODES)
    client_clip: float = _opt(1.0, "client-level DP: L2 clip norm S of each client's update",
                              client_fallback=_REQUIRED)
    client_noise_multiplier: float = _opt(1.0, "client-level DP: noise std / S on the sum",
                                          client_fallback=_REQUIRED)
    client_dp_min_clients: int = _opt(0, "distributed client-level DP: noise shares every "
                                         "unmasked sum must hold (each client adds 1/m of the "
                                         "variance); 0 = 80 percent of the clients per round",
                                      client_fallback=_REQUIRED)
    # evaluation and output
    eval_every: int = _opt(1, "evaluate the global encoder every k rounds (and after the "
                              "last)", server="evaluate the global encoder every N rounds (and "
                              "after the last)", on_resume=MAY_CHANGE)
    few_label: str = _opt("1,5,10", "labels per class for the final few-label linear probe "
                                    "and kNN (comma-separated; empty = none)",
                         on_resume=MAY_CHANGE)
    finetune: str = _opt("5", "labels per class for the final label-efficiency table: the "
                              "encoder fine-tuned with a linear head next to the same network "
                              "trained from scratch on the same labels, its frozen probe and "
                              "logistic regression on the raw input (comma-separated; empty = "
                              "none)", on_resume=MAY_CHANGE)
    finetune_seeds: int = _opt(3, "label draws of the label-efficiency table (mean and std "
                                  "over them)", on_resume=MAY_CHANGE)
    eval_samples: int = _opt(4000, "max labelled pool records used to fit the probes",
                             server="labelled records of the server's evaluation data the "
                             "probes are fitted on (at most)", on_resume=MAY_CHANGE)
    eval_test_samples: int = _opt(10_000, "max test records the probes are scored on (a "
                                          "random subset fixed by the seed; 0 = all)",
                                  on_resume=MAY_CHANGE)
    tensorboard: bool = _opt(False, "also write each round's metrics (loss, probe accuracy, "
                                    "each client's epsilon, round seconds) as TensorBoard "
                                    "event files in RUN/tensorboard/",
                             server="write TensorBoard event files of each round's metrics "
                             "(loss, probe accuracy, each client's epsilon, round seconds) "
                             "to RUN/tensorboard/", on_resume=MAY_CHANGE)
    seed: int = _opt(0, "seed of data generation, partitioning, initialisation and sampling",
                     client=True, server="random seed")
    device: str = _opt("auto", "torch device of clients and server: auto (CUDA when the "
                               "process sees a GPU), cpu, cuda or cuda:N", client=True,
                       on_resume=MAY_CHANGE)
    amp: bool = _opt(False, "bfloat16 mixed precision on CUDA for non-DP training (refused "
                            "with --dp)", client=True)
    dropout_prob: float = _opt(0.0, "probability a simulated client vanishes at each message "
                                    "(training and every secure-aggregation stage)",
                               client=True, on_resume=MAY_CHANGE)
    straggler_prob: float = _opt(0.0, "probability a simulated client is slow at a message",
                                 client=True, on_resume=MAY_CHANGE)
    straggler_delay: float = _opt(0.0, "seconds a straggler sleeps (vs --round-timeout)",
                                  client=True, on_resume=MAY_CHANGE)
    round_timeout: float = _opt(600.0, "seconds the server waits for a round's replies (well "
                                       "above a benchmarked round, as fedssl server; raise it "
                                       "for rounds that need longer)",
                                server="seconds the server waits for the clients' replies in "
                                "a round; a client that has not answered by then (crashed, "
                                "disconnected, too slow) counts as a dropout and the round "
                                "goes on with the others", deploy=600.0, on_resume=MAY_CHANGE)
    # set by the driver (simulate derives them; fedssl server and flwr run take them as set)
    run_dir: str = _opt("runs/flwr-run", "run directory (RUN/config.toml, metrics.jsonl, "
                                         "ledger/, checkpoints/, report.json, ...)",
                        client=True, simulate="--out", client_fallback="",
                        server="run directory: metrics.jsonl, checkpoints/, report.json, "
                        "encoder.safetensors, plots/ and Flower's logs under flower/",
                        deploy="runs/federation", on_resume=MAY_CHANGE)
    threads: int = _opt(1, "torch threads each client uses for training", client=True,
                        simulate="--cpus-per-client (its integer part, at least 1)",
                        server="torch threads each client uses for training", on_resume=MAY_CHANGE)
    progress: bool = _opt(True, "the ServerApp's progress lines", simulate="always on",
                          deploy=False, on_resume=INVOCATION)
    resume: bool = _opt(False, "continue the run in run-dir after its last complete round",
                        simulate="--resume", on_resume=INVOCATION)
    identity_registry: str = _opt("", "the sites' identity registry (identities.json); empty: "
                                      "RUN/identities.json, made for simulated sites",
                                  simulate="simulate makes RUN/identities.json for its sites",
                                  on_resume=MAY_CHANGE)

    # -- Flower's run config: the only conversion to and from kebab-case keys ---------------

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any], ignore: tuple[str, ...] = RUNTIME_KEYS
                        ) -> RunSpec:
        """From a Flower run config (kebab-case keys; missing keys take the defaults; keys in
        ``ignore`` are skipped, any other unknown key is a :class:`ConfigError`). Values are
        converted to the fields' types (Flower gives ``1`` for ``lr = 1``).

        Args:
            config: the run config.
            ignore: the keys skipped (the driver's runtime values).

        Returns:
            The settings, not validated (:meth:`validate`).

        Raises:
            ConfigError: for an unknown key or a value of the wrong type.
        """
        by_key = {o.key: o for o in options()}
        kwargs = {}
        for key, value in config.items():
            if key in ignore:
                continue
            if key not in by_key:
                raise ConfigError(f"unknown option {key!r}")
            kwargs[by_key[key].name] = coerce(value, by_key[key].type, key)
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flower run config: kebab-case keys, Flower's scalar types."""
        return {o.key: getattr(self, o.name) for o in options()}

    def validate(self) -> RunSpec:
        """Check names, ranges and combinations (:func:`check_settings`).

        Returns:
            The checked settings, with ``dataset`` "auto" resolved from the data path and
            ``init_encoder`` made absolute (a new object: a RunSpec is frozen).

        Raises:
            ConfigError: naming the first invalid option.
        """
        resolved = check_settings(self)
        return replace(self, dataset=resolved.dataset, init_encoder=resolved.init_encoder)


def options(cls: type = RunSpec) -> tuple[Option, ...]:
    """The settings of ``cls`` (a RunSpec, or fedssl simulate's ExperimentConfig whose fields
    carry the same metadata), in declaration order."""
    out = []
    for f in fields(cls):
        m = f.metadata
        typ = f.type if isinstance(f.type, type) else SCALAR_TYPES[str(f.type)]
        out.append(Option(
            name=f.name, key=m.get("key") or f.name.replace("_", "-"), type=typ,
            default=f.default, help=m["help"], client=m.get("client", False),
            choices=m.get("choices"), simulate=m.get("simulate"),
            simulate_default=(f.default if m.get("simulate_default", _SAME) is _SAME
                              else m["simulate_default"]),
            server_help=m.get("server"),
            server_flag=m.get("server_flag") or ("--" + f.name.replace("_", "-")
                                                 if m.get("server") else None),
            client_fallback=(f.default if m.get("client_fallback", _SAME) is _SAME
                             else m["client_fallback"]),
            on_resume=m.get("on_resume", FIXED)))
    return tuple(out)


#: the run config's scalar types by name (a field's annotation is a string under
#: ``from __future__ import annotations``); simulate's ExperimentConfig reads it too
SCALAR_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}

#: the run config's defaults (kebab-case keys): pyproject's [tool.flwr.app.config] holds them
DEFAULTS: dict[str, Any] = RunSpec().to_run_config()
#: run-config keys forwarded to every client in the round's ConfigRecord
CLIENT_KEYS: tuple[str, ...] = tuple(o.key for o in options() if o.client)
#: what a real federation (``fedssl server``) changes: no progress bar, its own run
#: directory, a round timeout for real networks
DEPLOY_OVERRIDES: dict[str, Any] = {
    o.key: f.metadata["deploy"] for o, f in zip(options(), fields(RunSpec), strict=True)
    if f.metadata.get("deploy", _SAME) is not _SAME}


def coerce(value: Any, typ: type, key: str) -> Any:
    """``value`` as ``typ`` (bool, int, float or str); a :class:`ConfigError` naming ``key``
    if it is not one. Booleans take true/false, yes/no, on/off and the strings "1"/"0" (a
    command line's), never a number; numbers never take a boolean.

    Args:
        value: the value given.
        typ: the field's type.
        key: the setting's name, for the message.

    Raises:
        ConfigError: if ``value`` is not a ``typ``.
    """
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):  # TOML's `secagg = 0`: a number, not a switch
            raise ConfigError(f"{key}: expected true/false, got the number {value!r}")
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ in (int, float) and isinstance(value, bool):  # TOML's `num_clients = true`
        raise ConfigError(f"{key}: expected {typ.__name__}, got the boolean {value!r}")
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from exc


class Resolved(NamedTuple):
    """What :func:`check_settings` resolves: the data set "auto" stands for, the warm start's
    absolute path, and whether the data set was inferred (the simulator says so)."""

    dataset: str
    init_encoder: str
    inferred_dataset: bool


def check_settings(s: Any, num_clients: int | None = None) -> Resolved:
    """The checks of a run's settings ``s`` (a :class:`RunSpec` or simulate's
    ExperimentConfig).

    Args:
        s: the settings (read only).
        num_clients: a simulation's clients, which bound the clients per round; a
            deployment's number of clients is known only when they connect.

    Returns:
        ``dataset`` "auto" resolved from the data path, ``init_encoder`` made absolute (the
        server may run elsewhere: Ray, ``flwr run``); the caller applies them.

    Raises:
        ConfigError: ``"<option>: <problem>"`` for the first invalid option.
    """
    def need(ok: bool, name: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{name.replace('_', '-')}: {msg}")

    need(s.dataset in (*dataset_names(), "auto"), "dataset",
         f"unknown {s.dataset!r}; one of {('auto', *dataset_names())}")
    try:  # resolved once; config.toml records the result
        dataset = infer_dataset(s.data_path, s.dataset)
    except DataError as exc:
        raise ConfigError(f"dataset: {exc}") from None
    need(s.method in OBJECTIVES, "method",
         f"unknown SSL method {s.method!r}; one of {sorted(OBJECTIVES)}")
    if s.dp:  # a run whose every client would refuse is refused here, before it starts
        try:
            clip_sensitivity(OBJECTIVES[s.method]())
        except DPSoundnessError as exc:
            raise ConfigError(f"method: {exc}") from None
    need(s.partitioner in PARTITIONERS, "partitioner",
         f"unknown {s.partitioner!r}; one of {PARTITIONERS}")
    need(s.accountant in budget_accountants(), "accountant",
         f"{s.accountant!r} is not an upper-bound accountant; one of "
         f"{', '.join(budget_accountants())}")
    need(s.eval_test_samples >= 0, "eval_test_samples", "must be >= 0 (0 = all)")
    for name in ("rounds", "local_epochs", "batch_size", "eval_every", "num_samples",
                 "eval_samples", "image_size", "shards_per_client"):
        need(getattr(s, name) >= 1, name, "must be at least 1")
    if num_clients is not None:
        need(0 <= s.clients_per_round <= num_clients, "clients_per_round",
             f"must be between 0 and num-clients ({num_clients})")
    else:
        need(s.clients_per_round >= 0, "clients_per_round", "must be >= 0 (0 = all)")
    need(not (s.amp and s.dp), "amp", "mixed precision is refused under DP: "
         "per-record norms in reduced precision could exceed the clip bound unnoticed")
    for name in ("lr", "max_grad_norm", "dirichlet_alpha"):
        need(getattr(s, name) > 0, name, "must be positive")
    need(0 < s.delta < 1, "delta", "must be in (0, 1)")
    need(s.algorithm in algorithm_names(), "algorithm",
         f"unknown {s.algorithm!r}; one of {algorithm_names()}")
    try:
        parts = parse_shared(s.shared or "all")
    except ValueError as exc:
        raise ConfigError(f"shared: {exc}") from None
    need("encoder" in parts or parts == ("all",), "shared", "the encoder must be shared")
    need(s.fedema_tau > 0 and s.fedu_threshold > 0, "fedema_tau",
         "FedEMA tau and FedU threshold must be positive")
    need(s.client_dp in CLIENT_DP_MODES, "client_dp", "must be 'off', 'central' or 'distributed'")
    need(s.secagg or s.client_dp != "distributed", "client_dp",
         "distributed client-level DP adds its noise under secure aggregation: drop "
         "--no-secagg")
    per_round = s.clients_per_round or num_clients
    if per_round:
        need(0 <= s.client_dp_min_clients <= per_round, "client_dp_min_clients",
             f"must be between 0 and the clients per round ({per_round})")
    else:
        need(s.client_dp_min_clients >= 0, "client_dp_min_clients", "must be >= 0")
    need(not (s.secagg and s.client_dp == "central"), "client_dp",
         "central client-level DP needs the server to clip individual updates, which "
         "secure aggregation hides: add --no-secagg")
    need(s.secagg_clip > 0, "secagg_clip", "must be positive")
    need(s.aggregator in aggregator_names(), "aggregator",
         f"unknown {s.aggregator!r}; one of {', '.join(aggregator_names())}")
    rule = AGGREGATORS.get(s.aggregator)
    need(rule is None or not (s.secagg and rule.needs_individual_updates), "aggregator",
         f"{s.aggregator!r} weighs each client's own model, which secure aggregation hides "
         "from the server (it learns only the sum): add --no-secagg, or use 'mean'")
    need(s.aggregator == "mean" or s.client_dp != "central", "aggregator",
         "central client-level DP averages clipped updates with its own noise: use 'mean'")
    need(s.views >= 0, "views", "must be >= 0 (0 = the method's own number of views)")
    if s.views:
        cls = OBJECTIVES[s.method]
        need(s.views == cls.num_views or (getattr(cls, "multi_view", False)
                                          and s.views >= 2), "views",
             f"method {s.method!r} takes {cls.num_views} view(s); K > 2 views are "
             "supported by the multi-view methods (simsiam, byol)")
    need(0 <= s.ema_decay < 1, "ema_decay", "must be in [0, 1)")
    need(s.trainable in trainable_names(), "trainable",
         f"unknown {s.trainable!r}; one of {', '.join(trainable_names())}")
    need(math.isfinite(s.server_lr) and s.server_lr > 0, "server_lr", "must be positive")
    need(0 <= s.server_momentum < 1, "server_momentum", "must be in [0, 1)")
    need(s.lr_schedule in LR_SCHEDULES, "lr_schedule",
         f"unknown {s.lr_schedule!r}; one of {LR_SCHEDULES}")
    need(0 <= s.warmup_rounds <= s.rounds, "warmup_rounds",
         f"must be between 0 and rounds ({s.rounds})")
    need(not s.init_encoder or Path(s.init_encoder).is_file(), "init_encoder",
         f"file {s.init_encoder!r} does not exist")
    # the public MNIST-1D split (warm start, infonce-public's bank) is generated with a
    # seed of its own: a private pool generated with that seed would be the public data,
    # trained on without DP
    need(not (dataset == "mnist1d" and s.seed == MNIST1D_PUBLIC_SEED
              and (s.init_encoder or s.method == "infonce-public")), "seed",
         f"{MNIST1D_PUBLIC_SEED} is the seed of the public MNIST-1D split used by the warm "
         "start and infonce-public's negative bank; the private pool must use another seed")
    need(s.client_clip > 0 and s.client_noise_multiplier >= 0, "client_clip",
         "client clip must be positive and the noise multiplier non-negative")
    for name in ("few_label", "finetune"):
        need(all(k.strip().isdigit() and int(k) > 0 for k in getattr(s, name).split(",")
                 if k.strip()), name, "must be comma-separated positive integers")
    need(s.finetune_seeds >= 1, "finetune_seeds", "must be at least 1")
    need(0 <= s.dropout_prob <= 1 and 0 <= s.straggler_prob <= 1, "dropout_prob",
         "fault probabilities must be in [0, 1]")
    need(s.straggler_delay >= 0 and s.round_timeout > 0, "straggler_delay",
         "delays must be non-negative and the round timeout positive")
    need(s.target_epsilon >= 0 and s.noise_multiplier >= 0, "target_epsilon",
         "epsilon and noise multiplier must be non-negative")
    if s.dp:
        need(s.target_epsilon > 0 or s.noise_multiplier > 0, "noise_multiplier",
             "with DP on, set a target epsilon or a positive noise multiplier")
    return Resolved(dataset, str(Path(s.init_encoder).resolve()) if s.init_encoder else "",
                    s.dataset == "auto")


class ResumeChange(NamedTuple):
    """A setting whose value on resume differs from the run's recorded one."""

    option: Option
    old: Any
    new: Any


def resume_changes(saved: Mapping[str, Any], new: Mapping[str, Any], cls: type = RunSpec, *,
                   keys: bool = False) -> list[ResumeChange]:
    """The settings of ``cls`` (a :class:`RunSpec`, or simulate's ExperimentConfig) whose
    value in ``new`` differs from ``saved``, the resumed run's recorded ones (its
    config.toml), by field name (or run-config key with ``keys``). A setting ``saved`` lacks
    (one added since the run was recorded) counts at its default; :data:`INVOCATION`
    settings, and settings ``new`` lacks, are not compared.

    Args:
        saved: the recorded settings.
        new: the settings given now.
        cls: the settings' class.
        keys: compare by run-config key (kebab-case), not field name.

    Returns:
        One :class:`ResumeChange` per differing setting.
    """
    out = []
    for o in options(cls):
        name = o.key if keys else o.name
        if o.on_resume == INVOCATION or name not in new:
            continue
        old = saved.get(name, o.default)
        if old != new[name]:
            out.append(ResumeChange(o, old, new[name]))
    return out


def _shown(value: Any) -> str:
    return '""' if value == "" else str(value).lower() if isinstance(value, bool) else str(value)


def check_resume(changes: list[ResumeChange], run_dir: str | Path,
                 flag: Callable[[Option], str] = lambda o: o.flag, cls: type = RunSpec) -> None:
    """Refuse a resume that changes a :data:`FIXED` setting: a :class:`ConfigError` naming
    each one with its new and recorded value (and what may change instead); nothing else is
    checked here (the round count: the commands' ``--extend``).

    Args:
        changes: the settings that differ (:func:`resume_changes`).
        run_dir: the run directory, for the message.
        flag: how the message names an option (e.g. its command-line flag).
        cls: the settings' class, whose changeable options the message lists.

    Raises:
        ConfigError: if a :data:`FIXED` setting changed.
    """
    fixed = [c for c in changes if c.option.on_resume == FIXED]
    if not fixed:
        return
    def set_to(option: Option, value: Any) -> str:  # "--lr 0.1", "--set lr=0.1"
        how = flag(option)
        return f"{how}{'' if how.endswith('=') else ' '}{_shown(value)}"

    named = ", ".join(f"{set_to(c.option, c.new)} (the run's: {_shown(c.old)})" for c in fixed)
    may = ", ".join(flag(o).rstrip("=") for o in options(cls) if o.on_resume == MAY_CHANGE)
    raise ConfigError(
        f"resume: the run in {run_dir} was recorded (its config.toml) with other values of "
        f"settings that define the experiment: {named}. A resume continues the same "
        "experiment: drop these options (or start a new run in another directory). What may "
        f"change on resume, recorded in config.toml: {may}, and --rounds with --extend "
        "(nothing was changed)")


_BY_NAME = {o.name: o for o in options()}


@dataclass(frozen=True)
class ServerRun:
    """What a ServerApp is asked to run: the checked settings and what the driver adds.

    Made once at the ServerApp's boundary from Flower's run config
    (:meth:`from_run_config`); only this object travels through the server (no
    string-keyed reads of settings past the boundary). The driver's values
    (:data:`RUNTIME_KEYS`) are not settings of the run: the simulator's clients and their
    resources, its warm-up workers, and the fewest sites a deployment's round starts with.
    """

    spec: RunSpec
    #: simulated clients (0 in a deployment: its clients are known when they connect)
    num_clients: int = 0
    #: the fewest connected sites a round starts with (``fedssl server --min-clients``)
    min_clients: int = 0
    #: simulator workers that load the data before round 1 (0: none)
    warmup_workers: int = 0
    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ServerRun:
        """Flower's run config (kebab-case keys), checked as ``fedssl simulate`` checks its
        options.

        Args:
            config: the run config; missing settings take :data:`DEFAULTS`.

        Returns:
            The validated settings (``dataset``/``init-encoder`` resolved) and the driver's
            runtime values (a ``run-id`` a driver passes is ignored: the server assigns it).

        Raises:
            ConfigError: for an unknown key, a value of the wrong type, or invalid settings.
        """
        spec = RunSpec.from_run_config({**DEFAULTS, **config}).validate()
        runtime: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if f.name != "spec" and key in config:
                runtime[f.name] = coerce(config[key], SCALAR_TYPES[str(f.type)], key)
        return cls(spec, **runtime)

    def to_run_config(self) -> dict[str, Any]:
        """Back to Flower's run config: every setting, and the runtime values the driver set
        (those not at their defaults), kebab-case (what ``RUN/config.toml`` records)."""
        return {**self.spec.to_run_config(),
                **{f.name.replace("_", "-"): getattr(self, f.name)
                   for f in fields(self)
                   if f.name != "spec" and getattr(self, f.name) != f.default}}


def validate_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Flower run config checked as ``fedssl simulate`` checks its options
    (:meth:`ServerRun.from_run_config`), back as a run config with every default filled in.

    Raises:
        ConfigError: as :meth:`ServerRun.from_run_config`.
    """
    return ServerRun.from_run_config(config).to_run_config()


#: settings the server sends only with the feature that reads them: a round config lacking
#: one while its feature is on is refused (KeyError), else the field's default stands
_SENT_WITH: dict[str, Callable[[RunSpec], bool]] = {
    "secagg_clip": lambda s: s.secagg,
    "client_clip": lambda s: s.client_dp == "distributed",
    "client_noise_multiplier": lambda s: s.client_dp == "distributed",
    "client_dp_min_clients": lambda s: s.client_dp == "distributed",
}


def round_spec(config: Mapping[str, Any]) -> RunSpec:
    """A client's typed reading of a round's config (a Flower ConfigRecord), made once per
    message at the ClientApp's boundary.

    A key the server did not send reads as what a client assumes then (no DP, no secure
    aggregation, no target epsilon, iid partitions, the defaults otherwise: each option's
    ``client_fallback``), except the keys a round cannot do without (method, lr, batch size,
    ...), and the secure-aggregation and distributed-DP settings while those are on.

    Args:
        config: the round's config: the run's client settings (:data:`CLIENT_KEYS`), the
            protocol's keys (:mod:`fedssl.round_protocol`, not read here) and what secure
            aggregation adds.

    Returns:
        The round's settings as a frozen :class:`RunSpec` (not validated again: the server
        did that; a site checks what binds it itself).

    Raises:
        KeyError: naming a setting the round cannot do without.
        ConfigError: for a value of the wrong type.
    """
    kwargs: dict[str, Any] = {}
    for o in options():
        if o.key in config:
            kwargs[o.name] = coerce(config[o.key], o.type, o.key)
        elif o.client_fallback is not _REQUIRED:
            kwargs[o.name] = o.client_fallback
        elif o.name not in _SENT_WITH:
            raise KeyError(o.key)
    spec = RunSpec(**kwargs)
    for name, sent in _SENT_WITH.items():
        if name not in kwargs and sent(spec):
            raise KeyError(_BY_NAME[name].key)
    return spec


def read_settings(config: Mapping[str, Any], *names: str) -> tuple[Any, ...]:
    """Some settings of a message's config, typed, for a client mod that sees every message
    (the secure-aggregation stages carry only a few settings): each ``names`` entry is a
    RunSpec field, read as :func:`round_spec` reads it.

    Args:
        config: the message's config.
        *names: the RunSpec fields to read.

    Returns:
        The values, in the order of ``names``.

    Raises:
        KeyError: for a setting a round cannot do without that ``config`` lacks.
        ConfigError: for a value of the wrong type.
    """
    out = []
    for name in names:
        o = _BY_NAME[name]
        if o.key in config:
            out.append(coerce(config[o.key], o.type, o.key))
        elif o.client_fallback is _REQUIRED:
            raise KeyError(o.key)
        else:
            out.append(o.client_fallback)
    return tuple(out)
