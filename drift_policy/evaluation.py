"""Evaluation, owned by the library: a task's rollout runner, Diffusion Policy's protocol on a saved policy (seeded
episodes, metrics with standard errors, DP's 50 test seeds as a subset, predict_action latency, videos), the mode
balance of multimodal tasks and the markdown tables results are printed in. eval_policy.py, the trainer's periodic
rollouts, drift_policy.budget, bench/ and examples/ all call it."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from drift_policy import atomic
from drift_policy.ensemble import TemporalEnsemble
from drift_policy.export import OnnxPolicy
from drift_policy.policies import Policy
from drift_policy.tasks import load_task
from drift_policy.envs.runner import EnvRunner, episode_metrics, paired_difference, pooled_paired_difference

__all__ = ["DP_TEST_SEEDS", "make_runner", "load_for_eval", "load_onnx_for_eval", "batch1_latency_ms", "evaluate", "evaluate_once",
           "episode_metrics", "paired_difference", "pooled_paired_difference", "mode_shares", "successful_orders", "markdown_table"]

DP_TEST_SEEDS = range(100000, 100050)  # Diffusion Policy's Push-T test initial states


def make_runner(task: dict[str, Any], n_rollouts: int, seed_start: int, n_envs: int | None = None,
                n_videos: int = 0, video_dir: Path | None = None, n_action_steps: int | None = None) -> EnvRunner:
    """Rollout runner for a task config (a plain dict, as saved inside a policy); n_action_steps, the actions
    executed per policy call, defaults to the task's Ta."""
    return EnvRunner(
        load_task(task).make_env, n_obs_steps=task["n_obs_steps"], n_action_steps=n_action_steps or task["n_action_steps"],
        max_steps=task["max_steps"],
        n_rollouts=n_rollouts, seed_start=seed_start, n_envs=n_envs, n_videos=n_videos, video_dir=video_dir,
    )


def load_for_eval(policy_dir: Path, device: str, overrides: Mapping[str, Any] | None = None) -> Policy:
    """The saved policy on `device` with its inference `overrides`, refused with the reason when it cannot be
    evaluated in a simulator."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device here; use --device cpu")
    policy = Policy.from_pretrained(policy_dir, device=device, **(overrides or {}))
    _require_task(policy.config.task, Path(policy_dir) / "config.json",
                  "Policies trained by train_policy.py carry it; when building a policy in Python, pass task=<the task yaml "
                  "as a dict> (e.g. OmegaConf.to_container(cfg.task, resolve=True)) before save_pretrained.")
    return policy


def load_onnx_for_eval(path: Path, device: str = "cpu") -> OnnxPolicy:
    """An exported policy (export_onnx's .onnx and .json), run by onnxruntime on the CPU, refused with the reason
    when it cannot be evaluated in a simulator."""
    if device != "cpu":
        raise ValueError(f"--device {device} asked for, but an exported policy runs on onnxruntime's CPU provider; use --device cpu")
    policy = OnnxPolicy.load(path)
    _require_task(policy.task, Path(path).with_suffix(".json"),
                  "It was exported before exports saved the task: export the policy again with export_onnx.")
    return policy


def _require_task(task: dict[str, Any], source: Path, fix: str) -> None:
    """A policy's task config must say how to build its env."""
    missing = [k for k in ("name", "env", "max_steps", "n_obs_steps", "n_action_steps") if k not in task]
    if missing:
        raise ValueError(f"{source} has no task config to build an env from (missing task keys {missing}). {fix}")


def batch1_latency_ms(policy: Policy | OnnxPolicy, obs: dict[str, np.ndarray], calls: int = 50) -> dict[str, float]:
    """predict_action wall time for one observation history, after a few warm-up calls."""
    times = []
    for i in tqdm(range(5 + calls), desc=f"latency, batch 1 ({policy.nfe} NFE)", dynamic_ncols=True, leave=False):
        start = time.perf_counter()
        policy.predict_action(obs)
        if i >= 5:
            times.append(1e3 * (time.perf_counter() - start))
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "p99": float(np.percentile(times, 99))}


def evaluate(policy_path: Path, rollouts: int, seed_start: int, n_envs: int | None, videos: int, out_dir: Path,
             device: str = "cpu", ensemble: float | None = None, replan_every: int | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict:
    """Run the rollouts of a saved policy folder, or of an exported policy (a .onnx file: the same runner, seeds and
    metrics, run by onnxruntime), and write eval.json; returns its content.

    With ensemble (ACT's decay m) the rollouts execute the temporal ensemble of plans made every replan_every steps
    (default 1); with replan_every alone, plain receding horizon, replan_every actions per plan. Both run one action
    per policy call (latency_ms is then per env step), and eval.json records the mode as "execution".
    overrides replace saved inference settings of a policy folder (e.g. sampler, sample_noise_scale), recorded too."""
    policy_path, out_dir = Path(policy_path).resolve(), Path(out_dir).resolve()
    exported = policy_path.suffix == ".onnx"
    if exported and overrides:
        raise ValueError(f"settings {sorted(overrides)} cannot change an exported graph; pass them to "
                         "Policy.from_pretrained before export_onnx, or evaluate the policy folder")
    policy = load_onnx_for_eval(policy_path, device) if exported else load_for_eval(policy_path, device, overrides)
    task = policy.task if exported else policy.config.task
    stepwise = ensemble is not None or replan_every is not None
    executor = TemporalEnsemble(policy, decay=ensemble, replan_every=replan_every or 1) if stepwise else policy
    runner = make_runner(task, rollouts, seed_start, n_envs=n_envs, n_videos=videos, video_dir=out_dir / "videos",
                         n_action_steps=1 if stepwise else None)
    result = runner.run(executor)
    dp_test = [e for e in result["episodes"] if e["seed"] in DP_TEST_SEEDS]
    if dp_test and len(dp_test) < len(result["episodes"]):
        result["dp_test_seeds"] = {"seeds": [dp_test[0]["seed"], dp_test[-1]["seed"]], "n": len(dp_test), **episode_metrics(dp_test)}
    env = runner.env_fn()
    first_obs, _ = env.reset(seed=seed_start)
    env.close()
    history = {k: np.stack([first_obs[k]] * policy.n_obs_steps) for k in policy.obs_meta}
    result["latency_batch1_ms"] = batch1_latency_ms(policy, history)
    result.update(policy=str(policy_path), policy_type=policy.policy_type, task=task["name"], nfe=policy.nfe,
                  rollouts=rollouts, seed_start=seed_start, device=f"{device}, onnxruntime" if exported else device)
    if stepwise:
        result["execution"] = executor.describe()
    if overrides:
        result["overrides"] = dict(overrides)
    atomic.write_text(out_dir / "eval.json", json.dumps(result, indent=2, default=str))
    return result


def evaluate_once(policy_dir: Path, rollouts: int, n_envs: int, videos: int, out_dir: Path, device: str) -> dict:
    """evaluate() from seed 100000, or its saved eval.json when it already covers these rollouts (a killed arm
    re-runs only what it had not finished)."""
    saved = out_dir / "eval.json"
    if saved.exists():
        result = json.loads(saved.read_text())  # written atomically: whole or absent
        if result.get("rollouts") == rollouts and result.get("policy") == str(Path(policy_dir).resolve()):
            return result
    return evaluate(policy_dir, rollouts, 100000, n_envs, videos, out_dir, device=device)


def mode_shares(orders: list[list[str]]) -> dict[str, float]:
    """Share of each order (its steps joined by ", "), most frequent first."""
    counts = Counter(", ".join(order) for order in orders)
    return {mode: n / len(orders) for mode, n in counts.most_common()}


def successful_orders(episodes: list[dict]) -> list[list[str]]:
    """The orders of the successful episodes (all blocks / tasks done)."""
    return [e["order"] for e in episodes if e["success"] and "order" in e]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts with the same keys as a markdown table (floats to 3 decimals)."""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
