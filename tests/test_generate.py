"""drift_policy.demos.generate with a pool of workers: the same file as in one process, and clear errors."""
import functools

import h5py
import numpy as np
import pytest

import drift_policy.demos.generate as gen


def _demos(path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """The file's expert attrs but its wall time, and every demo's seed attr and arrays."""
    with h5py.File(path) as f:
        attrs = {k: v for k, v in f.attrs.items() if k != "expert_wall_time_s"}
        demos = {}
        for name, demo in f["data"].items():
            arrays = {"seed": demo.attrs["seed"]}
            demo.visititems(lambda key, item: arrays.update({key: item[()]}) if isinstance(item, h5py.Dataset) else None)
            demos[name] = arrays
    return attrs, demos


def test_two_workers_write_the_file_one_does(tmp_path):
    """BlockPush, the cheapest expert: results are taken in seed order, so the demos, their seeds and the attempt
    count match exactly (each episode is deterministic per seed; a fresh env per episode, in whichever process)."""
    serial, pooled = tmp_path / "serial.hdf5", tmp_path / "pooled.hdf5"
    one = gen.generate("block_push", serial, episodes=3, workers=1)
    two = gen.generate("block_push", pooled, episodes=3, workers=2)  # the 4th attempt, in flight at the end, is dropped
    assert {k: v for k, v in one.items() if k != "wall_time_s"} == {k: v for k, v in two.items() if k != "wall_time_s"}
    (attrs_one, demos_one), (attrs_two, demos_two) = _demos(serial), _demos(pooled)
    assert attrs_one == attrs_two and attrs_one["expert_attempts"] == one["attempts"]
    assert list(demos_one) == list(demos_two) and len(demos_one) == 3
    for name, arrays in demos_one.items():
        assert arrays.keys() == demos_two[name].keys() and "actions" in arrays
        for key, value in arrays.items():
            np.testing.assert_array_equal(demos_two[name][key], value, err_msg=f"{name}/{key}")


def test_a_failing_worker_names_its_seed():
    attempt = functools.partial(gen._attempt, "drift_policy.envs.experts.missing", "block_push", False)
    with pytest.raises(RuntimeError, match=r"the block_push expert failed on scene seed 5: ModuleNotFoundError"):
        list(gen._pooled(attempt, [5], workers=1))


def test_workers_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gen.main(["--task", "block_push", "--episodes", "1", "--out", str(tmp_path / "x.hdf5"), "--workers", "0"])
    assert "argument --workers: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        gen.generate("block_push", tmp_path / "x.hdf5", episodes=1, workers=0)
    assert not list(tmp_path.iterdir())
