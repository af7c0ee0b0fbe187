"""Shared fixtures: small deterministic data and Flower's task identity for in-process messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def flower_identity() -> None:
    """Flower Messages need a task identity; a real SuperNode sets it, in-process tests do."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0


@pytest.fixture
def signals() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 1, 40)).astype(np.float32)
