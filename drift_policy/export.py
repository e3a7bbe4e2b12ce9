"""A policy's whole predict_action as one ONNX graph, and an onnxruntime runner with the same interface.

The graph is Policy.generate traced with the noise an input: the raw observation history (env units; images
uint8) and standard-normal noise [B, n_noise, T, Da] in, actions in env units out (the executed Ta slice
"action" and the whole chunk "action_chunk"). The caller owns the randomness, so a run is reproducible, and the
graph runs the same `sample(cond, noise)` as the torch policy: drift's one U-Net evaluation, or a diffusion
policy's denoising loop unrolled (every step a copy of the U-Net's nodes sharing one set of weights, so the file is
no larger than a drift policy's; the scheduler's update is per-step constants, see policies/diffusion.py). One
session.run per chunk is the whole policy for every type, and a C++ or ROS 2 node needs no scheduler code. DDPM
draws fresh noise in every step but the last, so its n_noise is num_inference_steps; DDIM (eta=0) and drift use 1.

    export_onnx(policy, "policy.onnx")           # writes policy.onnx and policy.json
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
from drift_policy.observations import check_obs_history
from drift_policy.policies import Policy

# Mish became an ONNX operator in opset 18; onnxruntime runs opset 18 from version 1.14.
OPSET = 18
ACTION, CHUNK, NOISE = "action", "action_chunk", "noise"
INSTALL_HINT = "install the export extra: pip install 'drift-policy[export]'"


def export_onnx(policy: Policy, path: str | Path) -> Path:
    """Write the policy's predict_action as `path` (ONNX, batch size left dynamic) and its interface as `path`.json,
    for control loops without the training stack; run it with OnnxPolicy.load(path)."""
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
    """predict_action with explicit noise: Policy.generate, then the executed slice."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy
        self.obs_keys = list(policy.obs_meta)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        policy = self.policy
        chunk = policy.generate(dict(zip(self.obs_keys, inputs)), inputs[-1])
        start = policy.n_obs_steps - 1
        return chunk[:, start : start + policy.n_action_steps], chunk

    def example_inputs(self, batch: int) -> list[Tensor]:
        """Zero observations of the right dtypes and shapes, and noise [B, n_noise, T, Da]."""
        policy = self.policy
        device = policy.normalizer.device
        obs = [torch.zeros(batch, policy.n_obs_steps, *meta["shape"], device=device,
                           dtype=torch.uint8 if meta.get("type") == "rgb" else torch.float32) for meta in policy.obs_meta.values()]
        return [*obs, torch.zeros(batch, policy.n_noise, policy.horizon, policy.action_dim, device=device)]

    def interface(self) -> dict[str, Any]:
        """The JSON beside the .onnx file: what a deployment needs to feed the graph and read its outputs, and the
        task config, for evaluating the exported policy in its simulator."""
        policy, config = self.policy, self.policy.config
        t, da = policy.horizon, policy.action_dim
        inputs = [{"name": key, "shape": ["batch", policy.n_obs_steps, *meta["shape"]],
                   "dtype": "uint8" if meta.get("type") == "rgb" else "float32"} for key, meta in policy.obs_meta.items()]
        inputs.append({"name": NOISE, "shape": ["batch", policy.n_noise, t, da], "dtype": "float32",
                       "doc": "standard normal; the graph scales it by noise_std * sample_noise_scale"})
        outputs = [{"name": ACTION, "shape": ["batch", policy.n_action_steps, da], "dtype": "float32"},
                   {"name": CHUNK, "shape": ["batch", t, da], "dtype": "float32"}]
        return {"format": "onnx", "opset": OPSET, "policy_type": policy.policy_type, "inputs": inputs, "outputs": outputs,
                "obs_keys": self.obs_keys, "obs_meta": policy.obs_meta, "n_obs_steps": policy.n_obs_steps,
                "horizon": t, "n_action_steps": policy.n_action_steps, "action_dim": da, "n_noise": policy.n_noise,
                "noise_std": float(getattr(config, "noise_std", 1.0)),
                "sample_noise_scale": float(getattr(config, "sample_noise_scale", 1.0)), "nfe": policy.nfe,
                "sampler": getattr(config, "sampler", None), "task": config.task}


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
        self.nfe = int(self.interface["nfe"])
        self.task: dict[str, Any] = self.interface.get("task") or {}  # absent in files exported before it was saved
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
            raise FileNotFoundError(f"{path.parent} has no {absent}; write both with export_onnx(policy, {str(path)!r})")
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
        arrays, batched, _ = check_obs_history(obs, self.obs_meta, self.n_obs_steps)  # Policy's input rules
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
        generator gives exactly the noise Policy.draw_noise draws from it, for every policy type)."""
        if not isinstance(generator, (list, tuple)):
            source = self.rng if generator is None else generator
            return np.stack([_normal(source, shape[2:], shape[0]) for _ in range(shape[1])], axis=1)
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per batch row")
        return np.stack([np.stack([_normal(g, shape[2:], 1)[0] for _ in range(shape[1])]) for g in generator])


NoiseSource = Union[np.random.Generator, torch.Generator]


def _normal(source: NoiseSource, shape: tuple[int, ...], batch: int) -> np.ndarray:
    """[batch, *shape] standard normal float32 from a numpy or torch generator."""
    if isinstance(source, torch.Generator):
        return torch.randn((batch, *shape), generator=source).numpy()
    return source.standard_normal((batch, *shape), dtype=np.float32)
