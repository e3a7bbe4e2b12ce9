"""Diffusion Policy's Push-T zarr (206 human demos) as a ReplayBuffer with the env's observation keys."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from drift_policy.data.replay_buffer import ReplayBuffer, read_array

OBS_TYPES = ("state", "image")
IMAGE_CHUNK = 500  # frames converted float32 -> uint8 at a time (about 55 MB), so no float copy of all images is held


def load_pusht(path: str | Path, obs_type: str = "state") -> ReplayBuffer:
    """keypoint float32 [N, 18] (9 block keypoints, x0 y0 x1 ...), agent_pos float32 [N, 2] (= state[:, :2]),
    action float32 [N, 2]; and image uint8 [N, 96, 96, 3] for obs_type="image"."""
    if obs_type not in OBS_TYPES:
        raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
    path = Path(path)
    raw = ReplayBuffer.from_zarr(path, keys=["state", "keypoint", "action"])
    data = {
        "keypoint": raw.data["keypoint"].reshape(len(raw), -1).astype(np.float32),
        "agent_pos": raw.data["state"][:, :2].astype(np.float32),
        "action": raw.data["action"].astype(np.float32),
    }
    if obs_type == "image":
        data["image"] = _uint8_images(zarr.open_group(str(path), mode="r"), path)
    return ReplayBuffer(data, raw.episode_ends)


def _uint8_images(root: zarr.Group, path: Path) -> np.ndarray:
    """data/img (float 0-255) as uint8, converted chunk by chunk."""
    if "data/img" not in root:
        raise ValueError(f"dataset {path} has no data/img, so it cannot serve obs_type='image'; use obs_type='state'")
    images = root["data/img"]
    out = np.empty(images.shape, dtype=np.uint8)
    for start in range(0, len(images), IMAGE_CHUNK):
        out[start : start + IMAGE_CHUNK] = np.rint(np.clip(read_array(images, path, slice(start, start + IMAGE_CHUNK)), 0, 255))
    return out
