"""Shared helper: the real hydra configs of image_gen, composed with toy-scale overrides."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "image_gen" / "configs")
TOY = [
    "model=tiny", "model.width=32", "model.depth=1", "model.heads=2", "data=digits", "data.size=8",
    "model.input_size=8", "feature.encoder_path=null", "batch.n_classes=4", "batch.n_gen=4", "batch.n_pos=4",
    "batch.n_unc=4", "queue.push_per_step=64", "optim.warmup_steps=2", "train.num_workers=0", "train.log_every=1",
    "train.checkpoint_every=1",
]


@pytest.fixture
def toy_config(tmp_path):
    """compose("train", TOY + extra) with run_dir in a temp dir."""
    def make(*extra: str, run: str = "run"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return compose("train", overrides=TOY + [f"run_dir={tmp_path / run}", *extra])
    return make


@pytest.fixture
def toy_overrides() -> list[str]:
    """The toy-scale overrides, for a run launched as a command."""
    return list(TOY)
