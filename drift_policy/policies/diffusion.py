"""Diffusion Policy, the multi-step baseline: same U-Net, encoder and normaliser, diffusers schedulers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from drift_policy.policies.base import Policy, PolicyConfig


@dataclass(frozen=True)
class DiffusionPolicyConfig(PolicyConfig):
    """A diffusion policy's settings (configs/policy/diffusion.yaml)."""

    num_train_timesteps: int = 100
    num_inference_steps: int = 100  # network evaluations per chunk
    sampler: Literal["ddpm", "ddim"] = "ddpm"  # DDIM runs with eta = 0
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {self.sampler!r}")


@dataclass(frozen=True)
class DenoiseStep:
    """One sampler step as float32 constants: x0 = clip((x - sqrt_one_minus_alpha eps) / sqrt_alpha), then
    x <- c_x0 x0 + c_x x (DDPM's posterior mean) or c_x0 x0 + c_eps eps (DDIM, eta = 0), plus sigma z when sigma > 0."""

    t: int
    sqrt_alpha: float
    sqrt_one_minus_alpha: float
    c_x0: float
    c_x: float
    c_eps: float
    sigma: float


def denoise_steps(scheduler: DDPMScheduler | DDIMScheduler, num_inference_steps: int) -> list[DenoiseStep]:
    """The scheduler's step() for epsilon prediction as per-step constants, computed from its own tensors
    (alphas_cumprod, timesteps, variance) with its float32 arithmetic.

    Why not call scheduler.step(): DDPMScheduler.step draws its per-step noise itself from a torch.Generator and takes
    no noise argument, so it cannot run on given noise, and the ONNX graph (noise an input) could not trace it. DDIM
    (eta = 0) uses the same form so that both samplers have one update. Both predict_action and the export run
    DiffusionPolicy.sample on these constants; tests/test_policies.py checks that they give what diffusers' step()
    loop gives on the same noise.
    """
    scheduler.set_timesteps(num_inference_steps)
    alphas = scheduler.alphas_cumprod
    steps = []
    for t in (int(t) for t in scheduler.timesteps):
        a_t = alphas[t]
        if isinstance(scheduler, DDPMScheduler):
            prev = int(scheduler.previous_timestep(t))
            a_prev = alphas[prev] if prev >= 0 else scheduler.one
            beta_t = 1 - a_t / a_prev
            coefficients = dict(c_x0=a_prev ** 0.5 * beta_t / (1 - a_t), c_x=(a_t / a_prev) ** 0.5 * (1 - a_prev) / (1 - a_t),
                                c_eps=0.0, sigma=scheduler._get_variance(t) ** 0.5 if t > 0 else 0.0)
        else:
            prev = t - scheduler.config.num_train_timesteps // num_inference_steps
            a_prev = alphas[prev] if prev >= 0 else scheduler.final_alpha_cumprod
            coefficients = dict(c_x0=a_prev ** 0.5, c_x=0.0, c_eps=(1 - a_prev) ** 0.5, sigma=0.0)
        steps.append(DenoiseStep(t=t, sqrt_alpha=float(a_t ** 0.5), sqrt_one_minus_alpha=float((1 - a_t) ** 0.5),
                                 **{k: float(v) for k, v in coefficients.items()}))
    return steps


class DiffusionPolicy(Policy):
    """Epsilon-prediction DDPM training; DDPM or DDIM sampling with `num_inference_steps` evaluations."""

    policy_type = "diffusion"
    config_class = DiffusionPolicyConfig
    uses_timestep = True
    config: DiffusionPolicyConfig

    def __init__(self, config: DiffusionPolicyConfig | None = None, **settings: Any) -> None:
        super().__init__(config, **settings)
        config = self.config
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            clip_sample=True, prediction_type="epsilon",
        )
        self.clip = float(self.train_scheduler.config.clip_sample_range)
        scheduler_cls = DDIMScheduler if config.sampler == "ddim" else DDPMScheduler
        self.num_inference_steps = config.num_inference_steps
        self.steps = denoise_steps(scheduler_cls.from_config(self.train_scheduler.config), config.num_inference_steps)
        self.n_noise = 1 + sum(step.sigma > 0 for step in self.steps)
        # the U-Net's timestep input per step; a buffer, so it follows the policy's device (not saved)
        self.register_buffer("timesteps", torch.tensor([step.t for step in self.steps]), persistent=False)

    @property
    def nfe(self) -> int:
        return self.num_inference_steps

    def sample(self, cond: Tensor, noise: Tensor) -> Tensor:
        x, drawn, ddpm = noise[:, 0], 1, self.config.sampler == "ddpm"
        for i, step in enumerate(self.steps):
            eps = self.model(x, cond, self.timesteps[i])
            x0 = ((x - step.sqrt_one_minus_alpha * eps) / step.sqrt_alpha).clamp(-self.clip, self.clip)
            if ddpm:  # the posterior mean of x_{t-1} given x0 and x_t
                x = step.c_x0 * x0 + step.c_x * x
            else:  # DDIM, eta = 0: x0 moved back along the predicted noise
                x = step.c_x0 * x0 + step.c_eps * eps
            if step.sigma:
                x, drawn = x + step.sigma * noise[:, drawn], drawn + 1
        return x.clamp(-1.0, 1.0)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cond = self.encode(batch["obs"])
        target = self.normalizer.normalize("action", batch["action"])
        noise = torch.randn_like(target)
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (target.shape[0],), device=target.device)
        eps = self.model(self.train_scheduler.add_noise(target, noise, t), cond, t)
        return F.mse_loss(eps, noise), {}
