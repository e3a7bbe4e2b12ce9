"""Make demonstrations with a task's scripted expert and write them in robomimic's hdf5 layout.

    python -m drift_policy.demos.generate --task lift --episodes 200 [--out PATH] [--seed 0]

The expert is the one the task's config names (configs/task/<task>.yaml, `expert:`); `--task lift_image` records
the cameras too. The default output is the task's dataset path. Episode i is the expert's attempt on scene
`seed + i`; only successful attempts are kept, until `episodes` of them are written. Expert modules expose
`collect_episode(seed, image=False, **kw) -> dict` (obs, actions, states, success) and
`env_args(image=False, **kw) -> dict`; both get `task=<the expert's task>` as a keyword.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from tqdm import tqdm

from drift_policy.cli import positive_int
from drift_policy.tasks import Task, load_task, task_names

MAX_ATTEMPTS_PER_EPISODE = 3  # give up when the expert succeeds less than a third of the time


def expert_tasks() -> list[str]:
    """The tasks whose config names a scripted expert."""
    return [name for name in task_names() if load_task(name).expert is not None]


def expert_of(task: str) -> Task:
    """The task, refused (ValueError) when it has no scripted expert."""
    definition = load_task(task)
    if definition.expert is None:
        raise ValueError(f"no scripted expert for task {task!r}; tasks with one: {', '.join(expert_tasks())}")
    return definition


def ensure_demonstrations(task: Task, demos: int | None = None) -> int | None:
    """Run the task's scripted expert when its dataset is missing or holds fewer than `demos` (default: the task's
    count); returns how many the file holds, None for a shipped dataset."""
    if task.expert is None:
        return None
    wanted, have = int(demos or task.expert.demos), task.count_demos()
    if have >= wanted:
        return have
    print(f"{task.dataset_path} holds {have} demonstrations: making {wanted} with the {task.expert.task} expert "
          f"(the same as `python -m drift_policy.demos.generate --task {task.name} --episodes {wanted}`)", flush=True)
    generate(task.name, task.dataset_path, episodes=wanted)
    return wanted


def _write_demo(group: h5py.Group, episode: dict, seed: int) -> None:
    actions = np.asarray(episode["actions"])
    demo = group.create_group(f"demo_{len(group)}")
    demo.attrs["num_samples"] = len(actions)
    demo.attrs["seed"] = seed
    if "order" in episode:  # the mode of a multimodal task's demo (push or task order), for mode-balance reports
        demo.attrs["order"] = json.dumps(list(episode["order"]))
    demo.create_dataset("actions", data=actions)
    demo.create_dataset("states", data=np.asarray(episode["states"]))
    rewards = np.zeros(len(actions))
    rewards[-1] = 1.0  # robomimic's sparse reward: the last step reaches the goal
    demo.create_dataset("rewards", data=rewards)
    demo.create_dataset("dones", data=rewards.astype(np.int64))
    for key, value in episode["obs"].items():
        value = np.asarray(value)
        compression = "lzf" if value.dtype == np.uint8 else None  # images: fast compression, 3-5x smaller
        demo.create_dataset(f"obs/{key}", data=value, compression=compression)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM (kill, a job scheduler, a closed terminal's shell) raises SystemExit, so
    cleanup code runs; by default it ends the process on the spot. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def generate(task: str, out: str | Path, episodes: int, seed: int = 0) -> dict:
    """Write `episodes` successful demonstrations of `task`'s expert to `out` (atomically); returns attempts,
    successes, success_rate and wall_time_s, also stored in the file's attrs."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    definition = expert_of(task)
    expert, task, image = definition.expert_module(), definition.expert.task, bool(definition.expert.image)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    start, attempts, phases = time.perf_counter(), 0, {}
    try:
        with _sigterm_raises(), h5py.File(tmp, "w") as f:
            group = f.create_group("data")
            group.attrs["env_args"] = json.dumps(expert.env_args(image=image, task=task))
            with tqdm(total=episodes, desc=f"{task} expert", unit="demo") as bar:
                while len(group) < episodes:
                    if attempts >= MAX_ATTEMPTS_PER_EPISODE * episodes:
                        raise RuntimeError(f"the {task} expert succeeded {len(group)} times in {attempts} attempts; "
                                           "too few to make the dataset")
                    episode = expert.collect_episode(seed + attempts, image=image, task=task)
                    attempts += 1
                    for phase, done in episode.get("phases", {}).items():  # optional per-subtask outcomes
                        phases[phase] = phases.get(phase, 0) + int(done)
                    if episode["success"]:
                        _write_demo(group, episode, seed + attempts - 1)
                        bar.update(1)
                    bar.set_postfix(success_rate=f"{len(group) / attempts:.2f}")
            stats = {"task": task, "attempts": attempts, "successes": len(group), "success_rate": len(group) / attempts,
                     "wall_time_s": time.perf_counter() - start, "seed": seed, "image": image}
            group.attrs["total"] = int(sum(group[d].attrs["num_samples"] for d in group))
            for key, value in stats.items():
                f.attrs[f"expert_{key}"] = value
            f.attrs["expert_phases"] = json.dumps(phases)
            stats["phases"] = phases
    except BaseException:  # an interrupted run (Ctrl-C, SIGTERM, an error) leaves no half-written file behind
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Generate scripted-expert demonstrations (robomimic hdf5 layout).")
    parser.add_argument("--task", required=True, choices=expert_tasks())
    parser.add_argument("--episodes", type=positive_int, default=None, help="successful demonstrations to keep "
                        "(default: the task's count, Diffusion Policy's)")
    parser.add_argument("--out", type=Path, default=None, help="default: the task's dataset path")
    parser.add_argument("--seed", type=int, default=0, help="scene seed of the first attempt")
    args = parser.parse_args(argv)
    definition = expert_of(args.task)
    out = args.out or definition.dataset_path
    stats = generate(args.task, out, args.episodes or int(definition.expert.demos), seed=args.seed)
    print(f"{out}: {stats['successes']} demos; expert success {stats['successes']}/{stats['attempts']} = "
          f"{stats['success_rate']:.3f}; {stats['wall_time_s']:.1f} s")
    if stats["phases"]:
        done = ", ".join(f"{k} {v}/{stats['attempts']}" for k, v in sorted(stats["phases"].items()))
        print(f"phases done in all attempts: {done}")
    return stats


if __name__ == "__main__":
    main()
