"""One-step sampling at a chosen guidance scale: an image grid PNG, and optionally FID / Inception Score.

    python image_gen/sample.py outputs/image_gen/runs/drift_latents/generator --alpha 1.0 \
        --vae /models/sd-vae-ft-ema --out grid.png
    python image_gen/sample.py RUN/generator --num 50000 --inception /models/inception_v3.pth \
        --reference imagenet256_ref.npz        # FID + IS against reference statistics made by this code
    python image_gen/sample.py ... --make-reference --image-root /datasets/imagenet/val  # write the .npz
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.utils import save_image

from image_gen.image_data import image_folder, load_vae
from image_gen.metrics import InceptionFeatures, frechet_distance, inception_stats
from image_gen.models.generator import DriftDiT


def to_pixels(x: Tensor, vae: Optional[Any] = None) -> Tensor:
    """Generator output -> pixels in [-1, 1] (decoded by the VAE for latent generators)."""
    if vae is not None:
        x = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample
    return x.float().clamp(-1, 1)


def save_grid(pixels: Tensor, path: str | Path, nrow: int) -> Path:
    """A PNG grid of images in [-1, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(pixels, path, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    return path


@torch.no_grad()
def generate(model: DriftDiT, labels: Tensor, alpha: float, batch_size: int = 256, seed: int = 0,
             vae: Optional[Any] = None) -> Iterator[Tensor]:
    """Pixel batches for labels, one network evaluation per sample."""
    device = next(model.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    for chunk in labels.split(batch_size):
        yield to_pixels(model.sample(chunk.to(device), alpha, generator=rng), vae).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", help="generator directory (config.json + model.safetensors)")
    parser.add_argument("--alpha", type=float, default=1.0, help="guidance scale the generator is conditioned on")
    parser.add_argument("--classes", type=int, nargs="*", help="classes of the grid rows (default: the first 8)")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--out", default="outputs/image_gen/samples.png")
    parser.add_argument("--vae", help="local AutoencoderKL directory (latent generators)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--num", type=int, default=0, help="samples for FID / IS (class-balanced)")
    parser.add_argument("--inception", help="local torchvision inception_v3 state dict")
    parser.add_argument("--reference", help=".npz with mu and sigma of the reference set")
    parser.add_argument("--make-reference", action="store_true", help="write --reference from --image-root")
    parser.add_argument("--image-root", help="image folder for --make-reference")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = DriftDiT.from_pretrained(args.generator).to(device)
    vae = load_vae(args.vae).to(device) if args.vae else None
    if model.channels == 4 and vae is None:
        raise ValueError("this generator makes SD-VAE latents: pass --vae with the local AutoencoderKL directory")
    classes = torch.tensor(args.classes or list(range(min(8, model.num_classes))))
    grid = torch.cat(list(generate(model, classes.repeat_interleave(args.per_class), args.alpha,
                                   args.batch_size, args.seed, vae)))
    print(f"grid: {save_grid(grid, args.out, nrow=args.per_class)}")
    if not (args.num or args.make_reference):
        return
    if not args.inception or not args.reference:
        raise ValueError("FID / IS need --inception (weights file) and --reference (.npz)")
    inception = InceptionFeatures(args.inception).to(device)
    if args.make_reference:
        loader = DataLoader(image_folder(args.image_root, model.input_size * (8 if vae else 1)),
                            batch_size=args.batch_size, num_workers=8)
        stats = inception_stats(inception, (x.to(device) for x, _ in loader))
        np.savez(args.reference, mu=stats["mu"], sigma=stats["sigma"])
        print(f"reference statistics: {args.reference}")
        return
    labels = torch.arange(args.num) % model.num_classes
    stats = inception_stats(inception, (x.to(device) for x in generate(model, labels, args.alpha,
                                                                        args.batch_size, args.seed, vae)))
    ref = np.load(args.reference)
    result = {"fid": frechet_distance(stats["mu"], stats["sigma"], ref["mu"], ref["sigma"]),
              "is_mean": stats["is_mean"], "is_std": stats["is_std"], "alpha": args.alpha, "num": args.num}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
