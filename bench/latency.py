"""predict_action latency of drift (1 NFE), DDIM-10 and DDPM-100 on three U-Net sizes, beside the bare
network forward, on this machine's CPU.

    python bench/latency.py [--threads 2] [--calls 30]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, compose_cfg, markdown_table  # noqa: E402
from drift_policy.training.trainer import build_dataset, build_policy  # noqa: E402

SIZES = {"64-128-256": [64, 128, 256], "128-256-512": [128, 256, 512], "256-512-1024": [256, 512, 1024]}
SAMPLERS = {"drift": ["policy=drift"], "ddim-10": ["policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=10"],
            "ddpm-100": ["policy=diffusion", "policy.sampler=ddpm", "policy.num_inference_steps=100"]}


def time_ms(fn, calls: int) -> float:
    """Median wall time of fn() in ms after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = build_dataset(compose_cfg([]).task)
    normalizer_data = dataset.normalizer_data()
    rows = []
    for size, dims in SIZES.items():
        for sampler, overrides in SAMPLERS.items():
            policy = build_policy(compose_cfg([*overrides, f"policy.unet.down_dims={dims}"]))
            policy.fit_normalizer(normalizer_data)
            policy.eval()
            params = sum(p.numel() for p in policy.parameters()) / 1e6
            for batch in (1, 32):
                obs = {k: v.numpy() for k, v in dataset.get_batch(np.arange(batch))["obs"].items()}
                calls = max(3, args.calls // (10 if sampler == "ddpm-100" else 1))
                policy_ms = time_ms(lambda: policy.predict_action(obs), calls)
                cond = policy.encode({k: torch.as_tensor(v) for k, v in obs.items()}).detach()
                x = torch.randn(batch, policy.horizon, policy.action_dim)
                t = None if sampler == "drift" else torch.zeros(batch, dtype=torch.long)
                with torch.inference_mode():
                    forward_ms = time_ms(lambda: policy.model(x, cond, t), args.calls)
                rows.append({"unet": size, "params_M": params, "sampler": sampler, "nfe": policy.nfe, "batch": batch,
                             "predict_ms": policy_ms, "forward_ms": forward_ms,
                             "overhead": policy_ms / (policy.nfe * forward_ms) - 1.0})
                print(rows[-1], flush=True)
    for size in SIZES:
        for batch in (1, 32):
            by = {r["sampler"]: r["predict_ms"] for r in rows if r["unet"] == size and r["batch"] == batch}
            print(f"{size} batch {batch}: drift is {by['ddpm-100'] / by['drift']:.1f}x faster than DDPM-100, "
                  f"{by['ddim-10'] / by['drift']:.1f}x faster than DDIM-10")
    table = markdown_table(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.md").write_text(table + "\n")
    (RESULTS / "latency.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
