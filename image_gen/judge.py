"""An independent judge of generated images: a small CNN classifier trained on real data only.

It never touches the generator's training: it scores samples by class-conditional accuracy (is a
sample of class k classified as k?) and by the Frechet distance of its penultimate features between
generated and held-out real images, the small-scale stand-in for Inception FID.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from image_gen.metrics import frechet_distance, gaussian_stats


class Judge(nn.Module):
    """judge(x [B, C, H, W] in [-1, 1]) -> logits [B, classes]; features(x) -> the penultimate [B, feature_dim]."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.config = dict(channels=channels, num_classes=num_classes, width=width, feature_dim=feature_dim)

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        # 28 -> 14 -> 7: two cheap strided stages, then a linear layer whose output is the feature space.
        self.body = nn.Sequential(*conv(channels, width), nn.MaxPool2d(2), *conv(width, 2 * width), nn.MaxPool2d(2),
                                  *conv(2 * width, 2 * width), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                  nn.Linear(2 * width * 16, feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer before its ReLU (no dead, constant dimensions in the FID covariance)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def save(self, directory: str | Path) -> None:
        """judge.json + judge.safetensors."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "judge.json").write_text(json.dumps(self.config))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "judge.safetensors")

    @classmethod
    def load(cls, directory: str | Path) -> "Judge":
        directory = Path(directory)
        if not (directory / "judge.json").exists():
            raise FileNotFoundError(f"no judge.json in {directory}; train one with image_gen.judge.train_judge")
        judge = cls(**json.loads((directory / "judge.json").read_text()))
        judge.load_state_dict(load_file(directory / "judge.safetensors"))
        return judge.eval()


def random_shift(x: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Translate every image by up to `pixels` in each direction (background -1 fills the gap)."""
    padded = F.pad(x, [pixels] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, len(x)), generator=generator).tolist()
    h, w = x.shape[-2:]
    return torch.stack([p[:, i:i + h, j:j + w] for p, i, j in zip(padded, dy, dx)])


def train_judge(images: Tensor, labels: Tensor, epochs: int = 8, batch_size: int = 64, lr: float = 2e-3,
                seed: int = 0, device: str | torch.device = "cpu") -> Judge:
    """Adam with a one-cycle schedule and 2-pixel random shifts; returns the judge in eval mode."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    judge = Judge(images.shape[1], int(labels.max()) + 1).to(device)
    steps = epochs * (len(images) // batch_size)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    judge.train()
    with tqdm(total=steps, desc="judge") as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(images), generator=rng).split(batch_size):
                if len(idx) < batch_size:
                    continue
                x = random_shift(images[idx], 2, rng).to(device)
                loss = F.cross_entropy(judge(x), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return judge.eval()


@torch.no_grad()
def judge_outputs(judge: Judge, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(predicted classes [N], penultimate features [N, D]) of images in [-1, 1]."""
    device = next(judge.parameters()).device
    preds, feats = [], []
    for x in images.split(batch_size):
        f = judge.features(x.to(device).float())
        feats.append(f.cpu())
        preds.append(judge.head(f).argmax(-1).cpu())
    return torch.cat(preds), torch.cat(feats)


@dataclass
class Verdict:
    accuracy: float  # fraction of samples classified as the class they were generated for
    fid: float  # Frechet distance of judge features to the reference images

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "fid": self.fid}


class Scorer:
    """Scores image sets against a fixed reference set (held-out real images) in the judge's feature space."""

    def __init__(self, judge: Judge, reference: Tensor) -> None:
        self.judge = judge
        self.ref_stats = gaussian_stats(judge_outputs(judge, reference)[1].double().numpy())

    def __call__(self, images: Tensor, labels: Tensor) -> Verdict:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        preds, feats = judge_outputs(self.judge, images)
        stats = gaussian_stats(feats.double().numpy())
        return Verdict(accuracy=float((preds == labels.cpu()).double().mean()),
                       fid=frechet_distance(*stats, *self.ref_stats))


__all__ = ["Judge", "Scorer", "Verdict", "judge_outputs", "train_judge", "random_shift"]
