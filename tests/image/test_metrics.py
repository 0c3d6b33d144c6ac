"""Image metrics: the formulas against closed forms and toy cases, and the scores on a small trained net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from helpers import HandWrittenLoop, error_message
from muselab.core.errors import ConfigError, DataError
from muselab.image.features import FeatureNet, train_feature_net
from muselab.image.metrics import (
    closest_pairs_figure,
    control_accuracy,
    frechet_distance,
    image_quality_report,
    kernel_distance,
    memorization,
    nearest_training_distances,
    precision_recall,
    training_duplicate_distance,
)


def make_bars(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of grey images: a horizontal bar, a vertical bar or a blob, at random places, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = rng.integers(0, 3, n)
    images = np.empty((n, 1, size, size), np.float32)
    for i, label in enumerate(labels):
        cx, cy = rng.uniform(3, size - 3, 2)
        width = rng.uniform(1.0, 2.0)
        if label == 0:
            shape = np.exp(-((yy - cy) / width) ** 2)
        elif label == 1:
            shape = np.exp(-((xx - cx) / width) ** 2)
        else:
            shape = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width) ** 2)
        images[i, 0] = 2 * shape - 1 + rng.normal(0, 0.05, (size, size))
    return torch.from_numpy(images.clip(-1, 1)), torch.from_numpy(labels)


def noise_images(n: int, channels: int = 1, size: int = 16, uniform: bool = False, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if uniform:
        return torch.rand(n, channels, size, size, generator=gen) * 2 - 1
    return torch.randn(n, channels, size, size, generator=gen).clamp(-1, 1)


def exact_gaussian(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """n points whose sample mean and covariance are exactly `mean` and `cov` (whitened, then coloured)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


@pytest.fixture(scope="module")
def bars() -> tuple[torch.Tensor, torch.Tensor]:
    return make_bars(900)


@pytest.fixture(scope="module")
def net(bars) -> FeatureNet:
    images, labels = bars
    trained, info = train_feature_net(images[:600], labels[:600], num_classes=3, steps=80, seed=0)
    assert info["heldout_accuracy"] >= 0.9
    return trained


# --- Fréchet distance ------------------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form_for_gaussians():
    d = 6
    mu_a, mu_b = np.zeros(d), np.arange(d, dtype=float) / 3
    # isotropic: ||mu_a - mu_b||^2 + d (s_a - s_b)^2
    a = exact_gaussian(500, mu_a, 4.0 * np.eye(d), seed=0)
    b = exact_gaussian(700, mu_b, 1.0 * np.eye(d), seed=1)
    expected = np.sum((mu_a - mu_b) ** 2) + d * (2.0 - 1.0) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # diagonal covariances commute: the trace term is sum (sqrt(v_a) - sqrt(v_b))^2
    v_a, v_b = np.linspace(0.5, 3, d), np.linspace(2, 0.1, d)
    a = exact_gaussian(500, mu_a, np.diag(v_a), seed=2)
    b = exact_gaussian(500, mu_b, np.diag(v_b), seed=3)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(v_a) - np.sqrt(v_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_survives_singular_covariances():
    feats = np.random.default_rng(0).normal(size=(40, 64))  # fewer points than dimensions: singular covariance
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-3)
    other = np.random.default_rng(1).normal(size=(40, 64))
    value = frechet_distance(feats, other)
    assert np.isfinite(value) and value > 0


def test_real_against_real_is_small_and_noise_is_far(net, bars):
    images = bars[0]
    real_a, real_b = net.features(images[:300]), net.features(images[300:600])
    noise = net.features(noise_images(300))
    self_fd, halves_fd, noise_fd = (frechet_distance(real_a, real_a), frechet_distance(real_a, real_b),
                                    frechet_distance(real_a, noise))
    assert self_fd < 1e-6
    assert noise_fd > 100 * halves_fd


def test_fid_falls_as_generated_images_approach_the_data(net, bars):
    """The same as training goes on, with real images under less and less noise in place of a generator."""
    images = bars[0]
    reference = net.features(images[:300])
    noise = torch.from_numpy(np.random.default_rng(5).normal(size=(300, 1, 16, 16)).astype(np.float32))
    scores = [frechet_distance(reference, net.features((images[600:900] + level * noise).clamp(-1, 1)))
              for level in (1.0, 0.5, 0.25, 0.1, 0.0)]
    assert all(later < earlier for earlier, later in zip(scores, scores[1:], strict=False)), scores
    assert scores[0] > 20 * scores[-1]


def test_fid_falls_as_a_gan_trains(net, bars):
    """The score of a real (small) GAN, measured as it trains: far lower after training than at the start."""
    from muselab.image.gan import GAN, GANConfig

    images = bars[0]
    reference = net.features(images[:300])
    torch.manual_seed(0)
    gan = GAN(GANConfig(size=16, channels=1, width=8, latent_dim=16))
    loop = HandWrittenLoop(gan, lr=1e-3, betas=(0.0, 0.9))
    batches = torch.Generator().manual_seed(1)

    def score() -> float:
        fakes = gan.sample(300, generator=torch.Generator().manual_seed(2))
        return frechet_distance(reference, net.features(fakes))

    scores = [score()]
    for step in range(1, 201):
        loop.step({"image": images[torch.randint(0, 600, (64,), generator=batches)]})
        if step in (100, 200):
            scores.append(score())
    assert scores[1] < scores[0] and scores[2] < scores[0] / 3, scores


# --- kernel distance -------------------------------------------------------------------------------------

def test_kernel_distance_is_unbiased_near_zero_and_grows_with_the_gap():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = kernel_distance(a, b, subsets=50, subset_size=50)
    shifted, _ = kernel_distance(a, b + 1.0, subsets=50, subset_size=50)
    # the biased estimate (each point's kernel with itself kept in) sits clearly above zero at this size
    x, y = a[:50], b[:50]
    biased = sum(((u @ v.T / 16 + 1) ** 3).mean() * w for u, v, w in ((x, x, 1), (y, y, 1), (x, y, -2)))
    assert biased > 0.2
    assert abs(same) < biased / 10
    assert shifted > 20 * biased
    # single small subsets of one distribution come out negative about half the time
    draws = [kernel_distance(a, b, subsets=1, subset_size=10, seed=s)[0] for s in range(40)]
    assert 8 <= sum(v < 0 for v in draws) <= 32
    assert kernel_distance(a, b, subsets=5, seed=1) == kernel_distance(a, b, subsets=5, seed=1)


# --- precision and recall --------------------------------------------------------------------------------

def test_precision_recall_on_toy_manifolds():
    rng = np.random.default_rng(0)
    mode_a, mode_b = rng.normal(size=(200, 2)) + [-10, 0], rng.normal(size=(200, 2)) + [10, 0]
    real = np.concatenate([mode_a, mode_b])
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    precision, recall = precision_recall(real, rng.uniform(-40, 40, size=(400, 2)) + [0, 60])
    assert precision == 0.0 and recall == 0.0
    one_mode = rng.normal(size=(400, 2)) + [10, 0]
    precision, recall = precision_recall(real, one_mode)
    assert precision > 0.9 and recall <= 0.55


def test_precision_recall_of_noise_images_on_the_trained_net(net, bars):
    real = net.features(bars[0][:300])
    noise = net.features(noise_images(300))
    precision, recall = precision_recall(real, noise)
    assert precision < 0.05 and recall < 0.05
    assert precision_recall(real, net.features(bars[0][300:600]))[0] > 0.8


# --- control accuracy ------------------------------------------------------------------------------------

def test_control_accuracy_is_high_for_right_labels_and_chance_for_shuffled(net, bars):
    images, labels = bars[0][600:], bars[1][600:]
    assert control_accuracy(net, images, labels) > 0.9
    shuffled = labels[torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))]
    assert 0.2 < control_accuracy(net, images, shuffled) < 0.5  # chance is 1/3


def test_control_accuracy_refuses_a_rotation_net_and_mismatched_labels(net, bars):
    rotation_net, _ = train_feature_net(bars[0][:40], None, num_classes=0, steps=1)
    with pytest.raises(ConfigError) as err:
        control_accuracy(rotation_net, bars[0][:10], bars[1][:10])
    assert "num_classes" in error_message(err)
    with pytest.raises(DataError) as err:
        control_accuracy(net, bars[0][:10], bars[1][:9])
    assert "one label per image" in error_message(err)


# --- report ----------------------------------------------------------------------------------------------

def test_quality_report_ties_the_scores_together(net, bars):
    images, labels = bars
    report = image_quality_report(net, images[:300], images[600:], fake_labels=labels[600:])
    assert set(report) == {"fd_muselab", "kid_muselab", "kid_muselab_std", "precision", "recall", "control_accuracy"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in report.values())
    assert report["precision"] > 0.8 and report["control_accuracy"] > 0.9
    assert "control_accuracy" not in image_quality_report(net, images[:300], images[600:])


def test_feature_sets_that_cannot_be_compared_are_refused():
    with pytest.raises(DataError) as err:
        frechet_distance(np.zeros((10, 4)), np.zeros((10, 5)))
    assert "one feature net" in error_message(err)
    with pytest.raises(DataError) as err:
        kernel_distance(np.zeros((1, 4)), np.zeros((10, 4)))
    assert "at least 2" in error_message(err)
    with pytest.raises(DataError) as err:
        precision_recall(np.zeros((3, 4)), np.zeros((10, 4)), k=3)
    assert "at least 4" in error_message(err)


# --- memorization ----------------------------------------------------------------------------------------

def test_nearest_training_distances_match_brute_force_in_any_batch_size(bars):
    train, samples = bars[0][:200], bars[0][200:260]
    flat_train, flat_samples = train.reshape(200, -1).double(), samples.reshape(60, -1).double()
    expected_d, expected_i = NearestNeighbors(n_neighbors=1).fit(flat_train).kneighbors(flat_samples)
    for batch in (7, None):
        distances, indices = nearest_training_distances(samples, train, batch=batch)
        np.testing.assert_array_equal(indices, expected_i[:, 0])
        np.testing.assert_allclose(distances, expected_d[:, 0] / np.sqrt(256), rtol=1e-5)


def test_copies_are_flagged_and_fresh_noise_is_not(bars):
    train = bars[0][:300]
    picks = torch.tensor([5, 17, 17, 250])
    distances, indices = nearest_training_distances(train[picks], train)
    assert np.all(distances == 0.0) and indices.tolist() == picks.tolist()
    copies = memorization(train[picks], train)
    assert copies["share"] == 1.0 and copies["max"] == 0.0 and copies["threshold"] > 0
    noise = memorization(noise_images(50, uniform=True), train)
    assert noise["share"] == 0.0 and noise["min"] > noise["threshold"]
    assert memorization(train[picks], train, threshold=0.5)["threshold_source"] == "given"


def test_default_threshold_comes_from_near_duplicates_inside_the_training_set(bars):
    train = bars[0][:300]
    threshold = training_duplicate_distance(train)
    assert 0 < threshold < 0.5  # each image's own zero distance to itself is left out
    with_duplicate = torch.cat([train, train[:10]])
    assert training_duplicate_distance(with_duplicate) == 0.0
    near_copy = train[3] + 0.5 * threshold
    assert memorization(near_copy[None], train)["share"] == 1.0


def test_closest_pairs_figure_is_a_png(bars, tmp_path):
    train = bars[0][:100]
    samples = torch.cat([train[:3], noise_images(5, uniform=True)])
    distances, indices = nearest_training_distances(samples, train)
    path = closest_pairs_figure(samples, train, distances, indices, tmp_path / "pairs.png", n=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width > image.height
    rgb = noise_images(4, channels=3, size=8, uniform=True)
    d, i = nearest_training_distances(rgb, rgb)
    Image.open(closest_pairs_figure(rgb, rgb, d, i, tmp_path / "rgb.png")).verify()
    with pytest.raises(DataError) as err:
        closest_pairs_figure(samples, train, distances[:2], indices[:2], tmp_path / "bad.png")
    assert "nearest_training_distances" in error_message(err)


def test_memorization_refuses_images_of_another_size(bars):
    with pytest.raises(DataError) as err:
        nearest_training_distances(torch.zeros(2, 1, 8, 8), bars[0][:10])
    assert "same size" in error_message(err)
