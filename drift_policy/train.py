"""Train a policy: `python train_policy.py task=push_t policy=drift`, or from any directory and any install
`python -m drift_policy.train ...` / `drift-train ...` (hydra overrides for any config key).

The run lives in outputs/runs/<task>_<policy> under the cwd; running the same command again resumes it.
"""
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from drift_policy.atomic import DiskFullError
from drift_policy.training.checkpoint import CHECKPOINT
from drift_policy.training.stopping import TrainingStopped
from drift_policy.training.trainer import train

# What a run writes before its first checkpoint (hydra's .hydra included); a folder holding only these is ours.
RUN_FILES = {".hydra", "config.yaml", "metrics.jsonl", "metrics.jsonl.tmp", "tensorboard", "checkpoints", "curves.png"}


@hydra.main(config_path="pkg://drift_policy.configs", config_name="train_policy", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        policy_dir = train(cfg, run_dir)
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: the checkpoint is written, the same command resumes
        print(stopped)
        sys.exit(0)
    except DiskFullError as full:  # the previous checkpoint and policy are intact
        discard_unstarted_run(run_dir)
        sys.exit(f"error: {full.strerror}")
    except BaseException:
        discard_unstarted_run(run_dir)
        raise
    print(f"Saved policy to {policy_dir}\nEvaluate it with: python eval_policy.py --checkpoint {policy_dir}")


def discard_unstarted_run(run_dir: Path) -> None:
    """Remove the folder of a run that failed before its first checkpoint, so a failed start leaves nothing
    behind; a folder with a checkpoint, or with anything a run does not write, is kept."""
    if run_dir.is_dir() and not (run_dir / CHECKPOINT).exists() and {p.name for p in run_dir.iterdir()} <= RUN_FILES:
        shutil.rmtree(run_dir)


if __name__ == "__main__":
    main()
