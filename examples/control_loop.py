"""Push-T driven in real time, as a robot's control loop drives it: one action per tick at a fixed rate.

    python examples/control_loop.py --checkpoint outputs/runs/<run>/policy --hz 10 [--onnx] [--steps 300] [--seed 100000]

Receding horizon: a plan (action chunk) is executed for Ta ticks, and the next one is computed by a background
thread that starts `lead` ticks before it is due, so inference overlaps the current plan instead of stalling the
loop. A plan is made from the observation history of the tick at which its inference starts (s); its action
for tick k is chunk[To - 1 + k - s], i.e. the first `lead` actions (for the ticks spent inferring) are dropped
and the rest stay aligned in time. The price is lag: a plan has not seen the last `lead` observations
(lead / hz seconds; the lead is sized from the measured latency, 1 tick for a drift policy). A tick whose plan
has not arrived is a deadline miss, and the last action is held. The first plan is made before the clock starts.

Prints the inference latency p50/p99/max, the deadline misses and the score (the episode's max reward, Diffusion
Policy's Push-T metric). --onnx runs the policy exported beside the checkpoint (policy.onnx) with onnxruntime.
"""
from __future__ import annotations

import argparse
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import hydra
import numpy as np
import torch

from drift_policy.cli import positive_int
from drift_policy.evaluation import load_for_eval

Infer = Callable[[dict[str, np.ndarray]], np.ndarray]  # observation history [To, ...] -> full chunk [T, Da]


@dataclass
class Episode:
    """What one real-time episode measured."""

    score: float
    steps: int
    lead: int
    misses: int = 0  # ticks at which the plan due had not arrived
    latencies_ms: list[float] = field(default_factory=list)  # every inference, the first (pre-clock) one included
    max_tick_lag_ms: float = 0.0  # how late the loop itself applied an action, beyond its tick time


def run_episode(infer: Infer, env: Any, n_obs_steps: int, n_action_steps: int, horizon: int, hz: float, steps: int,
                lead: int, seed: int) -> Episode:
    """Run one episode of at most `steps` ticks at `hz`, planning every Ta ticks `lead` ticks ahead (see the module doc)."""
    max_lead = min(n_action_steps, horizon - n_obs_steps + 1 - n_action_steps)
    if not 1 <= lead <= max_lead:
        raise ValueError(f"lead must be 1..{max_lead} ticks (a plan of T={horizon} must still cover its Ta={n_action_steps} "
                         f"ticks after the ticks spent inferring), got {lead}")
    obs, _ = env.reset(seed=seed)
    history = deque([obs] * n_obs_steps, maxlen=n_obs_steps)
    newest = {"tick": 0}  # the tick of the newest observation the planner may see
    plans: dict[int, tuple[int, np.ndarray]] = {}  # plan index -> (observation tick, chunk)
    lock, requests = threading.Lock(), queue.Queue()
    episode = Episode(score=0.0, steps=0, lead=lead)

    def snapshot() -> tuple[int, dict[str, np.ndarray]]:
        with lock:
            return newest["tick"], {k: np.stack([o[k] for o in history]) for k in history[0]}

    def plan(index: int) -> None:
        tick, stacked = snapshot()  # the observation at the moment inference starts
        start = time.perf_counter()
        chunk = infer(stacked)
        episode.latencies_ms.append(1e3 * (time.perf_counter() - start))
        with lock:
            plans[index] = (tick, chunk)

    def planner() -> None:
        while (index := requests.get()) is not None:
            plan(index)

    plan(0)
    thread = threading.Thread(target=planner, daemon=True)
    thread.start()
    period, action, pending = 1.0 / hz, None, None
    clock = time.perf_counter()
    try:
        for k in range(steps):
            time.sleep(max(0.0, clock + k * period - time.perf_counter()))
            episode.max_tick_lag_ms = max(episode.max_tick_lag_ms, 1e3 * (time.perf_counter() - clock - k * period))
            if pending is not None:  # the observation of tick k becomes visible at tick k's time
                with lock:
                    history.append(pending)
                    newest["tick"] = k
            if (k + lead) % n_action_steps == 0 and k + lead < steps:
                requests.put((k + lead) // n_action_steps)
            with lock:
                due = plans.get(k // n_action_steps)
            offset = None if due is None else n_obs_steps - 1 + k - due[0]
            if offset is None or offset >= horizon:
                episode.misses += 1  # hold the last action
            else:
                action = due[1][offset]
            pending, reward, terminated, _, _ = env.step(action)
            episode.score, episode.steps = max(episode.score, reward), k + 1
            if terminated:
                break
    finally:
        requests.put(None)
        thread.join()
    return episode


def auto_lead(infer: Infer, obs: dict[str, np.ndarray], hz: float, max_lead: int, calls: int = 3) -> int:
    """Ticks of head start that cover 1.5x the slowest of a few warm inference calls, within 1..max_lead."""
    infer(obs)  # the first call allocates
    slowest = 0.0
    for _ in range(calls):
        start = time.perf_counter()
        infer(obs)
        slowest = max(slowest, time.perf_counter() - start)
    return min(max_lead, max(1, math.ceil(1.5 * slowest * hz)))


def load_infer(checkpoint: Path, use_onnx: bool, threads: int, seed: int) -> tuple[Infer, Any]:
    """The checkpoint's policy as a chunk function (torch or its ONNX export) and the saved policy itself."""
    policy = load_for_eval(checkpoint, "cpu")
    if not use_onnx:
        torch.set_num_threads(threads)
        generator = torch.Generator().manual_seed(seed)
        return (lambda obs: policy.predict_action(obs, full_chunk=True, generator=generator)), policy
    from drift_policy.export import OnnxPolicy, export_onnx

    path = checkpoint / "policy.onnx"
    if not path.exists() or path.stat().st_mtime < (checkpoint / "model.safetensors").stat().st_mtime:
        print(f"exporting {path} ...", flush=True)
        export_onnx(policy, path)
    runner = OnnxPolicy.load(path, num_threads=threads, seed=seed)
    return (lambda obs: runner.predict_action(obs, full_chunk=True)), policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a saved policy folder (outputs/runs/<run>/policy)")
    parser.add_argument("--hz", type=float, default=10.0, help="control rate (Push-T's simulator steps 0.1 s per action)")
    parser.add_argument("--onnx", action="store_true", help="run the ONNX export with onnxruntime instead of torch")
    parser.add_argument("--steps", type=positive_int, default=300)
    parser.add_argument("--seed", type=int, default=100000, help="env seed (100000+ are Diffusion Policy's test seeds); also the noise seed")
    parser.add_argument("--threads", type=positive_int, default=1, help="inference threads (the loop and env use the rest)")
    parser.add_argument("--lead", type=positive_int, default=None, help="ticks of head start for each plan (default: from measured latency)")
    args = parser.parse_args()
    if args.hz <= 0:
        parser.error(f"--hz must be > 0, got {args.hz}")
    infer, policy = load_infer(args.checkpoint, args.onnx, args.threads, args.seed)
    task = policy.config.task
    env = hydra.utils.instantiate(task["env"])
    to, ta, t = policy.n_obs_steps, policy.n_action_steps, policy.horizon
    max_lead = min(ta, t - to + 1 - ta)
    first, _ = env.reset(seed=args.seed)
    lead = args.lead or auto_lead(infer, {k: np.stack([v] * to) for k, v in first.items()}, args.hz, max_lead)
    episode = run_episode(infer, env, to, ta, t, args.hz, args.steps, lead, args.seed)
    lat = np.array(episode.latencies_ms)
    runtime = f"onnxruntime, {args.threads} thread(s)" if args.onnx else f"torch, {args.threads} thread(s)"
    print(f"policy: {policy.policy_type} ({policy.nfe} NFE), {runtime}; {args.hz:g} Hz, lead {lead} tick(s) "
          f"(plans from observations {1e3 * lead / args.hz:.0f} ms old)")
    print(f"steps {episode.steps}  plans {len(lat)}  latency ms p50 {np.percentile(lat, 50):.1f} p99 {np.percentile(lat, 99):.1f} "
          f"max {lat.max():.1f}  deadline misses {episode.misses}  max tick lag ms {episode.max_tick_lag_ms:.1f}  "
          f"score {episode.score:.3f}")


if __name__ == "__main__":
    main()
