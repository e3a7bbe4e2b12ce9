"""eval_policy.py's protocol: standard errors, DP's test-seed subset, devices, and its input errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drift_policy.eval import evaluate, summary_table

ROOT = Path(__file__).resolve().parents[1]


def test_report_has_standard_errors_and_the_dp_test_seed_subset(tmp_path, save_tiny_policy):
    result = evaluate(save_tiny_policy(tmp_path / "policy"), rollouts=4, seed_start=100048, n_envs=2, videos=0, out_dir=tmp_path / "eval")
    assert [e["seed"] for e in result["episodes"]] == [100048, 100049, 100050, 100051]
    assert result["mean_score_se"] >= 0 and result["success_rate_se"] >= 0
    subset = result["dp_test_seeds"]
    assert subset["seeds"] == [100048, 100049] and subset["n"] == 2
    assert subset["mean_score"] == pytest.approx((result["episodes"][0]["max_reward"] + result["episodes"][1]["max_reward"]) / 2)
    assert Path(result["policy"]).is_absolute() and result["device"] == "cpu" and "execution" not in result
    table = summary_table(result)
    assert "±" in table and "DP test seeds 100048-100049" in table


def test_a_policy_without_a_task_config_is_refused_with_the_fix(tmp_path, save_tiny_policy):
    policy_dir = save_tiny_policy(tmp_path / "policy", with_task=False)
    with pytest.raises(ValueError, match="has no task config to build an env from.*pass task="):
        evaluate(policy_dir, rollouts=1, seed_start=100000, n_envs=1, videos=0, out_dir=tmp_path / "eval")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, save_tiny_policy):
    with pytest.raises(ValueError, match="torch sees no CUDA device here; use --device cpu"):
        evaluate(save_tiny_policy(tmp_path / "policy"), 1, 100000, 1, 0, tmp_path / "eval", device="cuda")


@pytest.mark.parametrize("flag", ["--n-envs", "--rollouts"])
def test_non_positive_counts_are_refused_by_the_cli(flag):
    result = subprocess.run([sys.executable, "eval_policy.py", flag, "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"argument {flag}: must be >= 1, got 0" in result.stderr


def test_inference_settings_are_overridden_at_load_and_recorded(tmp_path, save_tiny_policy):
    from drift_policy.policies import Policy

    policy_dir = save_tiny_policy(tmp_path / "policy")
    obs = {"keypoint": torch.rand(3, 2, 18), "agent_pos": torch.rand(3, 2, 2)}
    noisy = Policy.from_pretrained(policy_dir)
    assert not torch.allclose(noisy.predict_action(obs, generator=torch.Generator().manual_seed(1)),
                              noisy.predict_action(obs, generator=torch.Generator().manual_seed(2)))
    centre = Policy.from_pretrained(policy_dir, sample_noise_scale=0.0)  # the truncation trick at its limit
    assert centre.config.sample_noise_scale == 0.0
    assert torch.equal(centre.predict_action(obs, generator=torch.Generator().manual_seed(1)),
                       centre.predict_action(obs, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match=r"with the overrides \{'sampler': 'ddim'\} does not describe a valid drift policy: .* no setting\(s\) \['sampler'\]"):
        Policy.from_pretrained(policy_dir, sampler="ddim")
    with pytest.raises(ValueError, match="with the overrides .* sample_noise_scale must be >= 0"):
        Policy.from_pretrained(policy_dir, sample_noise_scale=-1)
    result = evaluate(policy_dir, 1, 100000, 1, 0, tmp_path / "eval", overrides={"sample_noise_scale": 0.5})
    assert result["overrides"] == {"sample_noise_scale": 0.5} and "sample_noise_scale=0.5" in summary_table(result)


def test_the_cli_reads_settings_as_yaml_and_refuses_a_malformed_one():
    from drift_policy.cli import setting

    assert setting("sample_noise_scale=0.5") == ("sample_noise_scale", 0.5)
    assert setting("sampler=ddim") == ("sampler", "ddim")
    result = subprocess.run([sys.executable, "eval_policy.py", "--set", "sampler"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "must be KEY=VALUE" in result.stderr
