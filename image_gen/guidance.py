"""Training-time guidance: the scale alpha and the weight of the unconditional negatives it implies.

With N generated samples per class (N - 1 of them repel a given sample, the self pair is masked) and
N_unc real samples of other classes as extra negatives of weight w each, the negative distribution is
(1 - g) q + g p_unc with g = (alpha - 1) / alpha when w = (alpha - 1)(N - 1) / N_unc; the generator is
conditioned on alpha, so sampling stays one step at any chosen alpha.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def sample_alpha(
    n: int,
    alpha_max: float = 4.0,
    power: float = 3.0,
    p_one: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """n scales: exactly 1 with probability p_one, else density proportional to alpha^-power on [1, alpha_max]."""
    if alpha_max < 1 or power <= 1 or not 0 <= p_one <= 1:
        raise ValueError(f"need alpha_max >= 1, power > 1, 0 <= p_one <= 1; got {alpha_max}, {power}, {p_one}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    # Inverse CDF of a^-power on [1, alpha_max]: F(a) = (1 - a^(1-power)) / (1 - alpha_max^(1-power)).
    tail = 1 - alpha_max ** (1 - power)
    alpha = (1 - u * tail) ** (1 / (1 - power))
    one = torch.rand(n, generator=generator) < p_one
    return torch.where(one, torch.ones_like(alpha), alpha).float()


def unconditional_weight(alpha: Tensor, n_gen: int, n_unc: int) -> Tensor:
    """Per-group weight (alpha - 1)(n_gen - 1) / n_unc of each unconditional negative (0 at alpha = 1)."""
    if n_unc <= 0:
        raise ValueError(f"guidance needs unconditional negatives, got n_unc={n_unc}")
    if (alpha < 1).any():
        raise ValueError(f"alpha must be >= 1, got min {alpha.min().item()}")
    return (alpha - 1) * (n_gen - 1) / n_unc
