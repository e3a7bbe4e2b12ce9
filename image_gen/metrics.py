"""Sample quality: Frechet distance (FID) and Inception Score from a local Inception file, and an FID in
our own encoder's feature space for datasets too small or too far from ImageNet for Inception.

The Inception network is torchvision's inception_v3 loaded from a local state-dict file (nothing is
downloaded). FIDs are comparable only with reference statistics made by this same code and weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn
from torchvision.models import inception_v3
from torchvision.models.feature_extraction import create_feature_extractor

from image_gen.features import pooled_features


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64) of features [N, D]."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the 2-Wasserstein distance of two Gaussians, squared."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference FID code does
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over splits of the samples."""
    probs = logits.double().softmax(-1)
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


class InceptionFeatures(nn.Module):
    """images [B, 1|3, H, W] in [-1, 1] -> (pool3 features [B, 2048], logits [B, 1000])."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"no Inception weights at {weights_path}: save torchvision's inception_v3 "
                                    "state_dict there (torch.save(model.state_dict(), path)) on a machine with internet")
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        # Google's Inception expects inputs in [-1, 1], which is what we feed: no input transform.
        net = inception_v3(weights=None, aux_logits="AuxLogits.fc.weight" in state, init_weights=False,
                           transform_input=False)
        net.load_state_dict(state)
        self.net = create_feature_extractor(net.eval(), {"avgpool": "pool", "fc": "logits"})
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out = self.net(x)
        return out["pool"].flatten(1), out["logits"]


@torch.no_grad()
def inception_stats(inception: InceptionFeatures, batches: Iterable[Tensor]) -> dict[str, np.ndarray | float]:
    """mu, sigma (for FID) and the Inception Score of image batches in [-1, 1]."""
    pools, logits = zip(*((p.cpu(), l.cpu()) for p, l in (inception(b) for b in batches)))
    mu, sigma = gaussian_stats(torch.cat(pools).numpy())
    is_mean, is_std = inception_score(torch.cat(logits))
    return {"mu": mu, "sigma": sigma, "is_mean": is_mean, "is_std": is_std}


@torch.no_grad()
def encoder_fid(encoder: nn.Module, real: Tensor, fake: Tensor, batch_size: int = 256) -> float:
    """FID in the space of our own encoder's pooled last stage (for small datasets such as digits)."""
    def embed(x: Tensor) -> np.ndarray:
        return torch.cat([pooled_features(encoder, b) for b in x.split(batch_size)]).numpy()

    return frechet_distance(*gaussian_stats(embed(real)), *gaussian_stats(embed(fake)))
