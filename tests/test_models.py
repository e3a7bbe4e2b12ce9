"""The networks: U-Net and chunk-MLP shapes, sizes and conditioning; the observation encoder's layout, crops, weights and errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import save_file
from torch import nn

from drift_policy.models import ChunkMLP, ConditionalUnet1D, ObsEncoder

torch.set_num_threads(1)
PUSHT = Path(__file__).resolve().parents[1] / "data/pusht/pusht_cchi_v7_replay.zarr"
IMAGE_META = {"image": {"shape": [96, 96, 3], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}}
SMALL = dict(layers=(1, 1, 1, 1), num_keypoints=8, feature_dim=16)  # CPU-sized ResNet for the tests


@pytest.fixture(scope="module")
def pusht_obs() -> dict[str, torch.Tensor]:
    """Four real Push-T observation pairs [4, 2, ...]: uint8 frames and agent positions scaled to [-1, 1]."""
    root = zarr.open_group(str(PUSHT), mode="r")
    frames = np.rint(np.clip(root["data/img"][:80:10], 0, 255)).astype(np.uint8)
    agent_pos = root["data/state"][:80:10, :2].astype(np.float32) / 256.0 - 1.0
    return {"image": torch.from_numpy(frames).view(4, 2, 96, 96, 3), "agent_pos": torch.from_numpy(agent_pos).view(4, 2, 2)}


# --- ConditionalUnet1D ---------------------------------------------------------------------------

@pytest.mark.parametrize("time_embed_dim", [None, 128])
def test_unet_maps_a_chunk_to_a_chunk(time_embed_dim):
    net = ConditionalUnet1D(2, 40, time_embed_dim=time_embed_dim)
    t = None if time_embed_dim is None else torch.tensor([3, 50, 99])
    out = net(torch.randn(3, 16, 2), torch.randn(3, 40), t)
    assert out.shape == (3, 16, 2) and out.dtype == torch.float32


@pytest.mark.parametrize("down_dims, time_embed_dim, expected", [
    ((64, 128, 256), 128, 4_559_554),       # Diffusion Policy's small U-Net (about 4.6M)
    ((64, 128, 256), None, 3_969_090),      # the one-step drift generator: no step embedding
    ((256, 512, 1024), 128, 63_554_434),    # Diffusion Policy's default (about 64M)
])
def test_unet_parameter_counts_match_diffusion_policy(down_dims, time_embed_dim, expected):
    with torch.device("meta"):
        net = ConditionalUnet1D(2, 2 * 20, down_dims, time_embed_dim=time_embed_dim)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_film_conditioning_and_timestep_change_the_output():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 8, (16, 32), n_groups=4, time_embed_dim=16)
    x, cond, t = torch.randn(1, 16, 2), torch.randn(1, 8), torch.tensor([10])
    out = net(x, cond, t)
    assert (net(x, cond + 1.0, t) - out).abs().mean() > 1e-3
    assert (net(x, cond, torch.tensor([60])) - out).abs().mean() > 1e-3
    torch.testing.assert_close(net(x, cond, torch.tensor(10)), out)  # a scalar step is broadcast


def test_timestep_is_refused_without_embedding_and_required_with_it():
    x, cond = torch.randn(2, 16, 2), torch.randn(2, 8)
    with pytest.raises(ValueError, match="takes no timestep"):
        ConditionalUnet1D(2, 8, (16, 32), n_groups=4, time_embed_dim=None)(x, cond, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="needs a timestep"):
        ConditionalUnet1D(2, 8, (16, 32), n_groups=4, time_embed_dim=16)(x, cond)


def test_horizon_must_divide_by_the_down_levels():
    net = ConditionalUnet1D(2, 8, (16, 32, 64), n_groups=4, time_embed_dim=None)
    assert net(torch.randn(1, 8, 2), torch.randn(1, 8)).shape == (1, 8, 2)
    with pytest.raises(ValueError, match="T=10 must be divisible by 4"):
        net(torch.randn(1, 10, 2), torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"cond must be \[B, 8\]"):
        net(torch.randn(1, 16, 2), torch.randn(1, 9))


# --- ChunkMLP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("time_embed_dim", [None, 16])
def test_chunk_mlp_maps_a_chunk_to_a_chunk_and_listens_to_cond_and_timestep(time_embed_dim):
    torch.manual_seed(0)
    net = ChunkMLP(3, 8, horizon=12, hidden_dim=32, n_blocks=2, time_embed_dim=time_embed_dim)
    x, cond = torch.randn(4, 12, 3), torch.randn(4, 8)
    t = None if time_embed_dim is None else torch.tensor([3, 50, 99, 7])
    out = net(x, cond, t)
    assert out.shape == (4, 12, 3) and out.dtype == torch.float32
    assert (net(x, cond + 1.0, t) - out).abs().mean() > 1e-3
    assert (net(x + 1.0, cond, t) - out).abs().mean() > 1e-3
    torch.testing.assert_close(net(x[:1], cond[:1], None if t is None else t[:1]), out[:1])  # rows are independent
    if time_embed_dim is not None:
        assert (net(x, cond, torch.tensor([60, 60, 60, 60])) - out).abs().mean() > 1e-3
        torch.testing.assert_close(net(x, cond, torch.tensor(60)), net(x, cond, torch.full((4,), 60)))  # scalar broadcast


def test_chunk_mlp_size_follows_its_settings():
    net = ChunkMLP(2, 40, horizon=16, hidden_dim=64, n_blocks=2, time_embed_dim=None)
    # input Linear, per block LayerNorm + 2 Linear + FiLM Linear, final LayerNorm + Linear
    expected = (32 + 40 + 1) * 64 + 2 * (2 * 64 + 2 * 65 * 64 + 41 * 128) + 2 * 64 + 65 * 32
    assert sum(p.numel() for p in net.parameters()) == expected
    assert len(net.blocks) == 2 and not hasattr(net, "time_mlp")


@pytest.mark.parametrize("time_embed_dim, args, message", [
    (None, ((2, 16, 2), (2, 8), torch.tensor([1, 2])), "this MLP takes no timestep"),
    (16, ((2, 16, 2), (2, 8), None), r"this MLP needs a timestep \[B\]"),
    (None, ((2, 8, 2), (2, 8), None), r"x must be \[B, 16, 2\] .* got \(2, 8, 2\)"),
    (None, ((2, 16, 3), (2, 8), None), r"x must be \[B, 16, 2\] .* got \(2, 16, 3\)"),
    (None, ((32, 2), (2, 8), None), r"x must be \[B, 16, 2\] .* got \(32, 2\)"),
    (None, ((2, 16, 2), (2, 9), None), r"cond must be \[B, 8\] with B=2, got \(2, 9\)"),
    (None, ((2, 16, 2), (3, 8), None), r"cond must be \[B, 8\] with B=2, got \(3, 8\)"),
    (16, ((2, 16, 2), (2, 8), torch.tensor([1, 2, 3])), r"timestep must be a scalar or \[B\] with B=2, got \(3,\)"),
])
def test_chunk_mlp_refuses_bad_inputs_naming_the_expected_shape(time_embed_dim, args, message):
    net = ChunkMLP(2, 8, horizon=16, hidden_dim=16, n_blocks=1, time_embed_dim=time_embed_dim)
    x_shape, cond_shape, t = args
    with pytest.raises(ValueError, match=message):
        net(torch.randn(*x_shape), torch.randn(*cond_shape), t)


@pytest.mark.parametrize("time_embed_dim", [None, 16])
def test_gradients_reach_every_chunk_mlp_parameter(time_embed_dim):
    torch.manual_seed(0)
    net = ChunkMLP(2, 8, horizon=16, hidden_dim=32, n_blocks=2, time_embed_dim=time_embed_dim)
    t = None if time_embed_dim is None else torch.tensor([5, 80, 20])
    net(torch.randn(3, 16, 2), torch.randn(3, 8), t).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- ObsEncoder ----------------------------------------------------------------------------------

def test_encoder_output_layout_is_sorted_keys_per_step(pusht_obs):
    enc = ObsEncoder(IMAGE_META, n_obs_steps=2, **SMALL)
    out = enc(pusht_obs)
    assert enc.output_dim == 2 * (2 + 16) and out.shape == (4, enc.output_dim) and out.dtype == torch.float32
    # per step: agent_pos (sorted first), then the 16 image features
    torch.testing.assert_close(out[:, 0:2], pusht_obs["agent_pos"][:, 0])
    torch.testing.assert_close(out[:, 18:20], pusht_obs["agent_pos"][:, 1])


def test_rgb_steps_encodes_only_the_latest_frames_and_keeps_the_low_dim_history(pusht_obs):
    """obs_encoder.rgb_steps=1: one ResNet pass per camera per observation; agent_pos keeps both steps."""
    torch.manual_seed(0)
    latest = ObsEncoder(IMAGE_META, n_obs_steps=2, rgb_steps=1, **SMALL).eval()
    out = latest(pusht_obs)
    assert latest.output_dim == 2 * 2 + 16 and out.shape == (4, latest.output_dim)
    torch.testing.assert_close(out[:, 0:2], pusht_obs["agent_pos"][:, 0])
    torch.testing.assert_close(out[:, 2:4], pusht_obs["agent_pos"][:, 1])
    frame = pusht_obs["image"][:, 1, 6:90, 6:90].permute(0, 3, 1, 2).float() / 255  # the eval crop of the latest frame
    with torch.no_grad():
        torch.testing.assert_close(out[:, 4:], latest.rgb_models["image"](frame))
    earlier_changed = {**pusht_obs, "image": pusht_obs["image"].clone()}
    earlier_changed["image"][:, 0] = 255 - earlier_changed["image"][:, 0]
    torch.testing.assert_close(latest(earlier_changed), out)
    torch.manual_seed(0)
    every = ObsEncoder(IMAGE_META, n_obs_steps=2, rgb_steps=2, crop_shape=(76, 76), **SMALL).eval()
    torch.manual_seed(0)
    default = ObsEncoder(IMAGE_META, n_obs_steps=2, crop_shape=(76, 76), **SMALL).eval()
    torch.testing.assert_close(every(pusht_obs), default(pusht_obs))  # all frames: the layout of every trained policy
    for bad in (0, 3):
        with pytest.raises(ValueError, match=rf"rgb_steps must be 1..n_obs_steps \(2\).*got {bad}"):
            ObsEncoder(IMAGE_META, n_obs_steps=2, rgb_steps=bad, **SMALL)


def test_low_dim_only_encoder_concatenates():
    meta = {"keypoint": {"shape": [18], "type": "low_dim"}, "agent_pos": {"shape": [2]}}
    enc = ObsEncoder(meta, n_obs_steps=2)
    obs = {"keypoint": torch.randn(3, 2, 18), "agent_pos": torch.randn(3, 2, 2)}
    expected = torch.cat([obs["agent_pos"], obs["keypoint"]], dim=-1).flatten(1)
    assert enc.output_dim == 40
    torch.testing.assert_close(enc(obs), expected)


def test_groupnorm_replaces_every_batchnorm():
    enc = ObsEncoder(IMAGE_META, n_obs_steps=2)  # full ResNet-18
    modules = list(enc.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    norms = [m for m in modules if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_groups == m.num_channels // 16 for m in norms)
    assert not hasattr(enc.rgb_models["image"].backbone, "fc")


def test_train_crops_are_random_per_frame_and_eval_is_the_center(pusht_obs):
    torch.manual_seed(0)
    enc = ObsEncoder(IMAGE_META, n_obs_steps=2, **SMALL)
    same = {"image": pusht_obs["image"][:1].expand(4, -1, -1, -1, -1), "agent_pos": pusht_obs["agent_pos"][:1].expand(4, -1, -1)}
    first, second = enc(same), enc(same)
    assert (first[1:] - first[0]).abs().amax(dim=1).min() > 1e-4  # every sample got its own crop
    assert (first - second).abs().max() > 1e-4  # and new crops on every call
    enc.eval()
    out = enc(pusht_obs)
    center = pusht_obs["image"][:, :, 6:90, 6:90].flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    features = enc.rgb_models["image"](center).view(4, 2, 16)
    torch.testing.assert_close(out.view(4, 2, 18)[..., 2:], features)
    torch.testing.assert_close(enc(pusht_obs), out)


def test_pretrained_path_reloads_identical_features(tmp_path, pusht_obs):
    torch.manual_seed(0)
    trained = ObsEncoder(IMAGE_META, n_obs_steps=2, **SMALL).eval()
    backbone = trained.rgb_models["image"].backbone
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))  # weights a fresh initialisation cannot reproduce
    save_file(backbone.state_dict(), tmp_path / "resnet.safetensors")

    torch.manual_seed(0)
    reloaded = ObsEncoder(IMAGE_META, n_obs_steps=2, pretrained_path=str(tmp_path / "resnet.safetensors"), **SMALL).eval()
    torch.manual_seed(0)
    fresh = ObsEncoder(IMAGE_META, n_obs_steps=2, **SMALL).eval()
    torch.testing.assert_close(reloaded(pusht_obs), trained(pusht_obs), rtol=0, atol=0)
    assert (fresh(pusht_obs) - trained(pusht_obs)).abs().max() > 1e-3


def test_pretrained_path_errors(tmp_path):
    from torchvision.models.resnet import BasicBlock, ResNet

    resnet = ResNet(BasicBlock, [1, 1, 1, 1], norm_layer=lambda c: nn.GroupNorm(c // 16, c))
    torch.save(resnet.state_dict(), tmp_path / "resnet.pt")  # a whole torchvision ResNet: fc.* is ignored
    ObsEncoder(IMAGE_META, 2, pretrained_path=str(tmp_path / "resnet.pt"), **SMALL)
    with pytest.raises(ValueError, match=r"does not fit ResNet\(BasicBlock, \[2, 2, 2, 2\]\)"):
        ObsEncoder(IMAGE_META, 2, pretrained_path=str(tmp_path / "resnet.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        ObsEncoder(IMAGE_META, 2, pretrained_path=str(tmp_path / "missing.pt"), **SMALL)


def test_fewer_stages_end_the_resnet_early_and_load_a_deeper_ones_weights(tmp_path, pusht_obs):
    deep = ObsEncoder(IMAGE_META, 2, crop_shape=(76, 76), **SMALL).rgb_models["image"].backbone
    save_file(deep.state_dict(), tmp_path / "resnet.safetensors")
    shallow = ObsEncoder(IMAGE_META, 2, crop_shape=(76, 76), pretrained_path=str(tmp_path / "resnet.safetensors"),
                         **{**SMALL, "layers": (1, 1, 1)})
    backbone = shallow.rgb_models["image"].backbone
    assert [name for name, _ in backbone.named_children()][-1] == "layer3" and shallow.output_dim == 2 * (2 + 16)
    images = pusht_obs["image"][:, 0, :76, :76].permute(0, 3, 1, 2).float() / 255
    features = backbone(images)
    assert features.shape == (4, 256, 5, 5)  # 1/16 of the crop, where the 4-stage network gives 512 x 3 x 3
    torch.testing.assert_close(features, deep[:-1](images), rtol=0, atol=0)  # the deeper ResNet's first 3 stages
    assert shallow(pusht_obs).shape == (4, shallow.output_dim)
    for layers in [(), (1, 1, 1, 1, 1), (1, 0, 1)]:
        with pytest.raises(ValueError, match=r"obs_encoder.layers must give 1-4 ResNet stages"):
            ObsEncoder(IMAGE_META, 2, **{**SMALL, "layers": layers})


def test_gradients_reach_the_resnet(pusht_obs):
    enc = ObsEncoder(IMAGE_META, n_obs_steps=2, **SMALL)
    enc(pusht_obs).square().sum().backward()
    backbone = enc.rgb_models["image"].backbone
    assert backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_shared_rgb_model_encodes_every_camera_with_one_resnet(pusht_obs, tmp_path):
    meta = {"front": IMAGE_META["image"], "wrist": IMAGE_META["image"]}
    obs = {"front": pusht_obs["image"], "wrist": pusht_obs["image"].flip(2)}
    shared = ObsEncoder(meta, n_obs_steps=2, share_rgb_model=True, **SMALL).eval()
    separate = ObsEncoder(meta, n_obs_steps=2, **SMALL)
    assert 2 * sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in separate.parameters())
    out = shared(obs).view(4, 2, 2, 16)
    solo = ObsEncoder({"wrist": meta["wrist"]}, n_obs_steps=2, **SMALL).eval()
    solo.rgb_models["wrist"].load_state_dict(shared.rgb_models["shared"].state_dict())
    torch.testing.assert_close(out[:, :, 1], solo({"wrist": obs["wrist"]}).view(4, 2, 16))
    save_file(shared.state_dict(), tmp_path / "shared.safetensors")  # no tensor stored twice


@pytest.mark.parametrize("change, message", [  # the messages of predict_action's checks (drift_policy.observations)
    (lambda obs: obs.pop("agent_pos"), r"obs is missing key\(s\) \['agent_pos'\]"),
    (lambda obs: obs.update(image=obs["image"][:, :, :64]), r"obs\['image'\] has shape \(4, 2, 64, 96, 3\); expected \(B, 2, 96, 96, 3\)$"),
    (lambda obs: obs.update(image=obs["image"].float()), r"obs\['image'\] is an image and must be uint8 .*got torch.float32"),
    (lambda obs: obs.update(agent_pos=obs["agent_pos"][:, :1]), r"obs\['agent_pos'\] has shape \(4, 1, 2\); expected \(B, 2, 2\)$"),
    (lambda obs: obs.update(agent_pos=obs["agent_pos"][0]), r"obs\['agent_pos'\] has shape \(2, 2\); expected \(B, 2, 2\)$"),
    (lambda obs: obs.update(agent_pos=obs["agent_pos"].to(torch.complex64)), r"obs\['agent_pos'\] has dtype torch.complex64"),
    (lambda obs: obs.update(agent_pos=obs["agent_pos"][:2]), r"same batch size B >= 1 for every key, got \{'image': 4, 'agent_pos': 2\}"),
])
def test_bad_observations_name_the_key_and_shape(pusht_obs, change, message):
    enc = ObsEncoder(IMAGE_META, n_obs_steps=2, **SMALL)
    obs = dict(pusht_obs)
    change(obs)
    with pytest.raises(ValueError, match=message):
        enc(obs)


def test_bad_shape_meta_is_refused():
    with pytest.raises(ValueError, match=r"'image' must have shape \[H, W, 3\]"):
        ObsEncoder({"image": {"shape": [3, 96, 96], "type": "rgb"}}, 2)
    with pytest.raises(ValueError, match=r"crop_shape \(100, 100\)"):
        ObsEncoder(IMAGE_META, 2, crop_shape=(100, 100))
    with pytest.raises(ValueError, match="type 'depth'"):
        ObsEncoder({"d": {"shape": [4], "type": "depth"}}, 2)
