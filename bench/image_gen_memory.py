"""Peak accelerator memory of one image_gen training step, counted on the meta device (no GPU, no FLOPs).

Every tensor an op creates is counted from its creation until its storage is freed (a weak reference
on the storage), so the peak is that of the live tensors of a real step at full size: generator
forward, frozen-encoder features of generated / positive / unconditional samples, the per-feature drift
(chunked or not), backward, and AdamW's step; the EMA copy is added (it lives on the device too).
Counted in fp32 (autocast does not run on meta): matmul and conv outputs are 2 bytes under bf16 autocast,
so this over-counts them; allocator fragmentation and cuDNN/cuBLAS workspaces are not counted.
Checked against the one GPU measurement there is: the code before these fixes, B/2 at 4 classes, peaked
at 69.7 GiB on an H100 (bf16).

    python bench/image_gen_memory.py                      # B/2, MAE-256 [3,4,6,3], the train.yaml batch
    python bench/image_gen_memory.py --classes 4 8 --model L_2
"""
from __future__ import annotations

import argparse
import weakref
from unittest import mock
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hydra import compose, initialize_config_dir

import image_gen
from drift_policy.evaluation import markdown_table
from image_gen.features import MultiScaleFeatures
from image_gen.models.encoder import ResNetEncoder
from image_gen.models import generator as generator_module
from image_gen.models.generator import DriftDiT
from image_gen.trainer import DriftBatch, drift_config, drift_step_loss

GIB = 2**30
CONFIGS = str(Path(image_gen.__file__).resolve().parent / "configs")  # image_gen's installed hydra configs


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created under it and keeps the peak (any device, meta too).

    Reading a meta tensor's value (.item(), .cpu()) returns zeros so logging code runs unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()
        self.refs: list[weakref.ref] = []

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.seen:
            return
        self.seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)

        def freed(_, key=key, size=size):
            self.live -= size
            self.seen.discard(key)

        self.refs.append(weakref.ref(storage, freed))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if flat and flat[0].is_meta:
            if func is torch.ops.aten._local_scalar_dense.default:
                return 0
            if func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
                return torch.zeros(flat[0].shape, dtype=kwargs.get("dtype") or flat[0].dtype)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_meta:
                self.add(t)
        return out


# (name, checkpoint generator blocks, checkpoint encoder stages, drift chunk in groups)
SETTINGS = [
    ("before: no checkpointing, drift in one piece", False, False, None),
    ("drift in chunks of 1024 groups", False, False, 1024),
    ("chunks + checkpointed generator blocks", True, False, 1024),
    ("chunks + checkpointed encoder stages", False, True, 1024),
    ("chunks + both checkpointed (train.yaml default)", True, True, 1024),
]


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA as a fused kernel (it keeps only its output and log-sum-exp for backward, as CUDA's flash and
    memory-efficient kernels do); on meta the public function would take the math path and keep the
    whole attention matrix."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]


def step_peak(cfg, encoder_width: int, classes: int, checkpoint_generator: bool, checkpoint_encoder: bool,
              chunk_groups: int | None) -> tuple[float, float]:
    """(peak GiB of one training step, of which the static part: weights, grads, AdamW, EMA)."""
    b = cfg.batch
    with LiveBytes() as mem, torch.device("meta"), mock.patch.object(generator_module.F, "scaled_dot_product_attention",
                                                                     flash_attention):
        generator = DriftDiT(num_classes=cfg.data.num_classes, **cfg.model)
        encoder = ResNetEncoder(cfg.model.channels, encoder_width, (3, 4, 6, 3))  # the paper's MAE ablation encoder
        features = MultiScaleFeatures(encoder, patch_sizes=cfg.feature.patch_sizes, raw=cfg.feature.raw,
                              raw_patches=cfg.feature.raw_patches)
        generator.checkpointing, encoder.checkpointing = checkpoint_generator, checkpoint_encoder
        ema = [p.detach().clone() for p in generator.parameters()]
        opt = torch.optim.AdamW(generator.parameters(), lr=1e-4)
        shape = (generator.channels, generator.input_size, generator.input_size)
        n = classes * b.n_gen
        batch = DriftBatch(labels=torch.arange(classes), alpha=torch.full((classes,), 2.0),
                           noise=torch.empty(n, *shape), style=torch.zeros(n, 32, dtype=torch.long),
                           pos=torch.empty(classes, b.n_pos, *shape), unc=torch.empty(classes, b.n_unc, *shape))
        static = mem.live
        loss, _ = drift_step_loss(generator, features, batch, drift_config(cfg), chunk_groups)
        loss.backward()
        opt.step()  # AdamW's two moments appear here, while the gradients are alive
        static = (static + 3 * sum(p.numel() * 4 for p in generator.parameters())) / GIB
        del ema
    return mem.peak / GIB, static


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="B_2")
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--encoder-width", type=int, default=256)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("train", overrides=[f"model={args.model}"])
    b = cfg.batch
    print(f"{args.model}, MAE-{args.encoder_width} [3,4,6,3], per class {b.n_gen} generated / {b.n_pos} positives / "
          f"{b.n_unc} unconditional, fp32 count on the meta device")
    rows = []
    for classes in args.classes:
        for name, ckpt_gen, ckpt_enc, chunk in SETTINGS:
            peak, static = step_peak(cfg, args.encoder_width, classes, ckpt_gen, ckpt_enc, chunk)
            rows.append({"classes / GPU": classes, "setting": name, "peak GiB": round(peak, 1),
                         "of which weights, grads, AdamW, EMA": round(static, 1)})
            print(rows[-1], flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
