"""What the image recipes (`image-gan`, `image-vae`) share: the data, labels and seeds of generation,
sample grids during training, and the offline metrics of `muselab evaluate`.

A subclass says how to build its model and how to draw images from it (`_draw`, `_interpolate`); the
rest is here, so both recipes read data, pick labels and score samples the same way.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from muselab.core.config import Section
from muselab.core.errors import CheckpointError, ConfigError, ControlError, DataError
from muselab.core.io import Fields, atomic_write
from muselab.core.registry import (
    Capabilities,
    Evaluation,
    ExportSpec,
    GenerationContext,
    MemorizationGuard,
    PreparedData,
    Recipe,
    Sizing,
)
from muselab.core.results import ImageResult
from muselab.core.rundir import RunDir
from muselab.core.sizing import PresetRows
from muselab.data.images import (
    BUILTIN_IMAGE_SOURCES,
    ImageDataset,
    ImageStream,
    load_images,
    split_images,
    to_float,
)
from muselab.image.gan import check_size
from muselab.image.pictures import from_pixels, image_grid, to_pixels

# Native formats of the built-ins; a user's folder defaults to 64x64 colour
_NATIVE = {"builtin:digits": (8, 1), "builtin:shapes": (32, 3), "builtin:textures": (32, 3)}
_FOLDER_NATIVE = (64, 3)
DATA_FILE = "image_data.json"  # class names, the data's spec and the memorization threshold
RESAMPLE_TRIES = 4  # memorization="resample": redraw a too-close image at most this many times
SNAPSHOT_SEED = 1234  # the fixed noise of the training snapshots: one grid per validation, same latents


class ImageDataConfig(Section):
    size: int = Field(0, ge=0, description="image side in pixels, a power of two from 8 to 256 (0 = the data's "
                                           "own: 8 for builtin:digits, 32 for the other built-ins, 64 for a folder)")
    channels: int = Field(0, ge=0, le=3, description="1 = grey, 3 = colour (0 = the data's own: 1 for "
                                                     "builtin:digits, else 3)")
    test_share: float = Field(0.1, gt=0, lt=0.5, description="share of the images held out for evaluation")
    skip_bad_files: bool = Field(False, description="skip unreadable image files (and count them) instead of stopping")


class ImageEvalConfig(Section):
    samples_per_class: int = Field(1000, ge=10, description="generated images per class (conditional models)")
    samples: int = Field(5000, ge=10, description="generated images (unconditional models)")
    reference_images: int = Field(10_000, ge=10, description="training images the samples are compared with, at most")
    k: int = Field(3, ge=1, description="neighbours of the precision/recall manifolds (Kynkaanniemi et al. 2019)")


# What image_data.json holds (see prepare_data)
_DATA_FIELDS = Fields(required={"class_names": "strings", "data_spec": "str", "memorization_threshold": "finite"})


def data_format(cfg: BaseModel, spec: str) -> tuple[int, int]:
    """The (size, channels) a run uses for `spec`: the configured ones, or the data's own."""
    native = _NATIVE.get(spec, _FOLDER_NATIVE)
    size = cfg.data.size or native[0]
    channels = cfg.data.channels or native[1]
    try:
        check_size(size)
    except ValueError:
        raise ConfigError(f"bad value for data.size: {size} (the models need a power of two from 8 to 256)") from None
    if channels not in (1, 3):
        raise ConfigError(f"bad value for data.channels: {channels} (1 = grey, 3 = colour)")
    return size, channels


def resolve_label(label: str | None, class_names: list[str]) -> int | None:
    """A --label given by class name or index -> the index."""
    if label is None:
        return None
    if label in class_names:
        return class_names.index(label)
    if label.isdigit() and len(label) <= 9 and int(label) < len(class_names):  # 9 digits: int() stays cheap
        return int(label)
    shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
    raise ControlError(f"unknown --label '{label}'; this model knows: {shown} (or an index from 0 to "
                       f"{len(class_names) - 1})")


def parse_seed(text: str) -> int:
    if not text.isdigit():
        raise ControlError(f"--interpolate takes two seeds (whole numbers), got '{text}'")
    return int(text)


# The default preset's sizing rule for the image recipes (README: "Defaults that fit the data"): the recipe's own
# width and batch (tuned on the built-in sets) in the middle row; fewer images take smaller batches (more steps
# per pass) and the recipe's small-data settings; many images, with an hour or more (or no budget), twice the width.
IMAGE_DATA_ROWS = (1_000, 20_000)  # training images below which row 0, 1 fits
IMAGE_WIDE_MINUTES = 60  # the least budget that trains the wide row


class ImageRecipe(Recipe):
    pipeline_tag = "unconditional-image-generation"
    capabilities = Capabilities(main_control="num_samples", writes_files=True)
    default_data = "builtin:digits"
    data_formats = ("a folder of images (PNG, JPEG, ...), one subfolder per class for a conditional model, or "
                    "a single image file; images are resized to data.size")
    builtin_data = {f"builtin:{name}": about for name, about in BUILTIN_IMAGE_SOURCES.items()}
    validates = False  # whether the model has a validation loss (the VAE's ELBO) worth computing

    small_data_layer: dict[str, Any] = {}  # config the sizing rule adds for under IMAGE_DATA_ROWS[0] images

    # -- sizing -----------------------------------------------------------------------------------
    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        rows = PresetRows("train_images", IMAGE_DATA_ROWS, widen=("model.width",), small_batch=32,
                          small_layer=self.small_data_layer, wide_minutes=IMAGE_WIDE_MINUTES)
        return rows.size(self.config_class(), stats, budget_minutes)

    def resize_data(self, prepared: PreparedData, cfg: BaseModel) -> PreparedData:
        # the shape the data decided (prepare_data writes it into the config) survives the sizing layer
        cfg.model.size, cfg.model.channels = data_format(cfg, prepared.info["spec"])
        cfg.model.num_classes = len(prepared.assets["class_names"])
        return prepared

    # -- data -------------------------------------------------------------------------------------
    def _load(self, cfg: BaseModel, spec: str) -> tuple[ImageDataset, ImageDataset]:
        size, channels = data_format(cfg, spec)
        data = load_images(spec, size=size, channels=channels, skip_bad_files=cfg.data.skip_bad_files)
        return split_images(data, test_share=cfg.data.test_share)

    def prepare_data(self, cfg: BaseModel, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        train, test = self._load(cfg, data)
        num_classes = len(train.class_names)
        if cfg.model.conditional and num_classes < 2:
            raise ConfigError(f"model.conditional=true needs labelled images, and '{data}' has "
                              f"{'no classes' if not num_classes else 'one class'}: put each class in its own "
                              "sub-folder, or train with model.conditional=false")
        # The model's shape follows the data; written to config.json so the run says what it was
        cfg.model.size, cfg.model.channels = data_format(cfg, data)
        cfg.model.num_classes = num_classes
        info = {**{k: v for k, v in train.info.items() if k != "split"}, "spec": data,
                "fingerprint": train.info["parent_fingerprint"], "train_images": len(train), "test_images": len(test)}
        from muselab.image.metrics import training_duplicate_distance

        # The memorization guard's threshold: as close as the closest near-duplicates inside the training set
        threshold = training_duplicate_distance(to_float(train.images)) if len(train) > 1 else 0.0
        assets = {"class_names": train.class_names, "data_spec": data, "memorization_threshold": threshold}
        return PreparedData(ImageStream(train), ImageStream(test) if self.validates else None, info, assets)

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        run.write_json(DATA_FILE, assets)

    def load_assets(self, cfg: BaseModel, run: RunDir) -> dict[str, Any]:
        path = run / DATA_FILE
        if not path.is_file():
            raise DataError(f"'{path}' is missing; the run directory is incomplete")
        assets = run.read_json(DATA_FILE, _DATA_FIELDS)
        if cfg.model.conditional and len(assets["class_names"]) != cfg.model.num_classes:
            raise CheckpointError(f"'{path}' names {len(assets['class_names'])} classes, the model has "
                                  f"{cfg.model.num_classes}; the run directory is damaged")
        return assets

    def check_transfer(self, cfg: BaseModel, source_cfg: BaseModel, prepared: PreparedData, source: Path) -> None:
        if (cfg.model.size, cfg.model.channels) != (source_cfg.model.size, source_cfg.model.channels):
            raise ConfigError(f"--init-from '{source}' makes {source_cfg.model.size}x{source_cfg.model.size}x"
                              f"{source_cfg.model.channels} images, this data is {cfg.model.size}x{cfg.model.size}x"
                              f"{cfg.model.channels}: set data.size and data.channels to match")

    # -- export ---------------------------------------------------------------------------------
    def _latent_export(self, network: nn.Module, cfg: BaseModel, assets: dict[str, Any], what: str,
                       latent: str) -> ExportSpec:
        """The ExportSpec of a network from latents (and labels, when conditional) to images."""
        model_cfg = cfg.model
        z = torch.randn(2, model_cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        inputs, names = (z,), ["latent"]
        meaning = {"latent": f"float32 [batch, {model_cfg.latent_dim}]: {latent}",
                   "images": f"float32 [batch, {model_cfg.channels}, {model_cfg.size}, {model_cfg.size}] in [-1, 1] "
                             "(pixels = (images + 1) * 127.5)"}
        axes: dict[str, dict[int, str]] = {"latent": {0: "batch"}, "images": {0: "batch"}}
        if model_cfg.conditional:
            inputs, names = (z, torch.tensor([0, model_cfg.num_classes - 1])), [*names, "labels"]
            meaning["labels"] = f"int64 [batch]: class ids from 0 to {model_cfg.num_classes - 1} (see class_names)"
            axes["labels"] = {0: "batch"}
        pair_with = {"image_size": model_cfg.size, "channels": model_cfg.channels, "layout": "NCHW",
                     "value_range": [-1, 1], "class_names": assets["class_names"] if model_cfg.conditional else []}
        return ExportSpec(network, inputs, names, ["images"], axes, description=what, meaning=meaning,
                          pair_with=pair_with)

    # -- generation -------------------------------------------------------------------------------
    @abstractmethod
    def _draw(self, model: nn.Module, n: int, labels: torch.Tensor | None, controls: BaseModel,
              generator: torch.Generator) -> torch.Tensor:
        """n images in [-1, 1] for these labels (None when unconditional)."""

    @abstractmethod
    def _interpolate(self, model: nn.Module, ends: list[str], label: int | None, controls: BaseModel,
                     cfg: BaseModel) -> torch.Tensor:
        """controls.steps images from one end to the other."""

    def _labels(self, model_cfg: BaseModel, class_names: list[str], label: str | None, n: int) -> torch.Tensor | None:
        if not model_cfg.conditional:
            if label is not None:
                raise ControlError("this model was trained without labels: leave out --label")
            return None
        index = resolve_label(label, class_names)
        if index is not None:
            return torch.full((n,), index, dtype=torch.long)
        return torch.arange(n) % model_cfg.num_classes  # every class in turn: a grid row per class

    def generate(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], controls: BaseModel,
                 context: GenerationContext) -> ImageResult:
        class_names = assets["class_names"]
        if controls.interpolate:
            label = resolve_label(controls.label, class_names) if cfg.model.conditional else None
            if cfg.model.conditional and label is None:
                label = 0
            self._labels(cfg.model, class_names, controls.label, 1)  # the same label checks as sampling
            images = self._interpolate(model, controls.interpolate, label, controls, cfg)
            labels = None if label is None else [class_names[label]] * len(images)
            return ImageResult(arrays=to_pixels(images), labels=labels, seed=controls.seed,
                               grid=image_grid(to_pixels(images), columns=len(images)), animation=True)
        label_ids = self._labels(cfg.model, class_names, controls.label, controls.num_samples)
        images = self._draw(model, controls.num_samples, label_ids, controls,
                            torch.Generator().manual_seed(controls.seed))
        pixels = to_pixels(images)
        labels = None if label_ids is None else [class_names[i] for i in label_ids.tolist()]
        if label_ids is not None and controls.label is None and controls.num_samples % cfg.model.num_classes == 0:
            # every class in turn: show one row per class
            order = torch.argsort(label_ids, stable=True).tolist()
            grid = image_grid([pixels[i] for i in order], columns=controls.num_samples // cfg.model.num_classes)
        else:
            grid = image_grid(pixels)
        return ImageResult(arrays=pixels, labels=labels, seed=controls.seed, grid=grid)

    def memorization_guard(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], controls: BaseModel,
                           context: GenerationContext) -> NearestImageGuard | str | None:
        if controls.memorization == "off":
            return None
        try:
            train, _ = self._load(cfg, assets["data_spec"])
        except DataError:
            return f"the training data '{assets['data_spec']}' is not readable here, so closeness is not checked"
        # an interpolation is a walk between two ends: its frames are flagged, never redrawn
        mode = "flag" if controls.interpolate else controls.memorization
        return NearestImageGuard(self, model, cfg, controls, assets["class_names"], to_float(train.images),
                                 assets["memorization_threshold"], mode)

    # -- training snapshots -------------------------------------------------------------------------
    def validation_hook(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any],
                        run: RunDir) -> Callable[[int, dict[str, torch.Tensor]], None]:
        """A grid from the same latents at every validation (with the weights a checkpoint holds, i.e. the
        EMA): `progress/step_NNNNNN.png`, so a person can watch the model learn."""
        from PIL import Image

        snapshot_model = self.build_model(cfg, assets)

        def snapshot(step: int, weights: dict[str, torch.Tensor]) -> None:
            snapshot_model.load_state_dict({k: v.detach().to("cpu") for k, v in weights.items()})
            folder = run / "progress"
            folder.mkdir(exist_ok=True)
            grid = Image.fromarray(self._overview_grid(snapshot_model, cfg))
            atomic_write(folder / f"step_{step:06d}.png", lambda tmp: grid.save(tmp, format="PNG"))

        return snapshot

    def _overview_grid(self, model: nn.Module, cfg: BaseModel) -> np.ndarray:
        """8 samples per class, one row per class (64 samples when unconditional), always from the same
        noise: the picture of a run in its snapshots, evaluation and report."""
        per_row = 8
        labels = (torch.arange(cfg.model.num_classes).repeat_interleave(per_row) if cfg.model.conditional else None)
        n = len(labels) if labels is not None else per_row * per_row
        images = self._draw(model, n, labels, self.controls_class(), torch.Generator().manual_seed(SNAPSHOT_SEED))
        return image_grid(to_pixels(images), columns=per_row)

    # -- evaluation ---------------------------------------------------------------------------------
    def _choose_controls(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], run: RunDir, data: str,
                         net: Any, heldout: ImageDataset) -> dict[str, Any]:
        """Before the evaluation samples: settle controls the run keeps for itself, judged by `net` on the
        held-out images (diffusion's guidance); returns what to report about them."""
        return {}

    def _extra_metrics(self, model: nn.Module, cfg: BaseModel, train: ImageDataset, test: ImageDataset,
                       run: RunDir) -> dict[str, Any]:
        return {}

    def evaluate(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> dict[str, Any]:
        from PIL import Image

        from muselab.image.features import feature_net_for
        from muselab.image.metrics import (
            closest_pairs_figure,
            image_quality_report,
            memorization,
            nearest_training_distances,
        )

        if data is None:
            raise DataError("this run does not record its data; pass --data")
        train, test = self._load(cfg, data)
        real = to_float(train.images)
        num_classes = cfg.model.num_classes
        # The judge is trained by muselab on the data alone, never by the run it judges
        with torch.enable_grad():  # evaluate runs under no_grad; training the judge needs gradients
            net, net_info = feature_net_for(real, train.labels, num_classes, cache_key=train.info["fingerprint"])
        chosen = self._choose_controls(model, cfg, assets, run, data, net, test)
        generator = torch.Generator().manual_seed(0)
        if cfg.model.conditional:
            labels = torch.arange(num_classes).repeat_interleave(cfg.eval.samples_per_class)
        else:
            labels = None
        n = len(labels) if labels is not None else cfg.eval.samples
        fakes = torch.cat([self._draw(model, len(chunk), chunk if labels is not None else None,
                                      self.controls_class(), generator)
                           for chunk in (labels if labels is not None else torch.zeros(n)).split(1000)])
        reference = real
        if len(reference) > cfg.eval.reference_images:
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:cfg.eval.reference_images]
            reference = real[pick]
        report = image_quality_report(net, reference, fakes, labels, k=cfg.eval.k)
        nearest = nearest_training_distances(fakes, real)
        copies = memorization(fakes, real, nearest=nearest)
        closest_pairs_figure(fakes, real, *nearest, run / "memorization.png")
        Image.fromarray(self._overview_grid(model, cfg)).save(run / "samples.png")
        metrics: dict[str, Any] = {
            **report,
            "memorization_share": copies["share"],
            "memorization_threshold": copies["threshold"],
            "nearest_training_distance_median": copies["median"],
            "samples": n,
            "reference_images": len(reference),
            "feature_net": net_info.get("kind", "classifier"),
            "feature_net_heldout_accuracy": net_info.get("heldout_accuracy"),
        }
        if num_classes:
            metrics["classifier_test_accuracy"] = float(
                (net.classify(to_float(test.images)) == test.labels).float().mean())
        metrics.update(chosen)
        metrics.update(self._extra_metrics(model, cfg, train, test, run))
        return Evaluation(metrics)



class NearestImageGuard(MemorizationGuard):
    """Each image's distance to its nearest training image; as close as the training set's own
    near-duplicates (the run's threshold) is too close. A redraw draws new images for the same labels."""

    def __init__(self, recipe: ImageRecipe, model: nn.Module, cfg: BaseModel, controls: BaseModel,
                 class_names: list[str], reference: torch.Tensor, threshold: float, mode: str) -> None:
        self.recipe, self.model, self.cfg, self.controls = recipe, model, cfg, controls
        self.class_names = class_names
        self.reference, self.threshold, self.mode = reference, threshold, mode
        self.attempts = RESAMPLE_TRIES
        self.generator = torch.Generator().manual_seed(controls.seed + 1)

    def measure(self, result: ImageResult, indices: Sequence[int]) -> list[float]:
        from muselab.image.metrics import nearest_training_distances

        if not len(indices):
            return []
        images = torch.stack([from_pixels(result.arrays[i]) for i in indices])
        return [float(d) for d in nearest_training_distances(images, self.reference)[0]]

    def too_close(self, value: float) -> bool:
        return value <= self.threshold

    def redraw(self, result: ImageResult, indices: Sequence[int], attempt: int) -> None:
        labels = None
        if result.labels is not None:
            labels = torch.tensor([self.class_names.index(result.labels[i]) for i in indices])
        fresh = to_pixels(self.recipe._draw(self.model, len(indices), labels, self.controls, self.generator))
        for i, pixels in zip(indices, fresh, strict=True):
            result.arrays[i] = pixels

    def note(self, value: float, redraws: int) -> dict[str, Any]:
        return {"memorization": {"nearest_training_distance": round(value, 5), "threshold": round(self.threshold, 5),
                                 "flagged": self.too_close(value), "resampled": redraws}}

    def describe(self, index: int, value: float) -> str:
        outcome = "refused" if self.mode == "reject" else "flagged in its manifest"
        return (f"image {index + 1} is as close to a training image as near-duplicates are (distance {value:.4f} <= "
                f"{self.threshold:.4f}): {outcome}")
