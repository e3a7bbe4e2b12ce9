"""Feature space: encoder shapes and persistence, the MAE objective, the multi-scale set, the summed loss."""
import pytest
import torch

from drift_policy.drift import DriftConfig, drift_loss
from image_gen.image_data import digits_dataset
from image_gen.loss import feature_drift_loss, fold_locations
from image_gen.models.encoder import MAE, ResNetEncoder
from image_gen.features import MultiScaleFeatures, map_features

torch.set_num_threads(1)


def test_encoder_stages_halve_resolution_and_double_width(tmp_path):
    enc = ResNetEncoder(in_channels=4, width=8, blocks=(1, 1, 1, 1))
    maps = enc(torch.randn(2, 4, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    enc.save(tmp_path)
    again = ResNetEncoder.load(tmp_path)
    x = torch.randn(1, 4, 32, 32)
    assert torch.equal(enc.eval()(x)[-1], again.eval()(x)[-1])
    with pytest.raises(FileNotFoundError, match="train_mae.py"):
        ResNetEncoder.load(tmp_path / "missing")


def test_mae_masks_half_the_cells_and_learns_digits():
    torch.manual_seed(0)
    x = digits_dataset(16).tensors[0][:256]
    mae = MAE(ResNetEncoder(1, width=8, blocks=(1, 1)), patch=2, mask_ratio=0.5, decoder_width=16)
    mask = mae.random_mask(x)
    assert torch.all(mask.mean((1, 2, 3)) == 0.5)  # exactly 32 of the 64 2x2 cells per image
    opt = torch.optim.Adam(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, recon, _ = mae(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert recon.shape == x.shape
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_multiscale_set_names_and_shapes():
    feats = map_features(torch.randn(3, 5, 8, 8), "s")
    shapes = {k: tuple(v.shape) for k, v in feats.items()}
    assert shapes == {"s.loc": (3, 64, 5), "s.mean": (3, 1, 5), "s.std": (3, 1, 5), "s.p2mean": (3, 16, 5),
                      "s.p2std": (3, 16, 5), "s.p4mean": (3, 4, 5), "s.p4std": (3, 4, 5)}
    x = torch.randn(3, 5, 8, 8)
    f = map_features(x, "s")
    assert torch.allclose(f["s.p4mean"][:, 0], x[:, :, :4, :4].mean((2, 3)))
    assert torch.allclose(f["s.std"][:, 0], x.flatten(2).std(2, unbiased=False), atol=1e-5)
    # A 4x4 patch of a 4x4 map would repeat the global statistics: not included.
    assert "s.p4mean" not in map_features(torch.randn(1, 2, 4, 4), "s")
    ms = MultiScaleFeatures(ResNetEncoder(1, width=4, blocks=(1, 1)))
    names = set(ms(torch.randn(2, 1, 16, 16)))
    assert "raw" in names and "stage0.loc" in names and "stage1.p4std" in names


def test_feature_loss_is_the_sum_of_per_feature_core_losses_per_location():
    torch.manual_seed(0)
    g, n, p, u = 3, 4, 5, 6
    gen = {"a": torch.randn(g * n, 7, 2, requires_grad=True), "b": torch.randn(g * n, 1, 9, requires_grad=True)}
    pos = {"a": torch.randn(g * p, 7, 2), "b": torch.randn(g * p, 1, 9)}
    unc = {"a": torch.randn(g * u, 7, 2), "b": torch.randn(g * u, 1, 9)}
    w = torch.tensor([0.0, 0.5, 2.0])
    cfg = DriftConfig()
    loss, info = feature_drift_loss(gen, pos, g, unc, w, cfg)
    expected = 0
    for k in gen:
        length = gen[k].shape[1]
        expected += drift_loss(fold_locations(gen[k], g), fold_locations(pos[k], g), fold_locations(unc[k], g),
                               w.repeat_interleave(length)[:, None], cfg).loss
    assert torch.allclose(loss, expected)
    assert set(info) == {"drift/raw_tau0.02", "drift/raw_tau0.05", "drift/raw_tau0.2"}
    # Folding keeps each (class, location) its own group: location 3 of class 1 holds exactly those samples.
    folded = fold_locations(gen["a"], g)
    assert torch.equal(folded[1 * 7 + 3], gen["a"][n:2 * n, 3])
    loss.backward()
    assert gen["a"].grad.abs().sum() > 0 and gen["b"].grad.abs().sum() > 0


def test_gradients_reach_the_generator_through_the_frozen_encoder():
    enc = ResNetEncoder(1, width=4, blocks=(1, 1))
    features = MultiScaleFeatures(enc).train()
    assert not enc.training and not any(q.requires_grad for q in enc.parameters())
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    pos = {k: v.detach() for k, v in features(torch.randn(8, 1, 8, 8)).items()}
    loss, _ = feature_drift_loss(features(x), pos, n_groups=2)
    loss.backward()
    assert x.grad.abs().sum() > 0


def test_raw_patches_are_the_pixel_patches_of_the_sample_one_field_per_location():
    x = torch.randn(2, 3, 9, 8)
    feats = MultiScaleFeatures(None, raw=False, raw_patches=(4,))(x)
    assert set(feats) == {"raw.p4"} and feats["raw.p4"].shape == (2, 4, 3 * 16)  # the 9th row is left out
    assert torch.equal(feats["raw.p4"][1, 3], x[1, :, 4:8, 4:8].flatten())  # location 3: second row, second column
    with pytest.raises(ValueError, match="raw_patches are patch sizes"):
        MultiScaleFeatures(None, raw_patches=(0,))
