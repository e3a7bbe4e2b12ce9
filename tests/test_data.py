"""Replay buffer, sequence sampler, dataset and the Push-T reader on the real Push-T demonstrations."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from drift_policy.data import PolicyDataset, ReplayBuffer, SequenceSampler, load_pusht
from drift_policy.data.dataset import split_episodes
from drift_policy.tasks import data_path, load_task

PUSHT = "data/pusht/pusht_cchi_v7_replay.zarr"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pusht() -> ReplayBuffer:
    return load_pusht(PUSHT)


def _toy_buffer(lengths=(3, 5)) -> ReplayBuffer:
    """Episodes whose step values are their global step index, so gathered values are indices."""
    n = sum(lengths)
    return ReplayBuffer({"x": np.arange(n, dtype=np.float32)[:, None], "action": np.arange(n, dtype=np.float32)[:, None] + 100},
                        np.cumsum(lengths))


# --- sampler ----------------------------------------------------------------------------------------

def test_sampler_windows_repeat_episode_edges_exactly_like_diffusion_policy():
    sampler = SequenceSampler(np.array([3, 8]), horizon=4, pad_before=1, pad_after=2)
    expected = [
        [0, 0, 1, 2], [0, 1, 2, 2], [1, 2, 2, 2],  # episode 0 (steps 0-2): starts -1..1
        [3, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7],  # episode 1 (steps 3-7): starts -1..3
    ]
    np.testing.assert_array_equal(sampler.indices, expected)


def test_sampler_without_padding_and_on_chosen_episodes():
    sampler = SequenceSampler(np.array([3, 8, 10]), horizon=2, episodes=[0, 2])
    np.testing.assert_array_equal(sampler.indices, [[0, 1], [1, 2], [8, 9]])


def test_sampler_skips_episodes_shorter_than_a_window_as_diffusion_policy_does():
    sampler = SequenceSampler(np.array([2, 12]), horizon=10, pad_before=1, pad_after=1)
    assert len(sampler) == 3 and sampler.indices.min() >= 2  # episode 0 (2 steps) has none, episode 1 three


def test_sampler_gathers_first_steps_per_key():
    sampler = SequenceSampler(np.array([3, 8]), horizon=4, pad_before=1, pad_after=2)
    out = sampler.sample({"x": np.arange(8) * 10, "a": np.arange(8)}, np.array([0, 4]), n_steps={"x": 2})
    np.testing.assert_array_equal(out["x"], [[0, 0], [30, 40]])
    np.testing.assert_array_equal(out["a"], [[0, 0, 1, 2], [3, 4, 5, 6]])


# --- dataset ----------------------------------------------------------------------------------------

def test_item_is_first_to_obs_steps_and_all_t_actions():
    dataset = PolicyDataset(_toy_buffer(), ["x"], horizon=4, n_obs_steps=2, n_action_steps=3, val_ratio=0)
    item = dataset[0]  # episode 0, window starting one step before its start
    assert item["obs"]["x"].shape == (2, 1) and item["action"].shape == (4, 1)
    np.testing.assert_array_equal(item["obs"]["x"][:, 0], [0, 0])
    np.testing.assert_array_equal(item["action"][:, 0], [100, 100, 101, 102])
    assert len(dataset) == 3 + 5  # episode of L steps: L - T + (To - 1) + (Ta - 1) + 1 windows


def test_get_batch_equals_stacked_items_on_pusht(pusht):
    dataset = PolicyDataset(pusht, ["keypoint", "agent_pos"], horizon=16, n_obs_steps=2, n_action_steps=8)
    indices = np.array([0, 5, 17, len(dataset) - 1])
    batch = dataset.get_batch(indices)
    assert batch["obs"]["keypoint"].shape == (4, 2, 18) and batch["action"].shape == (4, 16, 2)
    assert batch["action"].dtype == torch.float32
    for row, index in enumerate(indices):
        item = dataset[int(index)]
        for key in ("keypoint", "agent_pos"):
            torch.testing.assert_close(batch["obs"][key][row], item["obs"][key], rtol=0, atol=0)
        torch.testing.assert_close(batch["action"][row], item["action"], rtol=0, atol=0)


def test_split_is_by_episode_disjoint_and_deterministic(pusht):
    kwargs = dict(obs_keys=["keypoint", "agent_pos"], horizon=16, n_obs_steps=2, n_action_steps=8, seed=3)
    train = PolicyDataset(pusht, **kwargs)
    val = train.val_split()
    assert len(val.episodes) == 4 and len(train.episodes) == 202  # round(206 * 0.02) = 4
    assert not set(train.episodes) & set(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(range(206))
    np.testing.assert_array_equal(PolicyDataset(pusht, **kwargs).episodes, train.episodes)
    assert not np.array_equal(PolicyDataset(pusht, **{**kwargs, "seed": 4}).val_split().episodes, val.episodes)
    episode_of_step = np.searchsorted(pusht.episode_ends, np.arange(len(pusht)), side="right")
    assert set(episode_of_step[val.sampler.indices.ravel()]) == set(val.episodes)  # windows never cross the split


def test_split_rules():
    assert [len(s) for s in split_episodes(206, 0.02, 90, seed=0)] == [90, 4]  # DP's configs train on 90 demos
    assert [len(s) for s in split_episodes(10, 0.01, None, seed=0)] == [9, 1]  # at least one validation episode
    assert [len(s) for s in split_episodes(1, 0.5, None, seed=0)] == [1, 0]  # at least one training episode
    assert [len(s) for s in split_episodes(5, 0.0, None, seed=0)] == [5, 0]


def test_normalizer_data_is_every_low_dim_step(pusht):
    dataset = PolicyDataset(pusht, ["keypoint", "agent_pos"], horizon=16, n_obs_steps=2, n_action_steps=8)
    data = dataset.normalizer_data()
    assert sorted(data) == ["action", "agent_pos", "keypoint"]
    assert data["keypoint"].shape == (25650, 18)


def test_dataset_errors_name_the_problem(pusht):
    with pytest.raises(ValueError, match=r"has no \['image'\]; it has \['action', 'agent_pos', 'keypoint'\]"):
        PolicyDataset(pusht, ["image"], horizon=16, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="split must be one of"):
        PolicyDataset(pusht, ["keypoint"], horizon=16, n_obs_steps=2, n_action_steps=8, split="test")
    with pytest.raises(ValueError, match="n_action_steps <= horizon"):
        PolicyDataset(pusht, ["keypoint"], horizon=4, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="val_ratio must be in"):
        PolicyDataset(pusht, ["keypoint"], horizon=16, n_obs_steps=2, n_action_steps=8, val_ratio=1.0)
    with pytest.raises(ValueError, match="no training windows"):
        PolicyDataset(_toy_buffer((3, 2)), ["x"], horizon=16, n_obs_steps=2, n_action_steps=2, val_ratio=0)
    with pytest.raises(IndexError, match="out of range"):
        PolicyDataset(_toy_buffer(), ["x"], horizon=4, n_obs_steps=2, n_action_steps=3, val_ratio=0).get_batch(np.array([8]))
    broken = ReplayBuffer({**pusht.data, "action": pusht.data["action"].copy()}, pusht.episode_ends)
    broken.data["action"][pusht.episode_ends[2] + 5, 1] = np.nan  # step 5 of episode 3
    with pytest.raises(ValueError, match=rf"'action' holds NaN or inf \(first at step {pusht.episode_ends[2] + 5}, episode 3\)"):
        PolicyDataset(broken, ["keypoint"], horizon=16, n_obs_steps=2, n_action_steps=8)


# --- Push-T reader ----------------------------------------------------------------------------------

def test_load_pusht_keys_shapes_and_values(pusht):
    raw = zarr.open(str(REPO / PUSHT), mode="r")
    assert pusht.n_episodes == 206 and len(pusht) == 25650
    assert {k: (v.shape, v.dtype) for k, v in pusht.data.items()} == {
        "keypoint": ((25650, 18), np.float32), "agent_pos": ((25650, 2), np.float32), "action": ((25650, 2), np.float32)}
    np.testing.assert_array_equal(pusht.data["agent_pos"], raw["data/state"][:, :2])
    np.testing.assert_array_equal(pusht.data["keypoint"][7].reshape(9, 2), raw["data/keypoint"][7])
    assert pusht.episode_slice(0) == slice(0, 161) and pusht.episode_slice(-1).stop == 25650


def test_task_dataset_paths_are_under_the_data_root_whatever_the_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    task = load_task("push_t")
    assert task.dataset_path.resolve() == (REPO / PUSHT).resolve() and task.make_dataset().n_episodes == 206
    assert data_path("/elsewhere/demos.hdf5") == Path("/elsewhere/demos.hdf5")
    with pytest.raises(FileNotFoundError, match="missing.zarr does not exist"):
        load_pusht("missing.zarr")  # a reader takes its path as given
    with pytest.raises(ValueError, match="obs_type must be one of"):
        load_pusht(PUSHT, obs_type="rgb")


def test_load_pusht_images_as_uint8(tmp_path):
    """Image mode on the first three real episodes, copied with their raw float images."""
    raw = zarr.open(str(REPO / PUSHT), mode="r")
    ends = raw["meta/episode_ends"][:3]
    subset = ReplayBuffer({k: raw[f"data/{k}"][: ends[-1]] for k in ("state", "keypoint", "action", "img")}, ends)
    buffer = load_pusht(subset.to_zarr(tmp_path / "pusht3.zarr"), obs_type="image")
    assert buffer.data["image"].shape == (420, 96, 96, 3) and buffer.data["image"].dtype == np.uint8
    np.testing.assert_array_equal(buffer.data["image"], subset.data["img"].astype(np.uint8))
    dataset = PolicyDataset(buffer, ["image", "agent_pos"], horizon=16, n_obs_steps=2, n_action_steps=8, val_ratio=0)
    batch = dataset.get_batch(np.arange(3))
    assert batch["obs"]["image"].dtype == torch.uint8 and batch["obs"]["image"].shape == (3, 2, 96, 96, 3)
    assert sorted(dataset.normalizer_data()) == ["action", "agent_pos"]  # images are not normalised
    chunk = tmp_path / "pusht3.zarr/data/img/0.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"pusht3\.zarr is damaged: chunk data/img/0\.0\.0\.0 \(steps 0-419\) cannot be decoded"):
        load_pusht(tmp_path / "pusht3.zarr", obs_type="image")


# --- replay buffer ----------------------------------------------------------------------------------

def test_zarr_round_trip_and_atomic_overwrite(tmp_path):
    buffer = _toy_buffer()
    path = buffer.to_zarr(tmp_path / "toy.zarr")
    ReplayBuffer.from_episodes([{"x": np.zeros((2, 1)), "action": np.zeros((2, 1))}]).to_zarr(path)  # overwrite
    path = buffer.to_zarr(path)
    loaded = ReplayBuffer.from_zarr(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.zarr"]  # no temp or backup store left behind
    np.testing.assert_array_equal(loaded.episode_ends, [3, 8])
    np.testing.assert_array_equal(loaded.data["x"], buffer.data["x"])
    assert list(ReplayBuffer.from_zarr(path, keys=["x"]).data) == ["x"]


def test_from_episodes_concatenates_and_checks():
    buffer = ReplayBuffer.from_episodes([{"x": np.zeros((3, 1)), "a": np.ones(3)}, {"x": np.ones((5, 1)), "a": np.ones(5)}])
    assert buffer.n_episodes == 2 and len(buffer) == 8 and buffer.episode_slice(1) == slice(3, 8)
    with pytest.raises(ValueError, match="episode 1 has keys"):
        ReplayBuffer.from_episodes([{"x": np.zeros(3)}, {"y": np.zeros(3)}])
    with pytest.raises(ValueError, match="episode 0 has arrays of different lengths"):
        ReplayBuffer.from_episodes([{"x": np.zeros(3), "a": np.zeros(4)}])
    with pytest.raises(ValueError, match="at least one episode"):
        ReplayBuffer.from_episodes([])


def _store(path: Path, data: dict, ends=None) -> Path:
    root = zarr.open_group(str(path), mode="w")
    for key, value in data.items():
        root.create_dataset(f"data/{key}", data=value)
    if ends is not None:
        root.create_dataset("meta/episode_ends", data=np.asarray(ends))
    return path


def test_from_zarr_errors_name_the_path_the_problem_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.zarr does not exist; check the task's dataset\.path"):
        ReplayBuffer.from_zarr(tmp_path / "nothing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match=r"empty\.zarr is not a zarr store .*ReplayBuffer\.to_zarr"):
        ReplayBuffer.from_zarr(tmp_path / "empty.zarr")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")
    with pytest.raises(ValueError, match=r"bare\.zarr is not a replay buffer: it has nothing, but needs data/<key> arrays and meta/episode_ends"):
        ReplayBuffer.from_zarr(tmp_path / "bare.zarr")
    _store(tmp_path / "noends.zarr", {"x": np.zeros(4)})
    with pytest.raises(ValueError, match=r"noends\.zarr is not a replay buffer: it has \['data'\]"):
        ReplayBuffer.from_zarr(tmp_path / "noends.zarr")
    _store(tmp_path / "short.zarr", {"x": np.zeros(4)}, [2, 5])
    with pytest.raises(ValueError, match=r"short\.zarr is inconsistent: data/x has 4 steps but meta/episode_ends ends at 5"):
        ReplayBuffer.from_zarr(tmp_path / "short.zarr")
    _store(tmp_path / "order.zarr", {"x": np.zeros(4)}, [3, 3, 4])
    with pytest.raises(ValueError, match=r"order\.zarr is inconsistent: .*strictly increasing and positive, but entry 1 is 3"):
        ReplayBuffer.from_zarr(tmp_path / "order.zarr")
    _store(tmp_path / "noends2.zarr", {"x": np.zeros(4)}, np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match=r"noends2\.zarr is inconsistent: meta/episode_ends must be a non-empty"):
        ReplayBuffer.from_zarr(tmp_path / "noends2.zarr")
    _store(tmp_path / "keys.zarr", {"x": np.zeros(4)}, [4])
    with pytest.raises(ValueError, match=r"keys\.zarr has no data/img; it has \['x'\]"):
        ReplayBuffer.from_zarr(tmp_path / "keys.zarr", keys=["img"])


def _pusht_copy(tmp_path: Path) -> Path:
    """The real Push-T store without its images (the low-dim arrays and episode ends), file by file."""
    copy = tmp_path / "pusht.zarr"
    shutil.copytree(REPO / PUSHT, copy, ignore=lambda folder, names: ["img"] if Path(folder).name == "data" else [])
    return copy


def test_a_deleted_zarr_chunk_is_refused_not_read_as_zeros(tmp_path):
    copy = _pusht_copy(tmp_path)
    (copy / "data/action/5.0").unlink()
    with pytest.raises(ValueError, match=r"pusht\.zarr is incomplete: data/action has 159 of its 160 chunks; "
                                         r"chunk data/action/5\.0 \(steps 805-965\) is missing, and zarr would read it as zeros"):
        load_pusht(copy)


def test_a_truncated_zarr_chunk_names_the_store_and_chunk(tmp_path):
    copy = _pusht_copy(tmp_path)
    chunk = copy / "data/state/3.0"
    chunk.write_bytes(chunk.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"pusht\.zarr is damaged: chunk data/state/3\.0 \(steps 483-643\) cannot be "
                                         r"decoded \(error during blosc decompression"):
        load_pusht(copy)
