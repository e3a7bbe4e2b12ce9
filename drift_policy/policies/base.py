"""One policy interface for every action generator: a typed config, input checks, normalisation, observation
encoding, receding-horizon slicing, a one-observation-at-a-time helper, and save/load.

Subclasses differ only in their config (a `PolicyConfig` dataclass), objective (`compute_loss`) and sampler
(`sample`), so a new variant is a config and ~50 lines, not a copied file.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from drift_policy.atomic import write_files
from drift_policy.models import ChunkMLP, ConditionalUnet1D, ObsEncoder
from drift_policy.normalizer import Normalizer
from drift_policy.observations import ObsHistory, check_obs_history

CONFIG_FILE, WEIGHTS_FILE, NORMALIZER_FILE = "config.json", "model.safetensors", "normalizer.safetensors"
ArrayLike = np.ndarray | Tensor
BACKBONES = ("unet", "mlp")  # the action generator / denoiser: ConditionalUnet1D, or ChunkMLP (low-dim tasks on CPU)
# One generator for the whole batch, or one per batch row (a rollout per env: its noise depends only on its seed).
Generators = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class PolicyConfig:
    """The settings every policy has; a policy's config.json is its config class's fields, and the field defaults
    are the policy's defaults."""

    shape_meta: dict[str, Any]  # {"obs": {key: {"shape": [...], "type": "low_dim" | "rgb"}}, "action": {"shape": [Da]}}
    n_obs_steps: int = 2  # To, observations per prediction
    horizon: int = 16  # T, predicted steps
    n_action_steps: int = 8  # Ta, executed steps
    backbone: str = "unet"  # the network over the action chunk, one of BACKBONES; set with +policy.backbone=mlp
    unet: dict[str, Any] = field(default_factory=dict)  # ConditionalUnet1D's down_dims, kernel_size, n_groups, time_embed_dim
    mlp: dict[str, Any] = field(default_factory=dict)  # ChunkMLP's hidden_dim, n_blocks, time_embed_dim (backbone=mlp)
    obs_encoder: dict[str, Any] = field(default_factory=dict)  # ObsEncoder's crop_shape, layers, num_keypoints, ...
    task: dict[str, Any] = field(default_factory=dict)  # the task config (env, max_steps, ...), for evaluation

    def __post_init__(self) -> None:
        for name in ("shape_meta", "unet", "mlp", "obs_encoder", "task"):  # hydra hands OmegaConf containers
            object.__setattr__(self, name, _plain(getattr(self, name) or {}))
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {list(BACKBONES)} (settings in policy.unet or policy.mlp), "
                             f"got {self.backbone!r}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps must fit in the horizon, got {self.n_obs_steps}, "
                             f"{self.n_action_steps}, {self.horizon}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PolicyConfig":
        """The config from its fields by name (config.json, hydra's keyword arguments); unknown names are refused."""
        names = sorted(f.name for f in fields(cls))
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__} has no setting(s) {unknown}; its settings are {names}: remove or rename "
                             f"{'it' if len(unknown) == 1 else 'them'}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-able Python (nested dataclasses as dicts, tuples as lists)."""
        return _plain(asdict(self))


class Policy(nn.Module):
    """Observation history in, action chunk out; subclasses implement `compute_loss` and `sample`."""

    registry: ClassVar[dict[str, type["Policy"]]] = {}
    policy_type: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]]
    uses_timestep: ClassVar[bool]  # whether the backbone gets a diffusion-step input
    n_noise: int = 1  # standard-normal draws [B, T, Da] per chunk: the initial sample, plus one per noisy sampler step
    extra_positives: int = 0  # training batches carry "neighbor_action" [B, k, T, Da] when k > 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Policy.registry[cls.policy_type] = cls

    def __init__(self, config: PolicyConfig | None = None, **settings: Any) -> None:
        """Build from a config, or from its fields as keyword arguments (how hydra's `_target_` builds a policy)."""
        super().__init__()
        if config is None:
            config = self.config_class.from_dict(settings)
        elif settings or not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes one {self.config_class.__name__} or its fields as keyword "
                            f"arguments, got {type(config).__name__} and {sorted(settings)}")
        self.config = config
        self.obs_meta: dict[str, dict] = config.shape_meta["obs"]
        self.action_dim = int(config.shape_meta["action"]["shape"][0])
        self.n_obs_steps, self.horizon, self.n_action_steps = config.n_obs_steps, config.horizon, config.n_action_steps
        self.normalizer = Normalizer()
        self.obs_encoder = ObsEncoder(self.obs_meta, config.n_obs_steps, **config.obs_encoder)
        self.model = self._build_backbone(config)
        self._history = ObsHistory(self.obs_meta, config.n_obs_steps)
        self._plan: deque[np.ndarray] = deque()

    def _build_backbone(self, config: PolicyConfig) -> nn.Module:
        """The network over the action chunk that config.backbone names, with a diffusion-step input only when the
        policy uses one (its time_embed_dim then defaults to 128)."""
        kwargs = dict(config.mlp if config.backbone == "mlp" else config.unet)
        kwargs["time_embed_dim"] = kwargs.get("time_embed_dim", 128) if self.uses_timestep else None
        if config.backbone == "mlp":
            return ChunkMLP(self.action_dim, self.cond_dim, config.horizon, **kwargs)
        return ConditionalUnet1D(self.action_dim, self.cond_dim, **kwargs)

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning vector the backbone's FiLM layers read: the encoded observation."""
        return self.obs_encoder.output_dim

    # --- what subclasses provide -------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a raw (un-normalised) batch {"obs": {key: [B, To, ...]}, "action": [B, T, Da]}."""
        raise NotImplementedError

    def sample(self, cond: Tensor, noise: Tensor) -> Tensor:
        """Normalised action chunks [B, T, Da] for features cond [B, C] and standard-normal noise [B, n_noise, T, Da]:
        the one place a policy turns noise into actions, run by predict_action and traced by the ONNX export."""
        raise NotImplementedError

    @property
    def nfe(self) -> int:
        """Network evaluations per predicted chunk."""
        raise NotImplementedError

    # --- shared machinery --------------------------------------------------------------------
    def draw_noise(self, batch: int, device: torch.device, generator: Generators = None) -> Tensor:
        """Standard normal [B, n_noise, T, Da], draw k (a [B, T, Da]) at noise[:, k]; with a list, row i comes from
        generator[i] only, so an episode's noise depends on its own generator and not on the batch."""
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}; pass one per batch row")
        shape = (batch, self.horizon, self.action_dim)
        draws = [randn_tensor(shape, generator=generator, device=device) for _ in range(self.n_noise)]
        return torch.stack(draws, dim=1) if len(draws) > 1 else draws[0][:, None]

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Normalise low-dim observations and encode the history to conditioning features [B, C]."""
        return self.obs_encoder(self.normalizer.normalize_dict(obs))

    def generate(self, obs: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """Action chunks [B, T, Da] in env units for observation tensors {key: [B, To, ...]} and noise
        [B, n_noise, T, Da]: what predict_action computes and the ONNX export traces."""
        return self.normalizer.unnormalize("action", self.sample(self.encode(obs), noise))

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
        noise = self.draw_noise(next(iter(tensors.values())).shape[0], self.normalizer.device, generator)
        actions = self.generate(tensors, noise)
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
        self._history.append(obs)
        if not self._plan:
            self._plan.extend(self.predict_action(self._history.stacked()))
        return self._plan.popleft()

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

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json (the policy type and its config), model.safetensors and normalizer.safetensors, all or
        none: a crash or a full disk (DiskFullError naming the path) leaves the folder's previous policy as it was."""
        directory = Path(directory)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("normalizer.")}
        stats = {k: v.detach().cpu().contiguous() for k, v in self.normalizer.state_dict().items()}
        config = {"policy_type": self.policy_type, **self.config.to_dict()}
        write_files({directory / WEIGHTS_FILE: save_safetensors(weights), directory / NORMALIZER_FILE: save_safetensors(stats),
                     directory / CONFIG_FILE: json.dumps(config, indent=2).encode()})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> "Policy":
        """Load any saved policy from its directory, with no training config needed. `overrides` replace saved
        settings, for the inference ones: e.g. sampler="ddim", num_inference_steps=10, or sample_noise_scale=0.5."""
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
        cls = Policy.registry[kind]
        try:  # from_dict names an unknown setting, whether config.json or an override brought it
            policy = cls(cls.config_class.from_dict({**config, **overrides}))
        except (TypeError, ValueError, KeyError) as err:
            source = f"{files[0]} with the overrides {overrides}" if overrides else str(files[0])
            raise ValueError(f"{source} does not describe a valid {kind} policy: {err}") from None
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


def _plain(value: Any) -> Any:
    """Hydra/OmegaConf containers and tuples to plain JSON-able Python."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
