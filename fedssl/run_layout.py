"""The run directory's layout: every path of a run, named once.

What ``fedssl simulate``, ``fedssl server`` and ``flwr run .`` write (docs/simulation.md, "Run
directory"; docs/architecture.md) and what ``fedssl audit`` and ``--resume`` read. Every module
that builds one of these paths asks :class:`RunLayout` for it instead of spelling the file
name itself (``tests/fedssl/test_run_layout.py`` greps the source for stray names)::

    RUN/config.toml            resolved configuration        RunLayout.config
    RUN/run_id                 the run's id                  RunLayout.run_id
    RUN/metrics.jsonl          one JSON object per round     RunLayout.metrics
    RUN/report.json            summary                       RunLayout.report
    RUN/identities.json        the sites' identity registry  RunLayout.identities
    RUN/ledger/<client>.jsonl  ledger copies (+ .pub)        RunLayout.ledger_dir, .ledger(cid)
    RUN/checkpoints/           per-round weights, state.json RunLayout.checkpoints, ...
    RUN/encoder.safetensors    final encoder weights         RunLayout.encoder
    RUN/plots/                 loss, accuracy, epsilon       RunLayout.plots
    RUN/cache/                 the simulation's data         RunLayout.cache
    RUN/tensorboard/           TensorBoard event files       RunLayout.tensorboard
    RUN/evaluation.json        ``fedssl evaluate``'s result  RunLayout.evaluation
    RUN/clients/<client>/      a simulated site's own state  RunLayout.client_dir(cid)
    RUN/flower/                Flower's home and logs        RunLayout.flower
    RUN/fedssl.lock            held while a process runs it  RunLayout.lock

A site's own state directory (``fedssl client --state-dir``, or a simulated site's
``RUN/clients/<client>/``) has its layout in :class:`SiteLayout`: ``identity.pem``,
``ledger.jsonl``, ``site.toml``, ``flower/`` (``fedssl client``'s Flower home, with its
``node-config.toml``) and ``fedssl.lock`` (held by the running ``fedssl client``).

A leaf module: it imports nothing of fedssl, so every package may use it.

>>> run = RunLayout("RUN")
>>> str(run.metrics), str(run.checkpoint(3)), str(run.ledger("client-001"))
('RUN/metrics.jsonl', 'RUN/checkpoints/round-0003.safetensors', 'RUN/ledger/client-001.jsonl')
>>> str(run.client_site("client-001").identity)
'RUN/clients/client-001/identity.pem'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: file and folder names inside a run directory (use the properties; these name them once)
CONFIG_FILE = "config.toml"
RUN_ID_FILE = "run_id"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.json"
IDENTITIES_FILE = "identities.json"
LEDGER_DIR = "ledger"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_STATE_FILE = "state.json"
ENCODER_FILE = "encoder.safetensors"
PLOTS_DIR = "plots"
CACHE_DIR = "cache"
TENSORBOARD_DIR = "tensorboard"
EVALUATION_FILE = "evaluation.json"
CLIENTS_DIR = "clients"
#: Flower's home (``FLWR_HOME``) and logs, in a run directory (``fedssl server``) or a site's
#: state directory (``fedssl client``)
FLOWER_DIR = "flower"
#: the lock file of a run directory or a state directory (:mod:`fedssl.run_lock`): present
#: while a process holds it, with a record naming that process
LOCK_FILE = "fedssl.lock"
#: a site's state directory
IDENTITY_FILE = "identity.pem"
SITE_LEDGER_FILE = "ledger.jsonl"
SITE_FILE = "site.toml"
NODE_CONFIG_FILE = "node-config.toml"


@dataclass(frozen=True)
class SiteLayout:
    """A site's state directory: its identity key, its own ledger, its budget file."""

    state_dir: Path

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "state_dir", Path(state_dir))

    @property
    def identity(self) -> Path:
        """Ed25519 identity key (signs the ledger and secure-aggregation keys)."""
        return self.state_dir / IDENTITY_FILE

    @property
    def ledger(self) -> Path:
        """The site's own signed, hash-chained ledger (a deployed site's)."""
        return self.state_dir / SITE_LEDGER_FILE

    @property
    def site_file(self) -> Path:
        """The site's own settings (privacy budget)."""
        return self.state_dir / SITE_FILE

    @property
    def flower(self) -> Path:
        """``flower/``: the SuperNode's Flower home (``FLWR_HOME``) and its log."""
        return self.state_dir / FLOWER_DIR

    @property
    def node_config(self) -> Path:
        """``flower/node-config.toml``: the node config ``fedssl client`` gives its
        SuperNode (``--node-config``)."""
        return self.flower / NODE_CONFIG_FILE

    @property
    def lock(self) -> Path:
        """``fedssl.lock``: held by the ``fedssl client`` using this state directory."""
        return self.state_dir / LOCK_FILE


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created or read here)."""

    root: Path

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(run_dir))

    @property
    def config(self) -> Path:
        """``config.toml``: the resolved configuration."""
        return self.root / CONFIG_FILE

    @property
    def run_id(self) -> Path:
        """``run_id``: the run's id, kept on resume."""
        return self.root / RUN_ID_FILE

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one JSON object per round."""
        return self.root / METRICS_FILE

    @property
    def report(self) -> Path:
        """``report.json``: the run's summary."""
        return self.root / REPORT_FILE

    @property
    def identities(self) -> Path:
        """``identities.json``: the simulated sites' public identity registry."""
        return self.root / IDENTITIES_FILE

    @property
    def ledger_dir(self) -> Path:
        """``ledger/``: one ledger (copy) per client."""
        return self.root / LEDGER_DIR

    def ledger(self, client: str) -> Path:
        """``ledger/<client>.jsonl``."""
        return self.ledger_dir / f"{client}.jsonl"

    def ledgers(self) -> list[Path]:
        """The ledgers in ``ledger/``, sorted (none if the folder is missing)."""
        return sorted(self.ledger_dir.glob("*.jsonl"))

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: the global model per round and the strategy state."""
        return self.root / CHECKPOINTS_DIR

    @property
    def checkpoint_state(self) -> Path:
        """``checkpoints/state.json``: which round the latest checkpoint is."""
        return self.checkpoints / CHECKPOINT_STATE_FILE

    def checkpoint(self, server_round: int) -> Path:
        """``checkpoints/round-NNNN.safetensors``."""
        return self.checkpoints / f"round-{server_round:04d}.safetensors"

    def server_momentum(self, server_round: int) -> Path:
        """``checkpoints/round-NNNN.server-momentum.safetensors``: FedAvgM's velocity after
        that round (only with server momentum)."""
        return self.checkpoints / f"round-{server_round:04d}.server-momentum.safetensors"

    @property
    def encoder(self) -> Path:
        """``encoder.safetensors``: the final encoder."""
        return self.root / ENCODER_FILE

    @property
    def plots(self) -> Path:
        """``plots/``: loss, accuracy and epsilon per round."""
        return self.root / PLOTS_DIR

    @property
    def cache(self) -> Path:
        """``cache/``: a simulation's generated data, memory-mapped by every worker."""
        return self.root / CACHE_DIR

    @property
    def tensorboard(self) -> Path:
        """``tensorboard/``: TensorBoard event files of the per-round metrics (--tensorboard)."""
        return self.root / TENSORBOARD_DIR

    @property
    def evaluation(self) -> Path:
        """``evaluation.json``: ``fedssl evaluate``'s probes on a labelled set."""
        return self.root / EVALUATION_FILE

    @property
    def flower(self) -> Path:
        """``flower/``: ``fedssl server``'s Flower home (``FLWR_HOME``) and logs."""
        return self.root / FLOWER_DIR

    @property
    def lock(self) -> Path:
        """``fedssl.lock``: held by the ``fedssl simulate`` / ``fedssl server`` running this
        run (:class:`fedssl.run_lock.RunLock`)."""
        return self.root / LOCK_FILE

    def client_dir(self, client: str) -> Path:
        """``clients/<client>/``: a simulated site's state directory."""
        return self.root / CLIENTS_DIR / client

    def client_site(self, client: str) -> SiteLayout:
        """The layout of a simulated site's state directory."""
        return SiteLayout(self.client_dir(client))
