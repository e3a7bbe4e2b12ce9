"""Atomic training checkpoints: a killed run restarts at the step of its last checkpoint."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoints/latest.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """torch.save to a temp file, fsync, then rename over the previous checkpoint."""
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last checkpoint of a run, or None when it has none; a corrupt file is a clear error."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated/corrupt pickles
        raise RuntimeError(f"checkpoint {path} is unreadable ({err}); delete it to start the run over") from err
