"""The robomimic hdf5 reader on a small expert-generated file and on a hand-made file in robomimic's own layout."""
import json

import h5py
import numpy as np
import pytest

from drift_policy.demos.generate import generate
from drift_policy.data.robomimic_hdf5 import load_robomimic, make_env_from_dataset, read_env_args
from drift_policy.envs.robosuite_tasks import RobosuiteEnv, env_args

LOW_DIM = ["object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
# env_args as robomimic's v0.1 datasets store them (robosuite 1.2, a part controller with control_delta)
LEGACY_ENV_ARGS = {
    "env_name": "Lift", "type": 1,
    "env_kwargs": {
        "has_renderer": False, "has_offscreen_renderer": False, "ignore_done": True, "use_object_obs": True,
        "use_camera_obs": False, "control_freq": 20, "robots": ["Panda"], "camera_depths": False,
        "camera_heights": 84, "camera_widths": 84, "reward_shaping": False,
        "controller_configs": {
            "type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
            "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150, "damping_ratio": 1,
            "impedance_mode": "fixed", "kp_limits": [0, 300], "damping_ratio_limits": [0, 10],
            "position_limits": None, "orientation_limits": None, "uncouple_pos_ori": True, "control_delta": True,
            "interpolation": None, "ramp_ratio": 0.2,
        },
    },
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "lift.hdf5"
    stats = generate("lift", path, episodes=2, seed=0, workers=1)
    return path, stats


def test_generated_file_loads_with_its_layout(generated):
    path, stats = generated
    buffer = load_robomimic(path, obs_keys=LOW_DIM)
    with h5py.File(path) as f:
        lengths = [f[f"data/demo_{i}"].attrs["num_samples"] for i in range(2)]
        assert f.attrs["expert_success_rate"] == stats["success_rate"] == 1.0
        assert f["data"].attrs["total"] == sum(lengths)
        np.testing.assert_array_equal(buffer.data["action"], np.concatenate([f[f"data/demo_{i}/actions"] for i in range(2)]))
    assert list(buffer.episode_ends) == list(np.cumsum(lengths))
    assert set(buffer.data) == {*LOW_DIM, "action"} and buffer.data["action"].shape == (sum(lengths), 7)
    assert np.abs(buffer.data["action"]).max() <= 1.0  # robosuite's delta actions
    assert read_env_args(path)["env_name"] == "Lift"


def test_absolute_actions_replay_the_demonstration(generated):
    """Converted absolute targets, replayed open loop from the first state, retrace the demo and succeed."""
    path, _ = generated
    buffer = load_robomimic(path, obs_keys=LOW_DIM, abs_action=True)
    assert buffer.data["action"].shape[1] == 10
    env = make_env_from_dataset(path, abs_action=True)
    with h5py.File(path) as f:
        states, eef = f["data/demo_0/states"][:], f["data/demo_0/obs/robot0_eef_pos"][:]
    obs, _ = env.reset(options={"state": states[0]})
    actions = buffer.data["action"][buffer.episode_slice(0)]
    deviation, success = 0.0, False
    for t, action in enumerate(actions):
        deviation = max(deviation, np.linalg.norm(obs["robot0_eef_pos"] - eef[t]))
        obs, _, terminated, _, _ = env.step(action)
        success = success or terminated
    # The demo stops at its first successful step, so an open-loop replay that trails by a step or two (it did on
    # CI's CPU) finishes the lift only while holding the last target.
    for _ in range(10):
        if success:
            break
        obs, _, success, _, _ = env.step(actions[-1])
    assert deviation < 0.005, deviation
    assert success


@pytest.fixture()
def handmade(tmp_path):
    """demo_0, demo_2, demo_10 of lengths 3, 4, 5: real Lift states, delta actions, low-dim and image obs."""
    env = RobosuiteEnv(LEGACY_ENV_ARGS)
    rng = np.random.default_rng(0)
    path = tmp_path / "robomimic.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps(LEGACY_ENV_ARGS)
        for index, length in [(0, 3), (2, 4), (10, 5)]:
            obs, _ = env.reset(seed=index)
            demo = f.create_group(f"data/demo_{index}")
            demo.attrs["num_samples"] = length
            states = [env.get_state()]
            actions = rng.uniform(-1, 1, (length, 7))
            for action in actions[:-1]:
                env.step(action)
                states.append(env.get_state())
            demo["states"], demo["actions"] = np.stack(states), actions
            for key in LOW_DIM:
                demo[f"obs/{key}"] = np.repeat(obs[key][None], length, axis=0).astype(np.float64)
            demo["obs/agentview_image"] = np.full((length, 84, 84, 3), index, dtype=np.uint8)
    return path


def test_handmade_robomimic_file(handmade):
    buffer = load_robomimic(handmade)
    assert set(buffer.data) == {*LOW_DIM, "agentview_image", "action"}
    assert list(buffer.episode_ends) == [3, 7, 12]  # demo_10 comes after demo_2
    assert buffer.data["agentview_image"].dtype == np.uint8 and buffer.data["agentview_image"][-1].max() == 10
    assert buffer.data["object"].dtype == np.float32


def test_handmade_delta_actions_convert_through_the_legacy_controller(handmade):
    env = make_env_from_dataset(handmade)
    assert env.action_space.shape == (7,) and not env.abs_action
    absolute = load_robomimic(handmade, obs_keys=["robot0_eef_pos"], abs_action=True)
    delta = load_robomimic(handmade, obs_keys=["robot0_eef_pos"])
    # world-frame position target = achieved position + 5 cm per unit of delta action
    with h5py.File(handmade) as f:
        env.reset(options={"state": f["data/demo_0/states"][1]})
    eef = env.env.sim.data.site_xpos[env.env.robots[0].eef_site_id["right"]]
    np.testing.assert_allclose(absolute.data["action"][1, :3], eef + 0.05 * delta.data["action"][1, :3], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(absolute.data["action"][:, 3:6], axis=1), 1.0, atol=1e-6)
    assert np.array_equal(absolute.data["action"][:, 9], delta.data["action"][:, 6])


def test_reader_errors_name_the_problem(handmade, tmp_path):
    with pytest.raises(FileNotFoundError, match="drift_policy.demos.generate"):
        load_robomimic(tmp_path / "missing.hdf5")
    with pytest.raises(ValueError, match="its observation keys are"):
        load_robomimic(handmade, obs_keys=["robot0_joint_pos"])
    with h5py.File(handmade, "a") as f:
        del f["data/demo_0/states"]
        f["data/demo_0/states"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="another simulator model"):
        load_robomimic(handmade, abs_action=True)


def test_every_demo_is_checked_for_its_keys_and_lengths(handmade):
    with h5py.File(handmade, "a") as f:
        del f["data/demo_10/obs/object"]
    with pytest.raises(ValueError, match=r"robomimic\.hdf5: data/demo_10 has no obs/object; its observation keys are"):
        load_robomimic(handmade)
    assert load_robomimic(handmade, obs_keys=["robot0_eef_pos"]).n_episodes == 3  # the keys asked for are all there
    with h5py.File(handmade, "a") as f:
        del f["data/demo_2/obs/object"]
        f["data/demo_2/obs/object"] = f["data/demo_0/obs/object"][:]  # 3 rows for 4 actions: shifted by a step
    with pytest.raises(ValueError, match=r"data/demo_2/obs/object has 3 steps but data/demo_2/actions has 4"):
        load_robomimic(handmade, obs_keys=["object"])
    with h5py.File(handmade, "a") as f:
        del f["data/demo_2/actions"]
    with pytest.raises(ValueError, match=r"data/demo_2 needs `actions` and an `obs` group; it has \['obs', 'states'\]"):
        load_robomimic(handmade, obs_keys=["robot0_eef_pos"])
