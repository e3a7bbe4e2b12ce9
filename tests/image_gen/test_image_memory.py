"""The memory fixes change no numbers: chunked drift, activation checkpointing, and the bf16 QK-norm."""
import warnings

import pytest
import torch

from drift_policy.drift import DriftConfig
from image_gen.features import MultiScaleFeatures
from image_gen.loss import feature_drift_loss
from image_gen.models.encoder import ResNetEncoder
from image_gen.models.generator import RMSNorm, build_generator

torch.set_num_threads(1)


def _feature_batch(g: int = 3, n: int = 5, p: int = 6, u: int = 4):
    torch.manual_seed(0)
    gen = {"a": torch.randn(g * n, 7, 3, requires_grad=True), "b": torch.randn(g * n, 1, 11, requires_grad=True)}
    pos = {"a": torch.randn(g * p, 7, 3), "b": torch.randn(g * p, 1, 11)}
    unc = {"a": torch.randn(g * u, 7, 3), "b": torch.randn(g * u, 1, 11)}
    return gen, pos, unc, torch.tensor([0.0, 1.5, 4.0])


@pytest.mark.parametrize("chunk", [1, 4, 20])
def test_chunked_drift_gives_the_loss_and_gradients_of_one_piece(chunk):
    gen, pos, unc, w = _feature_batch()
    full, info = feature_drift_loss(gen, pos, 3, unc, w, DriftConfig())
    grads = torch.autograd.grad(full, list(gen.values()))
    # 21 (class, location) groups of feature "a" in chunks of 1, 4 (uneven) or 20 groups
    chunked, chunked_info = feature_drift_loss(gen, pos, 3, unc, w, DriftConfig(), chunk_groups=chunk)
    chunked_grads = torch.autograd.grad(chunked, list(gen.values()))
    assert torch.allclose(chunked, full, rtol=1e-6, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(chunked_grads, grads))
    assert chunked_info == pytest.approx(info, rel=1e-5)


def test_chunks_refuse_statistics_shared_over_the_batch():
    gen, pos, unc, w = _feature_batch()
    with pytest.raises(ValueError, match="stats_over='group'"):
        feature_drift_loss(gen, pos, 3, unc, w, DriftConfig(stats_over="batch"), chunk_groups=4)
    feature_drift_loss(gen, pos, 3, unc, w, DriftConfig(stats_over="batch"))  # one piece is fine


def test_checkpointing_recomputes_the_same_gradients():
    torch.manual_seed(0)
    model = build_generator(width=32, depth=2, heads=2, patch_size=2, input_size=8, channels=1, num_classes=3)
    torch.nn.init.normal_(model.out.weight, std=0.1)  # leave adaLN-zero so gradients reach every block
    for block in model.blocks:
        torch.nn.init.normal_(block.ada.weight, std=0.1)
    features = MultiScaleFeatures(ResNetEncoder(1, width=4, blocks=(1, 1)))
    noise, labels, alpha = torch.randn(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]), torch.full((6,), 1.5)
    style = model.random_style(6)
    pos = {k: v.detach() for k, v in features(torch.randn(6, 1, 8, 8)).items()}

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.checkpointing = features.encoder.checkpointing = checkpointing
        loss, _ = feature_drift_loss(features(model(noise, labels, alpha, style)), pos, n_groups=3)
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, recomputed = grads(False), grads(True)
    assert len(plain) == len(recomputed) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, recomputed))


def test_qk_norm_weight_follows_bf16_activations_onto_the_fused_path():
    norm = RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    ref = torch.nn.RMSNorm(16, eps=1e-6)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(4, 16)
    with pytest.warns(UserWarning, match="Cannot dispatch to fused"):  # the stock module with an fp32 weight
        ref(x.bfloat16())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = norm(x.bfloat16())
    assert norm.weight.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref(x), atol=0.05, rtol=0.02)
    assert torch.equal(norm(x), ref(x))  # fp32 unchanged
