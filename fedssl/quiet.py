"""Quiet default output: known third-party banners and warnings are dropped unless --verbose.

What a new user of ``fedssl simulate``, ``server``, ``client`` and ``audit`` sees by default
is fedssl's own lines, its progress display and its result table. Flower and Ray print a few
messages on every run that are about fedssl's choices, not about the user's run:

- Flower's ``DEPRECATED FEATURE: The `run_simulation` function ...`` banner (``flwr`` logger,
  WARNING): ``fedssl simulate`` calls ``run_simulation`` on purpose, since ``flwr run``
  cannot hand the ServerApp the simulator's event-driven grid (:mod:`fedssl.simulations.dispatch`).
- Flower's ``fraction_evaluate is set to 0.0. Federated evaluation will be skipped.``
  (``flwr`` logger, WARNING): by design, the server evaluates the global encoder on its own
  labelled split; the clients never evaluate.
- Ray's ``FutureWarning: Tip: In future versions of Ray, Ray will no longer override
  accelerator visible devices env var ...`` (``warnings.warn`` in ``ray._private.worker``).
  Setting ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``, as it suggests, would change what a
  client actor with ``gpus-per-client = 0`` sees (every GPU instead of none), so the warning
  is filtered, not acted on.
- ``Using SuperLink: ...``, which Flower's Control API client prints (``typer.secho``) every
  time one is made (:func:`flower_cli_output`).

Each is matched precisely, by its logger or warning category, its module and the start of its
message, so every other warning, fedssl's own (e.g. the useless-noise warning of ``--extend``)
and any new one from a library, still shows. ``--verbose`` drops nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator

#: (logger name, regular expression searched in the formatted message) of the log records
#: dropped by default
NOISY_LOGS: tuple[tuple[str, str], ...] = (
    ("flwr", r"DEPRECATED FEATURE: The `run_simulation` function is deprecated"),
    ("flwr", r"fraction_evaluate is set to 0\.0\. Federated evaluation will be skipped"),
)

#: (category, regular expression matched at the start of the message, module regular
#: expression) of the Python warnings dropped by default (``warnings.filterwarnings``)
NOISY_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"Tip: In future versions of Ray, Ray will no longer override accelerator",
     r"ray\._private\.worker"),
)


class DropNoise(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a known banner; every other record passes."""
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: let logging report it
            return True
        return not any(p.search(text) for p in self.patterns)


def is_noise(line: str) -> bool:
    """Whether one line of a Flower process's output (e.g. the SuperNode's) is a known
    banner of :data:`NOISY_LOGS` (its first line carries the message)."""
    return any(re.search(pattern, line) for _, pattern in NOISY_LOGS)


@contextlib.contextmanager
def quiet_output(verbose: bool = False) -> Iterator[None]:
    """While the block runs (and unless ``verbose``), drop the log records of
    :data:`NOISY_LOGS` and the warnings of :data:`NOISY_WARNINGS`; both are put back as
    they were afterwards. Thread-safe for the records (a logger filter sees every thread's
    records); the warning filters are process-wide, as Python's are."""
    if verbose:
        yield
        return
    by_logger: dict[str, list[str]] = {}
    for name, pattern in NOISY_LOGS:
        by_logger.setdefault(name, []).append(pattern)
    installed = [(logging.getLogger(name), DropNoise(patterns))
                 for name, patterns in by_logger.items()]
    for logger, filt in installed:
        logger.addFilter(filt)
    try:
        with warnings.catch_warnings():
            for category, message, module in NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category,
                                        module=module)
            yield
    finally:
        for logger, filt in installed:
            logger.removeFilter(filt)


@contextlib.contextmanager
def flower_cli_output(verbose: bool = False) -> Iterator[None]:
    """Swallow what Flower's CLI helpers print to stdout in the block (``Using SuperLink:
    NAME (ADDRESS)`` from ``init_http_client_from_connection``), unless ``verbose``.

    ``sys.stdout`` is replaced for the block, so use it only around such a call, in the
    thread that prints fedssl's own lines."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
