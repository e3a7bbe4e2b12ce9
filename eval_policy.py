"""Evaluate a saved policy: `python eval_policy.py --rollouts 50` (the same as `python -m drift_policy.eval`)."""
from drift_policy.eval import main

if __name__ == "__main__":
    main()
