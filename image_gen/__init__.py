"""ImageNet-scale one-step drifting generators that reuse the drift core of `drift_policy.drift`."""
