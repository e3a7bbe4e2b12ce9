"""Sample queues: the newest real samples of every class, and of all classes (the unconditional queue).

Positives of a class and the unconditional negatives are drawn from here instead of from the current
data batch, so a batch of N_c classes x N_pos positives is available whatever the loader delivers.
Each rank of a distributed run keeps its own queues, fed by its own shard of the data.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor


class RingBuffer:
    """Fixed-capacity FIFO of tensors [capacity, *shape]; the oldest entries are overwritten first."""

    def __init__(self, capacity: int, shape: Sequence[int], dtype: torch.dtype = torch.float32, rows: int = 1) -> None:
        self.data = torch.zeros(rows, capacity, *shape, dtype=dtype)
        self.count = torch.zeros(rows, dtype=torch.long)  # total pushed per row (fill = min(count, capacity))
        self.capacity = capacity

    def push(self, rows: Tensor, items: Tensor) -> None:
        """Append items[i] to row rows[i], in order."""
        for r, item in zip(rows.tolist(), items):
            self.data[r, self.count[r] % self.capacity] = item.to(self.data.dtype)
            self.count[r] += 1

    def filled(self) -> Tensor:
        return self.count.clamp(max=self.capacity)

    def sample(self, rows: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """[len(rows), n, *shape]: n distinct stored entries of each row (without replacement)."""
        filled = self.filled()[rows]
        if (filled < n).any():
            raise ValueError(f"a queue row holds {filled.min().item()} samples, fewer than the {n} requested; "
                             "push more data before sampling (or lower the number sampled)")
        out = []
        for r, f in zip(rows.tolist(), filled.tolist()):
            idx = torch.randperm(f, generator=generator)[:n]
            out.append(self.data[r, idx])
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["data"].shape != self.data.shape:
            raise ValueError(f"queue shape {tuple(state['data'].shape)} != expected {tuple(self.data.shape)}")
        self.data.copy_(state["data"])
        self.count.copy_(state["count"])


class SampleQueues:
    """Per-class queues (128 newest samples each) and one unconditional queue (1000 newest samples)."""

    def __init__(self, num_classes: int, shape: Sequence[int], per_class: int = 128, unconditional: int = 1000,
                 dtype: torch.dtype = torch.float32) -> None:
        self.per_class = RingBuffer(per_class, shape, dtype, rows=num_classes)
        self.unconditional = RingBuffer(unconditional, shape, dtype)
        self.num_classes = num_classes

    def push(self, samples: Tensor, labels: Tensor) -> None:
        """Push a batch of real samples [B, *shape] with labels [B] into both queues."""
        labels = labels.cpu()
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        samples = samples.detach().cpu()
        self.per_class.push(labels, samples)
        self.unconditional.push(torch.zeros_like(labels), samples)

    def ready_classes(self, n_pos: int) -> Tensor:
        """Classes holding at least n_pos samples."""
        return torch.nonzero(self.per_class.filled() >= n_pos).flatten()

    def sample_classes(self, n_classes: int, n_pos: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n_classes distinct classes among the ready ones."""
        ready = self.ready_classes(n_pos)
        if len(ready) < n_classes:
            raise ValueError(f"only {len(ready)} classes hold {n_pos} samples, {n_classes} needed")
        return ready[torch.randperm(len(ready), generator=generator)[:n_classes]]

    def positives(self, classes: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """[len(classes), n, *shape] real samples of each class."""
        return self.per_class.sample(classes.cpu(), n, generator)

    def unconditional_negatives(self, n_groups: int, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """[n_groups, n, *shape]: an independent draw from the unconditional queue for every group."""
        return self.unconditional.sample(torch.zeros(n_groups, dtype=torch.long), n, generator)

    def state_dict(self) -> dict[str, Any]:
        return {"per_class": self.per_class.state_dict(), "unconditional": self.unconditional.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_class.load_state_dict(state["per_class"])
        self.unconditional.load_state_dict(state["unconditional"])
