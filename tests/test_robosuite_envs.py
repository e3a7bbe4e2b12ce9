"""robosuite Lift / Can / ToolHang envs: documented spaces, seeding, state round trips, action conventions."""
import numpy as np
import pytest

from drift_policy.envs.robosuite_tasks import ENV_NAMES, RobosuiteEnv, env_args, make_robosuite_env, rot6d_to_rotvec, rotvec_to_rot6d
from drift_policy.tasks import load_task

LOW_DIM = {"object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"}
OBJECT_DIMS = {"lift": 10, "can": 14, "tool_hang": 44}


@pytest.mark.parametrize("task", sorted(ENV_NAMES))
def test_env_resets_and_steps_with_documented_spaces(task):
    env = load_task(task).make_env()  # absolute actions, truncated at the task's max_steps
    obs, info = env.reset(seed=3)
    assert env.max_steps == {"lift": 400, "can": 400, "tool_hang": 700}[task] == load_task(task).max_steps
    assert set(obs) == LOW_DIM and obs["object"].shape == (OBJECT_DIMS[task],)
    assert all(v.dtype == np.float32 for v in obs.values()) and env.observation_space.contains(obs)
    assert env.action_space.shape == (10,) and info == {"is_success": False}
    assert np.array_equal(env.reset(seed=3)[0]["object"], obs["object"])  # seeds fix the scene
    assert not np.array_equal(env.reset(seed=4)[0]["object"], obs["object"])
    env.close()


def test_absolute_target_of_a_zero_delta_holds_the_pose():
    """The delta -> absolute conversion of "stay" is the current pose, and the absolute env holds it."""
    delta_env = RobosuiteEnv(env_args("lift"), abs_action=False)
    abs_env = make_robosuite_env("lift", abs_action=True)
    obs, _ = delta_env.reset(seed=0)
    assert delta_env.action_space.shape == (7,)
    target = delta_env.absolute_actions(delta_env.get_state()[None], np.array([[0, 0, 0, 0, 0, 0, -1.0]]))[0]
    np.testing.assert_allclose(target[:3], obs["robot0_eef_pos"], atol=1e-5)
    start, _ = abs_env.reset(options={"state": delta_env.get_state()})
    for _ in range(10):
        moved, reward, terminated, truncated, info = abs_env.step(target)
    assert np.linalg.norm(moved["robot0_eef_pos"] - start["robot0_eef_pos"]) < 0.005
    assert (reward, terminated, truncated, info["is_success"]) == (0.0, False, False, False)


def test_state_round_trip_and_lift_success_check():
    env = RobosuiteEnv(env_args("lift"), abs_action=False)
    env.reset(seed=1)
    state = env.get_state()
    for _ in range(3):
        env.step(np.array([0.5, 0, 0, 0, 0, 0, -1.0]))
    env.set_state(state)
    np.testing.assert_allclose(env.get_state(), state)
    cube = env.env.sim.model.get_joint_qpos_addr(env.env.cube.joints[0])[0]
    state[1 + cube + 2] += 0.1  # raise the cube 10 cm: the task's own check now says success
    obs = env.reset(options={"state": state})[0]
    assert env.is_success() and obs["object"][2] > 0.9


def test_images_are_uint8_84x84_from_two_cameras():
    env = make_robosuite_env("lift", image=True)
    obs, _ = env.reset(seed=0)
    assert set(obs) == LOW_DIM | {"agentview_image", "robot0_eye_in_hand_image"}
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        assert obs[key].shape == (84, 84, 3) and obs[key].dtype == np.uint8 and obs[key].std() > 5
    assert env.observation_space.contains(obs)
    env.close()


def test_rot6d_round_trip_and_bad_input():
    rotvecs = np.random.default_rng(0).uniform(-1.5, 1.5, (50, 3))
    np.testing.assert_allclose(rot6d_to_rotvec(rotvec_to_rot6d(rotvecs)), rotvecs, atol=1e-9)
    with pytest.raises(ValueError, match="unknown robosuite task 'stack'"):
        make_robosuite_env("stack")
    env = make_robosuite_env("lift")
    with pytest.raises(ValueError, match=r"takes \(10,\)"):
        env.step(np.zeros(7))
