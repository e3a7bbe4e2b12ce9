"""The data folder, installed as drift_policy.demos: the shipped Push-T demonstrations, the scripted experts' files
(generated/) and the generator that makes them (python -m drift_policy.demos.generate)."""
