"""The one-step Drifting Policy: noise + observation -> action chunk in a single U-Net evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping

import torch
from torch import Tensor

from drift_policy.drift import DriftConfig, drift_loss, sample_spread
from drift_policy.policies.base import Policy, PolicyConfig


@dataclass(frozen=True)
class DriftPolicyConfig(PolicyConfig):
    """A drift policy's settings (configs/policy/drift.yaml); `drift` takes DriftConfig's fields as a dict too."""

    n_generated: int = 2  # G generated chunks per observation: the group's negatives
    drift_on: Literal["chunk", "timestep"] = "chunk"  # chunk: one T*Da vector per sample; timestep: T vectors of Da
    drift: DriftConfig = field(default_factory=DriftConfig)
    noise_std: float = 1.0  # scale of the generator's input noise
    # inference only: the input noise times this (< 1: the truncation trick, chunks nearer the generator's centre)
    sample_noise_scale: float = 1.0
    extra_positives: int = 0  # k: the chunks of the k nearest observations of other demos are positives too
    # the chunk steps that are not executed (before To - 1 and after To - 1 + Ta) scaled by this before the drift, so
    # the kernel's distances and the loss weigh the executed steps more (1: the paper's plain chunk; 0: drift on the
    # executed steps alone); a lever against chunks that defer their motion past the executed part
    unexecuted_weight: float = 1.0
    # the input noise also joins the conditioning, so every FiLM layer reads the whole draw: one global choice can shape
    # every chunk step (the U-Net otherwise sees the noise through its convolutions, step by step); a lever against
    # chunks that choose their way only in their unexecuted tail
    noise_film: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.drift, Mapping):  # from config.json or hydra: temperatures come as a list
            drift = dict(self.drift)
            names = sorted(f.name for f in fields(DriftConfig))
            unknown = sorted(set(drift) - set(names))
            if unknown:
                raise ValueError(f"drift has no setting(s) {unknown}; its settings are {names}: remove or rename "
                                 f"{'it' if len(unknown) == 1 else 'them'}")
            object.__setattr__(self, "drift", DriftConfig(**{**drift, "temperatures": tuple(drift.get("temperatures", DriftConfig.temperatures))}))
        if self.n_generated < 2:
            raise ValueError(f"n_generated must be >= 2 (the generated chunks repel each other), got {self.n_generated}")
        if self.drift_on not in ("chunk", "timestep"):
            raise ValueError(f"drift_on must be 'chunk' (one T*Da vector) or 'timestep' (T vectors of Da), got {self.drift_on!r}")
        if not self.sample_noise_scale >= 0:
            raise ValueError(f"sample_noise_scale must be >= 0 (1 samples as trained, 0 always the noise-free chunk), "
                             f"got {self.sample_noise_scale}")
        if self.extra_positives < 0:
            raise ValueError(f"extra_positives must be >= 0, got {self.extra_positives}")
        if not 0 <= self.unexecuted_weight < float("inf"):
            raise ValueError(f"unexecuted_weight must be a finite number >= 0 (1 weighs every chunk step alike, 0 drifts "
                             f"the executed steps alone), got {self.unexecuted_weight}")


class DriftPolicy(Policy):
    """Trained with the drift loss: per observation (one group), `n_generated` chunks are the
    negatives and the demonstrated chunk is the positive, on the raw normalised actions; with
    extra_positives=k the chunks of the k nearest observations of other demos are positives too."""

    policy_type = "drift"
    config_class = DriftPolicyConfig
    uses_timestep = False
    config: DriftPolicyConfig

    def __init__(self, config: DriftPolicyConfig | None = None, **settings: Any) -> None:
        super().__init__(config, **settings)
        config = self.config  # read once here: the sampler and the loss use plain attributes
        self.n_generated, self.drift_on, self.noise_std = config.n_generated, config.drift_on, config.noise_std
        self.sample_scale = config.noise_std * config.sample_noise_scale
        self.drift_config, self.extra_positives, self.noise_film = config.drift, config.extra_positives, config.noise_film
        step_weight = torch.full((config.horizon, 1), float(config.unexecuted_weight))
        step_weight[config.n_obs_steps - 1 : config.n_obs_steps - 1 + config.n_action_steps] = 1.0
        self.register_buffer("step_weight", step_weight, persistent=False)  # [T, 1]: what the drift sees of each step

    @property
    def nfe(self) -> int:
        return 1

    @property
    def cond_dim(self) -> int:  # read by Policy.__init__ while it builds the backbone, before the plain attributes exist
        return self.obs_encoder.output_dim + (self.horizon * self.action_dim if self.config.noise_film else 0)

    def _generate(self, noise: Tensor, cond: Tensor) -> Tensor:
        """The backbone on scaled noise [N, T, Da] and observation features [N, C] (the noise joining them with noise_film)."""
        if self.noise_film:
            cond = torch.cat([cond, noise.flatten(1)], dim=1)
        return self.model(noise, cond)

    def sample(self, cond: Tensor, noise: Tensor) -> Tensor:
        return self._generate(noise[:, 0] * self.sample_scale, cond).clamp(-1.0, 1.0)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cond = self.encode(batch["obs"])  # [B, C]
        target = self.normalizer.normalize("action", batch["action"])  # [B, T, Da]
        b, t, da, g = *target.shape, self.n_generated
        positives = target[:, None]  # [B, P, T, Da]
        if self.extra_positives:
            neighbors = self.normalizer.normalize("action", batch["neighbor_action"])  # [B, k, T, Da]
            positives = torch.cat([positives, neighbors], dim=1)
        noise = torch.randn(b * g, t, da, device=cond.device) * self.noise_std
        gen = self._generate(noise, cond.repeat_interleave(g, dim=0)).view(b, g, t, da)
        with torch.no_grad():  # calibration: the chunks' spread against their distance to the demo chunk (1 = calibrated)
            spread, to_demo = sample_spread(gen.reshape(b, g, t * da), target.reshape(b, 1, t * da))
        p = positives.shape[1]
        gen, positives = gen * self.step_weight, positives * self.step_weight
        if self.drift_on == "chunk":  # one group per observation, samples are whole chunks
            gen, pos = gen.reshape(b, g, t * da), positives.reshape(b, p, t * da)
        else:  # one group per (observation, time step), samples are single actions
            gen, pos = gen.permute(0, 2, 1, 3).reshape(b * t, g, da), positives.permute(0, 2, 1, 3).reshape(b * t, p, da)
        out = drift_loss(gen, pos, config=self.drift_config)
        info = {f"drift/{k}": float(v) for k, v in out.info.items()}
        info.update({"drift/gen_spread": float(spread), "drift/spread_ratio": float(spread / to_demo.clamp_min(1e-8))})
        return out.loss, info
