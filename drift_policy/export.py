"""A policy's whole predict_action as one ONNX graph, and an onnxruntime runner with the same interface.

The graph takes the raw observation history (env units; images uint8) and standard-normal noise and
returns actions in env units: normalisation -> observation encoder -> generator -> clamp ->
unnormalisation -> the executed Ta slice ("action") and the whole chunk ("action_chunk"). Noise is an
input, `noise` [B, n_noise, T, Da], so the caller owns the randomness and a run is reproducible.

Diffusion policies are exported with their denoising loop unrolled: every step is a copy of the U-Net's
nodes sharing one set of weights (the file is no larger than a drift policy's), and the scheduler's
update is folded in as per-step constants (`_denoise_steps`, diffusers' DDPM/DDIM math for epsilon
prediction with clipping). One session.run per chunk is then the whole policy for every type, and a
C++ or ROS 2 node needs no scheduler code. DDPM draws fresh noise in every step but the last, so its
n_noise is num_inference_steps (the initial sample plus one per noisy step); DDIM (eta=0) and drift use 1.

    policy.export("policy.onnx")                 # writes policy.onnx and policy.json
    runner = OnnxPolicy.load("policy.onnx", seed=0)
    actions = runner.predict_action(obs)         # [B, Ta, Da] or [Ta, Da], like Policy.predict_action
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from drift_policy.atomic import write_text
from drift_policy.policies.base import Policy, check_obs_history  # base imports this module lazily (Policy.export)

# Mish became an ONNX operator in opset 18; onnxruntime runs opset 18 from version 1.14.
OPSET = 18
ACTION, CHUNK, NOISE = "action", "action_chunk", "noise"
INSTALL_HINT = "install the export extra: pip install 'drift-policy[export]'"


def export_onnx(policy: "Policy", path: str | Path) -> Path:
    """Write the policy as `path` (ONNX, batch size left dynamic) and its interface as `path`.json."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"export path {path} must end in .onnx (its interface is written beside it as {path.stem}.json)")
    path.parent.mkdir(parents=True, exist_ok=True)
    graph, was_training = _PolicyGraph(policy), policy.training
    example = graph.example_inputs(batch=2)
    names = [*graph.obs_keys, NOISE]
    # The TorchScript exporter (dynamo=False, deprecated but present in the pinned torch 2.14): torch's default
    # dynamo exporter needs onnxscript and onnx-ir besides onnx, and took 9x longer on the unrolled DDIM-10
    # (493 vs 57 s side by side on this 2-core machine), with the same parity. Tracing's shape checks in the
    # models only warn (TracerWarning): they hold for the traced shapes, and the batch size stays dynamic.
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            torch.onnx.export(
                graph.eval(), tuple(example), str(tmp), dynamo=False, opset_version=OPSET, input_names=names,
                output_names=[ACTION, CHUNK], dynamic_axes={name: {0: "batch"} for name in [*names, ACTION, CHUNK]},
            )
    finally:
        policy.train(was_training)
    tmp.replace(path)  # written whole or not at all
    write_text(path.with_suffix(".json"), json.dumps(graph.interface(), indent=2))
    return path


class _PolicyGraph(nn.Module):
    """predict_action with explicit noise, written so that tracing records the whole computation."""

    def __init__(self, policy: "Policy") -> None:
        super().__init__()
        self.policy = policy
        self.obs_keys = list(policy.obs_meta)
        self.steps = _denoise_steps(policy) if policy.uses_timestep else []
        self.n_noise = 1 + sum(step["sigma"] > 0 for step in self.steps)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        policy = self.policy
        cond = policy.encode(dict(zip(self.obs_keys, inputs)))
        noise = inputs[-1]
        if not policy.uses_timestep:  # drift: one U-Net evaluation
            chunk = policy.model(noise[:, 0] * policy.noise_std, cond)
        else:  # diffusion: the scheduler loop, unrolled
            chunk, drawn = noise[:, 0], 1
            for step in self.steps:
                eps = policy.model(chunk, cond, torch.tensor(step["t"]))
                x0 = ((chunk - step["sqrt_one_minus_alpha"] * eps) / step["sqrt_alpha"]).clamp(-step["clip"], step["clip"])
                if step["c_x"]:  # DDPM: posterior mean, plus noise except in the last step
                    chunk = step["c_x0"] * x0 + step["c_x"] * chunk
                else:  # DDIM, eta = 0
                    chunk = step["c_x0"] * x0 + step["c_eps"] * eps
                if step["sigma"]:
                    chunk, drawn = chunk + step["sigma"] * noise[:, drawn], drawn + 1
        chunk = policy.normalizer.unnormalize("action", chunk.clamp(-1.0, 1.0))
        start = policy.n_obs_steps - 1
        return chunk[:, start : start + policy.n_action_steps], chunk

    def example_inputs(self, batch: int) -> list[Tensor]:
        """Zero observations of the right dtypes and shapes, and noise [B, n_noise, T, Da]."""
        policy = self.policy
        device = policy.normalizer.device
        obs = [torch.zeros(batch, policy.n_obs_steps, *meta["shape"], device=device,
                           dtype=torch.uint8 if meta.get("type") == "rgb" else torch.float32) for meta in policy.obs_meta.values()]
        return [*obs, torch.zeros(batch, self.n_noise, policy.horizon, policy.action_dim, device=device)]

    def interface(self) -> dict[str, Any]:
        """The JSON beside the .onnx file: what a deployment needs to feed the graph and read its outputs."""
        policy = self.policy
        t, da = policy.horizon, policy.action_dim
        inputs = [{"name": key, "shape": ["batch", policy.n_obs_steps, *meta["shape"]],
                   "dtype": "uint8" if meta.get("type") == "rgb" else "float32"} for key, meta in policy.obs_meta.items()]
        inputs.append({"name": NOISE, "shape": ["batch", self.n_noise, t, da], "dtype": "float32",
                       "doc": "standard normal; the graph scales it by noise_std"})
        outputs = [{"name": ACTION, "shape": ["batch", policy.n_action_steps, da], "dtype": "float32"},
                   {"name": CHUNK, "shape": ["batch", t, da], "dtype": "float32"}]
        return {"format": "onnx", "opset": OPSET, "policy_type": policy.policy_type, "inputs": inputs, "outputs": outputs,
                "obs_keys": self.obs_keys, "obs_meta": policy.obs_meta, "n_obs_steps": policy.n_obs_steps,
                "horizon": t, "n_action_steps": policy.n_action_steps, "action_dim": da, "n_noise": self.n_noise,
                "noise_std": float(getattr(policy, "noise_std", 1.0)), "nfe": policy.nfe,
                "sampler": policy.config.get("sampler")}


def _denoise_steps(policy: Any) -> list[dict[str, float]]:
    """Per-step constants of the policy's diffusers scheduler, float32 scalars computed as its step() does.

    x0 = clip((x - sqrt(1 - a_t) eps) / sqrt(a_t)), then DDPM: x <- c_x0 x0 + c_x x + sigma z (the posterior
    mean and its "fixed_small" std, no noise at t = 0); DDIM (eta = 0): x <- c_x0 x0 + c_eps eps.
    """
    scheduler, config = policy.sample_scheduler, policy.sample_scheduler.config
    kind = type(scheduler).__name__
    expected = {"prediction_type": "epsilon", "thresholding": False, "variance_type": "fixed_small"}
    bad = {k: config.get(k) for k, v in expected.items() if config.get(k, v) != v}
    if kind not in ("DDPMScheduler", "DDIMScheduler") or bad:
        raise ValueError(f"ONNX export supports DDPM/DDIM schedulers with {expected}; this policy's {kind} has {bad}")
    scheduler.set_timesteps(policy.num_inference_steps)
    alphas = scheduler.alphas_cumprod  # float32, as the scheduler uses it
    timesteps = [int(t) for t in scheduler.timesteps]
    clip = float(config.clip_sample_range) if config.clip_sample else float("inf")
    steps = []
    for i, t in enumerate(timesteps):
        a_t = alphas[t]
        step = {"t": t, "sqrt_alpha": a_t ** 0.5, "sqrt_one_minus_alpha": (1 - a_t) ** 0.5, "clip": clip}
        if kind == "DDPMScheduler":  # the previous timestep is the next in the list, 1 after the last
            a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else scheduler.one
            beta_t = 1 - a_t / a_prev
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
            step.update(c_x0=a_prev ** 0.5 * beta_t / (1 - a_t), c_x=(a_t / a_prev) ** 0.5 * (1 - a_prev) / (1 - a_t),
                        c_eps=0.0, sigma=variance ** 0.5 if t > 0 else 0.0)
        else:
            prev = t - config.num_train_timesteps // policy.num_inference_steps
            a_prev = alphas[prev] if prev >= 0 else scheduler.final_alpha_cumprod
            step.update(c_x0=a_prev ** 0.5, c_x=0.0, c_eps=(1 - a_prev) ** 0.5, sigma=0.0)
        steps.append({k: float(v) for k, v in step.items()} | {"t": t})
    return steps


class OnnxPolicy:
    """An exported policy run by onnxruntime: predict_action(obs) as Policy's, without torch at run time.

    Noise comes from `generator` if given, else from the runner's own numpy generator (seeded at load),
    or is passed in as `noise` [B, n_noise, T, Da].
    """

    def __init__(self, session: Any, interface: Mapping[str, Any], seed: int | None = None) -> None:
        self.session, self.interface = session, dict(interface)
        self.obs_meta: dict[str, dict] = self.interface["obs_meta"]
        self.n_obs_steps, self.n_action_steps = int(self.interface["n_obs_steps"]), int(self.interface["n_action_steps"])
        self.horizon, self.action_dim = int(self.interface["horizon"]), int(self.interface["action_dim"])
        self.n_noise, self.policy_type = int(self.interface["n_noise"]), self.interface["policy_type"]
        self.rng = np.random.default_rng(seed)

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None, seed: int | None = None) -> "OnnxPolicy":
        """Open `path` (.onnx) and its .json; num_threads sets onnxruntime's intra-op threads (None: all cores)."""
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(f"running an exported policy needs onnxruntime; {INSTALL_HINT}") from err
        path = Path(path)
        meta = path.with_suffix(".json")
        absent = [p.name for p in (path, meta) if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"{path.parent} has no {absent}; write both with policy.export({str(path)!r})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or 0  # 0: onnxruntime's default, one thread per core
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, json.loads(meta.read_text()), seed)

    def reset(self) -> None:
        """Nothing to forget (predict_action keeps no state); here for the env runner's policy protocol."""

    def predict_action(self, obs: Mapping[str, Any], full_chunk: bool = False, noise: np.ndarray | None = None,
                       generator: NoiseSource | Sequence[NoiseSource] | None = None) -> np.ndarray:
        """Action chunk in env units: [B, Ta, Da] ([Ta, Da] for an unbatched history), all T steps with full_chunk.
        `generator` may be one list entry per batch row (as the evaluation's runner passes, one per episode)."""
        arrays, batched = self._check_obs(obs)
        batch = len(next(iter(arrays.values())))
        shape = (batch, self.n_noise, self.horizon, self.action_dim)
        if noise is None:
            noise = self._draw_noise(shape, generator)
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != shape:
            raise ValueError(f"noise must have shape {shape} (batch, n_noise, T, Da) for this observation batch, got {noise.shape}")
        (actions,) = self.session.run([CHUNK if full_chunk else ACTION], {**arrays, NOISE: noise})
        return actions if batched else actions[0]

    def _draw_noise(self, shape: tuple[int, ...], generator: NoiseSource | Sequence[NoiseSource] | None) -> np.ndarray:
        """Standard normal noise [B, n_noise, T, Da]; with a list, row i comes from generator[i] draw by draw (a torch
        generator gives a drift policy's row exactly the noise the torch policy would draw from it)."""
        if not isinstance(generator, (list, tuple)):
            source = self.rng if generator is None else generator
            return np.stack([_normal(source, shape[2:], shape[0]) for _ in range(shape[1])], axis=1)
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per batch row")
        return np.stack([np.stack([_normal(g, shape[2:], 1)[0] for _ in range(shape[1])]) for g in generator])

    def _check_obs(self, obs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
        """Policy's input rules (check_obs_history)."""
        arrays, batched, _ = check_obs_history(obs, self.obs_meta, self.n_obs_steps)
        return arrays, batched


NoiseSource = Union[np.random.Generator, torch.Generator]


def _normal(source: NoiseSource, shape: tuple[int, ...], batch: int) -> np.ndarray:
    """[batch, *shape] standard normal float32 from a numpy or torch generator."""
    if isinstance(source, torch.Generator):
        return torch.randn((batch, *shape), generator=source).numpy()
    return source.standard_normal((batch, *shape), dtype=np.float32)
