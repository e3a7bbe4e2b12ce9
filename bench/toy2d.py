"""The 2-D toy experiments of the paper's figures 3 and 4: an MLP generator (noise -> 2-D point) trained
with the drift loss alone, from spread-out, far-away and collapsed starts, on four targets.

    python bench/toy2d.py [--steps 2000] [--targets bimodal 8gaussians checkerboard swissroll]

Writes bench/results/toy2d/<target>.png (snapshots of the generated points over the target, and the loss and
raw-drift curves) and prints one table per target: modes covered, energy distance to the target.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from drift_policy.drift import DriftConfig, drift_loss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

EVAL_SAMPLES = 2000  # the coverage rule: a mode counts with >= half its expected share of these
# With the paper's (0.02, 0.05, 0.2) every affinity of a tight blob falls to the kernel's 1e-6 clamp, which
# pulls it onto the positives' mean and keeps it there (bench/README.md); a wider tau 0.5 escapes the trap.
TOY_TEMPERATURES = (0.05, 0.2, 0.5)


@dataclass(frozen=True)
class Target:
    """A 2-D data distribution, how to split it into modes, and where its collapsed start sits."""

    name: str
    sample: Callable[[int, torch.Generator], Tensor]  # (n, rng) -> [n, 2]
    assign: Callable[[Tensor], Tensor]  # [n, 2] -> mode index [n], -1 for points in no mode
    n_modes: int
    inits: dict[str, tuple[tuple[float, float], float]]  # start name -> (centre, spread)


def _nearest_centre(centres: Tensor, radius: float) -> Callable[[Tensor], Tensor]:
    """Mode = nearest centre, -1 beyond `radius` (3 standard deviations) of every centre."""

    def assign(x: Tensor) -> Tensor:
        dist, idx = torch.cdist(x, centres).min(1)
        return torch.where(dist < radius, idx, -1)

    return assign


def _gaussian_mixture(name: str, centres: Tensor, std: float, inits: dict) -> Target:
    def sample(n: int, rng: torch.Generator) -> Tensor:
        idx = torch.randint(len(centres), (n,), generator=rng)
        return centres[idx] + std * torch.randn(n, 2, generator=rng)

    return Target(name, sample, _nearest_centre(centres, 3 * std), len(centres), inits)


def bimodal() -> Target:
    """Two Gaussians (std 0.3) at (+-2, 0); the three starts of the paper's figure 3."""
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    inits = {"between": ((0.0, 0.0), 0.3), "far": ((0.0, 6.0), 0.3), "collapsed": ((-2.0, 0.0), 0.3)}
    return _gaussian_mixture("bimodal", centres, 0.3, inits)


def eight_gaussians() -> Target:
    """Eight Gaussians (std 0.1) on the circle of radius 2."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    inits = {"centre": ((0.0, 0.0), 0.5), "collapsed": ((2.0, 0.0), 0.1)}
    return _gaussian_mixture("8gaussians", centres, 0.1, inits)


def checkerboard() -> Target:
    """Uniform on the 8 dark squares of a 4x4 board over [-2, 2]^2; each dark square is a mode."""
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float32)

    def sample(n: int, rng: torch.Generator) -> Tensor:
        idx = torch.randint(len(cells), (n,), generator=rng)
        return cells[idx] - 2.0 + torch.rand(n, 2, generator=rng)

    def assign(x: Tensor) -> Tensor:
        ij = torch.floor(x + 2.0)
        inside = ((ij >= 0) & (ij <= 3)).all(1) & ((ij.sum(1) % 2) == 0)
        idx = (ij[:, None, :] == cells[None]).all(-1).float().argmax(1)
        return torch.where(inside, idx, -1)

    inits = {"centre": ((0.0, 0.0), 0.5), "collapsed": ((-1.5, -1.5), 0.25)}
    return Target("checkerboard", sample, assign, len(cells), inits)


SWISS_T = (1.5 * math.pi, 4.5 * math.pi)  # the roll's angle range
SWISS_NOISE = 0.08
SWISS_SEGMENTS = 8


def _swiss_curve(t: Tensor) -> Tensor:
    return torch.stack([t * t.cos(), t * t.sin()], 1) / 5.0


def swiss_roll() -> Target:
    """The 2-D swiss roll (angle uniform on [1.5pi, 4.5pi], radius angle / 5, noise 0.08).

    Modes: 8 segments of equal arc length along the noiseless curve; a point belongs to the segment of
    its nearest curve point when it lies within 3 noise std of the curve.
    """
    t_dense = torch.linspace(*SWISS_T, 4000)
    curve = _swiss_curve(t_dense)
    arc = torch.cat([torch.zeros(1), (curve[1:] - curve[:-1]).norm(dim=1).cumsum(0)])
    segment = (arc / arc[-1] * SWISS_SEGMENTS).long().clamp_max(SWISS_SEGMENTS - 1)

    def sample(n: int, rng: torch.Generator) -> Tensor:
        t = SWISS_T[0] + (SWISS_T[1] - SWISS_T[0]) * torch.rand(n, generator=rng)
        return _swiss_curve(t) + SWISS_NOISE * torch.randn(n, 2, generator=rng)

    def assign(x: Tensor) -> Tensor:
        dist, idx = torch.cdist(x, curve).min(1)
        return torch.where(dist < 3 * SWISS_NOISE, segment[idx], -1)

    start = tuple(_swiss_curve(torch.tensor([SWISS_T[0] + 0.3]))[0].tolist())
    inits = {"centre": ((0.0, 0.0), 0.5), "collapsed": (start, SWISS_NOISE)}
    return Target("swissroll", sample, assign, SWISS_SEGMENTS, inits)


TARGETS: dict[str, Callable[[], Target]] = {
    "bimodal": bimodal, "8gaussians": eight_gaussians, "checkerboard": checkerboard, "swissroll": swiss_roll,
}


def expected_shares(target: Target, n: int = 200_000, seed: int = 0) -> Tensor:
    """Each mode's share of the target's mass [n_modes], measured on a large target sample."""
    modes = target.assign(target.sample(n, torch.Generator().manual_seed(seed)))
    return torch.bincount(modes[modes >= 0], minlength=target.n_modes).float() / n


def modes_covered(samples: Tensor, target: Target, shares: Tensor) -> int:
    """How many modes hold at least half their expected share of `samples`."""
    modes = target.assign(samples)
    counts = torch.bincount(modes[modes >= 0], minlength=target.n_modes).float()
    return int((counts >= 0.5 * shares * len(samples)).sum())


def energy_distance(x: Tensor, y: Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (zero iff the distributions match)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


class ToyGenerator(nn.Module):
    """MLP noise [B, noise_dim] -> point [B, 2]."""

    def __init__(self, noise_dim: int = 16, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(noise_dim if i == 0 else width, width), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2)
        self.noise_dim = noise_dim

    def forward(self, noise: Tensor) -> Tensor:
        return self.head(self.body(noise))

    @torch.no_grad()
    def place_output(self, centre: Sequence[float], spread: float, rng: torch.Generator) -> None:
        """Bias and rescale the output layer so the initial points form a blob of std `spread` at `centre`."""
        self.head.bias.zero_()
        out = self(torch.randn(4096, self.noise_dim, generator=rng))
        self.head.weight.mul_(spread / out.std(0)[:, None])
        self.head.bias.copy_(torch.as_tensor(centre) - out.mean(0) * spread / out.std(0))


@dataclass(frozen=True)
class ToyConfig:
    """Training knobs; groups x n_gen generated points and groups x n_pos target points per step."""

    steps: int = 2000
    groups: int = 4
    n_gen: int = 128
    n_pos: int = 128
    lr: float = 5e-3
    drift: DriftConfig = DriftConfig(temperatures=TOY_TEMPERATURES)
    eval_every: int = 50
    snapshots: tuple[float, ...] = (0.0, 0.02, 0.1, 0.3, 1.0)  # fractions of training
    seed: int = 0


@dataclass
class ToyRun:
    """What one training run measured."""

    target: str
    init: str
    steps: list[int] = field(default_factory=list)  # evaluation steps
    covered: list[int] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # every step
    raw_drift: list[list[float]] = field(default_factory=list)  # every step, one value per temperature
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    cpu_seconds: float = 0.0


def train_toy(target: Target, init: str, config: ToyConfig = ToyConfig(), shares: Tensor | None = None) -> ToyRun:
    """Train a fresh generator from the named start with the drift loss; evaluate on 2,000 samples."""
    if init not in target.inits:
        raise ValueError(f"unknown start {init!r} for {target.name}; choose one of {sorted(target.inits)}")
    rng = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    gen = ToyGenerator()
    gen.place_output(*target.inits[init], rng)
    shares = expected_shares(target) if shares is None else shares
    eval_noise = torch.randn(EVAL_SAMPLES, gen.noise_dim, generator=rng)
    eval_target = target.sample(EVAL_SAMPLES, rng)
    snap_steps = {round(f * config.steps) for f in config.snapshots}
    opt = torch.optim.Adam(gen.parameters(), lr=config.lr)
    # The normalised drift keeps the gradient's size constant even at equilibrium: anneal to settle.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    run = ToyRun(target.name, init)
    start = time.process_time()
    for step in range(config.steps + 1):
        if step % config.eval_every == 0 or step in snap_steps:
            with torch.no_grad():
                points = gen(eval_noise)
            run.steps.append(step)
            run.covered.append(modes_covered(points, target, shares))
            run.energy.append(energy_distance(points, eval_target))
            if step in snap_steps:
                run.snapshots[step] = points
        if step == config.steps:
            break
        x = gen(torch.randn(config.groups * config.n_gen, gen.noise_dim, generator=rng))
        pos = target.sample(config.groups * config.n_pos, rng)
        out = drift_loss(x.view(config.groups, config.n_gen, 2), pos.view(config.groups, config.n_pos, 2),
                         config=config.drift)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        schedule.step()
        run.loss.append(out.loss.item())
        run.raw_drift.append(out.raw_drift.tolist())
    run.cpu_seconds = time.process_time() - start
    return run


def _smooth(values: Sequence[float], window: int = 25) -> np.ndarray:
    """Running mean, so the per-step loss curve is readable."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_runs(target: Target, runs: list[ToyRun], temperatures: Sequence[float], path: Path) -> None:
    """One row per start: snapshots over the target's density, then loss, raw drift and energy curves."""
    background = target.sample(100_000, torch.Generator().manual_seed(1)).numpy()
    centres = np.array([centre for centre, _ in target.inits.values()])
    low = np.minimum(background.min(0), centres.min(0)) - 0.5
    high = np.maximum(background.max(0), centres.max(0)) + 0.5
    snap_steps = sorted(runs[0].snapshots)
    cols = len(snap_steps) + 3
    fig, axes = plt.subplots(len(runs), cols, figsize=(2.6 * cols, 2.6 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        for ax, step in zip(row, snap_steps):
            ax.hist2d(background[:, 0], background[:, 1], bins=120, range=[[low[0], high[0]], [low[1], high[1]]],
                      cmap="Greys", vmax=np.quantile(np.histogram2d(background[:, 0], background[:, 1], bins=120)[0], 0.995))
            points = run.snapshots[step].numpy()
            ax.scatter(points[:, 0], points[:, 1], s=1.5, c="tab:red", alpha=0.5, linewidths=0)
            ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), xticks=[], yticks=[], aspect="equal")
            ax.set_title(f"{run.init}: step {step}", fontsize=9)
        loss_ax, drift_ax, energy_ax = row[-3:]
        loss_ax.plot(_smooth(run.loss))
        loss_ax.set_title("loss |V|^2 (running mean)", fontsize=9)
        for k, tau in enumerate(temperatures):
            drift_ax.semilogy(_smooth([r[k] for r in run.raw_drift]), label=f"tau {tau:g}")
        drift_ax.legend(fontsize=7)
        drift_ax.set_title("raw drift RMS", fontsize=9)
        energy_ax.semilogy(run.steps, run.energy)
        energy_ax.set_title("energy distance to target", fontsize=9)
        for ax in row[-3:]:
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{target.name}: drift-loss training of a 2-D MLP generator (red) on the target (grey)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary_row(run: ToyRun, target: Target, floor: float) -> dict:
    """One table row: coverage and energy distance at the start and the end of training."""
    full = [s for s, c in zip(run.steps, run.covered) if c == target.n_modes]
    return {
        "start": run.init,
        "modes covered (start -> end)": f"{run.covered[0]}/{target.n_modes} -> {run.covered[-1]}/{target.n_modes}",
        "first step all covered": full[0] if full else "never",
        "energy dist. start": run.energy[0],
        "energy dist. end": run.energy[-1],
        "target-vs-target floor": floor,
        "raw drift start -> end (tau mean)": f"{np.mean(run.raw_drift[0]):.3f} -> {np.mean(run.raw_drift[-1]):.4f}",
        "CPU seconds": run.cpu_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--steps", type=int, default=ToyConfig.steps)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TOY_TEMPERATURES),
                        help="drift temperatures; the paper's 0.02 0.05 0.2 trap collapsed starts at the data mean")
    parser.add_argument("--batch", type=int, default=ToyConfig.n_gen, help="generated = positive points per group")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "toy2d")
    args = parser.parse_args()
    from drift_policy.evaluation import markdown_table  # heavy (the policies, the rollout runner): only for the command line

    torch.set_num_threads(args.threads)
    config = ToyConfig(steps=args.steps, n_gen=args.batch, n_pos=args.batch,
                       drift=DriftConfig(temperatures=tuple(args.temperatures)))
    print(f"config: {config}")
    for name in args.targets:
        target = TARGETS[name]()
        shares = expected_shares(target)
        rng = torch.Generator().manual_seed(123)
        floor = energy_distance(target.sample(EVAL_SAMPLES, rng), target.sample(EVAL_SAMPLES, rng))
        runs = [train_toy(target, init, config, shares) for init in target.inits]
        path = args.out / f"{name}.png"
        plot_runs(target, runs, config.drift.temperatures, path)
        print(f"\n### {name} ({target.n_modes} modes; {path})\n")
        print(markdown_table([summary_row(run, target, floor) for run in runs]), flush=True)


if __name__ == "__main__":
    main()
