"""The 2-D toy bench: its mode counting and distance are right, and a collapsed start recovers both modes."""
import pytest
import torch

from bench.toy2d import (EVAL_SAMPLES, TARGETS, ToyConfig, energy_distance, expected_shares, modes_covered,
                         train_toy)

torch.set_num_threads(1)


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_samples_cover_every_mode_and_one_mode_covers_one(name):
    target = TARGETS[name]()
    shares = expected_shares(target, n=20_000)
    assert shares.sum() > 0.95  # nearly every target point lies in some mode
    rng = torch.Generator().manual_seed(1)
    assert modes_covered(target.sample(EVAL_SAMPLES, rng), target, shares) == target.n_modes
    centre, spread = target.inits["collapsed"]
    blob = torch.tensor(centre) + 0.5 * spread * torch.randn(EVAL_SAMPLES, 2, generator=rng)
    assert modes_covered(blob, target, shares) == 1


def test_energy_distance_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = torch.Generator().manual_seed(0)
    x, y = torch.randn(EVAL_SAMPLES, 2, generator=rng), torch.randn(EVAL_SAMPLES, 2, generator=rng)
    assert abs(energy_distance(x, y)) < 0.01
    assert energy_distance(x, y + torch.tensor([1.0, 0.0])) > 0.3


def test_a_generator_collapsed_on_one_mode_drifts_to_cover_both():
    target = TARGETS["bimodal"]()
    run = train_toy(target, "collapsed", ToyConfig(steps=300, eval_every=300))
    assert run.covered[0] == 1 and run.covered[-1] == 2, run.covered
    assert run.energy[-1] < 0.2 * run.energy[0], run.energy


def test_unknown_start_is_refused():
    with pytest.raises(ValueError, match="unknown start 'far'"):
        train_toy(TARGETS["8gaussians"](), "far")
