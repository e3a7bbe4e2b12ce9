"""Vectorised evaluation rollouts with Diffusion Policy's and LeRobot's metrics, latency and videos."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import gymnasium as gym
import imageio
import numpy as np
from tqdm.auto import tqdm

from envs.multistep import MultiStepWrapper


class ChunkPolicy(Protocol):
    def reset(self) -> None: ...
    def predict_action(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class _MakeEnv:
    """Picklable env factory for the worker processes: the task's env inside the multi-step wrapper."""

    def __init__(self, env_fn: Callable[[], gym.Env], n_obs_steps: int, n_action_steps: int, max_steps: int) -> None:
        self.env_fn, self.args = env_fn, (n_obs_steps, n_action_steps, max_steps)

    def __call__(self) -> gym.Env:
        return MultiStepWrapper(self.env_fn(), *self.args)


class EnvRunner:
    """Runs `n_rollouts` episodes with seeds seed_start, seed_start + 1, ... in rounds of n_envs processes."""

    def __init__(self, env_fn: Callable[[], gym.Env], n_obs_steps: int, n_action_steps: int, max_steps: int,
                 n_rollouts: int = 50, seed_start: int = 100000, n_envs: int | None = None, n_videos: int = 0,
                 video_dir: str | Path | None = None, fps: int = 10) -> None:
        self.env_fn = env_fn
        self.make_env = _MakeEnv(env_fn, n_obs_steps, n_action_steps, max_steps)
        self.n_action_steps, self.max_steps = n_action_steps, max_steps
        self.seeds = list(range(seed_start, seed_start + n_rollouts))
        self.n_envs = max(1, min(n_envs or os.cpu_count() or 1, n_rollouts))
        self.n_videos, self.fps = n_videos, fps
        self.video_dir = Path(video_dir) if video_dir else None
        if n_videos and self.video_dir is None:
            raise ValueError("n_videos > 0 needs a video_dir to write them to")

    def run(self, policy: ChunkPolicy) -> dict[str, Any]:
        """Roll out every seed; returns mean_score, success_rate, p_k, episodes, latency_ms, videos."""
        # Finished envs are not auto-reset: the wrapper repeats their last step until the round ends.
        no_reset = gym.vector.AutoresetMode.DISABLED
        vector = gym.vector.AsyncVectorEnv([self.make_env] * self.n_envs, context="spawn", autoreset_mode=no_reset) \
            if self.n_envs > 1 else gym.vector.SyncVectorEnv([self.make_env], autoreset_mode=no_reset)
        episodes, latencies, videos = [], [], []
        chunks_per_episode = -(-self.max_steps // self.n_action_steps)
        bar = tqdm(total=len(self.seeds), desc="rollouts", dynamic_ncols=True, leave=False)
        try:
            for start in range(0, len(self.seeds), self.n_envs):
                seeds = self.seeds[start : start + self.n_envs]
                padded = seeds + [seeds[-1]] * (self.n_envs - len(seeds))  # idle envs repeat a seed, ignored
                record = [i < len(seeds) and seeds[i] - self.seeds[0] < self.n_videos for i in range(self.n_envs)]
                vector.set_attr("recording", record)
                obs, _ = vector.reset(seed=padded)
                policy.reset()
                done = np.zeros(self.n_envs, dtype=bool)
                max_reward = np.zeros(self.n_envs)
                success = np.zeros(self.n_envs, dtype=bool)
                completed = np.zeros(self.n_envs, dtype=int)
                steps = np.zeros(self.n_envs, dtype=int)
                for _ in range(chunks_per_episode):
                    begin = time.perf_counter()
                    actions = np.asarray(policy.predict_action(obs))
                    latencies.append(1e3 * (time.perf_counter() - begin))
                    obs, reward, terminated, truncated, info = vector.step(actions)
                    live = ~done
                    max_reward[live] = np.maximum(max_reward[live], reward[live])
                    success[live] |= np.asarray(info.get("is_success", np.zeros(self.n_envs)), dtype=bool)[live]
                    if "num_completed" in info:
                        completed[live] = np.maximum(completed[live], np.asarray(info["num_completed"], dtype=int)[live])
                    steps[live] += self.n_action_steps
                    done |= terminated | truncated
                    if done.all():
                        break
                frames = vector.call("pop_frames") if any(record) else [[]] * self.n_envs
                for i, seed in enumerate(seeds):
                    episodes.append({"seed": seed, "max_reward": float(max_reward[i]), "success": bool(success[i]),
                                     "steps": int(min(steps[i], self.max_steps)), "num_completed": int(completed[i])})
                    if record[i]:
                        videos.append(self._write_video(frames[i], seed, episodes[-1]))
                bar.update(len(seeds))
        finally:
            bar.close()
            vector.close()
        return self._summary(episodes, latencies, videos)

    def _write_video(self, frames: list[np.ndarray], seed: int, episode: dict) -> str:
        self.video_dir.mkdir(parents=True, exist_ok=True)
        path = self.video_dir / f"seed{seed}_{'success' if episode['success'] else 'fail'}_score{episode['max_reward']:.2f}.mp4"
        imageio.mimwrite(path, frames, fps=self.fps, macro_block_size=1)
        return str(path)

    @staticmethod
    def _summary(episodes: list[dict], latencies: list[float], videos: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "mean_score": float(np.mean([e["max_reward"] for e in episodes])),
            "success_rate": float(np.mean([e["success"] for e in episodes])),
        }
        most = max(e["num_completed"] for e in episodes)
        for k in range(1, most + 1):  # multi-stage tasks: fraction of episodes completing at least k tasks
            result[f"p{k}"] = float(np.mean([e["num_completed"] >= k for e in episodes]))
        if most == 0:
            for e in episodes:
                e.pop("num_completed")
        result["latency_ms"] = {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))}
        result["episodes"], result["videos"] = episodes, videos
        return result
