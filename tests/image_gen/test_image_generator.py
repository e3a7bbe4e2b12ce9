"""The DiT generator: the paper's parameter counts, one-step shapes, adaLN-zero start, conditioning."""
import pytest
import torch

from image_gen.models.generator import GENERATOR_SIZES, build_generator, count_parameters

torch.set_num_threads(1)
PAPER_PARAMS = {"B/2": 133e6, "L/2": 463e6}


@pytest.mark.parametrize("size", sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(size):
    with torch.device("meta"):
        model = build_generator(size)
    assert abs(count_parameters(model) / PAPER_PARAMS[size] - 1) < 0.02


def test_pixel_models_are_the_latent_models_with_a_bigger_patch():
    with torch.device("meta"):
        counts = {s: count_parameters(build_generator(s)) for s in GENERATOR_SIZES}
    # Only the patch embedding and output projection grow (16*16*3 vs 2*2*4 values per token).
    assert 0 < counts["B/16"] - counts["B/2"] < 2e6
    assert 0 < counts["L/16"] - counts["L/2"] < 2e6


@pytest.mark.parametrize("size", sorted(GENERATOR_SIZES))
def test_forward_backward_at_full_width_and_resolution(size):
    """Every size's width, heads, patch and resolution, at depth 1 to keep the CPU test fast."""
    torch.manual_seed(0)
    model = build_generator(size, depth=1)
    cfg = GENERATOR_SIZES[size]
    noise = torch.randn(2, cfg["channels"], cfg["input_size"], cfg["input_size"])
    labels, alpha = torch.tensor([1, 999]), torch.tensor([1.0, 2.5])
    out = model(noise, labels, alpha)
    assert out.shape == noise.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output: adaLN-zero starts at the zero map
    (out - noise).square().mean().backward()
    assert model.out.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_output_depends_on_every_condition_once_trained_away_from_zero():
    torch.manual_seed(0)
    model = build_generator(width=64, depth=2, heads=4, patch_size=2, input_size=8, channels=1, num_classes=10)
    for p in model.parameters():  # leave the adaLN-zero start so the condition paths are live
        torch.nn.init.normal_(p, std=0.1)
    noise, style = torch.randn(1, 1, 8, 8), model.random_style(1)
    base = model(noise, torch.tensor([3]), torch.tensor([1.0]), style)
    assert not torch.allclose(base, model(noise, torch.tensor([4]), torch.tensor([1.0]), style))
    assert not torch.allclose(base, model(noise, torch.tensor([3]), torch.tensor([2.0]), style))
    assert not torch.allclose(base, model(noise, torch.tensor([3]), torch.tensor([1.0]), model.random_style(1)))
    assert torch.allclose(base, model(noise, torch.tensor([3]), torch.tensor([1.0]), style))
    assert model.sample(torch.tensor([0, 1, 2]), alpha=1.5).shape == (3, 1, 8, 8)


def test_bad_input_is_a_clear_error():
    model = build_generator(width=32, depth=1, heads=2, patch_size=2, input_size=8, channels=1, num_classes=4)
    with pytest.raises(ValueError, match=r"noise must be \[B, 1, 8, 8\]"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unknown generator size"):
        build_generator("XL/2")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_generator(width=32, depth=1, heads=2, patch_size=3, input_size=8, channels=1)


@pytest.mark.parametrize("abs_pos_embed", [False, True])
def test_patch_tokens_know_their_place_only_with_the_absolute_table(abs_pos_embed, tmp_path):
    """At the adaLN-zero start the blocks add nothing, so on a constant input every patch is drawn alike unless the
    absolute table tells the tokens apart; the option survives save/load."""
    torch.manual_seed(0)
    model = build_generator(width=32, depth=1, heads=2, patch_size=2, input_size=8, channels=1, num_classes=4,
                            abs_pos_embed=abs_pos_embed)
    torch.nn.init.normal_(model.out.weight)
    patches = model(torch.zeros(1, 1, 8, 8), torch.tensor([0]), torch.tensor([1.0])).unfold(2, 2, 2).unfold(3, 2, 2)
    distinct = torch.unique(patches.reshape(16, 4), dim=0).shape[0]
    assert distinct == (16 if abs_pos_embed else 1)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    noise, style = torch.randn(2, 1, 8, 8), model.random_style(2)
    labels, alpha = torch.tensor([0, 3]), torch.tensor([1.0, 2.0])
    assert torch.equal(loaded(noise, labels, alpha, style), model.eval()(noise, labels, alpha, style))


def test_conv_head_starts_as_the_identity_then_mixes_pixels_across_token_seams(tmp_path):
    """conv_head=H: a residual 3x3 conv head on the unpatchified image, zero at the start (the same samples as without
    it), that once trained reads neighbouring pixels across patch borders; the option survives save/load."""
    kwargs = dict(width=32, depth=1, heads=2, patch_size=2, input_size=8, channels=1, num_classes=4)
    torch.manual_seed(0)
    headed = build_generator(**kwargs, conv_head=8)
    plain = build_generator(**kwargs)
    plain.load_state_dict({k: v for k, v in headed.state_dict().items() if not k.startswith("head.")})
    noise, style = torch.randn(2, 1, 8, 8), headed.random_style(2)
    labels, alpha = torch.tensor([0, 3]), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(headed(noise, labels, alpha, style), plain(noise, labels, alpha, style))
    assert headed.config["conv_head"] == 8 and sum(p.numel() for p in headed.head.parameters()) == 8 * 9 + 8 + 8 * 9 + 1
    torch.nn.init.normal_(headed.head[-1].weight)  # as training moves it away from zero
    image = torch.zeros(1, 1, 8, 8)
    image[..., 3, 3] = 1.0  # the last pixel of one 2x2 token; (3, 4) belongs to the next token
    assert headed.head(image)[..., 3, 4].abs().item() > 0
    headed.save_pretrained(tmp_path)
    loaded = type(headed).from_pretrained(tmp_path)
    assert torch.equal(loaded(noise, labels, alpha, style), headed.eval()(noise, labels, alpha, style))
