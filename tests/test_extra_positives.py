"""Extra positives for a drift group: the action chunks of the nearest observations in other Push-T demos."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from drift_policy.training.trainer import build_dataset, build_policy

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose("train_policy", overrides=["policy.unet.down_dims=[16,32,64]", *overrides])


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(_cfg().task)


def test_neighbours_come_from_other_episodes_and_act_like_the_window(dataset):
    indices = np.arange(0, 6400, 100)
    neighbors = dataset.neighbor_actions(indices, k=4)
    own = dataset.get_batch(indices)["action"]
    assert neighbors.shape == (64, 4, 16, 2)
    features, episode = dataset._neighbor_index
    found = torch.cdist(features[indices], features).argsort(dim=1)  # recompute: no neighbour shares the window's episode
    first_other = [int(next(j for j in row if episode[j] != episode[i])) for i, row in zip(indices, found)]
    np.testing.assert_allclose(neighbors[:, 0], dataset.get_batch(np.array(first_other))["action"])
    near = (neighbors - own[:, None]).abs().mean()
    shuffled = (own[torch.randperm(64, generator=torch.Generator().manual_seed(0))] - own).abs().mean()
    assert near < 0.5 * shuffled  # measured 29 px against 119 px for random windows


@pytest.mark.parametrize("drift_on", ["chunk", "timestep"])
def test_drift_loss_with_extra_positives_trains_the_generator(dataset, drift_on):
    policy = build_policy(_cfg("policy.extra_positives=3", f"policy.drift_on={drift_on}"))
    policy.fit_normalizer(dataset.normalizer_data())
    indices = np.arange(8)
    batch = dataset.get_batch(indices)
    batch["neighbor_action"] = dataset.neighbor_actions(indices, 3)
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and policy.model.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="neighbor_action"):
        policy.compute_loss(dataset.get_batch(indices))
