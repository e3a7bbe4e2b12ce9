"""Exported policies (ONNX, run by onnxruntime) against the torch policies they came from, on real Push-T data."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hydra import compose, initialize_config_dir

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from drift_policy.data.pusht import load_pusht  # noqa: E402
from drift_policy.export import OnnxPolicy, export_onnx  # noqa: E402
from drift_policy.policies import Policy  # noqa: E402
from drift_policy.training.trainer import build_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PUSHT = ROOT / "data/pusht/pusht_cchi_v7_replay.zarr"
SMALL_UNET = "policy.unet.down_dims=[16,32,64]"
TINY_ENCODER = ["task.obs_encoder.layers=[1,1,1,1]", "task.obs_encoder.num_keypoints=8", "task.obs_encoder.feature_dim=16"]
DIFFUSION = {"ddim-10": ["policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=10"],
             "ddpm-4": ["policy=diffusion", "policy.sampler=ddpm", "policy.num_inference_steps=4"]}


@pytest.fixture(scope="module")
def pusht():
    """Real Push-T low-dim data, and the first 5 camera frames with the agent positions shown in them."""
    buffer = load_pusht(PUSHT)
    images = np.rint(zarr.open(str(PUSHT), mode="r")["data/img"][:5]).astype(np.uint8)
    return buffer, images


def _policy(buffer, *overrides: str) -> Policy:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("train_policy", overrides=[SMALL_UNET, *overrides])
    torch.manual_seed(0)
    policy = build_policy(cfg)
    policy.fit_normalizer({k: buffer.data[k] for k in [*policy.obs_meta, "action"] if k in buffer.data})
    return policy.eval()


def _obs(buffer, images, keys, batch: int = 3) -> dict[str, np.ndarray]:
    """[B, To=2, ...] histories of consecutive real steps."""
    source = {**buffer.data, "image": images}
    return {k: np.stack([source[k][i : i + 2] for i in range(batch)]) for k in keys}


def _same_noise(policy: Policy, runner: OnnxPolicy, batch: int, seed: int) -> tuple[torch.Generator, np.ndarray]:
    """A torch generator and the noise it will give the policy: the initial sample, then one per noisy DDPM step."""
    draw = torch.Generator().manual_seed(seed)
    noise = torch.stack([torch.randn(batch, policy.horizon, policy.action_dim, generator=draw) for _ in range(runner.n_noise)], 1)
    return torch.Generator().manual_seed(seed), noise.numpy()


def _assert_parity(policy: Policy, path: Path, obs: dict[str, np.ndarray]) -> OnnxPolicy:
    """The exported graph gives the torch policy's actions, within 1e-4 in normalised action units."""
    export_onnx(policy, path)
    onnx.checker.check_model(str(path))
    runner = OnnxPolicy.load(path, num_threads=1)
    batch = len(next(iter(obs.values())))
    for full_chunk in (False, True):
        generator, noise = _same_noise(policy, runner, batch, seed=7)
        expected = policy.predict_action(obs, full_chunk=full_chunk, generator=generator)
        actions = runner.predict_action(obs, full_chunk=full_chunk, noise=noise)
        assert actions.shape == expected.shape == (batch, policy.horizon if full_chunk else policy.n_action_steps, 2)
        norm = lambda a: policy.normalizer.normalize("action", a).numpy()  # noqa: E731
        np.testing.assert_allclose(norm(actions), norm(expected), atol=1e-4, rtol=0)
    return runner


def test_low_dim_drift_policy_export_matches_torch(pusht, tmp_path):
    buffer, _ = pusht
    policy = _policy(buffer, "policy.noise_std=0.5")  # the graph must apply noise_std itself
    obs = _obs(buffer, None, policy.obs_meta)
    runner = _assert_parity(policy, tmp_path / "drift.onnx", obs)
    interface = json.loads((tmp_path / "drift.json").read_text())
    assert interface["obs_keys"] == ["keypoint", "agent_pos"] and interface["noise_std"] == 0.5
    assert [(i["name"], i["shape"]) for i in interface["inputs"]] == [
        ("keypoint", ["batch", 2, 18]), ("agent_pos", ["batch", 2, 2]), ("noise", ["batch", 1, 16, 2])]
    assert interface["n_action_steps"] == 8 and interface["policy_type"] == "drift" and interface["opset"] >= 18
    # unbatched histories give [Ta, Da]; a seeded runner repeats itself and differs across seeds
    single = {k: v[0] for k, v in obs.items()}
    first = OnnxPolicy.load(tmp_path / "drift.onnx", seed=3).predict_action(single)
    assert first.shape == (8, 2)
    np.testing.assert_array_equal(first, OnnxPolicy.load(tmp_path / "drift.onnx", seed=3).predict_action(single))
    assert not np.allclose(first, runner.predict_action(single, generator=np.random.default_rng(4)))


@pytest.mark.parametrize("overrides", [[], ["policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=2"]], ids=["drift", "ddim-2"])
def test_mlp_backbone_policy_export_matches_torch(pusht, tmp_path, overrides):
    buffer, _ = pusht
    policy = _policy(buffer, *overrides, "+policy.backbone=mlp", "+policy.mlp.hidden_dim=64", "+policy.mlp.n_blocks=2")
    assert type(policy.model).__name__ == "ChunkMLP"
    _assert_parity(policy, tmp_path / "mlp.onnx", _obs(buffer, None, policy.obs_meta))


@pytest.mark.parametrize("frames", [[], ["+task.obs_encoder.rgb_steps=1"]], ids=["every-frame", "latest-frame"])
def test_image_policy_export_matches_torch(pusht, tmp_path, frames):
    buffer, images = pusht
    policy = _policy(buffer, "task=push_t_image", *TINY_ENCODER, *frames)
    assert policy.obs_encoder.rgb_keys == ["image"] and policy.obs_encoder.rgb_steps == (1 if frames else 2)
    _assert_parity(policy, tmp_path / "image.onnx", _obs(buffer, images, policy.obs_meta))


@pytest.mark.parametrize("sampler", DIFFUSION)
def test_diffusion_policy_export_matches_torch(pusht, tmp_path, sampler):
    buffer, _ = pusht
    policy = _policy(buffer, *DIFFUSION[sampler])
    runner = _assert_parity(policy, tmp_path / f"{sampler}.onnx", _obs(buffer, None, policy.obs_meta))
    # DDPM draws fresh noise in every step but the last (t = 0); DDIM is deterministic after the first sample
    assert runner.n_noise == (policy.num_inference_steps if sampler.startswith("ddpm") else 1)


def test_runner_refuses_bad_input_with_the_expected_shapes(pusht, tmp_path):
    buffer, _ = pusht
    policy = _policy(buffer)
    runner = OnnxPolicy.load(export_onnx(policy, tmp_path / "drift.onnx"))
    obs = _obs(buffer, None, policy.obs_meta)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['agent_pos'\]"):
        runner.predict_action({"keypoint": obs["keypoint"]})
    with pytest.raises(ValueError, match=r"obs\['keypoint'\] has shape \(3, 3, 18\); expected \(B, 2, 18\)"):
        runner.predict_action({**obs, "keypoint": np.zeros((3, 3, 18))})
    with pytest.raises(ValueError, match="NaN or infinite"):
        runner.predict_action({**obs, "agent_pos": np.full((3, 2, 2), 1e300)})
    with pytest.raises(ValueError, match=r"same batch size B >= 1 for every key, got \{'keypoint': 3, 'agent_pos': 2\}"):
        runner.predict_action({**obs, "agent_pos": obs["agent_pos"][:2]})
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 1, 16, 2\)"):
        runner.predict_action(obs, noise=np.zeros((1, 1, 16, 2)))
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3; pass one per batch row"):
        runner.predict_action(obs, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(policy, tmp_path / "drift.pt")
    (tmp_path / "drift.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no \['drift.json'\]"):
        OnnxPolicy.load(tmp_path / "drift.onnx")


def test_eval_policy_scores_an_exported_policy_like_the_torch_one(pusht, tmp_path, monkeypatch):
    """eval_policy.py --onnx runs the export with the torch policy's runner, seeds and metrics: the runner passes one
    torch generator per episode and the export draws row i's noise from it as torch does, so every episode's score
    matches the torch policy's (within the graph's float tolerance)."""
    from drift_policy import eval as eval_cli
    from drift_policy.envs.pusht import make_pusht_env
    from drift_policy.evaluation import evaluate

    buffer, _ = pusht
    policy = _policy(buffer, "task.max_steps=64")
    with torch.no_grad():
        policy.model.head[-1].weight.mul_(300.0)  # actions saturated functions of the noise: every score depends on it
    export_onnx(policy, tmp_path / "drift.onnx")
    torch_result = evaluate(policy.save_pretrained(tmp_path / "policy"), rollouts=4, seed_start=100000, n_envs=1, videos=0,
                            out_dir=tmp_path / "torch_eval")
    monkeypatch.setattr(sys, "argv", ["eval_policy.py", "--onnx", str(tmp_path / "drift.onnx"), "--rollouts", "4",
                                      "--n-envs", "1", "--videos", "0"])
    eval_cli.main()
    onnx_result = json.loads((tmp_path / "drift_eval" / "eval.json").read_text())  # the default output, beside the file
    assert [e["seed"] for e in onnx_result["episodes"]] == [e["seed"] for e in torch_result["episodes"]] == [100000, 100001, 100002, 100003]
    scores = [e["max_reward"] for e in torch_result["episodes"]]
    np.testing.assert_allclose([e["max_reward"] for e in onnx_result["episodes"]], scores, atol=1e-3, rtol=0)
    assert (onnx_result["policy_type"], onnx_result["nfe"], onnx_result["device"]) == ("drift", 1, "cpu, onnxruntime")
    env = make_pusht_env()
    initial = [min(1.0, env.reset(seed=s)[1]["coverage"] / 0.95) for s in range(100000, 100004)]
    assert not np.allclose(scores, initial, atol=1e-3)  # the policy moves the block: the comparison can fail
