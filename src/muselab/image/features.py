"""The metric network: a small CNN trained on the dataset itself, whose features the image metrics compare.

The Fréchet and kernel distances (FID's and KID's formulas) and precision/recall need an image feature
extractor. The usual one, Inception-v3 trained on ImageNet, cannot be downloaded here and knows nothing
about 8x8 digits anyway, so muselab trains its own on the training images (Kynkäänniemi et al. 2023 and
the torch-fidelity docs both warn that scores from different feature networks are not comparable: compare
runs only under the same cached net). That is why the scores are named `fd_muselab` and `kid_muselab`,
not FID and KID.

With labels, the net is a classifier; without, it learns to tell by how much an image was rotated
(0/90/180/270 degrees, Gidaris et al. 2018), which needs the same shapes, strokes and layout a
classifier needs. Either way the features are the global average pool of the last conv stage.

Read top to bottom: config, network, training, save/load, cache.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from muselab.core.checkpoint import load_into, load_tensors, read_metadata, save_tensors
from muselab.core.config import Section
from muselab.core.errors import CheckpointError, ConfigError, DataError
from muselab.core.io import sha256_json
from muselab.core.runtime import make_generator

_FORMAT = "muselab.feature_net"
_FORMAT_VERSION = 1  # bump when the architecture or training changes: cached nets are then retrained
ROTATION_CLASSES = 4  # 0, 90, 180, 270 degrees

Progress = Callable[[int, int, float], None]  # (step, total_steps, loss)


class FeatureNetConfig(Section):
    in_channels: int = Field(3, ge=1, le=4, description="image channels (1 grey, 3 RGB)")
    num_classes: int = Field(0, ge=0, description="classifier outputs; 0 means a rotation-prediction head "
                                                  "(self-supervised, for unlabelled data)")
    widths: tuple[int, ...] = Field((32, 64, 128), min_length=1, description="channels of each conv stage; "
                                                                               "the last is the feature size")
    stem_stride: int = Field(1, ge=1, le=2, description="stride of the first conv: 2 (used from 16 "
                                                        "pixels up) leaves a quarter of the work")
    max_side: int = Field(32, ge=8, le=256, description="larger images are downscaled (antialiased) to this "
                                                        "side first: speed on CPU, and one net for any size")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    @property
    def outputs(self) -> int:
        return self.num_classes or ROTATION_CLASSES


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FeatureNet(nn.Module):
    """Conv-BN-ReLU stages, each but the last followed by 2x2 max pooling while the map is above 1 pixel,
    then global average pooling.

    `forward` gives logits (for training and classification), `features` the pooled vector [N, D].
    """

    def __init__(self, cfg: FeatureNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stages, cin = [], cfg.in_channels
        for i, width in enumerate(cfg.widths):
            stages.append(_conv_bn_relu(cin, width, stride=cfg.stem_stride if i == 0 else 1))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cfg.feature_dim, cfg.outputs)

    def _fit_size(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise DataError(f"the feature net expects images [N, {self.cfg.in_channels}, H, W], got "
                            f"{list(x.shape)}; use a feature net trained on images like these")
        side = max(x.shape[-2:])
        if side > self.cfg.max_side:
            scale = self.cfg.max_side / side
            size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def embed(self, x: Tensor) -> Tensor:
        """Pooled features with gradients (the training path); `features` is the inference path."""
        x = self._fit_size(x)
        for stage in self.stages:
            x = stage(x)
            if stage is not self.stages[-1] and min(x.shape[-2:]) >= 2:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))

    @torch.no_grad()
    def _batched(self, x: Tensor, fn: Callable[[Tensor], Tensor], batch_size: int) -> Tensor:
        x = as_images(x)
        was_training = self.training
        self.eval()  # batch-norm running statistics: a sample's features must not depend on its batch
        try:
            device = next(self.parameters()).device
            starts = range(0, len(x), batch_size) if len(x) else [0]  # an empty input still gives its shape
            parts = [fn(x[i:i + batch_size].to(device)).cpu() for i in starts]
        finally:
            self.train(was_training)
        return torch.cat(parts)

    def features(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """[N, D] float32 features of images [N, C, H, W] in [-1, 1], in eval mode, without gradients."""
        return self._batched(x, self.embed, batch_size)

    def classify(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """[N] int64 predicted class of each image (a rotation index for a self-supervised net)."""
        return self._batched(x, lambda b: self(b).argmax(dim=1), batch_size)


def as_images(x: Any) -> Tensor:
    """Check and convert images to a float32 [N, C, H, W] tensor; one-line DataError when they are not."""
    x = torch.as_tensor(x)
    if x.ndim != 4:
        raise DataError(f"images must be a [N, C, H, W] array, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise DataError(f"images must be float in [-1, 1], got {x.dtype}; convert uint8 images with "
                        "muselab.data.images.to_float")
    return x.float()


# --- training --------------------------------------------------------------------------------------------

def _shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate each image by its own random whole-pixel offset, repeating the border pixels."""
    if max_shift < 1:
        return x
    n, _, h, w = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offsets[:, 0] * 2 / w  # normalised coordinates span 2 over the image
    theta[:, 1, 2] = offsets[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def _rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image in its four rotations, labelled 0..3 (multiples of 90 degrees)."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATION_CLASSES)])
    labels = torch.arange(ROTATION_CLASSES).repeat_interleave(len(x))
    return rotated, labels


def _split(labels: np.ndarray, holdout: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(len(labels))
    n_held = max(1, round(holdout * len(labels)))
    # stratified when every class can give one image to each side, so the held-out score covers all classes
    counts = np.bincount(labels) if stratify else np.array([])
    strat = labels if stratify and counts[counts > 0].min() >= 2 and n_held >= (counts > 0).sum() else None
    train, held = train_test_split(index, test_size=n_held, random_state=seed % 2**32, stratify=strat)
    return np.sort(train), np.sort(held)


@torch.no_grad()
def _accuracy(net: FeatureNet, images: Tensor, labels: Tensor, rotation: bool, chunk: int = 256) -> float:
    correct = 0
    for start in range(0, len(images), chunk):  # chunks: four rotations of large images add up
        x, y = images[start:start + chunk], labels[start:start + chunk]
        if rotation:
            x, y = _rotations(net._fit_size(x))
        correct += int((net.classify(x) == y).sum())
    return correct / (len(images) * (ROTATION_CLASSES if rotation else 1))


def train_feature_net(
    images: Tensor,
    labels: Tensor | None,
    *,
    num_classes: int,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    holdout: float = 0.1,
    max_shift: float = 0.125,
    widths: tuple[int, ...] = (32, 64, 128),
    max_side: int = 32,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a FeatureNet on images [N, C, H, W] in [-1, 1]; the same seed gives the same net on one machine.

    `num_classes > 0` trains a classifier on `labels` (int64 [N] in 0..num_classes-1); `num_classes == 0`
    ignores labels and trains rotation prediction: every image in a batch is shown at 0/90/180/270
    degrees and the net names the rotation (square images only). A stratified `holdout` share of the
    images is kept out of training and the net's accuracy on it is reported in `info["heldout_accuracy"]`
    (`info["kind"]` is "classifier" or "rotation"). Augmentation: random shifts of up to `max_shift` of
    the side, border pixels repeated. AdamW with a short warm-up and cosine decay, `steps` steps.
    `progress(step, steps, loss)` is called after each step when given.
    """
    started = time.perf_counter()
    images = as_images(images)
    n, channels, height, width = images.shape
    rotation = num_classes == 0
    if n < 2:
        raise DataError(f"training the feature net needs at least 2 images, got {n}")
    if rotation and height != width:
        raise DataError(f"rotation pretraining needs square images, got {height}x{width}; crop or pad them")
    if rotation:
        label_array = np.zeros(n, dtype=np.int64)
    else:
        if labels is None:
            raise DataError(f"num_classes={num_classes} but no labels were given; pass labels or num_classes=0")
        label_array = torch.as_tensor(labels).long().reshape(-1).numpy()
        if len(label_array) != n:
            raise DataError(f"{n} images but {len(label_array)} labels; give one label per image")
        if label_array.min() < 0 or label_array.max() >= num_classes:
            raise DataError(f"labels must lie in 0..{num_classes - 1}, found {label_array.min()}.."
                            f"{label_array.max()}; set num_classes to the number of classes")
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be a share between 0 and 1, got {holdout}")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    try:
        # from 16 pixels up a strided first conv costs little accuracy and a quarter of the work
        stride = 2 if min(max(height, width), max_side) >= 16 else 1
        cfg = FeatureNetConfig(in_channels=channels, num_classes=num_classes, widths=widths,
                               stem_stride=stride, max_side=max_side)
    except ValidationError as err:
        raise ConfigError(f"bad feature net setting: {err.errors()[0]['loc'][0]} {err.errors()[0]['msg']}") from None

    train_idx, held_idx = _split(label_array, holdout, seed, stratify=not rotation)
    train_idx_t, all_labels = torch.from_numpy(train_idx), torch.from_numpy(label_array)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        net = FeatureNet(cfg)
    gen = make_generator(seed, "feature-net")
    # rotations quadruple each batch: draw a quarter as many images to keep the step cost the same
    per_step = max(1, batch_size // ROTATION_CLASSES) if rotation else batch_size
    per_step = min(per_step, len(train_idx))
    shift_px = int(max_shift * min(min(height, width), max_side))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))

    net.train()
    order, cursor, loss_value = torch.randperm(len(train_idx), generator=gen), 0, float("nan")
    with torch.enable_grad():  # callers often evaluate under no_grad; training needs gradients regardless
        for step in range(1, steps + 1):
            if cursor + per_step > len(order):  # a fresh permutation per epoch: every image seen once an epoch
                order, cursor = torch.randperm(len(train_idx), generator=gen), 0
            batch = train_idx_t[order[cursor:cursor + per_step]]  # indices, not a copy of the training images
            cursor += per_step
            x, y = _shift(net._fit_size(images[batch]), shift_px, gen), all_labels[batch]
            if rotation:
                x, y = _rotations(x)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_value = loss.item()
            if progress is not None:
                progress(step, steps, loss_value)

    net.eval()
    info = {
        "kind": "rotation" if rotation else "classifier",
        "num_classes": num_classes,
        "heldout_accuracy": _accuracy(net, images[held_idx], all_labels[held_idx], rotation),
        "heldout_size": len(held_idx),
        "train_size": len(train_idx),
        "image_shape": [channels, height, width],
        "feature_dim": cfg.feature_dim,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "final_loss": loss_value,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return net, info


# --- save, load, cache -----------------------------------------------------------------------------------

def save_feature_net(net: FeatureNet, info: dict[str, Any], path: Path) -> Path:
    """Write the weights as safetensors (atomically) with the config and training info as JSON metadata."""
    metadata = {"format": _FORMAT, "version": str(_FORMAT_VERSION), "config": net.cfg.model_dump_json(),
                "info": json.dumps(info, default=str)}
    return save_tensors(Path(path), net.state_dict(), metadata=metadata)


def load_feature_net(path: Path) -> tuple[FeatureNet, dict[str, Any]]:
    """The net (in eval mode) and its training info from a file written by `save_feature_net`."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"'{path}' is not a muselab feature net (format {meta.get('format')!r}); "
                              "train one with train_feature_net")
    if meta.get("version") != str(_FORMAT_VERSION):
        raise CheckpointError(f"'{path}' holds a feature net of format version {meta.get('version')}, this "
                              f"muselab reads version {_FORMAT_VERSION}; train it again")
    try:
        cfg = FeatureNetConfig.model_validate_json(meta["config"])
        info = json.loads(meta["info"])
        if not isinstance(info, dict):
            raise ValueError("info is not an object")
    except (KeyError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"'{path}' has unreadable feature net metadata ({type(err).__name__}); "
                              "train it again") from None
    net = FeatureNet(cfg)
    load_into(net, load_tensors(path), path)
    return net.eval(), info


def default_cache_dir() -> Path:
    """`$MUSELAB_CACHE`, else `~/.cache/muselab`."""
    return Path(os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab")


def feature_net_for(
    images: Tensor,
    labels: Tensor | None,
    num_classes: int,
    cache_key: str,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    **train_options: Any,
) -> tuple[FeatureNet, dict[str, Any]]:
    """The feature net for one dataset: loaded from the cache when one was trained before, else trained and cached.

    `cache_key` identifies the dataset (its fingerprint); the file name also covers the image shape,
    `num_classes`, the training options (passed on to `train_feature_net`) and the format version, so a
    change to any of them trains a new net. Nets live in `<cache_dir>/feature_nets/` (default
    `default_cache_dir()`), written atomically; an unreadable cached file is replaced by a fresh net.
    `info["from_cache"]` says which happened and `info["cache_path"]` where the net is.
    """
    images = as_images(images)
    key = sha256_json({"dataset": cache_key, "shape": list(images.shape[1:]), "num_classes": num_classes,
                       "options": train_options, "version": _FORMAT_VERSION})[:24]
    path = Path(cache_dir or default_cache_dir()) / "feature_nets" / f"{key}.safetensors"
    if path.is_file():
        try:
            net, info = load_feature_net(path)
            fits = net.cfg.in_channels == images.shape[1] and net.cfg.num_classes == num_classes
            if info.get("cache_key") == cache_key and fits:
                return net, {**info, "from_cache": True, "cache_path": str(path)}
        except CheckpointError:
            pass  # corrupt or foreign file: train a fresh net over it
    net, info = train_feature_net(images, labels, num_classes=num_classes, progress=progress, **train_options)
    info["cache_key"] = cache_key
    save_feature_net(net, info, path)
    return net, {**info, "from_cache": False, "cache_path": str(path)}
