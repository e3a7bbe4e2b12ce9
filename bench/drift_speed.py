"""Wall time of one drift-loss forward + backward on this machine's CPU, for the policy shape and two
image-feature shapes, with 1 and 2 torch threads, against the loop reference.

    python bench/drift_speed.py [--threads 1 2] [--repeats 20] [--profile]

The loop reference is timed on a slice of each shape (a few groups, few samples) and extrapolated
linearly in its number of sample->target pairs, G * N * (N + P), where its Python loops spend the time.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from drift_policy.drift import drift_loss
from drift_policy.drift.reference import reference_drift
from drift_policy.evaluation import markdown_table

POLICY_TARGET_MS = 5.0


@dataclass(frozen=True)
class Shape:
    """gen [groups, n_gen, dim] and pos [groups, n_pos, dim], plus the slice the reference is timed on."""

    name: str
    groups: int
    n_gen: int
    n_pos: int
    dim: int
    ref_groups: int
    ref_n_gen: int
    ref_n_pos: int

    @property
    def pairs(self) -> int:
        return self.groups * self.n_gen * (self.n_gen + self.n_pos)

    @property
    def ref_pairs(self) -> int:
        return self.ref_groups * self.ref_n_gen * (self.ref_n_gen + self.ref_n_pos)


SHAPES = (
    Shape("policy 256x8x32, 1 pos", 256, 8, 1, 32, ref_groups=4, ref_n_gen=8, ref_n_pos=1),
    Shape("image 64x64x256, 64 pos", 64, 64, 64, 256, ref_groups=1, ref_n_gen=8, ref_n_pos=8),
    Shape("image 64x64x768, 64 pos", 64, 64, 64, 768, ref_groups=1, ref_n_gen=8, ref_n_pos=8),
)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of fn() in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def loss_step(groups: int, n_gen: int, n_pos: int, dim: int, seed: int = 0) -> Callable[[], None]:
    """A closure doing drift_loss forward + backward on fixed random inputs of this shape."""
    rng = torch.Generator().manual_seed(seed)
    gen = torch.randn(groups, n_gen, dim, generator=rng).requires_grad_()
    pos = torch.randn(groups, n_pos, dim, generator=rng)

    def step() -> None:
        gen.grad = None
        drift_loss(gen, pos).loss.backward()

    return step


def reference_ms(shape: Shape) -> float:
    """The loop reference's time on the shape's slice, scaled to the full shape by pair count."""
    rng = torch.Generator().manual_seed(0)
    gen = torch.randn(shape.ref_groups, shape.ref_n_gen, shape.dim, generator=rng)
    pos = torch.randn(shape.ref_groups, shape.ref_n_pos, shape.dim, generator=rng)
    return median_ms(lambda: reference_drift(gen, pos), repeats=1, warmup=0) * shape.pairs / shape.ref_pairs


def profile_policy_step(threads: int, rows: int = 15) -> str:
    """torch.profiler's table of where a policy-shaped forward + backward spends its CPU time."""
    torch.set_num_threads(threads)
    shape = SHAPES[0]
    step = loss_step(shape.groups, shape.n_gen, shape.n_pos, shape.dim)
    for _ in range(5):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(threads: Sequence[int], repeats: int) -> list[dict]:
    """One row per (shape, thread count)."""
    rows = []
    for shape in SHAPES:
        for n in threads:
            torch.set_num_threads(n)
            ms = median_ms(loss_step(shape.groups, shape.n_gen, shape.n_pos, shape.dim), repeats)
            ref = reference_ms(shape)
            rows.append({
                "shape G x N x D": shape.name, "threads": n, "drift_loss fwd+bwd ms": ms,
                "loop reference ms (fwd only)": ref,
                "reference timed on": f"{shape.ref_groups}x{shape.ref_n_gen}+{shape.ref_n_pos}, x{shape.pairs / shape.ref_pairs:g}",
                "speed-up": f"{ref / ms:.0f}x",
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print where the policy-shaped step spends its time")
    args = parser.parse_args()
    rows = run(args.threads, args.repeats)
    print(markdown_table(rows))
    policy_ms = min(r["drift_loss fwd+bwd ms"] for r in rows if r["shape G x N x D"] == SHAPES[0].name)
    verdict = "met" if policy_ms < POLICY_TARGET_MS else "NOT met"
    print(f"\npolicy-shaped loss: {policy_ms:.2f} ms (best thread count); target < {POLICY_TARGET_MS:g} ms: {verdict}")
    if args.profile or policy_ms >= POLICY_TARGET_MS:
        print(profile_policy_step(min(args.threads)))


if __name__ == "__main__":
    main()
