"""Atomic training checkpoints, the last two kept: a killed run restarts at the step of its last checkpoint, and a
damaged latest.pt falls back to the one before it."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from drift_policy.atomic import write_files

CHECKPOINT = "checkpoints/latest.pt"
PREVIOUS = "checkpoints/previous.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write latest.pt through a temp file (fsync, rename); the checkpoint it replaces becomes previous.pt. A full disk
    is a DiskFullError naming the path and the free space, with the older checkpoints intact."""
    path, previous = Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS
    buffer = io.BytesIO()
    torch.save(state, buffer)

    def keep_previous() -> None:  # once the new checkpoint is on disk: a crash after this leaves previous.pt to resume
        if path.exists():
            path.replace(previous)

    write_files({path: buffer.getbuffer()}, before_rename=keep_previous)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last readable checkpoint of a run, or None when it has none. A damaged latest.pt falls back to previous.pt
    with a warning; when neither can be read, a RuntimeError says how to start over."""
    run_dir = Path(run_dir)
    candidates = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.exists()]
    errors = []
    for path in candidates:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises several types for truncated/corrupt pickles
            errors.append(f"{path} ({type(err).__name__}: {err})")
            continue
        if errors:
            warnings.warn(f"checkpoint {errors[0]} is unreadable: resuming from the previous one, {path} "
                          f"(step {state.get('step', '?')})", RuntimeWarning, stacklevel=2)
        return state
    if errors:
        raise RuntimeError(f"no readable checkpoint in {run_dir / 'checkpoints'}: {'; '.join(errors)}. Start the run over "
                           f"with train.resume=false (or delete {run_dir}), or train under another run_name")
    return None
