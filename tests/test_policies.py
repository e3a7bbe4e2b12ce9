"""The policy interface on real Push-T data: shapes, units, errors, one network evaluation, save/load."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from hydra import compose, initialize_config_dir

from drift_policy.models import ChunkMLP, ConditionalUnet1D
from drift_policy.policies import DiffusionPolicy, DriftPolicy, Policy
from drift_policy.training.trainer import build_dataset, build_policy

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
SMALL_UNET = "policy.unet.down_dims=[16,32,64]"


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose("train_policy", overrides=list(overrides))


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(_cfg().task)


def _policy(dataset, *overrides: str) -> Policy:
    torch.manual_seed(0)
    policy = build_policy(_cfg(SMALL_UNET, *overrides))
    policy.fit_normalizer(dataset.normalizer_data())
    return policy.eval()


@pytest.fixture(scope="module")
def drift_policy(dataset):
    return _policy(dataset)


@pytest.fixture(scope="module")
def batch(dataset):
    return dataset.get_batch(np.arange(4))


def _count_forwards(policy: Policy) -> list:
    calls = []
    policy.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_predict_action_shapes_for_numpy_torch_batched_and_not(drift_policy, batch):
    obs_np = {k: v.numpy() for k, v in batch["obs"].items()}
    out = drift_policy.predict_action(obs_np)
    assert isinstance(out, np.ndarray) and out.shape == (4, 8, 2)
    single = drift_policy.predict_action({k: v[0] for k, v in obs_np.items()})
    assert single.shape == (8, 2)
    out_t = drift_policy.predict_action(batch["obs"], full_chunk=True)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (4, 16, 2)


def test_actions_come_back_in_env_units(drift_policy, dataset, batch):
    actions = dataset.normalizer_data()["action"]
    lo, hi = actions.min(0), actions.max(0)
    out = drift_policy.predict_action(batch["obs"], full_chunk=True).numpy()
    assert np.all(out >= lo - 1e-4) and np.all(out <= hi + 1e-4)
    assert out.std() > 1.0  # spread over the 512-pixel workspace, not squashed into [-1, 1]


def test_exactly_one_network_evaluation_per_chunk(dataset, batch):
    policy = _policy(dataset)
    calls = _count_forwards(policy)
    policy.predict_action(batch["obs"])
    assert len(calls) == 1 and policy.nfe == 1


def test_diffusion_policy_samples_with_two_ddim_steps(dataset, batch):
    policy = _policy(dataset, "policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=2")
    assert isinstance(policy, DiffusionPolicy)
    calls = _count_forwards(policy)
    out = policy.predict_action(batch["obs"])
    assert len(calls) == 2 and policy.nfe == 2 and out.shape == (4, 8, 2) and torch.isfinite(out).all()


def test_diffusion_loss_is_the_epsilon_prediction_error(dataset, batch):
    policy = _policy(dataset, "policy=diffusion")
    torch.manual_seed(3)
    loss, _ = policy.compute_loss(batch)
    torch.manual_seed(3)
    target = policy.normalizer.normalize("action", batch["action"])
    noise = torch.randn_like(target)
    t = torch.randint(0, 100, (target.shape[0],))
    eps = policy.model(policy.train_scheduler.add_noise(target, noise, t), policy.encode(batch["obs"]), t)
    torch.testing.assert_close(loss, ((eps - noise) ** 2).mean())


def test_drift_loss_is_finite_and_trains_only_what_it_should(dataset, batch):
    for drift_on in ("chunk", "timestep"):
        policy = _policy(dataset, f"policy.drift_on={drift_on}").train()
        loss, info = policy.compute_loss(batch)
        loss.backward()
        assert torch.isfinite(loss) and "drift/scale" in info
        assert info["drift/gen_spread"] > 0 and 0 < info["drift/spread_ratio"] < 10  # the calibration diagnostic is logged
        assert all(p.grad is not None for p in policy.model.parameters())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.pop("keypoint"), "missing key"),
        (lambda o: o.__setitem__("keypoint", o["keypoint"][:, :, :10]), r"expected \(B, 2, 18\)"),
        (lambda o: o["agent_pos"].__setitem__((0, 0, 0), float("nan")), "NaN"),
        # finite as float64, inf as the float32 the network runs in
        (lambda o: o.__setitem__("agent_pos", np.full((4, 2, 2), 1e300)), r"obs\['agent_pos'\] contains NaN or infinite values"),
        (lambda o: o.update({k: v[:0] for k, v in o.items()}), r"same batch size B >= 1 for every key, got \{'keypoint': 0, 'agent_pos': 0\}"),
        (lambda o: o.__setitem__("agent_pos", o["agent_pos"][:3]), r"same batch size B >= 1 for every key, got \{'keypoint': 4, 'agent_pos': 3\}"),
        (lambda o: o.__setitem__("agent_pos", o["agent_pos"].astype(str)), r"obs\['agent_pos'\] has dtype <U\d+; low-dim observations must be real numbers"),
        (lambda o: o.__setitem__("agent_pos", o["agent_pos"].astype(complex)), r"obs\['agent_pos'\] has dtype complex128"),
    ],
    ids=["missing-key", "wrong-shape", "nan", "float32-overflow", "batch-0", "batch-sizes-differ", "strings", "complex"],
)
def test_bad_observations_are_refused_with_what_was_expected(drift_policy, batch, mutate, message):
    obs = {k: v.numpy().copy() for k, v in batch["obs"].items()}
    mutate(obs)
    with pytest.raises(ValueError, match=message):
        drift_policy.predict_action(obs)


def test_non_finite_actions_are_an_error_that_names_the_observation_out_of_range(drift_policy, batch):
    obs = {k: v.numpy().copy() for k, v in batch["obs"].items()}
    obs["agent_pos"][:] = 3e38  # finite in float32, but far beyond the normaliser's range: the U-Net overflows
    with pytest.raises(FloatingPointError, match=r"the drift policy generated NaN or infinite actions; obs\['agent_pos'\] "
                                                 r"is .*e\+36 after normalisation, where the training data spans \[-1, 1\]"):
        drift_policy.predict_action(obs)


def test_step_checks_every_frame_not_only_those_it_replans_on(drift_policy, batch):
    frame = {k: v[0, -1].numpy() for k, v in batch["obs"].items()}
    drift_policy.reset()
    drift_policy.step(frame)  # plans 8 actions; the next 7 calls do not run the network
    with pytest.raises(ValueError, match=r"obs\['agent_pos'\] contains NaN"):
        drift_policy.step({**frame, "agent_pos": np.array([np.nan, 1.0], dtype=np.float32)})
    with pytest.raises(ValueError, match=r"obs\['keypoint'\] has shape \(10,\); step\(obs\) takes one frame of shape \(18,\)$"):
        drift_policy.step({**frame, "keypoint": frame["keypoint"][:10]})
    with pytest.raises(ValueError, match=r"obs is missing key\(s\) \['keypoint'\]"):
        drift_policy.step({"agent_pos": frame["agent_pos"]})
    history = {k: v[0].numpy() for k, v in batch["obs"].items()}
    with pytest.raises(ValueError, match=r"has shape \(2, 18\); step\(obs\) takes one frame of shape \(18,\); "
                                         r"pass histories \[To, ...\] or \[B, To, ...\] to predict_action"):
        drift_policy.step(history)
    drift_policy.reset()
    with pytest.raises(ValueError, match=r"obs is missing key\(s\) \['keypoint'\]"):  # at a replan too
        drift_policy.step({"agent_pos": frame["agent_pos"]})
    assert drift_policy.step(frame).shape == (2,)


def test_step_helper_keeps_history_and_replans_every_ta_steps(dataset, batch):
    policy = _policy(dataset)
    calls = _count_forwards(policy)
    policy.reset()
    obs = {k: v[0, -1].numpy() for k, v in batch["obs"].items()}
    actions = [policy.step(obs) for _ in range(16)]
    assert len(calls) == 2 and all(a.shape == (2,) for a in actions)


def test_save_load_gives_the_same_policy(dataset, batch, tmp_path):
    for overrides in ((), ("policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=3")):
        policy = _policy(dataset, *overrides)
        loaded = Policy.from_pretrained(policy.save_pretrained(tmp_path / policy.policy_type))
        assert type(loaded) is type(policy)
        for key, value in policy.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
        torch.manual_seed(7)
        expected = policy.predict_action(batch["obs"])
        torch.manual_seed(7)
        torch.testing.assert_close(loaded.predict_action(batch["obs"]), expected)
    # The DDIM-3 policy sampled with 2 DDPM steps instead: inference settings replaced at load, the weights as saved.
    fast = Policy.from_pretrained(tmp_path / "diffusion", sampler="ddpm", num_inference_steps=2)
    assert fast.nfe == 2 and fast.config.sampler == "ddpm"


def test_loading_weights_of_another_config_names_the_problem(dataset, tmp_path):
    small = _policy(dataset).save_pretrained(tmp_path / "small")
    big = _policy(dataset, "policy.unet.down_dims=[32,64,128]").save_pretrained(tmp_path / "big")
    (small / "model.safetensors").write_bytes((big / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"small/model\.safetensors does not fit .*small/config\.json: 0 missing \[\], "
                                         r"0 unexpected \[\], \d+ of another shape \(saved vs config\) \['model\..* \(32, "):
        Policy.from_pretrained(small)
    with pytest.raises(FileNotFoundError, match="not a saved policy"):
        Policy.from_pretrained(tmp_path)


def test_damaged_or_mismatched_saved_policies_get_one_short_error_naming_the_file(dataset, tmp_path):
    drift = _policy(dataset).save_pretrained(tmp_path / "drift")
    diffusion = _policy(dataset, "policy=diffusion").save_pretrained(tmp_path / "diffusion")
    weights = (drift / "model.safetensors").read_bytes()
    (drift / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"drift/model\.safetensors is not a readable safetensors file \(.*\); it is "
                                         r"truncated or damaged") as truncated:
        Policy.from_pretrained(drift)
    (drift / "model.safetensors").write_bytes((diffusion / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"the weights are a diffusion policy's \(with a diffusion-step input\) but the "
                                         r"config is a drift policy's: the files come from different policies") as mixed:
        Policy.from_pretrained(drift)
    config = drift / "config.json"
    config.write_text(config.read_text()[:-10])
    with pytest.raises(ValueError, match=r"drift/config\.json is not valid JSON \(.*line \d+.*\); the saved policy is damaged") as bad_json:
        Policy.from_pretrained(drift)
    assert max(len(str(e.value)) for e in (truncated, mixed, bad_json)) < 400


def test_invalid_policy_settings_are_refused(dataset):
    # hydra wraps the policy's ValueError; its message still says what is wrong
    with pytest.raises(Exception, match="n_generated must be >= 2"):
        _policy(dataset, "policy.n_generated=1")
    with pytest.raises(Exception, match="drift_on must be"):
        _policy(dataset, "policy.drift_on=pixels")
    assert isinstance(_policy(dataset), DriftPolicy)


@pytest.mark.parametrize("kind", ["drift", "diffusion"])
def test_one_generator_per_row_makes_each_rows_noise_its_own(dataset, batch, kind):
    overrides = ["policy=diffusion", "policy.sampler=ddpm", "policy.num_inference_steps=3"] if kind == "diffusion" else []
    policy = _policy(dataset, *overrides)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    together = policy.predict_action(batch["obs"], generator=gens([7, 8, 9, 10]))
    alone = policy.predict_action({k: v[2:3] for k, v in batch["obs"].items()}, generator=gens([9]))
    torch.testing.assert_close(alone[0], together[2], rtol=0, atol=1e-3)  # env units; batch size only changes float rounding
    other = policy.predict_action({k: v[2:3] for k, v in batch["obs"].items()}, generator=gens([11]))
    assert (other[0] - together[2]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="got 2 generators for a batch of 4"):
        policy.predict_action(batch["obs"], generator=gens([1, 2]))


@pytest.mark.parametrize("kind", ["drift", "diffusion"])
def test_mlp_backbone_trains_and_predicts(dataset, batch, kind):
    """+policy.backbone=mlp (not in the yaml, so configs keep their hashes) builds a ChunkMLP that trains and samples."""
    overrides = ["policy=diffusion", "policy.sampler=ddim", "policy.num_inference_steps=2"] if kind == "diffusion" else []
    policy = _policy(dataset, *overrides, "+policy.backbone=mlp", "+policy.mlp.hidden_dim=64", "+policy.mlp.n_blocks=2").train()
    assert isinstance(policy.model, ChunkMLP) and len(policy.model.blocks) == 2 and policy.model.inp.out_features == 64
    assert (policy.model.time_embed_dim is not None) == (kind == "diffusion")  # a diffusion-step input only for diffusion
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for _ in range(2):
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in policy.model.parameters())
        optimizer.step()
    assert all(not torch.equal(v, before[k]) for k, v in policy.model.state_dict().items())
    out = policy.eval().predict_action(batch["obs"])
    assert out.shape == (4, 8, 2) and torch.isfinite(out).all()


def test_obs_noise_perturbs_low_dim_observations_in_training_only(dataset, batch):
    """+policy.obs_encoder.low_dim_noise_std=S: noise of std S on the normalised low-dim values while training;
    evaluation is clean."""
    policy = _policy(dataset, "+policy.obs_encoder.low_dim_noise_std=0.05")
    clean = _policy(dataset).obs_encoder(policy.normalizer.normalize_dict(batch["obs"]))
    torch.testing.assert_close(policy.encode(batch["obs"]), clean)  # eval mode: no noise
    policy.train()
    torch.manual_seed(1)
    noise = policy.encode(batch["obs"]) - clean
    assert 0.03 < float(noise.std()) < 0.07  # Push-T's low-dim observations are the encoder's features as they are
    assert (policy.encode(batch["obs"]) - clean - noise).abs().max() > 1e-3  # new noise every call
    with pytest.raises(Exception, match=r"low_dim_noise_std must be >= 0 \(0: no observation noise\), got -0.1"):
        _policy(dataset, "+policy.obs_encoder.low_dim_noise_std=-0.1")


def test_history_dropout_shows_a_still_history_in_training_only(dataset):
    """+policy.obs_encoder.history_dropout=P: with probability P a training sample's earlier observation steps become
    its latest one (a still history); evaluation sees the history as observed."""
    obs = dataset.get_batch(np.arange(0, 4000, 10))["obs"]
    still = {key: value[:, -1:].expand_as(value) for key, value in obs.items()}
    always = _policy(dataset, "+policy.obs_encoder.history_dropout=1.0")
    torch.testing.assert_close(always.encode(obs), _policy(dataset).encode(obs))  # eval mode: untouched
    torch.testing.assert_close(always.train().encode(obs), always.eval().encode(still))
    half = _policy(dataset, "+policy.obs_encoder.history_dropout=0.5").train()
    torch.manual_seed(3)
    trained = half.encode(obs)
    changed = (trained != half.eval().encode(obs)).any(dim=1)
    moving = sum((value[:, 0] != value[:, -1]).any(dim=1) for value in obs.values()) > 0  # histories not still already
    assert not changed[~moving].any() and 0.35 < float(changed[moving].float().mean()) < 0.65
    with pytest.raises(Exception, match=r"history_dropout must be a probability in \[0, 1\].*got 1.5"):
        _policy(dataset, "+policy.obs_encoder.history_dropout=1.5")


def test_unexecuted_weight_zero_drifts_the_executed_steps_alone(dataset, batch):
    """+policy.unexecuted_weight=0: the loss sees only steps To-1 .. To-1+Ta of the demo chunk, so changing the other
    steps leaves it unchanged; at the default 1 every step counts."""
    moved = {**batch, "action": batch["action"].clone()}
    moved["action"][:, -1] += 50.0  # the last step of a 16-step chunk is not executed (To=2, Ta=8)
    for weight, counts in (("0", False), ("1", True)):
        policy = _policy(dataset, f"+policy.unexecuted_weight={weight}").train()
        losses = []
        for chunk in (batch, moved):
            torch.manual_seed(5)
            losses.append(float(policy.compute_loss(chunk)[0].detach()))
        assert (abs(losses[0] - losses[1]) > 1e-4) == counts, (weight, losses)
    with pytest.raises(Exception, match=r"unexecuted_weight must be a finite number >= 0.*got -1"):
        _policy(dataset, "+policy.unexecuted_weight=-1")


def test_noise_film_feeds_the_whole_draw_to_the_conditioning(dataset, batch):
    """+policy.noise_film=true: the backbone's conditioning is the observation features followed by the scaled T*Da
    noise, in training and in predict_action (still one network evaluation); by default the features alone."""
    seen = []
    for setting in ("false", "true"):
        policy = _policy(dataset, f"+policy.noise_film={setting}").eval()
        policy.model.register_forward_pre_hook(lambda _, args: seen.append(args))
        policy.predict_action(batch["obs"])
        noise, cond = seen[-1]
        features = policy.obs_encoder.output_dim
        if setting == "false":
            assert cond.shape[1] == features == policy.cond_dim
        else:
            assert cond.shape[1] == policy.cond_dim == features + policy.horizon * policy.action_dim
            torch.testing.assert_close(cond[:, features:], noise.flatten(1))
            assert len(seen) == 2  # one network evaluation per predict_action
            assert float(policy.train().compute_loss(batch)[0]) > 0 and seen[-1][1].shape[1] == policy.cond_dim


def test_unknown_backbone_is_refused_naming_the_choices(dataset):
    with pytest.raises(Exception, match=r"backbone must be one of \['unet', 'mlp'\].*got 'transformer'"):
        _policy(dataset, "+policy.backbone=transformer")
    assert isinstance(_policy(dataset, "+policy.backbone=unet").model, ConditionalUnet1D)


# A value other than the default for every field of each policy's config: a field added without a value here fails.
NON_DEFAULT = {
    "n_obs_steps": 3, "horizon": 8, "n_action_steps": 4, "unet": {"down_dims": [8, 16], "kernel_size": 3},
    "backbone": "mlp", "mlp": {"hidden_dim": 32, "n_blocks": 1, "time_embed_dim": 16},  # builds the MLP (unet unused)
    "obs_encoder": {"feature_dim": 8}, "task": {"name": "push_t", "max_steps": 16},
    "n_generated": 3, "drift_on": "timestep", "noise_std": 0.5, "sample_noise_scale": 0.7, "extra_positives": 2,
    "unexecuted_weight": 0.5, "noise_film": True,
    "drift": {"temperatures": [0.1, 0.3], "kernel_norm": "targets", "normalize_drift": False, "attraction": 1.5,
              "repulsion": 0.5, "stats_over": "batch", "group_weight_power": 2.0},
    "num_train_timesteps": 50, "num_inference_steps": 5, "sampler": "ddim", "beta_schedule": "linear",
}
SHAPE_META = {"obs": {"agent_pos": {"shape": [2], "type": "low_dim"}}, "action": {"shape": [2]}}


@pytest.mark.parametrize("kind", sorted(Policy.registry))
def test_config_json_is_the_whole_config_and_loads_back_equal(kind, tmp_path):
    """config.json is the policy's config dataclass, every field of it: no setting comes back as its default."""
    cls = Policy.registry[kind]
    names = [f.name for f in dataclasses.fields(cls.config_class) if f.name != "shape_meta"]
    defaults = cls.config_class(shape_meta=SHAPE_META)
    settings = {name: NON_DEFAULT[name] for name in names}  # a KeyError names a field this test does not cover yet
    policy = cls(shape_meta=SHAPE_META, **settings)
    assert all(getattr(policy.config, name) != getattr(defaults, name) for name in names)
    policy.fit_normalizer({"agent_pos": np.random.default_rng(0).random((20, 2)), "action": np.random.default_rng(1).random((20, 2))})
    saved = json.loads((policy.save_pretrained(tmp_path) / "config.json").read_text())
    assert set(saved) == {"policy_type", "shape_meta", *names} and saved["policy_type"] == kind
    loaded = Policy.from_pretrained(tmp_path)
    assert type(loaded) is cls and loaded.config == policy.config
    assert cls(policy.config).config == policy.config  # the config object builds the same policy as its fields
    assert isinstance(loaded.model, ChunkMLP) and len(loaded.model.blocks) == 1 and loaded.model.horizon == 8


def test_unknown_settings_are_refused_naming_the_key(dataset, tmp_path):
    directory = _policy(dataset).save_pretrained(tmp_path / "drift")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_generatd": 3}))
    with pytest.raises(ValueError, match=r"drift/config\.json does not describe a valid drift policy: DriftPolicyConfig has "
                                         r"no setting\(s\) \['n_generatd'\]; its settings are \[.*'n_generated'.*\]: remove or rename it"):
        Policy.from_pretrained(directory)
    with pytest.raises(Exception, match=r"DiffusionPolicyConfig has no setting\(s\) \['n_generated'\]"):  # through hydra
        _policy(dataset, "policy=diffusion", "+policy.n_generated=3")
    with pytest.raises(Exception, match=r"drift has no setting\(s\) \['group_weight'\]; its settings are \[.*'group_weight_power'"):
        _policy(dataset, "policy=drift", "+policy.drift.group_weight=2")


def test_a_config_saved_before_configs_were_dataclasses_still_loads(dataset, tmp_path):
    """The config.json of earlier versions held only the drift keys given, not all of DriftConfig's."""
    policy = _policy(dataset)
    directory = policy.save_pretrained(tmp_path / "drift")
    config = json.loads((directory / "config.json").read_text())
    config["drift"] = {"temperatures": [0.02, 0.05, 0.2], "kernel_norm": "both"}
    (directory / "config.json").write_text(json.dumps(config))
    assert Policy.from_pretrained(directory).config == policy.config


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_diffusion_sample_is_diffusers_scheduler_loop_on_the_same_noise(dataset, batch, sampler):
    """sample(cond, noise) runs the scheduler's update as per-step constants (so a graph can take the noise as an
    input); on noise drawn as draw_noise documents it, it gives what diffusers' own step() loop gives."""
    policy = _policy(dataset, "policy=diffusion", f"policy.sampler={sampler}", "policy.num_inference_steps=4")
    scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(policy.train_scheduler.config)
    scheduler.set_timesteps(4)
    with torch.no_grad():
        cond = policy.encode(batch["obs"])
        generator = torch.Generator().manual_seed(3)
        x = torch.randn(4, 16, 2, generator=generator)
        for t in scheduler.timesteps:
            x = scheduler.step(policy.model(x, cond, t.expand(4)), t, x, generator=generator).prev_sample
        noise = policy.draw_noise(4, torch.device("cpu"), torch.Generator().manual_seed(3))
        assert noise.shape == (4, 4 if sampler == "ddpm" else 1, 16, 2)  # DDPM: initial + one per step with t > 0
        torch.testing.assert_close(policy.sample(cond, noise), x.clamp(-1, 1), rtol=0, atol=1e-6)
