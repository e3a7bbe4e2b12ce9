"""Policies behind one interface: `Policy.from_pretrained(dir)` loads any of them."""
from drift_policy.policies.base import Policy
from drift_policy.policies.diffusion import DiffusionPolicy
from drift_policy.policies.drift import DriftPolicy

__all__ = ["Policy", "DriftPolicy", "DiffusionPolicy"]
