"""bench/fit_gap.py: per-window action errors of a saved policy on training and held-out windows."""
from __future__ import annotations

import sys

import numpy as np
import torch
from omegaconf import OmegaConf

from bench.fit_gap import action_errors, main
from drift_policy.policies import Policy
from drift_policy.training.trainer import build_dataset


def test_errors_are_per_window_and_fixed_by_the_seed(tmp_path, save_tiny_policy):
    policy = Policy.from_pretrained(save_tiny_policy(tmp_path / "policy")).eval()
    batch = build_dataset(OmegaConf.create(policy.config.task)).get_batch(np.arange(300))
    first, again, other = action_errors(policy, batch), action_errors(policy, batch), action_errors(policy, batch, seed=1)
    assert first.shape == (300,) and bool((first >= 0).all())
    assert torch.equal(first, again) and not torch.equal(first, other)
    # an untrained generator is far from the demos: Push-T actions span hundreds of pixels
    assert float(first.mean()) > 100.0


def test_the_table_has_a_row_per_policy_with_the_val_to_train_ratio(tmp_path, save_tiny_policy, monkeypatch, capsys):
    path = save_tiny_policy(tmp_path / "policy")
    monkeypatch.setattr(sys, "argv", ["fit_gap.py", "--windows", "64", str(path), str(path)])
    main()
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {path}")]
    assert len(table) == 4  # each row printed as it is measured, then the table of both
    train_mse, _, val_mse, _, ratio = (float(cell) for cell in table[-1].strip("| ").split(" | ")[1:])
    assert abs(ratio - val_mse / train_mse) < 1e-2 * ratio
