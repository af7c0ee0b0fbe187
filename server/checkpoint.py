"""Checkpoints of the global model and strategy state, and the exported encoder.

Weights are stored with safetensors (no pickle: a checkpoint can't run code when loaded).
``RUN/checkpoints/round-NNNN.safetensors`` holds the whole global model after round N, and
``RUN/checkpoints/state.json`` the last completed round and the strategy's state, written
atomically (temp file + rename) after the weights, so a crash never leaves a state that points
at a missing or half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file


class CheckpointError(ValueError):
    """Raised for a missing, corrupt or mismatched checkpoint."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, server_round: int, weights: dict[str, np.ndarray],
                    state: dict) -> Path:
    """Write round ``server_round``'s weights, then point ``state.json`` at them."""
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"round-{server_round:04d}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp))
    os.replace(tmp, path)
    _atomic_write(ckpt_dir / "state.json",
                  json.dumps({"round": server_round, "weights": path.name, **state},
                             indent=2).encode())
    return path


def load_latest(run_dir: Path) -> tuple[int, dict[str, np.ndarray], dict] | None:
    """The last completed round, its weights and strategy state (None if no checkpoint)."""
    state_path = run_dir / "checkpoints" / "state.json"
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        weights = load_file(str(run_dir / "checkpoints" / state["weights"]))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"corrupt checkpoint in {run_dir / 'checkpoints'}: {exc}") from exc
    return int(state["round"]), weights, state


def export_encoder(path: Path, model: torch.nn.Module, metadata: dict[str, str]) -> None:
    """Save the encoder part of an SSL model (``encoder.`` prefix stripped) as safetensors."""
    from safetensors.torch import save_file as save_torch

    tensors = {k.removeprefix("encoder."): v.detach().cpu().contiguous()
               for k, v in model.state_dict().items() if k.startswith("encoder.")}
    tmp = path.with_name(path.name + ".tmp")
    save_torch(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
