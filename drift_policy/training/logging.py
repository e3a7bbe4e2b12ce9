"""Training logs in three forms: TensorBoard, a plain metrics.jsonl, and a PNG of the curves."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


class RunLogger:
    """Appends {step, metrics} records to metrics.jsonl and TensorBoard.

    A run restarted from its checkpoint at `resume_step` re-logs the steps after it, so those rows are
    dropped first (the file is rewritten atomically; TensorBoard purges them with purge_step); 0 starts
    the logs afresh."""

    def __init__(self, run_dir: Path, resume_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self.records(until_step=resume_step)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(self.path)
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def records(self, until_step: int | None = None) -> list[dict]:
        """The logged records, those up to `until_step` when given. A last line without its newline is a
        write cut short by a kill; it is skipped (it was logged after the last checkpoint, so resume redoes it)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines(keepends=True)
        rows = [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]
        return [r for r in rows if until_step is None or r["step"] <= until_step]

    def plot(self, out: Path | None = None) -> Path:
        """One panel per metric family (loss, drift, eval, lr) against the step."""
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in self.records():
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    series[key].append((row["step"], value))
        groups: dict[str, list[str]] = defaultdict(list)
        for key in sorted(series):
            groups[key.split("/")[0]].append(key)
        out = out or self.path.with_name("curves.png")
        fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.5 * max(len(groups), 1), 3.5), squeeze=False)
        for ax, (group, keys) in zip(axes[0], groups.items()):
            for key in keys:
                steps, values = zip(*series[key])
                ax.plot(steps, values, label=key, marker="o" if len(steps) < 30 else None, ms=3)
            ax.set_title(group)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        self.writer.close()
