"""Observation history -> one conditioning vector: low-dim keys concatenated, each camera through a
GroupNorm ResNet with spatial-softmax keypoints (Diffusion Policy's image encoder design, written anew)."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from drift_policy.observations import check_layout

OBS_TYPES = ("low_dim", "rgb")


class SpatialSoftmax(nn.Module):
    """Feature map [N, C, H, W] -> [N, 2K]: expected (x, y) image positions, in [-1, 1], of K learned keypoints."""

    def __init__(self, in_channels: int, height: int, width: int, num_keypoints: int) -> None:
        super().__init__()
        self.keypoint_logits = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], dim=-1), persistent=False)  # [H*W, 2]

    def forward(self, features: Tensor) -> Tensor:
        attention = self.keypoint_logits(features).flatten(2).softmax(dim=-1)  # [N, K, H*W]
        return (attention @ self.grid).flatten(1)


def resnet_backbone(layers: Sequence[int]) -> nn.Sequential:
    """torchvision ResNet(BasicBlock, layers) with GroupNorm (channels // 16 groups) and no avgpool/fc.

    `layers` gives the blocks of the first 1-4 stages; fewer than 4 ends the network early (e.g. [1, 1, 1]: a
    256-channel map at 1/16 of the crop, for a cheaper step and finer keypoints). The submodule names are
    torchvision's, so its state dict keys are a ResNet's minus `fc.*` and the stages left out.
    """
    if not 1 <= len(layers) <= 4 or any(int(n) < 1 for n in layers):
        raise ValueError(f"obs_encoder.layers must give 1-4 ResNet stages of >= 1 block each, got {list(layers)}")
    stages = [*layers, *[1] * (4 - len(layers))]
    resnet = ResNet(BasicBlock, stages, norm_layer=lambda channels: nn.GroupNorm(channels // 16, channels))
    kept = {"conv1", "bn1", "relu", "maxpool", *(f"layer{i + 1}" for i in range(len(layers)))}
    return nn.Sequential(OrderedDict((name, m) for name, m in resnet.named_children() if name in kept))


def load_backbone_weights(backbone: nn.Sequential, path: str | Path, layers: Sequence[int]) -> None:
    """Strictly load a ResNet state dict (.safetensors or a torch.save file) into `backbone`; `fc.*` entries and
    stages the backbone leaves out are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path {path} does not exist; pass a saved ResNet state dict or None")
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"pretrained_path {path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
    try:
        kept = {name for name, _ in backbone.named_children()}
        backbone.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in kept}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"pretrained_path {path} does not fit ResNet(BasicBlock, {list(layers)}) with GroupNorm "
                         f"(BatchNorm weights, e.g. torchvision's ImageNet ones, do not): {err}") from None


class RgbEncoder(nn.Module):
    """Float images [N, 3, h, w] in [0, 1] -> features [N, feature_dim]: ResNet, spatial softmax, linear."""

    def __init__(self, image_hw: tuple[int, int], layers: Sequence[int], num_keypoints: int, feature_dim: int,
                 pretrained_path: str | None) -> None:
        super().__init__()
        self.backbone = resnet_backbone(layers)
        if pretrained_path is not None:
            load_backbone_weights(self.backbone, pretrained_path, layers)
        with torch.no_grad():
            _, channels, height, width = self.backbone(torch.zeros(1, 3, *image_hw)).shape
        self.pool = SpatialSoftmax(channels, height, width, num_keypoints)
        self.proj = nn.Linear(2 * num_keypoints, feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.pool(self.backbone(images)))


class ObsEncoder(nn.Module):
    """Observation dict {key: [B, To, ...]} -> features [B, To * per_step_dim] (`output_dim`).

    Low-dim values (normalised float) are concatenated, in training with Gaussian noise of std low_dim_noise_std
    (0: none; like the random crop, it shows the policy states beside the demos'). In training, history_dropout is the
    chance that a sample's earlier steps are replaced by its latest one, so the chunk must be read from the scene and
    not only from the policy's own recent motion (ChauffeurNet's past-motion dropout; screened against Push-T's drift
    stalls in bench/README). Each rgb key (uint8 [B, To, H, W, 3]) is cropped
    (random per frame in training, center in eval), scaled to [0, 1] and encoded by its own ResNet, or by
    one shared ResNet with share_rgb_model=True. rgb_steps encodes only each camera's latest rgb_steps frames (None:
    all To), so a step costs fewer ResNet passes while the low-dim history still carries the motion. Keys are laid out
    in sorted order, per observation step (a step's frame left out is left out of its step).
    """

    def __init__(self, shape_meta_obs: Mapping[str, Any], n_obs_steps: int, crop_shape: Sequence[int] | None = (84, 84),
                 layers: Sequence[int] = (2, 2, 2, 2), num_keypoints: int = 32, feature_dim: int = 64,
                 pretrained_path: str | None = None, share_rgb_model: bool = False, low_dim_noise_std: float = 0.0,
                 history_dropout: float = 0.0, rgb_steps: int | None = None) -> None:
        super().__init__()
        if rgb_steps is not None and not 1 <= rgb_steps <= n_obs_steps:
            raise ValueError(f"rgb_steps must be 1..n_obs_steps ({n_obs_steps}) frames per camera, or None for all, got {rgb_steps}")
        self.rgb_steps = n_obs_steps if rgb_steps is None else int(rgb_steps)
        if not low_dim_noise_std >= 0:
            raise ValueError(f"low_dim_noise_std must be >= 0 (0: no observation noise), got {low_dim_noise_std}")
        if not 0 <= history_dropout <= 1:
            raise ValueError(f"history_dropout must be a probability in [0, 1] (0: the history as observed), got {history_dropout}")
        self.low_dim_noise_std = low_dim_noise_std
        self.history_dropout = history_dropout
        if not shape_meta_obs:
            raise ValueError("shape_meta_obs is empty; give at least one observation key with its shape and type")
        self.n_obs_steps = n_obs_steps
        self.obs_meta = {key: dict(meta) for key, meta in shape_meta_obs.items()}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.rgb_keys: list[str] = []
        for key, meta in sorted(shape_meta_obs.items()):
            self.shapes[key], obs_type = tuple(int(d) for d in meta["shape"]), meta.get("type", "low_dim")
            if obs_type not in OBS_TYPES:
                raise ValueError(f"observation '{key}' has type {obs_type!r}; expected one of {OBS_TYPES}")
            if obs_type == "rgb":
                self._check_image_shape(key, self.shapes[key], crop_shape)
                self.rgb_keys.append(key)
        self.crop_shape = tuple(crop_shape) if crop_shape is not None else None
        image_shapes = {self.crop_shape or self.shapes[key][:2] for key in self.rgb_keys}
        if share_rgb_model and len(image_shapes) > 1:
            raise ValueError(f"share_rgb_model=True needs every camera at one size, got {sorted(image_shapes)}; set crop_shape")
        # Cameras encoded by each ResNet: one group per camera, or a single shared group.
        self.camera_groups = {"shared": self.rgb_keys} if share_rgb_model and self.rgb_keys else {k: [k] for k in self.rgb_keys}
        self.rgb_models = nn.ModuleDict({
            name: RgbEncoder(self.crop_shape or self.shapes[keys[0]][:2], layers, num_keypoints, feature_dim, pretrained_path)
            for name, keys in self.camera_groups.items()})
        low_dim = sum(math.prod(shape) for key, shape in self.shapes.items() if key not in self.rgb_keys)
        self.output_dim = n_obs_steps * low_dim + self.rgb_steps * feature_dim * len(self.rgb_keys)

    @staticmethod
    def _check_image_shape(key: str, shape: tuple[int, ...], crop_shape: Sequence[int] | None) -> None:
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"rgb observation '{key}' must have shape [H, W, 3] (HWC) in shape_meta, got {list(shape)}")
        if crop_shape is not None and (len(crop_shape) != 2 or crop_shape[0] > shape[0] or crop_shape[1] > shape[1]):
            raise ValueError(f"crop_shape {tuple(crop_shape)} must be (h, w) no larger than '{key}' images {shape[:2]}")

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        check_layout(obs, self.obs_meta, self.n_obs_steps, batched_only=True)
        if self.training and self.history_dropout:
            obs = self._still_history(obs)
        features = {key: obs[key].flatten(2) for key in self.shapes if key not in self.rgb_keys}
        if self.training and self.low_dim_noise_std:
            features = {key: value + self.low_dim_noise_std * torch.randn_like(value) for key, value in features.items()}
        for name, keys in self.camera_groups.items():
            # uint8 [cams * B * rgb_steps, h, w, 3]
            frames = torch.cat([self._crop(obs[key][:, -self.rgb_steps:].flatten(0, 1)) for key in keys])
            # One uint8 -> [0, 1] conversion for the whole batch; the NHWC strides are kept (channels_last runs faster on CPU).
            images = frames.permute(0, 3, 1, 2).float().div_(255)
            encoded = self.rgb_models[name](images).unflatten(0, (len(keys), -1, self.rgb_steps))  # [cams, B, rgb_steps, F]
            features.update(zip(keys, encoded))
        first_rgb_step = self.n_obs_steps - self.rgb_steps
        steps = [[features[key][:, t - first_rgb_step if key in self.rgb_keys else t] for key in self.shapes
                  if key not in self.rgb_keys or t >= first_rgb_step] for t in range(self.n_obs_steps)]
        return torch.cat([part for step in steps for part in step], dim=-1)

    def _still_history(self, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each sample, with probability history_dropout, gets its latest step repeated over the whole history."""
        first = next(iter(obs.values()))
        still = torch.rand(first.shape[0], device=first.device) < self.history_dropout
        return {key: torch.where(still.view(-1, *[1] * (value.dim() - 1)), value[:, -1:].expand_as(value), value)
                for key, value in obs.items()}

    def _crop(self, frames: Tensor) -> Tensor:
        """uint8 [N, H, W, 3] -> [N, h, w, 3]: an independent random window per frame in training, the center in eval."""
        if self.crop_shape is None:
            return frames
        n, height, width, _ = frames.shape
        h, w = self.crop_shape
        if not self.training:
            top, left = (height - h) // 2, (width - w) // 2
            return frames[:, top : top + h, left : left + w]
        device = frames.device
        rows = torch.randint(0, height - h + 1, (n, 1, 1), device=device) + torch.arange(h, device=device).view(1, h, 1)
        cols = torch.randint(0, width - w + 1, (n, 1, 1), device=device) + torch.arange(w, device=device).view(1, 1, w)
        return frames[torch.arange(n, device=device).view(n, 1, 1), rows, cols]
