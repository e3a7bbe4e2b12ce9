"""Hydra configs of train_policy.py, installed as drift_policy.configs (see pyproject.toml)."""
