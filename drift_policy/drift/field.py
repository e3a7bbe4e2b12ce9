"""The drifting field V and the drift loss of "Generative Modeling via Drifting" (arXiv 2602.04770).

Pure tensor math, no I/O. Everything works on a batch of independent GROUPS (one group = one
condition: an observation for a policy, a class for ImageNet):

    gen [G, N, D]  generated samples, which are also the negatives
    pos [G, P, D]  positives (data samples of the same condition)
    neg [G, M, D]  optional extra negatives with weights [G, M] (classifier-free guidance)

V(x) = V+(x) - V-(x) attracts every generated x toward the positives and repels it from the other
generated samples. The loss mean((x - stopgrad(x + V))^2) has value |V|^2 and gradient -V on x.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

KernelNorm = Literal["both", "targets", "none"]
StatsOver = Literal["group", "batch"]

# Constant added to the normalised gen-gen self distance so a sample does not repel itself.
SELF_MASK_DISTANCE = 100.0


@dataclass(frozen=True)
class DriftConfig:
    """Every knob the paper ablates, so its ablations can be re-run from a config."""

    temperatures: Sequence[float] = (0.02, 0.05, 0.2)
    # "both": sqrt(softmax over targets * softmax over generated samples) (the paper's default);
    # "targets": softmax over targets only; "none": the raw kernel exp(-d / tau).
    kernel_norm: KernelNorm = "both"
    # Divide each temperature's force by its RMS before summing (the paper's default).
    normalize_drift: bool = True
    attraction: float = 1.0  # weight of V+ (1.5 is the paper's "1.5 V+ - V-" ablation)
    repulsion: float = 1.0  # weight of V-
    # Where the distance scale s and the force RMS are computed: per group (groups are fully
    # independent) or over the whole batch of groups (the official ImageNet code's choice).
    stats_over: StatsOver = "group"
    # Each group's loss times (s_g / mean s)^p, detached. V is normalised per group, so a group's gradient on its raw
    # samples grows as s_g^(p-1): at p=0 (the default) as 1/s_g, the groups nearest their positives pulling hardest;
    # p=1 gives every group the same raw-unit pull; p=2 weights groups as one batch-wide scale would. The 1/s_g is
    # what keeps the spread in check: Can at 15 CPU-minutes, 100 episodes, p=1 0.55 and p=2 0.00 (its scale s grew
    # from 3 to 89) against 0.77 at p=0 (bench/README.md).
    group_weight_power: float = 0.0
    # Floor of a group's input scale s / sqrt(D) (the paper's 1e-3 only guards the division). As p=0 pulls a group
    # harder the nearer its samples are to their positives, a policy with one positive per group ends up fitting
    # its training chunks ever more tightly (bench/README.md, fit_gap); a floor in data units caps that pull for
    # groups already within it, leaving the kernel, V and every group farther out as they are.
    min_scale: float = 1e-3

    def __post_init__(self) -> None:
        if len(self.temperatures) == 0 or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be a non-empty list of positive numbers, got {self.temperatures}")
        if self.kernel_norm not in ("both", "targets", "none"):
            raise ValueError(f"kernel_norm must be 'both', 'targets' or 'none', got {self.kernel_norm!r}")
        if self.stats_over not in ("group", "batch"):
            raise ValueError(f"stats_over must be 'group' or 'batch', got {self.stats_over!r}")
        if not -2 <= self.group_weight_power <= 4:
            raise ValueError(f"group_weight_power must be in [-2, 4] (0: the paper's loss per group), got {self.group_weight_power}")
        if not self.min_scale > 0:
            raise ValueError(f"min_scale must be positive (1e-3: the paper's guard; data units per dimension), got {self.min_scale}")


@dataclass
class DriftOutput:
    """The loss and what to watch while training (the loss itself stays near len(temperatures))."""

    loss: Tensor  # [] mean over groups; differentiable w.r.t. gen only
    loss_per_group: Tensor  # [G]
    drift: Tensor  # [G, N, D] V, in the scaled units the loss uses (detached)
    raw_drift: Tensor  # [n_tau] RMS of the un-normalised force per temperature, mean over groups
    scale: Tensor  # [G] distance scale s of each group (equal entries when stats_over="batch")
    info: dict = field(default_factory=dict)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """fp32 at least (half-precision distances are wrong), fp64 when the inputs are fp64."""
    return torch.promote_types(t.dtype, torch.float32)


def pairwise_l2(x: Tensor, y: Tensor) -> Tensor:
    """Plain (not squared) L2 distances [G, N, M] between x [G, N, D] and y [G, M, D], fp32 or wider."""
    dtype = _compute_dtype(x)
    x, y = x.to(dtype), y.to(dtype)
    sq = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2)  # [G, N, M]
    sq = torch.baddbmm(sq, x, y.transpose(1, 2), alpha=-2.0)
    return sq.clamp_min(1e-8).sqrt()


def sample_spread(gen: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """(mean L2 distance between two generated samples of a group, mean distance from a generated sample to a positive),
    averaged over groups; gen [G, N >= 2, D], pos [G, P, D]. For draws of one distribution the two are equal (ratio 1);
    below 1 the generator concentrates its samples more than its error from the data warrants (a collapse, or a bias
    its spread does not cover). A training diagnostic, not a loss: on Can the better policy had the lower ratio."""
    n = gen.shape[1]
    if n < 2:
        raise ValueError(f"the spread of generated samples needs N >= 2 per group, got gen {tuple(gen.shape)}")
    gen_gen = pairwise_l2(gen, gen)
    off_diagonal = (gen_gen.sum((1, 2)) - gen_gen.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))
    return off_diagonal.mean(), pairwise_l2(gen, pos).mean()


def _mean_over(t: Tensor, stats_over: StatsOver) -> Tensor:
    """Mean over all but the group dim ([G]), or over everything broadcast back to [G]."""
    per_group = t.flatten(1).mean(1)
    return per_group.mean().expand_as(per_group) if stats_over == "batch" else per_group


@torch.no_grad()
def drift_field(
    x: Tensor,
    pos: Tensor,
    neg: Tensor,
    neg_weight: Optional[Tensor] = None,
    config: DriftConfig = DriftConfig(),
    self_negatives: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """V at query points x [G, N, D]: attraction to pos [G, P, D], repulsion from neg [G, M, D].

    With self_negatives=True the first N negatives are x itself and the diagonal is masked.
    Returns (V [G, N, D] in scaled units, input scale [G] that x is divided by,
    raw force RMS [n_tau, G], distance scale s [G]).
    """
    g, n, d = x.shape
    m, p = neg.shape[1], pos.shape[1]
    dtype = _compute_dtype(x)
    x = x.detach().to(dtype)
    neg_weight = x.new_ones(g, m) if neg_weight is None else neg_weight.to(x).expand(g, m)
    targets = torch.cat([neg.detach().to(dtype), pos.detach().to(dtype)], dim=1)  # [G, T=M+P, D]
    weights = torch.cat([neg_weight, x.new_ones(g, p)], dim=1)  # [G, T]

    # Global distance scale over every x->target pair, self pairs (~0) included.
    dist = pairwise_l2(x, targets)  # [G, N, T]
    s = _mean_over(dist * weights[:, None, :], config.stats_over) / _mean_over(weights, config.stats_over)  # [G]
    input_scale = (s / d**0.5).clamp_min(config.min_scale)  # mean distance of scaled inputs becomes sqrt(D)
    dist = dist / s.clamp_min(1e-3)[:, None, None]  # normalised mean distance 1
    if self_negatives:
        dist[:, :, :n] += SELF_MASK_DISTANCE * torch.eye(n, dtype=dtype, device=x.device)

    taus = torch.tensor(list(config.temperatures), dtype=dtype, device=x.device)
    logits = -dist.unsqueeze(0) / taus[:, None, None, None]  # [n_tau, G, N, T]
    if config.kernel_norm == "both":
        affinity = (logits.softmax(-1) * logits.softmax(-2)).clamp_min(1e-6).sqrt()
    elif config.kernel_norm == "targets":
        affinity = logits.softmax(-1)
    else:
        affinity = logits.exp()
    affinity = affinity * weights[None, :, None, :]
    a_neg, a_pos = affinity[..., :m], affinity[..., m:]  # [n_tau, G, N, M], [n_tau, G, N, P]
    coef = torch.cat(
        [
            -config.repulsion * a_neg * a_pos.sum(-1, keepdim=True),
            config.attraction * a_pos * a_neg.sum(-1, keepdim=True),
        ],
        dim=-1,
    )  # [n_tau, G, N, T]

    x_scaled = x / input_scale[:, None, None]
    targets_scaled = targets / input_scale[:, None, None]
    # force_i = sum_j coef_ij (y_j - x_i): attraction to positives minus repulsion from negatives.
    force = torch.einsum("kgnt,gtd->kgnd", coef, targets_scaled) - coef.sum(-1, keepdim=True) * x_scaled
    raw = torch.stack([_mean_over(f.pow(2), config.stats_over) for f in force]).clamp_min(1e-8).sqrt()  # [n_tau, G]
    if config.normalize_drift:
        force = force / raw[:, :, None, None]
    return force.sum(0), input_scale, raw, s


def compute_drift(
    gen: Tensor,
    pos: Tensor,
    neg: Optional[Tensor] = None,
    neg_weight: Optional[Tensor] = None,
    config: DriftConfig = DriftConfig(),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """V for generated samples gen [G, N, D]: the negatives are gen itself plus the weighted extras."""
    if gen.dim() != 3 or pos.dim() != 3 or pos.shape[0] != gen.shape[0] or pos.shape[2] != gen.shape[2]:
        raise ValueError(f"expected gen [G, N, D] and pos [G, P, D], got {tuple(gen.shape)} and {tuple(pos.shape)}")
    g, n, d = gen.shape
    if neg is None:
        neg = gen.new_zeros(g, 0, d)
    if neg.dim() != 3 or neg.shape[0] != g or neg.shape[2] != d:
        raise ValueError(f"expected neg [G, M, D] = [{g}, M, {d}], got {tuple(neg.shape)}")
    weights = gen.new_ones(g, n + neg.shape[1])
    if neg_weight is not None:
        weights[:, n:] = torch.as_tensor(neg_weight, dtype=weights.dtype, device=gen.device).expand(g, neg.shape[1])
    negatives = torch.cat([gen.detach(), neg.to(gen.dtype)], dim=1)
    return drift_field(gen, pos, negatives, weights, config, self_negatives=True)


def chunked_drift(
    gen: Tensor,
    pos: Tensor,
    neg: Optional[Tensor] = None,
    neg_weight: Optional[Tensor] = None,
    config: DriftConfig = DriftConfig(),
    chunk_groups: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """compute_drift over chunks of at most chunk_groups groups, concatenated (None: all groups at once).

    V needs no autograd graph, so only one chunk's [n_tau, G, N, T] kernel tensors are alive at a time.
    Exact for per-group statistics; statistics shared over the batch would differ per chunk, so refused.
    """
    g = gen.shape[0]
    if chunk_groups is None or chunk_groups >= g:
        return compute_drift(gen, pos, neg, neg_weight, config)
    if chunk_groups < 1:
        raise ValueError(f"chunk_groups must be a positive number of groups or None, got {chunk_groups}")
    if config.stats_over != "group":
        raise ValueError("drift chunked over groups needs stats_over='group' (batch statistics span every chunk); "
                         "set chunk_groups=None to use stats_over='batch'")
    if neg is not None and neg_weight is not None:
        neg_weight = torch.as_tensor(neg_weight, device=gen.device).expand(g, neg.shape[1])
    parts = [
        compute_drift(gen[i:i + chunk_groups], pos[i:i + chunk_groups],
                      None if neg is None else neg[i:i + chunk_groups],
                      None if neg is None or neg_weight is None else neg_weight[i:i + chunk_groups], config)
        for i in range(0, g, chunk_groups)
    ]
    v, input_scale, raw, s = zip(*parts)
    return torch.cat(v), torch.cat(input_scale), torch.cat(raw, dim=1), torch.cat(s)


def drift_loss(
    gen: Tensor,
    pos: Tensor,
    neg: Optional[Tensor] = None,
    neg_weight: Optional[Tensor] = None,
    config: DriftConfig = DriftConfig(),
    chunk_groups: Optional[int] = None,
) -> DriftOutput:
    """mean((x - stopgrad(x + V))^2) in scaled units, per group then averaged; grads reach gen only.

    chunk_groups bounds the memory of V's computation (see chunked_drift); the loss is the same.
    """
    v, input_scale, raw, s = chunked_drift(gen, pos, neg, neg_weight, config, chunk_groups)
    x_scaled = gen.to(v.dtype) / input_scale[:, None, None]
    goal = (x_scaled + v).detach()
    loss_per_group = (x_scaled - goal).pow(2).flatten(1).mean(1)  # [G]
    if config.group_weight_power:
        loss_per_group = loss_per_group * (input_scale / input_scale.mean()).pow(config.group_weight_power)
    return DriftOutput(
        loss=loss_per_group.mean(),
        loss_per_group=loss_per_group,
        drift=v,
        raw_drift=raw.mean(1),
        scale=s,
        info={f"raw_drift_tau{t:g}": r for t, r in zip(config.temperatures, raw.mean(1))} | {"scale": s.mean()},
    )
