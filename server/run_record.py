"""A server run's identity and resolved configuration in its run directory.

What and why: a site may reuse its state directory (and so its privacy ledger) for several
server runs. Its ledger tells the runs apart by a *run id* the server generates once per run
(``uuid4().hex``) and sends in every round's ConfigRecord (``run-id``): a run's target epsilon
is planned against that run's ledger entries only, the site's own lifetime budget against all
of them (:mod:`fedssl.privacy.identity.ledger`). The id is kept in ``RUN/run_id`` so ``--resume`` of
the same run keeps it.

``RUN/config.toml`` is the run directory contract's resolved configuration, which ``fedssl
audit`` needs (budget, delta, soundness). ``fedssl simulate`` writes it in its own format
(an ``[experiment]`` table of :class:`~fedssl.simulations.config.ExperimentConfig`); a server
run that finds none writes the server format: a ``[run]`` table holding the resolved Flower
run config (kebab-case keys) and the run id. Resuming never overwrites it silently: a setting
that defines the experiment (``on_resume`` "fixed" in :class:`fedssl.run_spec.RunSpec`) and
differs on resume is refused (:func:`fedssl.run_spec.check_resume`); one that may change is
updated and recorded as a ``[[change]]`` (key, old, new, time).
Both files are written atomically (temp file + rename).
"""

from __future__ import annotations

import logging
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import tomli_w

from fedssl.atomic import atomic_write_text
from fedssl.run_layout import CONFIG_FILE, RUN_ID_FILE, RunLayout
from fedssl.run_spec import check_resume, resume_changes

log = logging.getLogger("fedssl.server")

__all__ = ["CONFIG_FILE", "RUN_ID_FILE", "VOLATILE_KEYS", "record_run", "resolve_run_id",
           "write_run_config"]
#: run-config keys that describe one invocation, not the run (never recorded as changes)
VOLATILE_KEYS = ("resume", "progress", "warmup-workers")


def resolve_run_id(run_dir: Path, resume: bool) -> str:
    """This run's id: the one in ``RUN/run_id`` if there is one, else a new ``uuid4`` hex
    (written there). A resumed run directory from before run ids existed gets ``""``: its
    earlier rounds are in the sites' ledgers without a run id, so the sites must keep
    planning against their whole ledger (the conservative reading of an unknown run).

    Args:
        run_dir: the run directory.
        resume: the run is resumed.

    Returns:
        The run id.

    Raises:
        ValueError: if ``RUN/run_id`` does not hold a valid run id.
    """
    path = RunLayout(run_dir).run_id
    if path.exists():
        rid = path.read_text().strip()
        if not (rid.isalnum() and len(rid) <= 64):
            raise ValueError(f"{path}: {rid!r} is not a run id")
        return rid
    if resume and RunLayout(run_dir).checkpoint_state.exists():
        log.warning("%s has no run id (written before run ids existed): the sites plan this "
                    "run against their whole ledger", run_dir)
        return ""
    rid = uuid.uuid4().hex
    atomic_write_text(path, rid + "\n")
    return rid


def _toml_value(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def write_run_config(run_dir: Path, cfg: dict[str, Any], run_id: str) -> Path | None:
    """Write ``RUN/config.toml`` (server format) unless the run already has one; on resume,
    record settings that changed. Returns the path written, or None if left as it was.

    A simulate-format file (``[experiment]``) is the simulator's and is left alone.

    Args:
        run_dir: the run directory.
        cfg: the run config (kebab-case keys).
        run_id: the run's id, recorded as ``run-id``.

    Raises:
        ValueError: if the existing config.toml is not valid TOML.
        ConfigError: if a resume changes a setting that defines the experiment.
    """
    path = RunLayout(run_dir).config
    table = {k: _toml_value(v) for k, v in sorted(cfg.items()) if k not in VOLATILE_KEYS}
    table["run-id"] = run_id
    if not path.exists():
        atomic_write_text(path, tomli_w.dumps({"run": table}))
        return path
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML ({exc}); not overwriting it") from exc
    if "run" not in raw or not bool(cfg.get("resume", False)):
        return None  # the simulator's file, or a new run that the server will refuse
    old = dict(raw["run"])
    # what defines the experiment stays as recorded (``fedssl server`` refuses it before it
    # starts anything; this is the same rule for any other driver, ``flwr run .``)
    check_resume(resume_changes(old, table, keys=True), run_dir, flag=lambda o: o.key)
    changes = [{"key": k, "old": old.get(k, ""), "new": v,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
               for k, v in table.items() if old.get(k) != v]
    if not changes:
        return None
    for c in changes:
        log.warning("resume changes %s from %r to %r (recorded in %s)", c["key"], c["old"],
                    c["new"], path)
    raw["run"] = {**old, **table}
    raw["change"] = [*raw.get("change", []), *changes]
    atomic_write_text(path, tomli_w.dumps(raw))
    return path


def record_run(run_dir: Path, cfg: dict[str, Any]) -> str:
    """Resolve the run id and write ``RUN/config.toml``; returns the run id.

    Args:
        run_dir: the run directory.
        cfg: the run config (kebab-case keys).

    Raises:
        ValueError: for an invalid ``RUN/run_id`` or config.toml.
        ConfigError: if a resume changes a setting that defines the experiment.
    """
    run_id = resolve_run_id(run_dir, bool(cfg.get("resume", False)))
    write_run_config(run_dir, cfg, run_id)
    return run_id
