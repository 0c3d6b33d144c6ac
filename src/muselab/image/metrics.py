"""Image quality and memorization metrics, on features of muselab's own metric network.

Quality: Fréchet distance (FID's formula, Heusel et al. 2017), kernel distance (KID's estimator,
Bińkowski et al. 2018), k-NN precision and recall (Kynkäänniemi et al. 2019) and, for conditional models,
how often a classifier sees the requested class. The features come from `muselab.image.features.FeatureNet`
trained on the dataset, not Inception-v3, so these are not FID or KID: the report calls them `fd_muselab`
and `kid_muselab`. They compare runs on the same data under the same cached net, never with published
FID or KID values (which are on Inception's 2048-d pool features of 299x299 images).

Memorization: how close each generated image lies to its nearest training image in pixel space, and the
share that lies as close as the training set's own near-duplicates do.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import linalg
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors

from muselab.core.errors import ConfigError, DataError
from muselab.core.io import atomic_write
from muselab.image.features import FeatureNet, as_images

__all__ = ["frechet_distance", "kernel_distance", "precision_recall", "control_accuracy",
           "nearest_training_distances", "training_duplicate_distance", "memorization",
           "closest_pairs_figure", "image_quality_report"]


def _as_features(feats: Any, what: str, at_least: int = 2) -> np.ndarray:
    array = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if array.ndim != 2:
        raise DataError(f"{what} features must be a 2-D array [N, D], got shape {list(array.shape)}")
    if len(array) < at_least:
        raise DataError(f"{what} needs at least {at_least} images, got {len(array)}; generate or load more")
    if not np.isfinite(array).all():
        raise DataError(f"{what} features contain NaN or infinity; check the images for non-finite pixels")
    return array


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature sizes differ ({a.shape[1]} vs {b.shape[1]}); use one feature net for both sets")


# --- distribution distances ------------------------------------------------------------------------------

def _sqrtm_trace(product: np.ndarray) -> tuple[float, bool]:
    """(trace of the real part of sqrtm(product), whether the root is trustworthy)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(product)
    ok = np.isfinite(root).all() and not any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    if np.iscomplexobj(root):
        # sqrtm of a product of covariances is real in exact arithmetic: an imaginary part is rounding
        ok = ok and np.allclose(np.diagonal(root).imag, 0, atol=1e-3)
        root = root.real
    return float(np.trace(root)), ok


def frechet_distance(feats_a: Any, feats_b: Any, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula):

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)).

    As in the reference implementation (pytorch-fid), when the matrix square root fails (singular
    covariances, e.g. fewer images than feature dimensions) `eps` is added to both diagonals and it is
    computed again. Rounding can make the result a hair below 0; it is clamped to 0.
    """
    a, b = _as_features(feats_a, "the first set"), _as_features(feats_b, "the second set")
    _same_dim(a, b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    trace_root, ok = _sqrtm_trace(cov_a @ cov_b)
    if not ok:
        offset = np.eye(len(cov_a)) * eps
        trace_root, _ = _sqrtm_trace((cov_a + offset) @ (cov_b + offset))
    diff = mu_a - mu_b
    return max(0.0, float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root))


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x.y / d + 1)^3 for all pairs; products in place, several times faster than `** 3` on big blocks."""
    k = x @ y.T
    k /= x.shape[1]
    k += 1
    return k * k * k


def kernel_distance(feats_a: Any, feats_b: Any, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased estimate of MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, as (mean, std) over
    `subsets` random subsets of min(subset_size, len(a), len(b)) images from each set.

    Unbiased means it is 0 on average for two samples of one distribution, so single values can be a
    little negative.
    """
    if subsets < 1 or subset_size < 2:
        raise ConfigError(f"kernel_distance needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    a, b = _as_features(feats_a, "the first set"), _as_features(feats_b, "the second set")
    _same_dim(a, b)
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
        # within-set means leave out the diagonal (a point with itself): that is what makes it unbiased
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates[i] = within - 2 * k_xy.mean()
    return float(estimates.mean()), float(estimates.std())


def _inside_any_ball(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Per query: whether it lies within radii[j] of some centre j (chunked: no full distance matrix)."""
    chunks = pairwise_distances_chunked(queries, centres, reduce_func=lambda d, _start: (d <= radii).any(axis=1))
    return np.concatenate(list(chunks))


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point."""
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return distances[:, k]  # column 0 is the point itself


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, each ball reaching the point's k-th
    nearest neighbour in the same set. Precision is the share of fake points inside the real manifold
    (are samples realistic?), recall the share of real points inside the fake manifold (is all of the
    data covered?).
    """
    if k < 1:
        raise ConfigError(f"precision_recall needs k >= 1, got {k}")
    real = _as_features(real_feats, "precision/recall (real set)", at_least=k + 1)
    fake = _as_features(fake_feats, "precision/recall (generated set)", at_least=k + 1)
    _same_dim(real, fake)
    precision = _inside_any_ball(fake, real, _knn_radii(real, k)).mean()
    recall = _inside_any_ball(real, fake, _knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def control_accuracy(net: FeatureNet, images: Any, requested_labels: Any) -> float:
    """Share of generated images the feature net classifies as the class they were generated for."""
    if net.cfg.num_classes == 0:
        raise ConfigError("control accuracy needs a feature net trained on labels (this one predicts "
                          "rotations); train it with num_classes > 0")
    images = as_images(images)
    labels = torch.as_tensor(requested_labels).long().reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{len(images)} images but {len(labels)} requested labels; give one label per image")
    if len(images) == 0:
        raise DataError("control accuracy needs at least one generated image")
    return float((net.classify(images) == labels).float().mean())


def image_quality_report(net: FeatureNet, real: Any, fake: Any, fake_labels: Any = None,
                         k: int = 3) -> dict[str, float]:
    """fd_muselab, kid_muselab, kid_muselab_std, precision and recall of `fake` against `real` (images
    [N, C, H, W] in [-1, 1]) on `net`'s features, plus control_accuracy when the labels the fakes were
    generated for are given.

    `fd_muselab` is the Fréchet distance and `kid_muselab` the kernel distance on muselab's own feature
    network, not Inception: named so that nobody reads them as FID or KID."""
    real_feats, fake_feats = net.features(real).numpy(), net.features(fake).numpy()
    kid, kid_std = kernel_distance(real_feats, fake_feats)
    precision, recall = precision_recall(real_feats, fake_feats, k=k)
    report = {"fd_muselab": frechet_distance(real_feats, fake_feats), "kid_muselab": kid,
              "kid_muselab_std": kid_std, "precision": precision, "recall": recall}
    if fake_labels is not None:
        report["control_accuracy"] = control_accuracy(net, fake, fake_labels)
    return report


# --- memorization ----------------------------------------------------------------------------------------

def _flat_pairs(samples: Any, train_images: Any) -> tuple[torch.Tensor, torch.Tensor]:
    samples, train = as_images(samples), as_images(train_images)
    if samples.shape[1:] != train.shape[1:]:
        raise DataError(f"generated images are {list(samples.shape[1:])} but training images are "
                        f"{list(train.shape[1:])}; compare images of the same size and channels")
    if len(train) == 0:
        raise DataError("no training images to compare with")
    return samples.reshape(len(samples), -1), train.reshape(len(train), -1)


@torch.no_grad()
def _nearest(queries: torch.Tensor, refs: torch.Tensor, batch: int | None,
             exclude: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel RMS distance and index of each query's nearest reference row (skipping refs[exclude[i]])."""
    dim = queries.shape[1]
    # the [batch, N_refs] distance block plus the query rows stay near 2**26 floats (256 MB) at most
    batch = batch or int(np.clip(2**26 // (len(refs) + dim), 1, 1024))
    ref_norms = (refs * refs).sum(dim=1)
    candidates = min(4, len(refs) - (exclude is not None))
    distances, indices = [], []
    for start in range(0, len(queries), batch):
        q = queries[start:start + batch]
        # ||q - r||^2 via one matrix product is fast but loses digits to cancellation: use it only to pick a
        # few candidates, then measure those exactly, so a copy of a training image is at distance exactly 0
        approx = ref_norms[None, :] - 2 * q @ refs.T
        if exclude is not None:
            approx[torch.arange(len(q)), exclude[start:start + batch]] = torch.inf
        cand = approx.topk(candidates, dim=1, largest=False).indices
        exact = torch.stack([((q - refs[cand[:, j]]) ** 2).sum(dim=1) for j in range(candidates)], dim=1)
        best = exact.argmin(dim=1)
        rows = torch.arange(len(q))
        distances.append((exact[rows, best] / dim).sqrt())
        indices.append(cand[rows, best])
    if not distances:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return torch.cat(distances).double().numpy(), torch.cat(indices).numpy()


def nearest_training_distances(samples: Any, train_images: Any,
                               batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the distance to its nearest training image and that image's index.

    The distance is the root mean square pixel difference in [-1, 1] units (0 for an exact copy, 2 for
    opposite extremes). Samples are processed `batch` at a time (default: as many as keep the working
    memory near 256 MB; 10,000 x 10,000 images of 32x32x3 need about 170 MB besides the images).
    """
    queries, refs = _flat_pairs(samples, train_images)
    return _nearest(queries, refs, batch)


def training_duplicate_distance(train_images: Any, percentile: float = 1.0, reference_size: int = 1000,
                                seed: int = 0) -> float:
    """The `percentile`-th percentile of nearest-neighbour distances inside the training set, measured for
    up to `reference_size` random training images against all the others (themselves excluded)."""
    train = as_images(train_images)
    if len(train) < 2:
        raise DataError(f"a memorization threshold from the training set needs at least 2 images, got {len(train)}")
    refs = train.reshape(len(train), -1)
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:reference_size])
    pick_t = torch.from_numpy(pick)
    distances, _ = _nearest(refs[pick_t], refs, None, exclude=pick_t)
    return float(np.percentile(distances, percentile))


def memorization(samples: Any, train_images: Any, threshold: float | None = None, *,
                 percentile: float = 1.0, reference_size: int = 1000, seed: int = 0,
                 nearest: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """How close generated images come to training images, and the share that count as copies.

    A sample counts as a (near-)copy when its nearest-training distance is at most `threshold`. The
    default threshold comes from the training set itself: the `percentile`-th (1st) percentile of the
    distance from a training image to its nearest other training image (on `reference_size` of them).
    So a flagged sample is as close to a training image as the closest near-duplicates inside the
    training set are to each other; a set with exact duplicates gets threshold 0 and only exact copies
    count. By construction a model that draws fresh images from the data distribution itself scores a
    share of about `percentile` / 100; clearly more means copying. Pass `nearest` (from `nearest_training_distances`) to reuse distances already computed.
    """
    distances, _ = nearest if nearest is not None else nearest_training_distances(samples, train_images)
    if len(distances) == 0:
        raise DataError("no generated images to check for memorization")
    if threshold is None:
        threshold = training_duplicate_distance(train_images, percentile, reference_size, seed)
        source = f"training set: percentile {percentile:g} of nearest-neighbour distances"
    else:
        source = "given"
    return {
        "share": float(np.mean(distances <= threshold)),
        "threshold": float(threshold),
        "threshold_source": source,
        "count": int(len(distances)),
        "min": float(distances.min()),
        "median": float(np.median(distances)),
        "mean": float(distances.mean()),
        "max": float(distances.max()),
    }


def _to_display(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] to what imshow wants: [H, W] grey or [H, W, 3] RGB in [0, 1]."""
    pixels = ((image.clamp(-1, 1) + 1) / 2).numpy()
    return pixels[0] if pixels.shape[0] == 1 else pixels[:3].transpose(1, 2, 0)


def closest_pairs_figure(samples: Any, train_images: Any, distances: np.ndarray, indices: np.ndarray,
                         path: Path, n: int = 8) -> Path:
    """A PNG of the `n` samples closest to a training image: each sample above its nearest training image,
    the distance written under the pair. `distances`/`indices` come from `nearest_training_distances`."""
    samples, train = as_images(samples), as_images(train_images)
    distances, indices = np.asarray(distances), np.asarray(indices)
    if len(distances) != len(samples) or len(indices) != len(samples):
        raise DataError(f"{len(samples)} samples but {len(distances)} distances and {len(indices)} indices; "
                        "pass the output of nearest_training_distances for these samples")
    order = np.argsort(distances, kind="stable")[:max(1, n)]
    if len(order) == 0:
        raise DataError("no generated images to draw")
    grey = samples.shape[1] == 1
    fig = Figure(figsize=(1.3 * len(order) + 0.6, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(order), squeeze=False)
    for col, i in enumerate(order):
        for row, image in enumerate((samples[i], train[int(indices[i])])):
            ax = axes[row, col]
            ax.imshow(_to_display(image), cmap="gray" if grey else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, col].set_xlabel(f"{distances[i]:.3f}")
    axes[0, 0].set_ylabel("generated")
    axes[1, 0].set_ylabel("nearest\ntraining")
    fig.suptitle("Closest generated / training pairs (RMS pixel distance)")
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
    return Path(path)
