"""Episodes held in memory as flat arrays plus cumulative episode ends (Diffusion Policy's zarr layout)."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import zarr

CHUNK_STEPS = 1000  # zarr chunk length (steps) of the arrays to_zarr writes


class ReplayBuffer:
    """data[key] has the total step count as its first dim; episode i spans episode_ends[i-1]:episode_ends[i]."""

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends: Sequence[int] | np.ndarray) -> None:
        self.data = dict(data)
        self.episode_ends = np.asarray(episode_ends, dtype=np.int64)
        problem = layout_problem(self.data, self.episode_ends)
        if problem:
            raise ValueError(f"invalid replay buffer: {problem}")

    @classmethod
    def from_zarr(cls, path: str | Path, keys: Sequence[str] | None = None) -> "ReplayBuffer":
        """Load data/<key> (all keys, or `keys`) and meta/episode_ends of a zarr store into memory."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"dataset {path} does not exist; check the task's dataset.path "
                                    "(relative paths are read from the current directory)")
        try:
            root = zarr.open_group(str(path), mode="r")
        except (zarr.errors.GroupNotFoundError, ValueError) as err:
            raise ValueError(f"dataset {path} is not a zarr store (no .zgroup): pass the .zarr folder itself, "
                             "or write one with ReplayBuffer.to_zarr") from err
        if "meta/episode_ends" not in root or "data" not in root:
            raise ValueError(f"dataset {path} is not a replay buffer: it has {sorted(root.keys()) or 'nothing'}, but "
                             "needs data/<key> arrays and meta/episode_ends; write it with ReplayBuffer.to_zarr")
        group = root["data"]
        keys = sorted(group.array_keys()) if keys is None else list(keys)
        missing = [k for k in keys if k not in group]
        if missing:
            raise ValueError(f"dataset {path} has no data/{missing[0]}; it has {sorted(group.array_keys())}. "
                             "Check the task's observation keys")
        data = {k: read_array(group[k], path) for k in keys}
        ends = read_array(root["meta/episode_ends"], path)
        problem = layout_problem(data, ends)
        if problem:
            raise ValueError(f"dataset {path} is inconsistent: {problem}. Regenerate it, or restore it from git")
        return cls(data, ends)

    @classmethod
    def from_episodes(cls, episodes: Sequence[Mapping[str, np.ndarray]]) -> "ReplayBuffer":
        """Concatenate per-episode dicts of [T_i, ...] arrays (the same keys in every episode)."""
        if not episodes:
            raise ValueError("from_episodes needs at least one episode (a dict of [T, ...] arrays)")
        keys = sorted(episodes[0])
        lengths = []
        for i, episode in enumerate(episodes):
            if sorted(episode) != keys:
                raise ValueError(f"episode {i} has keys {sorted(episode)} but episode 0 has {keys}")
            sizes = {k: len(episode[k]) for k in keys}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"episode {i} has arrays of different lengths {sizes}; every key needs one row per step")
            lengths.append(sizes[keys[0]])
        data = {k: np.concatenate([np.asarray(e[k]) for e in episodes]) for k in keys}
        return cls(data, np.cumsum(lengths))

    def to_zarr(self, path: str | Path) -> Path:
        """Write to a temp store beside `path` and rename it into place, so no reader sees a half-written dataset."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(str(tmp), mode="w")
        for key, value in self.data.items():
            root.create_dataset(f"data/{key}", data=value, chunks=(min(len(value), CHUNK_STEPS), *value.shape[1:]))
        root.create_dataset("meta/episode_ends", data=self.episode_ends)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    def episode_slice(self, i: int) -> slice:
        """The steps of episode i (negative i counts from the end)."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range: the buffer has {self.n_episodes} episodes")
        i %= self.n_episodes
        return slice(0 if i == 0 else int(self.episode_ends[i - 1]), int(self.episode_ends[i]))

    def __len__(self) -> int:
        return int(self.episode_ends[-1])


def read_array(array: zarr.Array, store: Path, rows: slice = slice(None)) -> np.ndarray:
    """array[rows], read strictly: zarr silently fills a missing chunk with fill_value and reports a damaged one
    as a bare codec error, so both are refused here with the store, the array and the chunk named."""
    restore = "Restore the dataset (git checkout, or regenerate it)"
    if array.nchunks_initialized != array.nchunks:
        chunks = itertools.product(*map(range, array.cdata_shape))
        missing = next(c for c in chunks if array._chunk_key(c) not in array.chunk_store)  # zarr<3 is pinned
        raise ValueError(f"dataset {store} is incomplete: {array.path} has {array.nchunks_initialized} of its "
                         f"{array.nchunks} chunks; {_chunk_name(array, missing)} is missing, and zarr would read it "
                         f"as zeros. {restore}")
    try:
        return array[rows]
    except Exception as err:  # blosc/zstd raise RuntimeError or ValueError naming neither the file nor the chunk
        first, stop, _ = rows.indices(array.shape[0])
        size = array.chunks[0]
        damaged = next((i for i in range(first // size, -(-stop // size)) if not _decodes(array, i)), first // size)
        raise ValueError(f"dataset {store} is damaged: {_chunk_name(array, (damaged,))} cannot be decoded "
                         f"({err}). {restore}") from err


def _chunk_name(array: zarr.Array, chunk: tuple[int, ...]) -> str:
    """'chunk data/x/3.0 (steps 300-399)' for a chunk index (its trailing dims default to 0)."""
    chunk = (*chunk, *[0] * (array.ndim - len(chunk)))
    start = chunk[0] * array.chunks[0]
    return f"chunk {array._chunk_key(chunk)} (steps {start}-{min(start + array.chunks[0], array.shape[0]) - 1})"


def _decodes(array: zarr.Array, chunk: int) -> bool:
    """Whether the chunk with first-dim index `chunk` reads without a codec error."""
    try:
        array[chunk * array.chunks[0] : (chunk + 1) * array.chunks[0]]
        return True
    except Exception:
        return False


def layout_problem(data: Mapping[str, np.ndarray], ends: np.ndarray) -> str | None:
    """What is wrong with (data, episode_ends) as a replay buffer, or None."""
    if ends.ndim != 1 or len(ends) == 0:
        return f"meta/episode_ends must be a non-empty 1-D array of cumulative step counts, got shape {ends.shape}"
    if not np.issubdtype(ends.dtype, np.integer):
        return f"meta/episode_ends must hold integers, got {ends.dtype}"
    if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
        bad = 0 if ends[0] <= 0 else int(np.flatnonzero(np.diff(ends) <= 0)[0]) + 1
        return f"meta/episode_ends must be strictly increasing and positive, but entry {bad} is {int(ends[bad])} (an empty episode)"
    for key, value in data.items():
        if len(value) != ends[-1]:
            return f"data/{key} has {len(value)} steps but meta/episode_ends ends at {int(ends[-1])}"
    return None
