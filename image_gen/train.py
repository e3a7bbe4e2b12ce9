"""Train a one-step drifting image generator (single process, or torchrun for multi-GPU / multi-node).

    python image_gen/train.py model=tiny data=digits feature.encoder_path=null train.steps=100   # CPU toy
    torchrun --nproc_per_node=8 image_gen/train.py                                             # B/2 latents
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from drift_policy.training.stopping import TrainingStopped
from image_gen import distributed
from image_gen.trainer import train


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: the checkpoint is written, the same command resumes
        print(stopped)
    distributed.cleanup()


if __name__ == "__main__":
    main()
