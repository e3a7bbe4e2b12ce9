"""Policies behind one interface: `Policy.from_pretrained(dir)` loads any of them; each has one config dataclass."""
from drift_policy.policies.base import Policy, PolicyConfig
from drift_policy.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from drift_policy.policies.drift import DriftPolicy, DriftPolicyConfig

__all__ = ["Policy", "PolicyConfig", "DriftPolicy", "DriftPolicyConfig", "DiffusionPolicy", "DiffusionPolicyConfig"]
