"""`fedssl simulate` turns Flower's telemetry off, as every fedssl deployment process does:
a simulation would otherwise post usage events to Flower's servers at its start and end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys
os.environ["FLWR_TELEMETRY_ENABLED"] = "1"
from fedssl.simulations.config import ConfigError, ExperimentConfig
from fedssl.simulations.simulate import simulate
try:
    simulate(ExperimentConfig(out=sys.argv[1]), extend=True)  # refused after the imports
except ConfigError:
    pass
import flwr.supercore.telemetry as telemetry
print(os.environ["FLWR_TELEMETRY_ENABLED"], telemetry.FLWR_TELEMETRY_ENABLED)
"""


def test_simulate_turns_flower_telemetry_off(tmp_path: Path) -> None:
    # a fresh interpreter: Flower reads the setting once, when its telemetry module loads
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "0"]
