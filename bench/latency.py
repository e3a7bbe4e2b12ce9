"""predict_action latency of drift (1 NFE), DDIM-10 and DDPM-100 on three U-Net sizes, beside the bare
network forward, on this machine's CPU: torch at batch 1 and 32, and the ONNX export run by onnxruntime
with 1 and 2 intra-op threads at batch 1 (p50 and p99 over --calls calls; a tenth as many for DDPM-100).

    python bench/latency.py [--threads 2] [--calls 100] [--sizes 64-128-256]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from drift_policy.budget import compose_cfg
from drift_policy.evaluation import markdown_table
from drift_policy.export import OnnxPolicy, export_onnx
from drift_policy.training.trainer import build_dataset, build_policy

RESULTS = Path(__file__).resolve().parent / "results"

SIZES = {"64-128-256": [64, 128, 256], "128-256-512": [128, 256, 512], "256-512-1024": [256, 512, 1024]}
ORT_THREADS = (1, 2)
SAMPLERS = {"drift": ["policy=drift"], "ddim-10": ["policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=10"],
            "ddpm-100": ["policy=diffusion", "policy.sampler=ddpm", "policy.num_inference_steps=100"]}


def time_ms(fn, calls: int) -> tuple[float, float]:
    """p50 and p99 wall time of fn() in ms after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = build_dataset(compose_cfg([]).task)
    normalizer_data = dataset.normalizer_data()
    rows = []
    for size, dims in ((s, SIZES[s]) for s in args.sizes):
        for sampler, overrides in SAMPLERS.items():
            policy = build_policy(compose_cfg([*overrides, f"policy.unet.down_dims={dims}"]))
            policy.fit_normalizer(normalizer_data)
            policy.eval()
            params = sum(p.numel() for p in policy.parameters()) / 1e6
            calls = max(3, args.calls // (10 if sampler == "ddpm-100" else 1))
            row = {"unet": size, "params_M": params, "sampler": sampler, "nfe": policy.nfe}
            for batch in (1, 32):
                obs = {k: v.numpy() for k, v in dataset.get_batch(np.arange(batch))["obs"].items()}
                p50, p99 = time_ms(lambda: policy.predict_action(obs), calls)
                cond = policy.encode({k: torch.as_tensor(v) for k, v in obs.items()}).detach()
                x = torch.randn(batch, policy.horizon, policy.action_dim)
                t = None if sampler == "drift" else torch.zeros(batch, dtype=torch.long)
                with torch.inference_mode():
                    forward_ms, _ = time_ms(lambda: policy.model(x, cond, t), args.calls)
                rows.append({**row, "runtime": f"torch {args.threads}t", "batch": batch, "p50_ms": p50, "p99_ms": p99,
                             "forward_ms": forward_ms, "overhead": p50 / (policy.nfe * forward_ms) - 1.0})
                print(rows[-1], flush=True)
            path = export_onnx(policy, RESULTS / "onnx" / f"{size}_{sampler}.onnx")
            obs = {k: v.numpy() for k, v in dataset.get_batch(np.arange(1))["obs"].items()}
            for threads in ORT_THREADS:
                runner = OnnxPolicy.load(path, num_threads=threads, seed=0)
                p50, p99 = time_ms(lambda: runner.predict_action(obs), calls)
                rows.append({**row, "runtime": f"onnxruntime {threads}t", "batch": 1, "p50_ms": p50, "p99_ms": p99,
                             "forward_ms": "-", "overhead": "-"})
                print(rows[-1], flush=True)
    torch_rt = f"torch {args.threads}t"
    for size in args.sizes:
        by = {(r["sampler"], r["runtime"], r["batch"]): r["p50_ms"] for r in rows if r["unet"] == size}
        for batch in (1, 32):
            print(f"{size} batch {batch}: drift is {by['ddpm-100', torch_rt, batch] / by['drift', torch_rt, batch]:.1f}x faster "
                  f"than DDPM-100, {by['ddim-10', torch_rt, batch] / by['drift', torch_rt, batch]:.1f}x faster than DDIM-10")
        for sampler in SAMPLERS:
            print(f"{size} {sampler} batch 1: onnxruntime p50 / torch p50 = " + ", ".join(
                f"{by[sampler, f'onnxruntime {n}t', 1] / by[sampler, torch_rt, 1]:.2f} ({n}t)" for n in ORT_THREADS))
    table = markdown_table(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.md").write_text(table + "\n")
    (RESULTS / "latency.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
