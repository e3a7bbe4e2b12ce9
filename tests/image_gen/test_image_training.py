"""Training pieces: queues, guidance weights, one toy run end to end, and exact resume after an interrupt."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from drift_policy.training.checkpoint import load_checkpoint
from image_gen.guidance import sample_alpha, unconditional_weight
from image_gen.image_data import prepare_dataset
from image_gen.models.generator import DriftDiT
from image_gen.queues import SampleQueues
from image_gen.trainer import ema_multi_avg_fn, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def test_class_queue_keeps_the_newest_and_samples_without_replacement():
    q = SampleQueues(num_classes=3, shape=(1,), per_class=4, unconditional=5)
    q.push(torch.arange(10.0)[:, None], torch.tensor([0] * 6 + [1] * 4))
    # class 0 received 0..5 and keeps the newest four; the unconditional queue keeps the newest five
    assert sorted(q.per_class.data[0, :, 0].tolist()) == [2, 3, 4, 5]
    assert sorted(q.unconditional.data[0, :, 0].tolist()) == [5, 6, 7, 8, 9]
    draw = q.positives(torch.tensor([0, 1]), 4)
    assert sorted(draw[0, :, 0].tolist()) == [2, 3, 4, 5] and sorted(draw[1, :, 0].tolist()) == [6, 7, 8, 9]
    assert q.ready_classes(4).tolist() == [0, 1]  # class 2 has nothing yet
    unc = q.unconditional_negatives(n_groups=3, n=5)
    assert all(sorted(u[:, 0].tolist()) == [5, 6, 7, 8, 9] for u in unc)
    with pytest.raises(ValueError, match="fewer than the 5 requested"):
        q.positives(torch.tensor([1]), 5)
    with pytest.raises(ValueError, match="only 2 classes"):
        q.sample_classes(3, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        q.push(torch.zeros(1, 1), torch.tensor([3]))


def test_queue_state_round_trips():
    q, r = SampleQueues(2, (2,), 3, 4), SampleQueues(2, (2,), 3, 4)
    q.push(torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1]))
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.per_class.data, q.per_class.data) and torch.equal(r.per_class.count, q.per_class.count)


def test_alpha_distribution_matches_the_power_law():
    gen = torch.Generator().manual_seed(0)
    a = sample_alpha(200_000, alpha_max=4.0, power=3.0, p_one=0.25, generator=gen).double()
    assert a.min() >= 1 and a.max() <= 4
    assert abs((a == 1).double().mean().item() - 0.25) < 0.01
    tail = a[a > 1]
    # E[a] for density 2 a^-3 / (1 - 4^-2) on [1, 4]: (2 (1 - 1/4)) / (1 - 1/16) = 1.6
    assert abs(tail.mean().item() - 1.6) < 0.01
    with pytest.raises(ValueError, match="power > 1"):
        sample_alpha(3, power=1.0)


def test_guidance_weights_make_the_unconditional_share_of_negatives_one_minus_one_over_alpha():
    alpha = torch.tensor([1.0, 2.0, 4.0])
    w = unconditional_weight(alpha, n_gen=64, n_unc=32)
    assert torch.allclose(w, torch.tensor([0.0, 63 / 32, 3 * 63 / 32]))
    share = w * 32 / (w * 32 + 63)  # unconditional weight over all negative weight (self pair masked)
    assert torch.allclose(share, 1 - 1 / alpha)
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        unconditional_weight(torch.tensor([0.5]), 4, 4)


@pytest.mark.parametrize("power", [None, 0.75])
def test_ema_warm_up_follows_its_decay_formula(power):
    """Fixed: every update keeps 0.995 of the average; warmed up: min(0.995, 1 - (1 + n)^-power) after n updates."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.995, power))
    expected = 0.0
    for n, value in enumerate([0.0, 1.0, 2.0, 3.0]):  # the first update copies the weight
        model.weight.data.fill_(value)
        ema.update_parameters(model)
        decay = 0.995 if power is None else min(0.995, 1 - (1 + n) ** -power)
        expected = value if n == 0 else decay * expected + (1 - decay) * value
        assert ema.module.weight.item() == pytest.approx(expected, abs=1e-6)
    assert expected > 1.0 if power else expected < 0.05  # the warm-up follows the weights, the fixed decay lags


def test_toy_run_writes_generator_logs_and_checkpoint(toy_config):
    cfg = toy_config("train.steps=3")
    out = train(cfg)
    model = DriftDiT.from_pretrained(out)
    assert model.sample(torch.tensor([0, 9]), alpha=2.0).shape == (2, 1, 8, 8)
    rows = [json.loads(line) for line in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss/drift"])) for r in rows)
    assert (out.parent / "curves.png").exists() and load_checkpoint(out.parent)["step"] == 3


def test_resume_after_interrupt_replays_the_uninterrupted_run(toy_config):
    straight = load_checkpoint(train(toy_config("train.steps=4", run="straight")).parent)
    train(toy_config("train.steps=2", run="resumed"))  # "killed" after step 2's checkpoint
    resumed = load_checkpoint(train(toy_config("train.steps=4", run="resumed")).parent)
    assert resumed["step"] == straight["step"] == 4 and resumed["pushed"] == straight["pushed"]
    for k, v in straight["generator"].items():
        assert torch.equal(v, resumed["generator"][k]), k
    for k, v in straight["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k


def _stop_after(command: list[str], run_dir: Path, step: int) -> int:
    """Start the run, SIGTERM it once it has logged a step after `step`; the step it says it stopped at."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        rows = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(row)["step"] > step for row in rows if row.endswith("}")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    stopped = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM at step ")]
    assert proc.returncode == 0 and stopped and "run the same command to resume" in stopped[0], out[-2000:]
    return int(stopped[0].split(" at step ")[1].split(":")[0])


def test_sigterm_checkpoints_the_step_reached_and_the_same_command_goes_on(tmp_path, toy_overrides):
    """A killed image run loses nothing: the stop saves the step it reached, not the last periodic checkpoint's."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "image_gen/train.py", *toy_overrides, f"run_dir={run_dir}", "train.steps=100000",
               "train.checkpoint_every=1000", "train.eval_every=1000", f"hydra.run.dir={tmp_path / 'hydra'}"]
    first = _stop_after(command, run_dir, 0)
    assert 0 < first < 1000 and load_checkpoint(run_dir)["step"] == first
    second = _stop_after(command, run_dir, first)
    assert second > first and load_checkpoint(run_dir)["step"] == second


def test_a_missing_latent_cache_without_its_source_names_the_command_that_builds_it(tmp_path):
    data = {"name": "latents", "cache_dir": str(tmp_path / "cache"), "image_root": None, "vae_path": None, "image_size": 256}
    with pytest.raises(FileNotFoundError, match=r"no latent cache in .*cache and no source to build it from\. .*"
                                                r"python image_gen/train\.py data\.image_root=<.*> data\.vae_path=<"):
        prepare_dataset(data)
