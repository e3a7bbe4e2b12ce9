"""Headless Linux (CI, a fresh server) has no display for MuJoCo's default GLFW backend: render with EGL there,
so the README's plain `pytest` command passes. Set before any test module imports mujoco. And the tiny saved policy
the evaluation tests share."""
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

import pytest

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="session")
def save_tiny_policy() -> Callable[..., Path]:
    """save(directory, with_task=True) -> directory: a randomly initialised Push-T drift policy (U-Net 16-32-64,
    16-step episodes, normaliser fitted on the bundled demos), saved; with_task=False as built in Python without one."""
    import torch
    from hydra import compose, initialize_config_dir

    from drift_policy.training.trainer import build_dataset, build_policy

    def save(directory: Path, with_task: bool = True) -> Path:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
            cfg = compose("train_policy", overrides=["policy.unet.down_dims=[16,32,64]", "task.max_steps=16"])
        torch.manual_seed(0)
        policy = build_policy(cfg)
        if not with_task:
            policy = type(policy)(dataclasses.replace(policy.config, task={}))
        policy.fit_normalizer(build_dataset(cfg.task).normalizer_data())
        return policy.save_pretrained(directory)

    return save
