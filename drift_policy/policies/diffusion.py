"""Diffusion Policy, the multi-step baseline: same U-Net, encoder and normaliser, diffusers schedulers."""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from drift_policy.policies.base import Generators, Policy


class DiffusionPolicy(Policy):
    """Epsilon-prediction DDPM training; DDPM or DDIM sampling with `num_inference_steps` evaluations."""

    policy_type = "diffusion"
    uses_timestep = True

    def __init__(
        self,
        *args: Any,
        num_train_timesteps: int = 100,
        num_inference_steps: int = 100,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        beta_schedule: str = "squaredcos_cap_v2",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            clip_sample=True, prediction_type="epsilon",
        )
        scheduler_cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        self.sample_scheduler = scheduler_cls.from_config(self.train_scheduler.config)
        self.num_inference_steps = num_inference_steps
        self.init_kwargs.update(
            num_train_timesteps=num_train_timesteps, num_inference_steps=num_inference_steps,
            sampler=sampler, beta_schedule=beta_schedule,
        )

    @property
    def nfe(self) -> int:
        return self.num_inference_steps

    def sample(self, cond: Tensor, generator: Generators = None) -> Tensor:
        x = self.initial_noise(cond.shape[0], cond.device, generator)
        self.sample_scheduler.set_timesteps(self.num_inference_steps)
        for t in self.sample_scheduler.timesteps:
            eps = self.model(x, cond, t.expand(x.shape[0]).to(cond.device))
            x = self.sample_scheduler.step(eps, t, x, generator=generator).prev_sample
        return x.clamp(-1.0, 1.0)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cond = self.encode(batch["obs"])
        target = self.normalizer.normalize("action", batch["action"])
        noise = torch.randn_like(target)
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (target.shape[0],), device=target.device)
        eps = self.model(self.train_scheduler.add_noise(target, noise, t), cond, t)
        return F.mse_loss(eps, noise), {}
