"""robomimic's hdf5 datasets (data/demo_i/{actions, obs/<key>, states}, data.attrs["env_args"]) as a ReplayBuffer.

Reads both real robomimic datasets and the scripted experts' files (drift_policy.demos.generate writes the same layout). With
`abs_action=True`, delta actions are turned into absolute [pos, rot6d, gripper] targets by replaying each demo's
states through the dataset's own robosuite controller (Diffusion Policy's conversion).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from drift_policy.data.replay_buffer import ReplayBuffer


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"robomimic dataset {path} does not exist; make one with "
                                "`python -m drift_policy.demos.generate --task <lift|can|tool_hang> --out <path>` or point to a download")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable hdf5 file ({err}); regenerate it") from err
    if "data" not in f or not any(k.startswith("demo_") for k in f["data"]):
        f.close()
        raise ValueError(f"{path} is not in robomimic's layout: it needs data/demo_<i> groups")
    return f


def demo_names(f: h5py.File) -> list[str]:
    """demo_0, demo_1, ..., demo_10 in numeric order (robomimic's own order)."""
    return sorted((k for k in f["data"] if k.startswith("demo_")), key=lambda k: int(re.sub(r"\D", "", k) or 0))


def read_env_args(path: str | Path) -> dict:
    """The dataset's env_args: env_name, type and robosuite.make kwargs (controller included)."""
    with _open(path) as f:
        if "env_args" not in f["data"].attrs:
            raise ValueError(f"{path} has no data.attrs['env_args']; it cannot say which env it was recorded in")
        return json.loads(f["data"].attrs["env_args"])


def dataset_uses_delta(env_args: dict) -> bool:
    """Whether the dataset's OSC controller took delta actions (robosuite >= 1.5 input_type or <= 1.4 control_delta)."""
    config = env_args.get("env_kwargs", {}).get("controller_configs", {}) or {}
    arms = list(config.get("body_parts", {}).values()) or [config]
    arm = next((a for a in arms if str(a.get("type", "")).startswith("OSC")), arms[0])
    return arm.get("input_type", "delta" if arm.get("control_delta", True) else "absolute") == "delta"


def make_env_from_dataset(path: str | Path, obs_keys: Sequence[str] | None = None, abs_action: bool | None = None,
                          **kw):
    """The robosuite env a dataset was recorded in, rebuilt from its env_args (delta or absolute actions)."""
    from drift_policy.envs.robosuite_tasks import RobosuiteEnv

    return RobosuiteEnv(read_env_args(path), obs_keys=obs_keys, abs_action=abs_action, **kw)


def _absolute(f: h5py.File, path: str | Path, names: list[str], actions: list[np.ndarray]) -> list[np.ndarray]:
    """Each demo's actions as [T, 10] absolute (pos, rot6d, gripper) targets."""
    from drift_policy.envs.robosuite_tasks import rotvec_to_rot6d

    env_args = json.loads(f["data"].attrs["env_args"])
    if not dataset_uses_delta(env_args):  # already absolute (pos, axis-angle, gripper): only the rotation changes
        return [np.concatenate([a[:, :3], rotvec_to_rot6d(a[:, 3:6]), a[:, 6:]], axis=1) for a in actions]
    if any("states" not in f["data"][n] for n in names):
        raise ValueError(f"{path} has delta actions but no data/demo_i/states to convert them to absolute ones")
    env = make_env_from_dataset(path, obs_keys=[], abs_action=False)
    try:
        return [env.absolute_actions(f["data"][n]["states"][:], a) for n, a in zip(names, actions)]
    finally:
        env.close()


def _check_demos(f: h5py.File, path: str | Path, names: list[str], keys: list[str]) -> None:
    """Every demo has `actions`, an `obs` group with every key, and one observation row per action."""
    for name in names:
        demo = f["data"][name]
        if "obs" not in demo or "actions" not in demo:
            raise ValueError(f"{path}: data/{name} needs `actions` and an `obs` group; it has {sorted(demo)}")
        missing = [k for k in keys if k not in demo["obs"]]
        if missing:
            raise ValueError(f"{path}: data/{name} has no obs/{missing[0]}; its observation keys are {sorted(demo['obs'])}")
        steps = len(demo["actions"])
        for key in keys:
            if len(demo["obs"][key]) != steps:
                raise ValueError(f"{path}: data/{name}/obs/{key} has {len(demo['obs'][key])} steps but data/{name}/actions "
                                 f"has {steps}; every observation needs its action. Regenerate the dataset")


def load_robomimic(path: str | Path, obs_keys: Sequence[str] | None = None, abs_action: bool = False,
                   max_episodes: int | None = None) -> ReplayBuffer:
    """ReplayBuffer with the obs keys (all of the first demo's when None; images uint8 [N, H, W, 3]) and `action`:
    as stored ([N, 7] delta for robomimic), or absolute [N, 10] (pos, rot6d, gripper) when `abs_action`."""
    with _open(path) as f:
        names = demo_names(f)[:max_episodes]
        first = f["data"][names[0]]
        keys = list(first["obs"].keys()) if obs_keys is None and "obs" in first else list(obs_keys or [])
        _check_demos(f, path, names, keys)
        actions = [f["data"][n]["actions"][:].astype(np.float64) for n in names]
        if abs_action:
            actions = _absolute(f, path, names, actions)
        data = {k: np.concatenate([f["data"][n]["obs"][k][:] for n in names]) for k in keys}
        data = {k: v if v.dtype == np.uint8 else v.astype(np.float32) for k, v in data.items()}
        data["action"] = np.concatenate(actions).astype(np.float32)
        return ReplayBuffer(data, np.cumsum([len(a) for a in actions]))
