"""Train a policy: `python train_policy.py task=push_t policy=drift` (hydra overrides for any config key).

The run lives in outputs/runs/<task>_<policy>; running the same command again resumes it.
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from drift_policy.training.trainer import train


@hydra.main(config_path="configs", config_name="train_policy", version_base=None)
def main(cfg: DictConfig) -> None:
    policy_dir = train(cfg, HydraConfig.get().runtime.output_dir)
    print(f"Saved policy to {policy_dir}\nEvaluate it with: python eval_policy.py --checkpoint {policy_dir}")


if __name__ == "__main__":
    main()
