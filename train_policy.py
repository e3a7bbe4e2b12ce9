"""Train a policy: `python train_policy.py task=push_t policy=drift` (the same as `python -m drift_policy.train`)."""
from drift_policy.train import main

if __name__ == "__main__":
    main()
