"""The round protocol: the keys the server adds to the config of every message it sends a
client, besides the run's settings (:data:`fedssl.run_spec.CLIENT_KEYS`).

What and why: the ServerApp (:mod:`fedssl.server.app`, :mod:`fedssl.server.strategy`,
:mod:`fedssl.server.secure_aggregation`), the simulator's warm-up
(:mod:`fedssl.simulations.warmup`) and the ClientApp (:mod:`fedssl.client.app`,
:mod:`fedssl.client.secagg`, :mod:`fedssl.simulations.faults`) must agree on these names; spelt as
string literals on both sides, a renamed key would only show as a ``KeyError`` on a site in
the middle of a run. Both sides name them here (a test scans the packages for the literals).
The module imports nothing of fedssl, so every package may use it.

>>> SERVER_ROUND, SECAGG_NUM_CLIENTS
('server-round', 'secagg-num-clients')
>>> len(set(ROUND_KEYS)) == len(ROUND_KEYS)
True
"""

from __future__ import annotations

#: the round this message belongs to (1-based; the secure-aggregation stages carry it too)
SERVER_ROUND = "server-round"
#: the run's number of rounds (a site plans its per-round privacy budget over them)
NUM_ROUNDS = "num-rounds"
#: the shape of one record the global model takes (a site checks its data against it)
INPUT_SHAPE = "input-shape"
#: the run directory (simulated partitions are cached there; a site's ledger copy path)
RUN_DIR = "run-dir"
#: the run's id: it tells this run's ledger entries from a site's earlier runs
RUN_ID = "run-id"
#: the number of clients of this round's secure aggregation (the quantizer's range)
SECAGG_NUM_CLIENTS = "secagg-num-clients"
#: a secure-aggregation stage's protocol payload (bytes)
SECAGG_PAYLOAD = "payload"

#: prefix of the reply metrics that time one client round's phases (``phase-train`` ...):
#: seconds per phase, summed per round in metrics.jsonl (``client_phase_seconds``)
PHASE_PREFIX = "phase-"

#: every key above
ROUND_KEYS: tuple[str, ...] = (SERVER_ROUND, NUM_ROUNDS, INPUT_SHAPE, RUN_DIR, RUN_ID,
                               SECAGG_NUM_CLIENTS, SECAGG_PAYLOAD)
