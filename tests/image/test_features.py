"""The metric network: any image size, deterministic seeded training, held-out accuracy, safe save/load, cache."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import error_message
from muselab.core.errors import CheckpointError, ConfigError, DataError
from muselab.image import features
from muselab.image.features import (
    FeatureNet,
    FeatureNetConfig,
    feature_net_for,
    load_feature_net,
    save_feature_net,
    train_feature_net,
)


def make_shapes(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes (disc, square, triangle, cross) at random places, sizes and colours on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    labels = rng.integers(0, 4, n)
    images = np.empty((n, channels, size, size), np.float32)
    for i, label in enumerate(labels):
        r = rng.uniform(0.22, 0.32) * size
        dx, dy = xx - rng.uniform(r, size - r), yy - rng.uniform(r, size - r)
        masks = [dx**2 + dy**2 <= r**2,
                 (abs(dx) <= 0.8 * r) & (abs(dy) <= 0.8 * r),
                 (dy <= 0.8 * r) & (dy >= 2 * abs(dx) - r),
                 (abs(dx) <= 0.25 * r) & (abs(dy) <= r) | (abs(dy) <= 0.25 * r) & (abs(dx) <= r)]
        colour = rng.uniform(0.2, 1.0, (channels, 1, 1))
        background = rng.uniform(-1, -0.4, (channels, 1, 1)) + rng.normal(0, 0.05, (channels, size, size))
        images[i] = np.where(masks[label], colour, background)
    return torch.from_numpy(images.clip(-1, 1)), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def shapes() -> tuple[torch.Tensor, torch.Tensor]:
    return make_shapes(600)


@pytest.fixture(scope="module")
def shapes_net(shapes) -> tuple[FeatureNet, dict]:
    images, labels = shapes
    return train_feature_net(images, labels, num_classes=4, steps=80, seed=0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [8, 13, 32, 256])
def test_any_size_and_channels_give_one_feature_vector_per_image(channels, side):
    net = FeatureNet(FeatureNetConfig(in_channels=channels, num_classes=5, stem_stride=2 if side >= 16 else 1))
    images = torch.rand(3, channels, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = net.features(images)
    assert feats.shape == (3, net.cfg.feature_dim) and not feats.requires_grad
    # eval-mode features: an image's vector does not depend on the batch it came in
    torch.testing.assert_close(net.features(images[:1]), feats[:1])
    assert net.training  # features() leaves the module's mode as it found it
    assert net(images).shape == (3, 5)


def test_classifier_learns_simple_shapes(shapes_net):
    net, info = shapes_net
    assert info["kind"] == "classifier"
    assert info["heldout_accuracy"] >= 0.95
    assert info["heldout_size"] == 60 and info["train_size"] == 540
    assert not net.training


def test_heldout_split_is_stratified(shapes):
    images, labels = shapes
    train_idx, held_idx = features._split(labels.numpy(), 0.1, seed=0, stratify=True)
    assert not set(train_idx) & set(held_idx) and len(train_idx) + len(held_idx) == len(labels)
    held_share = np.bincount(labels.numpy()[held_idx], minlength=4) / len(held_idx)
    all_share = np.bincount(labels.numpy(), minlength=4) / len(labels)
    np.testing.assert_allclose(held_share, all_share, atol=0.02)


def test_training_is_seeded_and_leaves_the_global_rng_alone(shapes):
    images, labels = shapes[0][:200], shapes[1][:200]
    rng_before = torch.random.get_rng_state()
    first, _ = train_feature_net(images, labels, num_classes=4, steps=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    second, _ = train_feature_net(images, labels, num_classes=4, steps=5, seed=3)
    other, _ = train_feature_net(images, labels, num_classes=4, steps=5, seed=4)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)


def test_progress_is_reported_every_step_even_under_no_grad(shapes):
    seen = []
    with torch.no_grad():  # an evaluation that trains its feature net on demand runs under no_grad
        train_feature_net(shapes[0][:100], shapes[1][:100], num_classes=4, steps=4,
                          progress=lambda step, total, loss: seen.append((step, total, np.isfinite(loss))))
    assert seen == [(1, 4, True), (2, 4, True), (3, 4, True), (4, 4, True)]


def test_without_labels_it_learns_rotations():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:600], dtype=torch.float32)[:, None] / 8 - 1
    net, info = train_feature_net(images, None, num_classes=0, steps=80, seed=0)
    assert info["kind"] == "rotation" and net.head.out_features == 4
    assert info["heldout_accuracy"] > 0.5  # chance is 0.25


@pytest.mark.slow
def test_digits_heldout_accuracy():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8 - 1  # pixel values are 0..16
    _, info = train_feature_net(images, torch.tensor(digits.target), num_classes=10, seed=0)
    assert info["heldout_size"] == 180
    assert info["heldout_accuracy"] >= 0.95


def test_user_errors_are_one_line(shapes):
    images, labels = shapes
    with pytest.raises(DataError) as err:
        train_feature_net((images[:10] * 127 + 128).to(torch.uint8), labels[:10], num_classes=4)
    assert "to_float" in error_message(err)
    with pytest.raises(DataError) as err:
        train_feature_net(images[:10], labels[:10], num_classes=3)
    assert "num_classes" in error_message(err)
    with pytest.raises(DataError) as err:
        train_feature_net(images[:10], None, num_classes=4)
    assert "labels" in error_message(err)
    with pytest.raises(DataError) as err:
        train_feature_net(images[:10, :, :, :12], None, num_classes=0)
    assert "square" in error_message(err)
    with pytest.raises(ConfigError) as err:
        train_feature_net(images[:10], labels[:10], num_classes=4, widths=())
    assert "widths" in error_message(err)
    with pytest.raises(DataError) as err:
        FeatureNet(FeatureNetConfig(in_channels=3)).features(images[:2, :1])
    assert "[N, 3, H, W]" in error_message(err)


def test_save_load_round_trip_gives_identical_features(shapes_net, shapes, tmp_path):
    net, info = shapes_net
    path = save_feature_net(net, info, tmp_path / "net.safetensors")
    loaded, loaded_info = load_feature_net(path)
    assert loaded_info == json.loads(json.dumps(info))
    assert loaded.cfg == net.cfg and not loaded.training
    assert torch.equal(loaded.features(shapes[0][:50]), net.features(shapes[0][:50]))
    # safetensors: an 8-byte header length, then JSON, never a pickle
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert json.loads(header["__metadata__"]["config"])["num_classes"] == 4


def test_load_refuses_foreign_and_corrupt_files(shapes_net, tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something else"})
    with pytest.raises(CheckpointError) as err:
        load_feature_net(foreign)
    assert "not a muselab feature net" in error_message(err)
    path = save_feature_net(*shapes_net, tmp_path / "net.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as err:
        load_feature_net(path)
    assert "truncated" in error_message(err)


def test_cache_trains_once_then_loads(shapes, tmp_path, monkeypatch):
    images, labels = shapes[0][:200], shapes[1][:200]
    net, info = feature_net_for(images, labels, 4, "shapes-v1", tmp_path, steps=5)
    assert not info["from_cache"]
    assert (tmp_path / "feature_nets").is_dir()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached net should have been loaded")

    monkeypatch.setattr(features, "train_feature_net", no_training)
    again, again_info = feature_net_for(images, labels, 4, "shapes-v1", tmp_path, steps=5)
    assert again_info["from_cache"] and again_info["cache_path"] == info["cache_path"]
    assert torch.equal(again.features(images[:20]), net.features(images[:20]))
    # another dataset or other training options is another net
    with pytest.raises(AssertionError, match="cached net"):
        feature_net_for(images, labels, 4, "shapes-v2", tmp_path, steps=5)
    with pytest.raises(AssertionError, match="cached net"):
        feature_net_for(images, labels, 4, "shapes-v1", tmp_path, steps=6)


def test_corrupt_cache_is_retrained_and_env_var_sets_the_folder(shapes, tmp_path, monkeypatch):
    images, labels = shapes[0][:200], shapes[1][:200]
    monkeypatch.setenv("MUSELAB_CACHE", str(tmp_path))
    _, info = feature_net_for(images, labels, 4, "shapes", steps=5)
    cached = tmp_path / "feature_nets"
    assert [p.name for p in cached.iterdir()] == [info["cache_path"].rsplit("/", 1)[-1]]
    cached_file = next(cached.iterdir())
    cached_file.write_bytes(b"garbage")
    net, info = feature_net_for(images, labels, 4, "shapes", steps=5)
    assert not info["from_cache"]
    loaded, _ = load_feature_net(cached_file)  # rewritten whole
    assert torch.equal(loaded.features(images[:10]), net.features(images[:10]))
    assert not [p for p in cached.iterdir() if p.name.endswith(".tmp")]
