"""The drift loss summed over a multi-scale feature set, one class per group, via the shared drift core."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from drift_policy.drift import DriftConfig, drift_loss


def fold_locations(x: Tensor, n_groups: int) -> Tensor:
    """[G*N, L, C] (samples grouped by class) -> [G*L, N, C]: one drift group per (class, location)."""
    gn, length, c = x.shape
    if gn % n_groups:
        raise ValueError(f"{gn} samples do not split into {n_groups} equal class groups")
    return x.view(n_groups, gn // n_groups, length, c).transpose(1, 2).reshape(n_groups * length, -1, c)


def feature_drift_loss(
    gen: dict[str, Tensor],
    pos: dict[str, Tensor],
    n_groups: int,
    unc: Optional[dict[str, Tensor]] = None,
    unc_weight: Optional[Tensor] = None,
    config: DriftConfig = DriftConfig(),
    chunk_groups: Optional[int] = None,
) -> tuple[Tensor, dict[str, float]]:
    """Sum over features of drift_loss(gen, pos, unc negatives weighted per class).

    gen/pos/unc map a feature name to [G*N, L, C] / [G*P, L, C] / [G*U, L, C], samples ordered by
    class group; unc_weight is [G]. Every feature gets its own distance scale and force RMS. The drift
    field of a feature's G*L groups is computed chunk_groups groups at a time (None: all at once).
    """
    total = torch.zeros((), device=next(iter(gen.values())).device)
    raw = torch.zeros(len(config.temperatures))
    for name, g in gen.items():
        length = g.shape[1]
        neg = weight = None
        if unc is not None:
            neg = fold_locations(unc[name], n_groups)
            weight = unc_weight.repeat_interleave(length)[:, None]
        out = drift_loss(fold_locations(g, n_groups), fold_locations(pos[name], n_groups), neg, weight, config,
                         chunk_groups)
        total = total + out.loss
        raw += out.raw_drift.detach().cpu()
    info = {f"drift/raw_tau{t:g}": (r / len(gen)).item() for t, r in zip(config.temperatures, raw)}
    return total, info
