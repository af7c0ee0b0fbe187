"""The simulator's ClientApp: the production handlers (:mod:`fedssl.client.app`) wrapped in
the simulation-only Flower mods, today the simulated fault model
(:func:`fedssl.simulations.faults.fault_mod`: dropouts and stragglers), plus the simulation's
start-up query (``query.warmup``: :func:`fedssl.simulations.warmup.warmup`).

``fedssl simulate`` hands :data:`simulation_app` to ``run_simulation``; the object (not a
module path) reaches Flower's Ray actors inside the ClientApp loader
(:class:`fedssl.simulations.flower_engine_adapter.SharedAppLoader`). The production app,
``fedssl.client.app:app`` (``flwr run .``, ``fedssl client``), carries no mods.
"""

from __future__ import annotations

from fedssl.client.app import make_client_app
from fedssl.simulations.faults import fault_mod
from fedssl.simulations.warmup import warmup

#: the simulated sites' ClientApp: the same handlers, with simulated faults and the start-up
#: query each simulation worker answers while the server evaluates the initial encoder
simulation_app = make_client_app(mods=[fault_mod])
simulation_app.query("warmup")(warmup)
