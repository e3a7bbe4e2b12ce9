"""Simulated tasks as gymnasium envs, their rollout runner and scripted experts; installed as drift_policy.envs."""
