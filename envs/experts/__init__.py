"""Scripted experts that write demonstrations. Each module exposes `collect_episode(seed, image=False, **kw) -> dict`
(obs, actions, states, success) and `env_args(image=False, **kw) -> dict`; drift_policy.demos.generate picks one by task name."""
