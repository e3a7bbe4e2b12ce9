"""The whole image_gen path on CPU in minutes: scikit-learn's digits (upsampled to 16x16) stand in for ImageNet.

MAE pre-training of the feature encoder -> drift training with guidance (queues, EMA, checkpoints)
-> one-step samples -> encoder-space FID before and after. Writes under outputs/image_gen/demo_digits/:
samples_alpha1.png, samples_alpha2.png, run/curves.png, run/metrics.jsonl, result.json.

    python image_gen/demo_digits.py                 # about 5 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from drift_policy.training.logging import RunLogger
from image_gen.image_data import digits_dataset
from image_gen.metrics import encoder_fid
from image_gen.models.encoder import ResNetEncoder
from image_gen.models.generator import DriftDiT
from image_gen.sample import generate, save_grid
from image_gen.train_mae import train_mae
from image_gen.trainer import train

CONFIGS = str(Path(__file__).resolve().parent / "configs")
SIZE, PER_CLASS = 16, 100


def config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(name, overrides=overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/image_gen/demo_digits")
    parser.add_argument("--mae-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    mae_cfg = config("mae", ["data=digits", f"data.size={SIZE}", f"out_dir={out / 'mae'}", "encoder.width=16",
                             "encoder.blocks=[1,1,1]", "mae.decoder_width=32", f"train.steps={args.mae_steps}",
                             "train.batch_size=64", "train.warmup_steps=20", "train.num_workers=0",
                             "train.log_every=50"])
    train_mae(mae_cfg)
    encoder = ResNetEncoder.load(out / "mae").eval()
    real = digits_dataset(SIZE).tensors[0]
    labels = torch.arange(10).repeat_interleave(PER_CLASS)

    def evaluate(model: DriftDiT) -> dict[str, float]:
        fake = torch.cat(list(generate(model, labels, alpha=1.0, seed=123)))
        return {"eval/encoder_fid": encoder_fid(encoder, real, fake)}

    gen_cfg = config("train", [
        "model=tiny", "model.width=64", "model.depth=3", f"model.input_size={SIZE}", "data=digits",
        f"data.size={SIZE}", f"feature.encoder_path={out / 'mae'}", f"run_dir={out / 'run'}", "train.resume=false",
        "batch.n_classes=10", "batch.n_gen=8", "batch.n_pos=8", "batch.n_unc=8", "queue.push_per_step=128",
        "optim.lr=1e-3", "optim.warmup_steps=20", "optim.ema_decay=0.99", f"train.steps={args.steps}",
        "train.log_every=10", f"train.checkpoint_every={args.steps}", f"train.eval_every={max(args.steps // 5, 1)}",
        "train.num_workers=0",
    ])
    run = Path(gen_cfg.run_dir)
    shutil.rmtree(run, ignore_errors=True)  # the demo always starts over
    torch.manual_seed(gen_cfg.seed)
    before = evaluate(DriftDiT(num_classes=10, **gen_cfg.model).eval())["eval/encoder_fid"]
    RunLogger(run).log(0, {"eval/encoder_fid": before})
    model = DriftDiT.from_pretrained(train(gen_cfg, evaluate))
    after = evaluate(model)["eval/encoder_fid"]
    real_ref = encoder_fid(encoder, real[::2], real[1::2])  # two halves of the real data: the floor
    grid_labels = torch.arange(10).repeat_interleave(10)
    for alpha in (1.0, 2.0):
        grid = torch.cat(list(generate(model, grid_labels, alpha=alpha, seed=0)))
        save_grid(grid, out / f"samples_alpha{alpha:g}.png", nrow=10)
    save_grid(real[torch.cat([torch.nonzero(digits_dataset(SIZE).tensors[1] == c)[:10, 0] for c in range(10)])],
              out / "real.png", nrow=10)
    result = {"encoder_fid_before": before, "encoder_fid_after": after, "encoder_fid_real_halves": real_ref,
              "steps": args.steps, "mae_steps": args.mae_steps}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
