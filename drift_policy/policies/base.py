"""One policy interface for every action generator: input checks, normalisation, observation encoding,
receding-horizon slicing, a one-observation-at-a-time helper, and save/load.

Subclasses differ only in their objective (`compute_loss`) and sampler (`sample`), so a new variant is
a config and ~50 lines, not a copied file.
"""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from drift_policy.atomic import write_files
from drift_policy.models import ConditionalUnet1D, ObsEncoder
from drift_policy.normalizer import Normalizer

CONFIG_FILE, WEIGHTS_FILE, NORMALIZER_FILE = "config.json", "model.safetensors", "normalizer.safetensors"
ArrayLike = np.ndarray | Tensor
# One generator for the whole batch, or one per batch row (a rollout per env: its noise depends only on its seed).
Generators = torch.Generator | list[torch.Generator] | None


class Policy(nn.Module):
    """Observation history in, action chunk out; subclasses implement `compute_loss` and `sample`."""

    registry: ClassVar[dict[str, type["Policy"]]] = {}
    policy_type: ClassVar[str]
    uses_timestep: ClassVar[bool]  # whether the U-Net gets a diffusion-step input
    extra_positives: int = 0  # training batches carry "neighbor_action" [B, k, T, Da] when k > 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Policy.registry[cls.policy_type] = cls

    def __init__(
        self,
        shape_meta: Mapping[str, Any],
        n_obs_steps: int = 2,
        horizon: int = 16,
        n_action_steps: int = 8,
        unet: Mapping[str, Any] | None = None,
        obs_encoder: Mapping[str, Any] | None = None,
        task: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps must fit in the horizon, got {n_obs_steps}, {n_action_steps}, {horizon}")
        self.shape_meta = _plain(shape_meta)
        self.obs_meta: dict[str, dict] = self.shape_meta["obs"]
        self.action_dim = int(self.shape_meta["action"]["shape"][0])
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.normalizer = Normalizer()
        self.obs_encoder = ObsEncoder(self.obs_meta, n_obs_steps, **(obs_encoder or {}))
        unet_kwargs = dict(unet or {})
        if not self.uses_timestep:
            unet_kwargs["time_embed_dim"] = None
        self.model = ConditionalUnet1D(self.action_dim, self.obs_encoder.output_dim, **unet_kwargs)
        # Everything needed to rebuild this policy without the training config (saved as config.json).
        self.init_kwargs: dict[str, Any] = {
            "shape_meta": self.shape_meta, "n_obs_steps": n_obs_steps, "horizon": horizon,
            "n_action_steps": n_action_steps, "unet": unet or {}, "obs_encoder": obs_encoder or {}, "task": task or {},
        }
        self._history: deque[dict[str, ArrayLike]] = deque(maxlen=n_obs_steps)
        self._plan: deque[np.ndarray] = deque()

    # --- what subclasses provide -------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a raw (un-normalised) batch {"obs": {key: [B, To, ...]}, "action": [B, T, Da]}."""
        raise NotImplementedError

    def sample(self, cond: Tensor, generator: Generators = None) -> Tensor:
        """Normalised action chunks [B, T, Da] for observation features cond [B, C]; a list of generators
        draws row i's noise from generator[i] only."""
        raise NotImplementedError

    def initial_noise(self, batch: int, device: torch.device, generator: Generators = None) -> Tensor:
        """Standard normal [B, T, Da], row i drawn from generator[i] when a list is given."""
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}; pass one per batch row")
        return randn_tensor((batch, self.horizon, self.action_dim), generator=generator, device=device)

    @property
    def nfe(self) -> int:
        """Network evaluations per predicted chunk."""
        raise NotImplementedError

    # --- shared machinery --------------------------------------------------------------------
    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Normalise low-dim observations and encode the history to conditioning features [B, C]."""
        return self.obs_encoder(self.normalizer.normalize_dict(obs))

    def fit_normalizer(self, data: Mapping[str, np.ndarray]) -> None:
        """Fit the min-max normaliser on the dataset's low-dim observations and actions."""
        self.normalizer.fit(data)

    @torch.inference_mode()
    def predict_action(self, obs: Mapping[str, ArrayLike], full_chunk: bool = False, generator: Generators = None) -> ArrayLike:
        """Action chunk to execute, in env units: [B, Ta, Da] ([Ta, Da] for an unbatched history).

        obs maps every observation key to its history [B, To, ...] or [To, ...] (numpy or torch);
        full_chunk=True returns all T predicted steps instead of the Ta executed ones; generator (one, or
        one per batch row) makes the sampling noise reproducible.
        """
        tensors, batched, as_numpy = self._check_obs(obs)
        actions = self.normalizer.unnormalize("action", self.sample(self.encode(tensors), generator))
        if not torch.isfinite(actions).all():
            raise FloatingPointError(self._non_finite_actions_message(tensors))
        if not full_chunk:
            start = self.n_obs_steps - 1
            actions = actions[:, start : start + self.n_action_steps]
        actions = actions if batched else actions[0]
        return actions.cpu().numpy() if as_numpy else actions

    def reset(self) -> None:
        """Forget the observation history and the remaining planned actions (start of an episode)."""
        self._history.clear()
        self._plan.clear()

    def step(self, obs: Mapping[str, ArrayLike]) -> np.ndarray:
        """One observation in, one action [Da] out: keeps the history and replans every Ta steps."""
        self._history.append(self._check_frame(obs))
        if not self._plan:
            frames = list(self._history)
            frames = [frames[0]] * (self.n_obs_steps - len(frames)) + frames  # pad like the dataset does
            history = {k: np.stack([f[k] for f in frames]) for k in self.obs_meta}
            self._plan.extend(self.predict_action(history))
        return self._plan.popleft()

    def _check_keys(self, obs: Mapping[str, ArrayLike]) -> None:
        """obs must be a dict holding every observation key."""
        if not isinstance(obs, Mapping):
            raise ValueError(f"obs must be a dict with keys {sorted(self.obs_meta)}, got {type(obs).__name__}")
        missing = [k for k in self.obs_meta if k not in obs]
        if missing:
            raise ValueError(f"obs is missing key(s) {missing}; expected keys {sorted(self.obs_meta)}")

    def _check_frame(self, obs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        """One observation for step(): every key, each value one frame of its shape and finite (as float32)."""
        self._check_keys(obs)
        frame = {}
        for key, meta in self.obs_meta.items():
            value = obs[key]
            value = np.asarray(value.cpu() if isinstance(value, Tensor) else value)
            shape = tuple(meta["shape"])
            if value.shape != shape:
                history = value.ndim > len(shape) and value.shape[value.ndim - len(shape):] == shape
                raise ValueError(f"obs[{key!r}] has shape {value.shape}; step(obs) takes one frame of shape {shape}" +
                                 ("; pass histories [To, ...] or [B, To, ...] to predict_action" if history else ""))
            if value.dtype.kind == "f" and not np.isfinite(value.astype(np.float32)).all():
                raise ValueError(f"obs[{key!r}] contains NaN or infinite values (or values beyond float32's 3.4e38)")
            frame[key] = value
        return frame

    def _check_obs(self, obs: Mapping[str, ArrayLike]) -> tuple[dict[str, Tensor], bool, bool]:
        """Validate keys, shapes, dtypes and finiteness; return batched tensors on the policy's device."""
        arrays, batched, as_numpy = check_obs_history(obs, self.obs_meta, self.n_obs_steps)
        device = self.normalizer.device
        return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}, batched, as_numpy

    def _non_finite_actions_message(self, tensors: Mapping[str, Tensor]) -> str:
        """Why sampling gave NaN/inf: usually an observation far outside the range the normaliser was fitted on."""
        spans = {k: float(self.normalizer.normalize(k, v).abs().max()) for k, v in tensors.items() if k in self.normalizer.keys}
        worst = max(spans, key=spans.get, default=None)
        cause = (f"; obs[{worst!r}] is {spans[worst]:.3g} after normalisation, where the training data spans [-1, 1]: "
                 "check its units" if worst is not None and spans[worst] > 10 else "")
        return f"the {self.policy_type} policy generated NaN or infinite actions{cause}"

    @property
    def config(self) -> dict[str, Any]:
        return _plain({"policy_type": self.policy_type, **self.init_kwargs})

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors and normalizer.safetensors, all or none: a crash or a full disk
        (DiskFullError naming the path) leaves the folder's previous policy as it was."""
        directory = Path(directory)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("normalizer.")}
        stats = {k: v.detach().cpu().contiguous() for k, v in self.normalizer.state_dict().items()}
        write_files({directory / WEIGHTS_FILE: save_safetensors(weights), directory / NORMALIZER_FILE: save_safetensors(stats),
                     directory / CONFIG_FILE: json.dumps(self.config, indent=2).encode()})
        return directory

    def export(self, path: str | Path, format: str = "onnx") -> Path:
        """Write predict_action as one ONNX graph (noise an input) plus a JSON of its interface, for control
        loops without the training stack; run it with drift_policy.export.OnnxPolicy.load(path)."""
        if format != "onnx":
            raise ValueError(f"export format {format!r} is not supported; use format='onnx'")
        from drift_policy.export import export_onnx  # torch.onnx loads only when exporting

        return export_onnx(self, path)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "Policy":
        """Load any saved policy from its directory, with no training config needed."""
        directory = Path(directory)
        files = [directory / f for f in (CONFIG_FILE, WEIGHTS_FILE, NORMALIZER_FILE)]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise FileNotFoundError(f"{directory} is not a saved policy: missing {absent}. Pass the 'policy' folder of a run (outputs/runs/<name>/policy).")
        try:
            config = json.loads(files[0].read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{files[0]} is not valid JSON ({err}); the saved policy is damaged: save it again") from None
        kind = config.pop("policy_type", None) if isinstance(config, dict) else None
        if kind not in Policy.registry:
            raise ValueError(f"{files[0]} names policy_type {kind!r}; known types: {sorted(Policy.registry)}")
        try:
            policy = Policy.registry[kind](**config)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{files[0]} does not describe a valid {kind} policy: {err}") from None
        weights = _read_safetensors(files[1])
        problem = _weights_problem(policy, weights)
        if problem:
            raise ValueError(f"{files[1]} does not fit {files[0]}: {problem}")
        policy.load_state_dict(weights, strict=False)
        stats = _read_safetensors(files[2])
        try:
            policy.normalizer.load_state_dict(stats)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{files[2]} is not this policy's normaliser: {err}") from None
        return policy.to(device).eval()


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """load_file, with a truncated or damaged file reported by name."""
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError (and OSError) with a bare message
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it is truncated or damaged: save the "
                         "policy again") from None


def _weights_problem(policy: Policy, weights: Mapping[str, Tensor]) -> str | None:
    """Why `weights` cannot load into `policy` (another policy type, other keys or shapes), or None."""
    with_timestep = any(k.startswith("model.time_mlp.") for k in weights)  # the U-Net's diffusion-step embedding
    if with_timestep != policy.uses_timestep:
        kinds = sorted(t for t, c in Policy.registry.items() if c.uses_timestep == with_timestep)
        return (f"the weights are a {' or '.join(kinds)} policy's (with{'' if with_timestep else 'out'} a "
                f"diffusion-step input) but the config is a {policy.policy_type} policy's: the files come from different "
                "policies; copy all three from one policy folder")
    expected = {k: v.shape for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(s)}" for k, s in expected.items() if k in weights and weights[k].shape != s]
    if missing or unexpected or shapes:
        return (f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} of "
                f"another shape (saved vs config) {shapes[:3]}")
    return None


def check_obs_history(obs: Mapping[str, ArrayLike], obs_meta: Mapping[str, Mapping], n_obs_steps: int,
                      ) -> tuple[dict[str, np.ndarray], bool, bool]:
    """The input rules of predict_action, shared with the exported runtime: every key, each value [B, To, ...] or
    [To, ...], one batch size B >= 1, images uint8, low-dim values real and finite as float32. Returns (batched arrays with low-dim as
    float32, whether the input was batched, whether it was numpy)."""
    if not isinstance(obs, Mapping):
        raise ValueError(f"obs must be a dict with keys {sorted(obs_meta)}, got {type(obs).__name__}")
    missing = [k for k in obs_meta if k not in obs]
    if missing:
        raise ValueError(f"obs is missing key(s) {missing}; expected keys {sorted(obs_meta)}")
    arrays, batched = {}, None
    as_numpy = not isinstance(next(iter(obs.values())), Tensor) if obs else True
    for key, meta in obs_meta.items():
        value = obs[key]
        value = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value)
        item = (n_obs_steps, *meta["shape"])  # rgb shapes are [H, W, 3], as stored
        is_batched = value.shape[1:] == item
        if not is_batched and value.shape != item:
            raise ValueError(f"obs[{key!r}] has shape {value.shape}; expected (B, {', '.join(map(str, item))}) or {item}")
        if batched is not None and is_batched != batched:
            raise ValueError(f"obs[{key!r}] is {'' if is_batched else 'not '}batched while other keys are {'' if batched else 'not '}")
        batched = is_batched
        value = value if is_batched else value[None]
        if meta.get("type") == "rgb":
            if value.dtype != np.uint8:
                raise ValueError(f"obs[{key!r}] is an image and must be uint8 [.., H, W, 3] (0-255), got {value.dtype}")
        else:
            if value.dtype != np.bool_ and not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
                raise ValueError(f"obs[{key!r}] has dtype {value.dtype}; low-dim observations must be real numbers (cast to float32)")
            with np.errstate(over="ignore"):
                value = value.astype(np.float32, copy=False)
            if not np.isfinite(value).all():  # after the cast: 1e300 becomes inf
                raise ValueError(f"obs[{key!r}] contains NaN or infinite values (or values beyond float32's 3.4e38)")
        arrays[key] = value
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1 or 0 in sizes.values():
        raise ValueError(f"obs needs the same batch size B >= 1 for every key, got {sizes}")
    return arrays, bool(batched), as_numpy


def _plain(value: Any) -> Any:
    """Hydra/OmegaConf containers and tuples to plain JSON-able Python."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
