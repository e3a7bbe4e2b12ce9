"""Training vs held-out action error of saved policies: how far each fits its demos beyond what carries over.

For every policy directory (a run's policy/ or snapshots/<pct>pct) it draws one action chunk per window, with fixed
noise, for --windows random training windows and every validation window of the policy's own task and split, and
reports the mean squared error to the demonstrated chunk in env units (Push-T: px^2), mean and median.

    python bench/fit_gap.py <run>/snapshots/25pct <run>/snapshots/50pct <run>/snapshots/75pct <run>/policy
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from drift_policy.evaluation import markdown_table
from drift_policy.policies import Policy
from drift_policy.training.trainer import build_dataset

BATCH = 256


def action_errors(policy: Policy, batch: dict, seed: int = 0) -> torch.Tensor:
    """Per-window mean squared error [N] of one generated chunk against the demonstrated one."""
    torch.manual_seed(seed)
    errors = []
    with torch.inference_mode():
        for start in range(0, len(batch["action"]), BATCH):
            obs = {k: v[start:start + BATCH] for k, v in batch["obs"].items()}
            target = batch["action"][start:start + BATCH]
            pred = policy.generate(obs, policy.draw_noise(len(target), torch.device("cpu")))
            errors.append(((pred - target) ** 2).mean(dim=(1, 2)))
    return torch.cat(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="+", type=Path, help="saved policy directories")
    parser.add_argument("--windows", type=int, default=512, help="training windows drawn (validation: all)")
    args = parser.parse_args()
    rows, datasets = [], {}
    for path in args.policies:
        policy = Policy.from_pretrained(path).eval()
        task = json.dumps(policy.config.task, sort_keys=True)  # a run's snapshots share one task: load its data once
        if task not in datasets:
            datasets[task] = build_dataset(OmegaConf.create(policy.config.task))
        train = datasets[task]
        val = train.val_split()
        if len(val) == 0:
            raise SystemExit(f"{path}: its task has no validation episodes (val_ratio 0); nothing to compare against")
        picks = np.random.default_rng(0).integers(0, len(train), size=args.windows)
        row = {"policy": str(path)}
        for name, batch in (("train", train.get_batch(picks)), ("val", val.get_batch(np.arange(len(val))))):
            err = action_errors(policy, batch)
            row |= {f"{name} mse": float(err.mean()), f"{name} median": float(err.median())}
        row["val / train"] = row["val mse"] / row["train mse"]
        rows.append(row)
        print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
