"""Vectorised evaluation rollouts with Diffusion Policy's and LeRobot's metrics, latency, videos and filmstrips."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import gymnasium as gym
import imageio
import numpy as np
import torch
from tqdm.auto import tqdm

from drift_policy.cli import available_cores
from drift_policy.envs.multistep import MultiStepWrapper

# forkserver: a MuJoCo env that renders with EGL hangs in reset in a worker forked from a process that has imported
# robosuite under MUJOCO_GL=egl or rendered itself (measured: Lift, then BlockPush after Lift, in one process), as the
# table does task after task. A forkserver worker starts from a clean process that imported the caller's __main__ once.
DEFAULT_CONTEXT = "forkserver" if sys.platform.startswith("linux") else "spawn"


class ChunkPolicy(Protocol):
    """What the runner needs of a policy: reset() per round, and predict_action({key: [B, To, ...]}, generator=[one
    torch.Generator per row]) -> [B, Ta, Da], drawing row i's sampling noise from generator[i] only."""

    def reset(self) -> None: ...
    def predict_action(self, obs: dict[str, np.ndarray], generator: list[torch.Generator]) -> Any: ...


class _MakeEnv:
    """Picklable factory for the worker processes: the task's env inside the multi-step wrapper."""

    def __init__(self, env_fn: Callable[[], gym.Env], n_obs_steps: int, n_action_steps: int, max_steps: int) -> None:
        self.env_fn, self.args = env_fn, (n_obs_steps, n_action_steps, max_steps)

    def __call__(self) -> gym.Env:
        return MultiStepWrapper(self.env_fn(), *self.args)


def video_stem(episode: dict) -> str:
    """seed<S>_<success|fail>_score<X>, the score cut (not rounded) to 2 decimals so a near miss never reads 1.00."""
    outcome = "success" if episode["success"] else "fail"
    return f"seed{episode['seed']}_{outcome}_score{math.floor(episode['max_reward'] * 100) / 100:.2f}"


class EnvRunner:
    """Runs n_rollouts episodes, seeds seed_start, seed_start + 1, ..., in rounds of n_envs worker processes
    (gymnasium's AsyncVectorEnv; one in-process env when n_envs is 1); episodes of the first n_videos seeds
    are recorded to MP4 in video_dir, each with a PNG filmstrip beside it. Episode seed s seeds both the env and
    the policy's sampling noise (a torch.Generator of its own), so an episode's outcome depends on (policy, s), not on
    n_envs (up to the float rounding of the policy's batch size). mp_context="fork" starts workers fastest, for envs
    that never render with EGL."""

    def __init__(self, env_fn: Callable[[], gym.Env], n_obs_steps: int, n_action_steps: int, max_steps: int,
                 n_rollouts: int = 50, seed_start: int = 100000, n_envs: int | None = None, n_videos: int = 0,
                 video_dir: str | Path | None = None, fps: int = 10, mp_context: str = DEFAULT_CONTEXT) -> None:
        if n_rollouts < 1:
            raise ValueError(f"n_rollouts must be >= 1, got {n_rollouts}")
        if n_envs is not None and n_envs < 1:
            raise ValueError(f"n_envs must be >= 1 (or None for one per core), got {n_envs}")
        if n_videos and video_dir is None:
            raise ValueError("n_videos > 0 needs a video_dir to write the videos to")
        self.env_fn = env_fn
        self.make_env = _MakeEnv(env_fn, n_obs_steps, n_action_steps, max_steps)
        self.seeds = list(range(seed_start, seed_start + n_rollouts))
        self.n_envs = max(1, min(n_envs or available_cores(), n_rollouts))
        self.n_videos, self.fps, self.mp_context = n_videos, fps, mp_context
        self.video_dir = Path(video_dir) if video_dir is not None else None

    def run(self, policy: ChunkPolicy) -> dict[str, Any]:
        """Roll out every seed: mean_score, success_rate, [p1..pK], latency_ms {p50, p95}, episodes, videos, filmstrips."""
        # Finished envs are not auto-reset: the wrapper repeats their final step until the round ends.
        mode = gym.vector.AutoresetMode.DISABLED
        vector = (gym.vector.AsyncVectorEnv([self.make_env] * self.n_envs, context=self.mp_context, autoreset_mode=mode)
                  if self.n_envs > 1 else gym.vector.SyncVectorEnv([self.make_env], autoreset_mode=mode))
        episodes, latencies, videos, filmstrips = [], [], [], []
        failed = True
        try:
            with tqdm(total=len(self.seeds), desc="rollouts", dynamic_ncols=True, leave=False) as bar:
                for start in range(0, len(self.seeds), self.n_envs):
                    seeds = self.seeds[start : start + self.n_envs]
                    round_episodes, frames = self._round(vector, policy, seeds, latencies)
                    for episode, episode_frames in zip(round_episodes, frames):
                        episodes.append(episode)
                        if episode_frames:
                            video, strip = self._write_video(episode_frames, episode)
                            videos.append(video)
                            filmstrips.append(strip)
                    bar.update(len(seeds))
            failed = False
        finally:
            vector.close(terminate=failed)  # a dead or stuck worker cannot take part in an orderly close
        return self._summary(episodes, latencies, videos, filmstrips)

    def _round(self, vector: gym.vector.VectorEnv, policy: ChunkPolicy, seeds: list[int],
               latencies: list[float]) -> tuple[list[dict], list[list[np.ndarray]]]:
        """One episode per env (idle envs of the last round repeat a seed and are ignored)."""
        n = self.n_envs
        record = [i < len(seeds) and seeds[i] - self.seeds[0] < self.n_videos for i in range(n)]
        vector.set_attr("recording", record)
        env_seeds = seeds + [seeds[-1]] * (n - len(seeds))
        obs, _ = _await(vector, env_seeds, "reset", seed=env_seeds)
        noise = [torch.Generator().manual_seed(seed) for seed in env_seeds]
        policy.reset()
        done, success = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        max_reward, completed = np.zeros(n), np.full(n, -1)
        orders: list[list[str] | None] = [None] * n  # info["completed"]: the tasks/pushes done, in order (multimodal tasks)
        completed_at: list[list[int] | None] = [None] * n  # info["completed_at"]: the env step at which each was done
        while not done.all():
            begin = time.perf_counter()
            actions = policy.predict_action(obs, generator=noise)
            latencies.append(1e3 * (time.perf_counter() - begin))
            actions = actions.detach().cpu().numpy() if hasattr(actions, "detach") else np.asarray(actions)
            obs, reward, terminated, truncated, info = _await(vector, env_seeds, "step", actions)
            live = ~done
            max_reward[live] = np.maximum(max_reward[live], reward[live])
            success[live] |= np.asarray(info["is_success"], dtype=bool)[live]
            if "num_completed" in info:
                completed[live] = np.maximum(completed[live], np.asarray(info["num_completed"], dtype=int)[live])
            if "completed" in info:
                for i in np.flatnonzero(live):
                    orders[i] = list(info["completed"][i])
                    if "completed_at" in info:
                        completed_at[i] = [int(step) for step in info["completed_at"][i]]
            done |= terminated | truncated
        steps = vector.get_attr("steps")
        frames = vector.call("pop_frames") if any(record) else [[] for _ in range(n)]
        episodes = []
        for i, seed in enumerate(seeds):
            episode = {"seed": seed, "max_reward": float(max_reward[i]), "success": bool(success[i]), "steps": int(steps[i])}
            if completed[i] >= 0:
                episode["num_completed"] = int(completed[i])
            if orders[i] is not None:
                episode["order"] = orders[i]
            if completed_at[i] is not None:
                episode["completed_at"] = completed_at[i]
            episodes.append(episode)
        return episodes, list(frames[: len(seeds)])

    def _write_video(self, frames: list[np.ndarray], episode: dict) -> tuple[str, str]:
        """The episode's MP4 and its filmstrip PNG of the same stem; returns both paths."""
        self.video_dir.mkdir(parents=True, exist_ok=True)
        path = self.video_dir / f"{video_stem(episode)}.mp4"
        imageio.mimwrite(path, frames, fps=self.fps, macro_block_size=1)
        strip = path.with_suffix(".png")
        imageio.imwrite(strip, filmstrip(frames))
        return str(path), str(strip)

    @staticmethod
    def _summary(episodes: list[dict], latencies: list[float], videos: list[str],
                 filmstrips: list[str]) -> dict[str, Any]:
        result = episode_metrics(episodes)
        result["latency_ms"] = {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))}
        result["episodes"], result["videos"], result["filmstrips"] = episodes, videos, filmstrips
        return result


def filmstrip(frames: Sequence[np.ndarray], n_frames: int = 8) -> np.ndarray:
    """n_frames frames [H, W, 3] evenly spaced from the first to the last (all of them when fewer), in one row with 2-px
    white separators: a rollout as one image that git can hold and a README can show, where its MP4 cannot."""
    if len(frames) == 0:
        raise ValueError("filmstrip needs at least one frame, got an episode with none")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    picks = np.linspace(0, len(frames) - 1, min(n_frames, len(frames))).round().astype(int)
    separator = np.full((frames[0].shape[0], 2, 3), 255, dtype=np.uint8)
    tiles = [tile for i in picks for tile in (separator, np.asarray(frames[i], dtype=np.uint8))]
    return np.concatenate(tiles[1:], axis=1)


class EnvWorkerDied(RuntimeError):
    """An env worker process ended during an episode (killed, out of memory, a crash in the simulator)."""


def _await(vector: gym.vector.VectorEnv, env_seeds: list[int], call: str, *args: Any, **kwargs: Any) -> Any:
    """vector.reset/step, watching the worker processes while it waits: a worker that dies is an EnvWorkerDied naming
    its episode's seed, where gymnasium would wait on its pipe for ever or fail with a bare EOFError."""
    if not isinstance(vector, gym.vector.AsyncVectorEnv):
        return getattr(vector, call)(*args, **kwargs)
    getattr(vector, f"{call}_async")(*args, **kwargs)
    pending = list(range(vector.num_envs))
    while pending:
        _raise_if_a_worker_died(vector, env_seeds, call)
        pending = [i for i in pending if not vector.parent_pipes[i].poll(0.2)]  # a dead worker's pipe polls ready (EOF)
    try:
        return getattr(vector, f"{call}_wait")()
    except (EOFError, ConnectionError):  # it died after answering the poll: wait for its exit code
        for process in vector.processes:
            process.join(timeout=5)
        _raise_if_a_worker_died(vector, env_seeds, call)
        raise


def _raise_if_a_worker_died(vector: gym.vector.AsyncVectorEnv, env_seeds: list[int], call: str) -> None:
    for i, process in enumerate(vector.processes):
        if process.exitcode is not None:
            raise EnvWorkerDied(f"env worker {i} (pid {process.pid}) ended with exit code {process.exitcode} during the "
                                f"episode of seed {env_seeds[i]} ({call}); the evaluation stopped. Episodes are seeded, so "
                                f"re-running it repeats the same episodes: check that seed's env for a crash, or the machine's memory")


def metric_columns(episodes: list[dict], stages: int | None = None) -> dict[str, np.ndarray]:
    """Each metric's per-episode values: max_reward as mean_score, success as success_rate and, for multi-stage
    tasks, p1..p<stages> (completed >= k tasks; stages defaults to the most any episode completed)."""
    columns = {"mean_score": np.array([e["max_reward"] for e in episodes], dtype=float),
               "success_rate": np.array([float(e["success"]) for e in episodes])}
    completed = np.array([e["num_completed"] for e in episodes if "num_completed" in e], dtype=int)
    top = int(completed.max(initial=0)) if stages is None else stages
    for k in range(1, top + 1):
        columns[f"p{k}"] = (completed >= k).astype(float)
    return columns


def _mean_and_se(columns: dict[str, np.ndarray]) -> dict[str, float]:
    result: dict[str, float] = {}
    for name, values in columns.items():
        result[name] = float(np.mean(values))
        result[f"{name}_se"] = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return result


def episode_metrics(episodes: list[dict]) -> dict[str, float]:
    """mean_score (Diffusion Policy's), success_rate (LeRobot's) and p1..pK for multi-stage tasks (share of
    episodes completing >= k tasks), each with its standard error (`<name>_se`: sample std / sqrt(n))."""
    return _mean_and_se(metric_columns(episodes))


def paired_difference(episodes: list[dict], baseline: list[dict]) -> dict[str, float]:
    """Each metric's mean per-seed difference `episodes - baseline` with its standard error. Two policies run on the
    same seeds share each initial state's difficulty, so the paired error is the one to judge a gap by (Push-T's
    2026-12-07 regulariser screen: 0.014-0.016 mean_score against 0.023 for the two standard errors combined)."""
    return pooled_paired_difference([episodes], [baseline])


def pooled_paired_difference(runs: list[list[dict]], baseline_runs: list[list[dict]]) -> dict[str, float]:
    """paired_difference for arms trained more than once: per seed, each side's metric averaged over its runs (one
    episode list per training seed), then the mean difference with its standard error over the evaluation seeds. The
    error holds the episodes' noise, not the spread between training runs: report the runs' own means beside it."""
    seeds = sorted(e["seed"] for e in baseline_runs[0]) if baseline_runs and baseline_runs[0] else []
    if not seeds or not runs or len(set(seeds)) != len(seeds) or any(sorted(e["seed"] for e in run) != seeds
                                                                      for run in [*runs, *baseline_runs]):
        raise ValueError("a paired difference needs episodes of both runs on the same seeds, each seed once: evaluate them with the same "
                         "--rollouts and --seed-start")
    stages = max((e.get("num_completed", 0) for run in [*runs, *baseline_runs] for e in run), default=0)

    def averaged(side: list[list[dict]]) -> dict[str, np.ndarray]:
        columns = [metric_columns(sorted(run, key=lambda e: e["seed"]), stages) for run in side]
        return {name: np.mean([c[name] for c in columns], axis=0) for name in columns[0]}

    ours, theirs = averaged(runs), averaged(baseline_runs)
    return _mean_and_se({name: ours[name] - theirs[name] for name in ours})
