"""A slow reference for V, written term by term from the paper's equations with Python loops.

It exists only to check the vectorised field (tests) and to time it against (bench/drift_speed.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from drift_policy.drift.field import SELF_MASK_DISTANCE, DriftConfig


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def reference_drift(
    gen: Tensor, pos: Tensor, neg: Tensor | None = None, neg_weight: Tensor | None = None,
    config: DriftConfig = DriftConfig(),
) -> Tensor:
    """V [G, N, D] (scaled units) by explicit loops over groups, samples, targets and temperatures."""
    g_count, n, d = gen.shape
    gen, pos = gen.double(), pos.double()
    neg = gen.new_zeros(g_count, 0, d) if neg is None else neg.double()
    m = neg.shape[1]
    w_neg = torch.ones(g_count, m, dtype=torch.float64) if neg_weight is None else neg_weight.double().expand(g_count, m)

    def group_terms(g: int):
        targets = [gen[g, j] for j in range(n)] + [neg[g, j] for j in range(m)] + [pos[g, j] for j in range(pos.shape[1])]
        weights = [1.0] * n + [float(w) for w in w_neg[g]] + [1.0] * pos.shape[1]
        # the paper's distance: sqrt(max(|x - y|^2, 1e-8)), so the self distance is 1e-4, not 0
        dist = [[math.sqrt(max(float(((gen[g, i] - t) ** 2).sum()), 1e-8)) for t in targets] for i in range(n)]
        return targets, weights, dist

    terms = [group_terms(g) for g in range(g_count)]

    def scale_of(groups: list[int]) -> float:
        wd = [terms[g][2][i][j] * terms[g][1][j] for g in groups for i in range(n) for j in range(len(terms[g][1]))]
        ws = [w for g in groups for w in terms[g][1]]
        return (sum(wd) / len(wd)) / (sum(ws) / len(ws))

    all_groups = list(range(g_count))
    scales = [scale_of(all_groups if config.stats_over == "batch" else [g]) for g in all_groups]

    forces = torch.zeros(len(config.temperatures), g_count, n, d, dtype=torch.float64)
    for g in all_groups:
        targets, weights, dist = terms[g]
        in_scale = max(scales[g] / math.sqrt(d), config.min_scale)
        norm = [[dist[i][j] / max(scales[g], 1e-3) + (SELF_MASK_DISTANCE if j == i else 0.0)
                 for j in range(len(targets))] for i in range(n)]
        for k, tau in enumerate(config.temperatures):
            logits = [[-v / tau for v in row] for row in norm]
            row_sm = [_softmax(row) for row in logits]
            col_sm_t = [_softmax([logits[i][j] for i in range(n)]) for j in range(len(targets))]
            for i in range(n):
                if config.kernel_norm == "both":
                    a = [math.sqrt(max(row_sm[i][j] * col_sm_t[j][i], 1e-6)) for j in range(len(targets))]
                elif config.kernel_norm == "targets":
                    a = list(row_sm[i])
                else:
                    a = [math.exp(l) for l in logits[i]]
                a = [aj * wj for aj, wj in zip(a, weights)]
                a_neg, a_pos = a[: n + m], a[n + m:]
                v_pos = sum(ap * (targets[n + m + j] - gen[g, i]) for j, ap in enumerate(a_pos)) * sum(a_neg)
                v_neg = sum(an * (targets[j] - gen[g, i]) for j, an in enumerate(a_neg)) * sum(a_pos)
                forces[k, g, i] = (config.attraction * v_pos - config.repulsion * v_neg) / in_scale
    if config.normalize_drift:
        blocks = [forces[k] for k in range(len(config.temperatures))] if config.stats_over == "batch" else \
            [forces[k, g] for k in range(len(config.temperatures)) for g in all_groups]
        for block in blocks:  # views into forces: normalised in place by their own RMS
            block /= math.sqrt(max(float(block.pow(2).mean()), 1e-8))
    return forces.sum(0)
