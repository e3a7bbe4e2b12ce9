"""Learning-rate schedule over a step budget, a wall-clock budget, or both, so the cosine reaches ~0
exactly when training stops (a step count calibrated from a short run missed a GPU budget by 14-26%)."""
from __future__ import annotations

import math


class LRSchedule:
    """Linear warm-up over `warmup_steps`, then `kind` ("cosine" or "constant") over the run's progress.

    Progress is the larger of step / num_steps and train_seconds / (60 * max_minutes), whichever budget
    is set; training ends when it reaches 1.
    """

    def __init__(self, lr: float, kind: str, warmup_steps: int, num_steps: int | None, max_minutes: float | None) -> None:
        if kind not in ("cosine", "constant"):
            raise ValueError(f"train.lr_scheduler must be 'cosine' or 'constant', got {kind!r}")
        if (num_steps is not None and num_steps < 1) or (max_minutes is not None and max_minutes <= 0) or warmup_steps < 0:
            raise ValueError(f"train.num_steps must be >= 1, train.max_minutes > 0 and train.warmup_steps >= 0; "
                             f"got {num_steps}, {max_minutes}, {warmup_steps}")
        if num_steps is None and max_minutes is None:
            raise ValueError("set a budget: train.num_steps (steps) and/or train.max_minutes (wall-clock training minutes)")
        self.lr, self.kind, self.warmup_steps = lr, kind, warmup_steps
        self.num_steps, self.budget_seconds = num_steps, 60.0 * max_minutes if max_minutes else None

    def progress(self, step: int, train_seconds: float) -> float:
        """Fraction of the budget used, in [0, 1+]."""
        by_steps = step / self.num_steps if self.num_steps else 0.0
        by_time = train_seconds / self.budget_seconds if self.budget_seconds else 0.0
        return max(by_steps, by_time)

    def __call__(self, step: int, progress: float) -> float:
        """The learning rate for the next optimiser step."""
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) if self.kind == "cosine" else 1.0
        return self.lr * warmup * decay
