"""Evaluation: Frechet distance against closed forms, Inception Score extremes, Inception and VAE loaded
from local files, and sample.py writing a grid from a saved generator."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from torchvision.models import inception_v3
from torchvision.utils import save_image

from image_gen.image_data import ArrayDataset, cache_latents, digits_dataset, load_vae
from image_gen.metrics import (InceptionFeatures, encoder_fid, frechet_distance, gaussian_stats,
                               inception_score, inception_stats)
from image_gen.models.encoder import ResNetEncoder
from image_gen.models.generator import DriftDiT

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    s = a @ a.T + np.eye(5)  # a full, non-diagonal covariance
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # S2 = c S1 commutes with S1: tr(S1 + S2 - 2 (S1 S2)^1/2) = tr(S1) (1 - sqrt c)^2
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s) * (1 - np.sqrt(4.0)) ** 2
    assert frechet_distance(mu1, s, mu2, 4.0 * s) == pytest.approx(expected, rel=1e-6)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(5.0)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-6)
    # Statistics of samples converge to the distribution's
    x = rng.multivariate_normal(mu1, s, size=200_000)
    assert frechet_distance(*gaussian_stats(x), mu1, s) < 0.01
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(mu1, s, mu1[:4], s[:4, :4])


def test_inception_score_extremes():
    assert inception_score(torch.zeros(100, 10), splits=2)[0] == pytest.approx(1.0)
    confident = torch.eye(10).repeat(10, 1) * 50  # every sample sure of its class, classes balanced
    assert inception_score(confident, splits=2)[0] == pytest.approx(10.0, rel=1e-3)


def test_inception_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=True).state_dict(), path)
    net = InceptionFeatures(path)
    stats = inception_stats(net, [torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1])
    assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048) and stats["is_mean"] >= 1
    with pytest.raises(FileNotFoundError, match="no Inception weights"):
        InceptionFeatures(tmp_path / "missing.pth")


def test_encoder_fid_separates_digits_from_noise():
    torch.manual_seed(0)
    enc = ResNetEncoder(1, width=8, blocks=(1, 1)).eval()
    x = digits_dataset(16).tensors[0]
    same = encoder_fid(enc, x[:600], x[600:1200])
    noise = encoder_fid(enc, x[:600], torch.rand(600, 1, 16, 16) * 2 - 1)
    assert same < 0.1 * noise


def _tiny_vae(path):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8)
    vae.save_pretrained(path)
    return vae


def test_latent_cache_from_an_image_folder_and_a_local_vae(tmp_path):
    x, y = digits_dataset(16)[:12]
    for i, (img, label) in enumerate(zip(x, y)):
        (tmp_path / "images" / f"c{label}").mkdir(parents=True, exist_ok=True)
        save_image(img.expand(3, -1, -1) * 0.5 + 0.5, tmp_path / "images" / f"c{label}" / f"{i}.png")
    vae = _tiny_vae(tmp_path / "vae")
    cache_latents(tmp_path / "images", tmp_path / "vae", tmp_path / "cache", image_size=16, batch_size=5,
                  num_workers=0)
    data = ArrayDataset(tmp_path / "cache")
    assert len(data) == 12 and data[0][0].shape == (4, 8, 8)
    first = sorted((tmp_path / "images").glob("*/*.png"))[0]  # ImageFolder order: class dirs, then names
    from image_gen.image_data import pixel_transform
    from PIL import Image
    pix = pixel_transform(16)(Image.open(first).convert("RGB"))[None]
    expected = vae.encode(pix).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(data[0][0], expected[0], atol=1e-2)  # float16 on disk
    with pytest.raises(FileNotFoundError, match="no VAE"):
        load_vae(tmp_path / "nothing")


def test_sample_script_writes_a_grid_through_the_vae(tmp_path):
    _tiny_vae(tmp_path / "vae")
    DriftDiT(width=32, depth=1, heads=2, patch_size=2, input_size=8, channels=4, num_classes=5).save_pretrained(
        tmp_path / "gen")
    out = tmp_path / "grid.png"
    subprocess.run([sys.executable, str(REPO / "image_gen" / "sample.py"), str(tmp_path / "gen"), "--vae",
                    str(tmp_path / "vae"), "--classes", "0", "4", "--per-class", "3", "--alpha", "2.0",
                    "--out", str(out)], check=True, cwd=tmp_path)
    from PIL import Image
    assert Image.open(out).size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)  # 3 x 2 images of 16 px, 2 px padding
