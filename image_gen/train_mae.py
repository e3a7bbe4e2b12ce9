"""Pre-train the drift loss's feature encoder as a masked autoencoder (single process or torchrun).

    python image_gen/train_mae.py data=digits train.steps=500     # writes out_dir/encoder.{json,safetensors}
"""
from __future__ import annotations

from pathlib import Path

import hydra
import torch
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drift_policy.training.logging import RunLogger
from image_gen import distributed
from image_gen.image_data import ResumableSampler, prepare_dataset
from image_gen.models.encoder import MAE, ResNetEncoder


def train_mae(cfg: DictConfig) -> ResNetEncoder:
    """Train the MAE for cfg.train.steps and save its encoder to cfg.out_dir; returns the encoder."""
    rank, world, device = distributed.setup(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    data = prepare_dataset(cfg.data, rank)
    encoder = ResNetEncoder(in_channels=data[0][0].shape[0], width=cfg.encoder.width, blocks=cfg.encoder.blocks,
                            stem_stride=cfg.encoder.stem_stride)
    mae = MAE(encoder, patch=cfg.mae.patch, mask_ratio=cfg.mae.mask_ratio, decoder_width=cfg.mae.decoder_width)
    mae = mae.to(device)
    model = DistributedDataParallel(mae) if world > 1 else mae
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, 0.95), weight_decay=cfg.train.weight_decay)
    sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.steps)
    loader = DataLoader(data, batch_size=cfg.train.batch_size, drop_last=True, num_workers=cfg.train.num_workers,
                        sampler=ResumableSampler(len(data), cfg.seed, rank, world))
    logger = RunLogger(Path(cfg.out_dir)) if rank == 0 else None
    batches = iter(loader)
    for step in tqdm(range(1, cfg.train.steps + 1), disable=rank != 0, desc="mae"):
        x, _ = next(batches)
        loss, _, _ = model(x.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            mean_loss = distributed.mean_over_ranks(loss).item()  # every rank joins the reduction
            if logger:
                logger.log(step, {"mae/loss": mean_loss, "lr": sched.get_last_lr()[0]})
    if logger:
        encoder.cpu().save(cfg.out_dir)
        logger.plot()
    distributed.barrier()
    return encoder


@hydra.main(config_path="configs", config_name="mae", version_base=None)
def main(cfg: DictConfig) -> None:
    train_mae(cfg)
    distributed.cleanup()


if __name__ == "__main__":
    main()
