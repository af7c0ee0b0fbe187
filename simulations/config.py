"""Experiment configuration: one dataclass, loadable from TOML, overridable from the CLI.

Every field carries its help text, which is what ``fedssl simulate --help`` prints, so the
documentation of an option can't drift from the option. Values are validated on load; a bad
value raises :class:`ConfigError` naming the option.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from fedssl.client.trainer import LR_SCHEDULES
from fedssl.privacy.accountant import UPPER_BOUND_ACCOUNTANTS
from fedssl.ssl_core.datasets import DATASETS, DEFAULT_DATASET, DataError, infer_dataset
from fedssl.ssl_core.model_parts import ALGORITHMS, PARTS, parse_shared
from fedssl.ssl_core.negative_bank import MNIST1D_PUBLIC_SEED
from fedssl.ssl_core.objectives import OBJECTIVES
from fedssl.ssl_core.partitioners import PARTITIONERS


class ConfigError(ValueError):
    """Raised for an unknown option or an invalid value."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ExperimentConfig:
    """A federated SSL experiment (what ``fedssl simulate`` runs)."""

    # data
    dataset: str = _opt("auto", f"data source: auto, {', '.join(DATASETS)}; auto infers it "
                                "from --data-path (.npz file: npz, .nii/.nii.gz file or "
                                "folder of them: nifti, folder of .dcm files: dicom, other "
                                "folder: imagefolder), "
                                f"else {DEFAULT_DATASET}; an explicit dataset that cannot "
                                "read --data-path is an error")
    data_path: str = _opt("", "file (.npz, .nii/.nii.gz, .dcm) or folder (PNG/JPEG images, "
                              "DICOM .dcm files, NIfTI volumes) for npz/imagefolder/dicom/"
                              "nifti data")
    num_samples: int = _opt(4000, "records to generate for mnist1d (80 %% train pool, 20 %% test)")
    image_size: int = _opt(28, "side length images are resized to (imagefolder, dicom, nifti)")
    # federation
    num_clients: int = _opt(10, "number of simulated clients (SuperNodes)")
    clients_per_round: int = _opt(0, "clients sampled per round (0 = all)")
    rounds: int = _opt(5, "federated rounds")
    partitioner: str = _opt("dirichlet", f"how the pool is split: {', '.join(PARTITIONERS)}")
    dirichlet_alpha: float = _opt(0.5, "Dirichlet concentration for label skew (smaller = more)")
    shards_per_client: int = _opt(2, "label shards per client for the shard partitioner")
    # local training
    method: str = _opt("simsiam", f"SSL objective: {', '.join(sorted(OBJECTIVES))}")
    algorithm: str = _opt("fedavg", f"federated SSL algorithm: {', '.join(ALGORITHMS)} (how a "
                                    "client merges the global model into its local one)")
    shared: str = _opt("", "model parts sent to and averaged by the server, comma-separated "
                           f"subset of {', '.join(PARTS)}, or all (default)")
    fedema_tau: float = _opt(0.7, "FedEMA: EMA weight = min(tau * divergence, 1)")
    fedu_threshold: float = _opt(0.5, "FedU: take the global predictor while the encoder "
                                      "divergence is below this")
    local_epochs: int = _opt(1, "local epochs per round")
    batch_size: int = _opt(32, "local batch size (expected batch size under DP)")
    lr: float = _opt(0.05, "local SGD learning rate")
    momentum: float = _opt(0.9, "local SGD momentum")
    views: int = _opt(0, "augmentation multiplicity K: views per record and step, all clipped "
                         "together under DP (sensitivity stays C); 0 = the method's own "
                         "(2); K > 2 for simsiam/byol only")
    ema_decay: float = _opt(0.0, "parameter EMA of each client's local iterates over a round's "
                                 "steps, in [0, 1); the client sends the EMA (post-processing, "
                                 "no privacy cost); 0 = off, sends the last iterate")
    lr_schedule: str = _opt("constant", "learning-rate schedule over the run's rounds, per "
                                        f"step: {', '.join(LR_SCHEDULES)}")
    warmup_rounds: int = _opt(0, "linear learning-rate warm-up over the first k rounds")
    init_encoder: str = _opt("", "warm-start encoder (safetensors, keys without 'encoder.') "
                                 "pretrained on public or synthetic data, never the private "
                                 "records; make one with 'python -m "
                                 "fedssl.client.pretrain --out FILE'")
    # differential privacy
    dp: bool = _opt(True, "train with DP-SGD (per-record clipping over all views + noise)")
    target_epsilon: float = _opt(8.0, "each client's epsilon budget for the whole run; the "
                                      "noise multiplier is calibrated to it (0 = use "
                                      "--noise-multiplier)")
    noise_multiplier: float = _opt(0.0, "DP-SGD noise multiplier, used when target epsilon is 0")
    max_grad_norm: float = _opt(1.0, "per-record clip norm C")
    delta: float = _opt(1e-5, "DP delta")
    accountant: str = _opt("prv", f"privacy accountant: {', '.join(UPPER_BOUND_ACCOUNTANTS)}")
    secagg: bool = _opt(True, "secure aggregation (SecAgg+): the server learns only the sum of "
                              "the clients' updates (uniformly averaged)")
    secagg_clip: float = _opt(2.0, "secure aggregation: each update coordinate is clipped to "
                                   "[-c, c] before 32-bit quantisation")
    client_dp: str = _opt("off", "client-level DP: 'off', 'central' (DP-FedAvg: Poisson client "
                                 "sampling at clients-per-round/num-clients, update clipping, "
                                 "Gaussian noise added by the server) or 'distributed' (each "
                                 "client clips its update and adds a Skellam noise share "
                                 "before secure aggregation; needs secagg)")
    client_clip: float = _opt(1.0, "client-level DP: L2 clip norm S of each client's update")
    client_noise_multiplier: float = _opt(1.0, "client-level DP: noise std / S on the sum")
    client_dp_min_clients: int = _opt(0, "distributed client-level DP: noise shares every "
                                         "unmasked sum must hold (each client adds 1/m of the "
                                         "variance); 0 = 80 percent of the clients per round")
    site_budget_epsilon: float = _opt(0.0, "every simulated site's own epsilon budget, written "
                                           "to its local site.toml and enforced by the client "
                                           "(0 = no site budget)")
    site_budgets: str = _opt("", "per-site budgets overriding the above, e.g. "
                                 "'client-003=2.0,client-007=1.5'")
    # evaluation and output
    eval_every: int = _opt(1, "evaluate the global encoder every k rounds (and after the last)")
    few_label: str = _opt("1,5,10", "labels per class for the final few-label linear probe "
                                    "and kNN (comma-separated; empty = none)")
    eval_samples: int = _opt(4000, "max labelled pool records used to fit the probes")
    seed: int = _opt(0, "seed of data generation, partitioning, initialisation and sampling")
    out: str = _opt("", "run directory (default: runs/<method>-<dataset>-<timestamp>)")
    cpus_per_client: float = _opt(1.0, "CPU cores reserved per simulated client (Ray)")
    gpus_per_client: float = _opt(0.0, "share of a GPU reserved per simulated client (Ray), "
                                       "e.g. 0.25 runs 4 clients per GPU; 0 = CPU only")
    device: str = _opt("auto", "torch device of clients and server: auto (CUDA when the "
                               "process sees a GPU), cpu, cuda or cuda:N")
    amp: bool = _opt(False, "bfloat16 mixed precision on CUDA for non-DP training (refused "
                            "with --dp)")
    dropout_prob: float = _opt(0.0, "probability a simulated client vanishes at each message "
                                    "(training and every secure-aggregation stage)")
    straggler_prob: float = _opt(0.0, "probability a simulated client is slow at a message")
    straggler_delay: float = _opt(0.0, "seconds a straggler sleeps (vs --round-timeout)")
    round_timeout: float = _opt(600.0, "seconds the server waits for a round's replies (well "
                                       "above a benchmarked round, as fedssl server; raise it "
                                       "for rounds that need longer)")

    def validate(self) -> ExperimentConfig:
        """Check ranges and names; returns self."""
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{name.replace('_', '-')}: {msg}")

        need(self.dataset in (*DATASETS, "auto"), "dataset",
             f"unknown {self.dataset!r}; one of {('auto', *DATASETS)}")
        if self.dataset == "auto":  # resolved once; config.toml records the result
            # a plain attribute, not an option: the simulator prints that it was inferred
            self.inferred_dataset = True
        try:
            self.dataset = infer_dataset(self.data_path, self.dataset)
        except DataError as exc:
            raise ConfigError(f"dataset: {exc}") from None
        need(self.method in OBJECTIVES, "method",
             f"unknown SSL method {self.method!r}; one of {sorted(OBJECTIVES)}")
        need(self.partitioner in PARTITIONERS, "partitioner",
             f"unknown {self.partitioner!r}; one of {PARTITIONERS}")
        need(self.accountant in UPPER_BOUND_ACCOUNTANTS, "accountant",
             f"{self.accountant!r} is not an upper-bound accountant")
        for name in ("num_clients", "rounds", "local_epochs", "batch_size", "eval_every",
                     "num_samples", "eval_samples", "image_size", "shards_per_client"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        need(0 <= self.clients_per_round <= self.num_clients, "clients_per_round",
             f"must be between 0 and num-clients ({self.num_clients})")
        need(self.gpus_per_client >= 0, "gpus_per_client", "must be >= 0")
        need(not (self.amp and self.dp), "amp", "mixed precision is refused under DP: "
             "per-record norms in reduced precision could exceed the clip bound unnoticed")
        for name in ("lr", "max_grad_norm", "dirichlet_alpha", "cpus_per_client"):
            need(getattr(self, name) > 0, name, "must be positive")
        need(0 < self.delta < 1, "delta", "must be in (0, 1)")
        need(self.algorithm in ALGORITHMS, "algorithm",
             f"unknown {self.algorithm!r}; one of {ALGORITHMS}")
        try:
            parts = parse_shared(self.shared_parts())
        except ValueError as exc:
            raise ConfigError(f"shared: {exc}") from None
        need("encoder" in parts or parts == ("all",), "shared", "the encoder must be shared")
        need(self.fedema_tau > 0 and self.fedu_threshold > 0, "fedema_tau",
             "FedEMA tau and FedU threshold must be positive")
        need(self.client_dp in ("off", "central", "distributed"), "client_dp",
             "must be 'off', 'central' or 'distributed'")
        need(self.secagg or self.client_dp != "distributed", "client_dp",
             "distributed client-level DP adds its noise under secure aggregation: drop "
             "--no-secagg")
        per_round = self.clients_per_round or self.num_clients
        need(0 <= self.client_dp_min_clients <= per_round, "client_dp_min_clients",
             f"must be between 0 and the clients per round ({per_round})")
        need(not (self.secagg and self.client_dp == "central"), "client_dp",
             "central client-level DP needs the server to clip individual updates, which "
             "secure aggregation hides: add --no-secagg")
        need(self.secagg_clip > 0, "secagg_clip", "must be positive")
        need(self.views >= 0, "views", "must be >= 0 (0 = the method's own number of views)")
        if self.views:
            cls = OBJECTIVES[self.method]
            need(self.views == cls.num_views or (getattr(cls, "multi_view", False)
                                                 and self.views >= 2), "views",
                 f"method {self.method!r} takes {cls.num_views} view(s); K > 2 views are "
                 "supported by the multi-view methods (simsiam, byol)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule",
             f"unknown {self.lr_schedule!r}; one of {LR_SCHEDULES}")
        need(0 <= self.warmup_rounds <= self.rounds, "warmup_rounds",
             f"must be between 0 and rounds ({self.rounds})")
        need(not self.init_encoder or Path(self.init_encoder).is_file(), "init_encoder",
             f"file {self.init_encoder!r} does not exist")
        if self.init_encoder:  # the server may run elsewhere (Ray, flwr run): absolute
            self.init_encoder = str(Path(self.init_encoder).resolve())
        # the public MNIST-1D split (warm start, infonce-public's bank) is generated with a
        # seed of its own: a private pool generated with that seed would be the public data,
        # trained on without DP
        need(not (self.dataset == "mnist1d" and self.seed == MNIST1D_PUBLIC_SEED
                  and (self.init_encoder or self.method == "infonce-public")), "seed",
             f"{MNIST1D_PUBLIC_SEED} is the seed of the public MNIST-1D split used by the warm "
             "start and infonce-public's negative bank; the private pool must use another seed")
        need(self.client_clip > 0 and self.client_noise_multiplier >= 0, "client_clip",
             "client clip must be positive and the noise multiplier non-negative")
        need(all(k.strip().isdigit() and int(k) > 0 for k in self.few_label.split(",")
                 if k.strip()), "few_label", "must be comma-separated positive integers")
        need(0 <= self.dropout_prob <= 1 and 0 <= self.straggler_prob <= 1, "dropout_prob",
             "fault probabilities must be in [0, 1]")
        need(self.straggler_delay >= 0 and self.round_timeout > 0, "straggler_delay",
             "delays must be non-negative and the round timeout positive")
        need(self.site_budget_epsilon >= 0, "site_budget_epsilon", "must be non-negative")
        self.parsed_site_budgets()
        need(self.target_epsilon >= 0 and self.noise_multiplier >= 0, "target_epsilon",
             "epsilon and noise multiplier must be non-negative")
        if self.dp:
            need(self.target_epsilon > 0 or self.noise_multiplier > 0, "noise_multiplier",
                 "with DP on, set a target epsilon or a positive noise multiplier")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Build from a mapping (TOML table or overrides); keys may use - or _."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown option {key!r}")
            kwargs[name] = _coerce(value, known[name].type, key)
        return cls(**kwargs).validate()

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None
             ) -> ExperimentConfig:
        """Load a TOML file (keys at top level or under ``[experiment]``) plus overrides."""
        data: dict[str, Any] = {}
        if path:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                raw = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
            data.update(raw.get("experiment", raw))
        data.update(overrides or {})
        return cls.from_dict(data)

    def shared_parts(self) -> str:
        """The shared parts (every part of the model unless set)."""
        return self.shared or "all"

    def parsed_site_budgets(self) -> dict[str, float]:
        """Per-site epsilon budgets, ``{"client-003": 2.0, ...}``, for every simulated site."""
        budgets = {f"client-{i:03d}": self.site_budget_epsilon for i in range(self.num_clients)}
        for item in filter(None, (p.strip() for p in self.site_budgets.split(","))):
            name, _, value = item.partition("=")
            try:
                eps = float(value)
            except ValueError:
                raise ConfigError(f"site-budgets: {item!r} is not NAME=EPSILON") from None
            if name.strip() not in budgets or eps <= 0:
                raise ConfigError(f"site-budgets: {item!r} names no simulated client or has a "
                                  "non-positive epsilon")
            budgets[name.strip()] = eps
        return {k: v for k, v in budgets.items() if v > 0}

    def to_run_config(self, run_dir: str) -> dict[str, Any]:
        """Flower run config (kebab-case keys) for the ServerApp."""
        cfg = {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
        cfg["num-server-rounds"] = cfg.pop("rounds")
        cfg.pop("out")
        cfg.pop("site-budgets")  # sites' own settings: written to their site.toml, not sent
        cfg.pop("site-budget-epsilon")
        cfg["run-dir"] = run_dir
        cfg["threads"] = max(1, int(self.cpus_per_client))
        cfg["shared"] = self.shared_parts()
        return cfg

    def to_toml(self) -> str:
        return tomli_w.dumps({"experiment": dataclasses.asdict(self)})

    def help_of(self, name: str) -> str:
        return {f.name: f.metadata["help"] for f in fields(self)}[name]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    typ = typ if isinstance(typ, type) else {"str": str, "int": int, "float": float,
                                              "bool": bool}[str(typ)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from exc
