"""Every env family end to end, videos included: demos -> a tiny policy trained for a few steps -> 2 evaluation
episodes in 2 worker processes with 1 video, whose mp4 frames have the env's render shape (the Lift row of the table once died here),
and the filmstrip PNG beside it, tiled from frames of that shape."""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from drift_policy.training.trainer import train
from drift_policy.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
TINY = ["policy.unet.down_dims=[8,16,32]", "train.batch_size=4", "train.num_steps=2", "train.warmup_steps=1",
        "train.log_every=1", "train.checkpoint_every=2", "train.eval_every=0", "train.final_eval=false", "num_threads=1"]
# task -> (overrides, render shape of a video frame); max_steps 16 keeps the episodes to two chunks
FAMILIES = {
    "push_t": ([], (256, 256, 3)),
    "push_t_image": ([], (256, 256, 3)),
    "lift": ([], (256, 256, 3)),
    "lift_image": ([], (256, 256, 3)),
    "block_push": ([], None),
    "kitchen": ([], None),
}


@pytest.mark.parametrize("task", list(FAMILIES))
def test_tiny_policy_two_episodes_and_one_video(task, tmp_path):
    overrides, shape = FAMILIES[task]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("train_policy", overrides=[f"task={task}", *TINY, *overrides, "task.max_steps=16"])
    if "expert" in cfg.task:  # two fresh demonstrations from the task's scripted expert
        cfg.task.dataset.path = str(tmp_path / f"{task}.hdf5")
        cfg.task.expert.demos = 2
        cfg.task.val_ratio = 0.0
    policy_dir = train(cfg, tmp_path / "run")
    result = evaluate(policy_dir, rollouts=2, seed_start=100000, n_envs=2, videos=1, out_dir=tmp_path / "eval")
    assert [e["seed"] for e in result["episodes"]] == [100000, 100001]
    assert len(result["videos"]) == 1
    frames = np.stack(imageio.mimread(result["videos"][0], memtest=False))  # through imageio-ffmpeg
    steps = result["episodes"][0]["steps"]
    assert len(frames) == steps + 1, f"{len(frames)} frames for {steps} steps (one after reset, one per step)"
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.shape[1] >= 64 and frames.shape[2] >= 64
    if shape is not None:
        assert frames.shape[1:] == shape
    assert frames.std() > 1.0, "the video is blank"
    assert result["filmstrips"] == [str(Path(result["videos"][0]).with_suffix(".png"))]
    k, (_, height, width, _) = min(8, len(frames)), frames.shape
    assert imageio.imread(result["filmstrips"][0]).shape == (height, k * width + (k - 1) * 2, 3)
