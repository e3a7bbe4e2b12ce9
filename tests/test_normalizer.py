"""Min-max normaliser on the real Push-T data: range, round trip, constant dims, pass-through, saving."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from drift_policy.data.pusht import load_pusht
from drift_policy.normalizer import Normalizer


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    buffer = load_pusht("data/pusht/pusht_cchi_v7_replay.zarr")
    return {k: buffer.data[k] for k in ("keypoint", "agent_pos", "action")}


@pytest.fixture(scope="module")
def normalizer(data) -> Normalizer:
    normalizer = Normalizer()
    normalizer.fit(data)
    return normalizer


def test_fitted_data_spans_exactly_minus_one_to_one(normalizer, data):
    for key, values in data.items():
        x = normalizer.normalize(key, torch.from_numpy(values))
        torch.testing.assert_close(x.amin(0), -torch.ones(values.shape[1]), rtol=0, atol=1e-5)
        torch.testing.assert_close(x.amax(0), torch.ones(values.shape[1]), rtol=0, atol=1e-5)


def test_round_trip_restores_env_units(normalizer, data):
    actions = torch.from_numpy(data["action"][:1000])
    torch.testing.assert_close(normalizer.unnormalize("action", normalizer.normalize("action", actions)), actions,
                               rtol=0, atol=1e-4)  # float32 at ~500 px
    obs = {"agent_pos": data["agent_pos"][:5], "keypoint": data["keypoint"][:5]}  # numpy in, tensors out
    back = normalizer.unnormalize_dict(normalizer.normalize_dict(obs))
    for key, values in obs.items():
        torch.testing.assert_close(back[key], torch.from_numpy(values), rtol=0, atol=1e-4)


def test_constant_dimension_maps_to_zero_not_to_infinity():
    normalizer = Normalizer()
    normalizer.fit({"x": np.array([[0.0, 3.0], [2.0, 3.00001], [1.0, 3.0]])})
    x = normalizer.normalize("x", torch.tensor([[2.0, 3.0], [0.0, 3.00001]]))
    torch.testing.assert_close(x, torch.tensor([[1.0, 0.0], [-1.0, 1e-5]]), rtol=0, atol=1e-6)


def test_unfitted_keys_such_as_images_pass_through(normalizer):
    image = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8)
    assert normalizer.normalize("image", image) is image
    assert normalizer.unnormalize_dict({"image": image})["image"] is image


def test_statistics_are_buffers_that_round_trip_through_safetensors(normalizer, data, tmp_path):
    assert list(normalizer.parameters()) == [] and normalizer.keys == ["action", "agent_pos", "keypoint"]
    save_file(normalizer.state_dict(), str(tmp_path / "normalizer.safetensors"))
    loaded = Normalizer()
    loaded.load_state_dict(load_file(str(tmp_path / "normalizer.safetensors")))
    x = torch.from_numpy(data["keypoint"][:10])
    torch.testing.assert_close(loaded.normalize("keypoint", x), normalizer.normalize("keypoint", x), rtol=0, atol=0)
    assert loaded.to(torch.float64).normalize("action", torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


def test_clear_errors():
    with pytest.raises(RuntimeError, match="Normalizer is not fitted: call fit"):
        Normalizer().normalize("action", torch.zeros(2))
    with pytest.raises(ValueError, match="'action' contains NaN"):
        Normalizer().fit({"action": np.array([[0.0], [np.nan]])})
    with pytest.raises(ValueError, match=r"must be \[N, \.\.\.\] with N >= 1"):
        Normalizer().fit({"action": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="not a Normalizer state dict"):
        Normalizer().load_state_dict({"weight": torch.zeros(2)})
