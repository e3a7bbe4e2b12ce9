"""Make demonstrations with a task's scripted expert and write them in robomimic's hdf5 layout.

    python -m drift_policy.demos.generate --task lift --episodes 200 [--out PATH] [--seed 0] [--workers N]

The expert is the one the task's config names (configs/task/<task>.yaml, `expert:`); `--task lift_image` records
the cameras too. The default output is the task's dataset path. Episode i is the expert's attempt on scene
`seed + i`; only successful attempts are kept, until `episodes` of them are written. Attempts run in `--workers`
processes (default: one per usable core) and are written in seed order, so the file is the same for any count. A
killed run continues where it stopped when the same command runs again, and a file with fewer demos is extended.
Expert modules expose `collect_episode(seed, image=False, **kw) -> dict` (obs, actions, states, success) and
`env_args(image=False, **kw) -> dict`; both get `task=<the expert's task>` as a keyword.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import h5py
import numpy as np
import threadpoolctl  # installed with scikit-learn
from tqdm import tqdm

from drift_policy.cli import available_cores, positive_int
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
    generate(task.name, task.dataset_path, episodes=wanted)  # a worker per core
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


def _attempt(module: str, task: str, image: bool, seed: int) -> dict:
    """The expert's episode on scene `seed`; an error names the seed (and is one that pickles, for the pool)."""
    try:
        return importlib.import_module(module).collect_episode(seed, image=image, task=task)
    except Exception as err:
        raise RuntimeError(f"the {task} expert failed on scene seed {seed}: {err!r}") from err


def _worker_setup() -> None:
    """One BLAS/OpenMP thread per worker (the pool has a worker per core); Ctrl-C is the main process's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))  # later loads
    threadpoolctl.threadpool_limits(1)  # loaded already: numpy's OpenBLAS, imported with this module
    if "torch" in sys.modules:  # imported by a caller's main script, which a spawned worker imports again
        sys.modules["torch"].set_num_threads(1)


def _pooled(attempt: Callable[[int], dict], seeds: Iterable[int], workers: int) -> Iterator[tuple[int, dict]]:
    """(seed, attempt(seed)) in seed order, run in `workers` spawned processes (EGL rendering does not survive a
    fork), at most `workers` attempts in flight; on close or error the attempts still running are killed."""
    seeds = iter(seeds)
    running: deque[tuple[int, Future]] = deque()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup)
    try:
        while True:
            running.extend((s, pool.submit(attempt, s)) for s in itertools.islice(seeds, workers - len(running)))
            if not running:
                return
            seed, future = running.popleft()
            yield seed, future.result()
    finally:
        for process in list(pool._processes.values()):  # Python 3.14's pool.terminate_workers()
            process.terminate()
        pool.shutdown(cancel_futures=True)


def generate(task: str, out: str | Path, episodes: int, seed: int = 0, workers: int | None = None) -> dict:
    """Write `episodes` successful demonstrations of `task`'s expert to `out`, running the attempts in `workers`
    processes (default: one per usable core; 1: in this process); returns attempts, successes, success_rate and
    wall_time_s, also stored in the file's attrs.

    Nothing made is lost: the demos go to `<out>.partial`, flushed after every attempt and renamed to `out` when
    complete; an interrupted run keeps it and the same command continues from its last attempt, and an `out` of the
    same task, seed and cameras with fewer demos is extended (its attempts are not run again)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    workers = available_cores() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    definition = expert_of(task)
    expert, task, image = definition.expert_module(), definition.expert.task, bool(definition.expert.image)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _open_partial(out, episodes, {"task": task, "seed": seed, "image": image},
                            env_args=json.dumps(expert.env_args(image=image, task=task)))
    start = time.perf_counter()
    with _sigterm_raises(), h5py.File(partial, "a") as f:
        group, attrs = f["data"], f.attrs
        attempts, phases, spent = int(attrs["expert_attempts"]), json.loads(attrs["expert_phases"]), float(attrs["expert_wall_time_s"])
        if attempts:
            print(f"continuing {partial}: {len(group)} demos after {attempts} attempts", flush=True)
        attempt = functools.partial(_attempt, definition.expert.module, task, image)
        seeds = range(seed + attempts, seed + MAX_ATTEMPTS_PER_EPISODE * episodes)
        results = _pooled(attempt, seeds, workers) if workers > 1 else ((s, attempt(s)) for s in seeds)
        try:
            with tqdm(total=episodes, initial=len(group), desc=f"{task} expert", unit="demo") as bar, \
                    contextlib.closing(results):
                for episode_seed, episode in results:
                    attempts += 1
                    for phase, done in episode.get("phases", {}).items():  # optional per-subtask outcomes
                        phases[phase] = phases.get(phase, 0) + int(done)
                    if episode["success"]:
                        _write_demo(group, episode, episode_seed)
                        bar.update(1)
                    bar.set_postfix(success_rate=f"{len(group) / attempts:.2f}")
                    attrs["expert_attempts"], attrs["expert_phases"] = attempts, json.dumps(phases)
                    attrs["expert_wall_time_s"] = spent + time.perf_counter() - start
                    f.flush()
                    if len(group) == episodes:  # later attempts (running in the pool) are discarded, not counted
                        break
            if len(group) < episodes:
                raise RuntimeError(f"the {task} expert succeeded {len(group)} times in {attempts} attempts; "
                                   "too few to make the dataset")
        except BaseException:  # Ctrl-C, SIGTERM, an error: what was made stays in the partial file
            print(f"\nstopped: {len(group)} demos ({attempts} attempts) kept in {partial}; the same command continues "
                  "from there", file=sys.stderr, flush=True)
            raise
        stats = {"task": task, "attempts": attempts, "successes": len(group), "success_rate": len(group) / attempts,
                 "wall_time_s": float(attrs["expert_wall_time_s"]), "seed": seed, "image": image}
        group.attrs["total"] = int(sum(group[d].attrs["num_samples"] for d in group))
        for key, value in stats.items():
            attrs[f"expert_{key}"] = value
        stats["phases"] = phases
    partial.replace(out)
    return stats


def _open_partial(out: Path, episodes: int, identity: dict, env_args: str) -> Path:
    """`<out>.partial`, ready to take more demos: the interrupted run's own when it is of the same task, seed and
    cameras, else a copy of a shorter `out` of the same kind, else a new file."""
    partial = out.with_name(out.name + ".partial")
    for source in (partial, out):
        if source.exists() and _continues(source, episodes, identity):
            if source != partial:
                shutil.copyfile(source, partial)
            return partial
    fresh = partial.with_name(partial.name + ".tmp")  # renamed when complete: a kill never leaves a headless partial
    with h5py.File(fresh, "w") as f:
        f.create_group("data").attrs["env_args"] = env_args
        for key, value in identity.items():
            f.attrs[f"expert_{key}"] = value
        f.attrs["expert_attempts"], f.attrs["expert_phases"], f.attrs["expert_wall_time_s"] = 0, "{}", 0.0
    fresh.replace(partial)
    return partial


def _continues(path: Path, episodes: int, identity: dict) -> bool:
    """Whether the demos file at `path` was made with `identity` (task, seed, image) and holds fewer than `episodes`;
    a file an interrupted write left unreadable does not."""
    try:
        with h5py.File(path, "r") as f:
            made = {key: f.attrs.get(f"expert_{key}") for key in identity}
            return ({k: v.item() if hasattr(v, "item") else v for k, v in made.items()} == identity
                    and "expert_attempts" in f.attrs and len(f["data"]) < episodes)
    except OSError as err:
        print(f"{path} cannot be read ({err}); starting over", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Generate scripted-expert demonstrations (robomimic hdf5 layout).")
    parser.add_argument("--task", required=True, choices=expert_tasks())
    parser.add_argument("--episodes", type=positive_int, default=None, help="successful demonstrations to keep "
                        "(default: the task's count, Diffusion Policy's)")
    parser.add_argument("--out", type=Path, default=None, help="default: the task's dataset path")
    parser.add_argument("--seed", type=int, default=0, help="scene seed of the first attempt")
    parser.add_argument("--workers", type=positive_int, default=available_cores(), help="processes running the "
                        "expert at once (default: one per usable core, %(default)s here; 1 runs it in this process)")
    args = parser.parse_args(argv)
    definition = expert_of(args.task)
    out = args.out or definition.dataset_path
    stats = generate(args.task, out, args.episodes or int(definition.expert.demos), seed=args.seed,
                     workers=args.workers)
    print(f"{out}: {stats['successes']} demos; expert success {stats['successes']}/{stats['attempts']} = "
          f"{stats['success_rate']:.3f}; {stats['wall_time_s']:.1f} s")
    if stats["phases"]:
        done = ", ".join(f"{k} {v}/{stats['attempts']}" for k, v in sorted(stats["phases"].items()))
        print(f"phases done in all attempts: {done}")
    return stats


if __name__ == "__main__":
    main()
