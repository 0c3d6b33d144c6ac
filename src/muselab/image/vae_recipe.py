"""The `image-vae` recipe: a convolutional VAE (beta, conditional) on a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from muselab.core.config import Section, TrainConfig
from muselab.core.errors import ControlError
from muselab.core.registry import ExportSpec
from muselab.core.rundir import RunDir
from muselab.core.trainer import mean_loss
from muselab.data.images import ImageDataset, ImageStream, load_picture, to_float
from muselab.image.controls import VAEControls
from muselab.image.pictures import image_grid, to_pixels
from muselab.image.recipe import ImageDataConfig, ImageEvalConfig, ImageRecipe, parse_seed
from muselab.image.vae import VAE, ImageDecoder, VAEConfig


class VAERecipeConfig(Section):
    data: ImageDataConfig = ImageDataConfig()
    model: VAEConfig = VAEConfig()
    train: TrainConfig = TrainConfig(max_steps=4000, batch_size=64, lr=2e-3, warmup_steps=100, min_lr_ratio=0.05,
                                     weight_decay=0.0, grad_clip=5.0, eval_every=500, eval_batches=0,
                                     checkpoint_every=500)
    eval: ImageEvalConfig = ImageEvalConfig()


class ImageVAERecipe(ImageRecipe):
    name = "image-vae"
    summary = "convolutional VAE (beta, conditional) with latent interpolation, on a folder of images"
    config_class = VAERecipeConfig
    controls_class = VAEControls
    validates = True
    presets = {
        "tiny": {
            "model": {"latent_dim": 4, "width": 8},
            "train": {"max_steps": 20, "batch_size": 16, "eval_every": 10, "eval_batches": 2, "checkpoint_every": 10,
                      "log_every": 5},
            "eval": {"samples_per_class": 20, "samples": 100, "reference_images": 200},
        },
        "default": {},
        "base": {"model": {"width": 64, "latent_dim": 128}, "train": {"max_steps": 50_000, "batch_size": 128}},
    }

    def build_model(self, cfg: VAERecipeConfig, assets: dict[str, Any]) -> VAE:
        return VAE(cfg.model)

    def export_module(self, model: VAE, cfg: VAERecipeConfig, assets: dict[str, Any]) -> ExportSpec:
        return self._latent_export(ImageDecoder(model), cfg, assets, "the decoder: the likelihood's mean image "
                                   "for each latent", "z ~ N(0, I) times the temperature for new images, or an "
                                   "encoder's posterior mean")

    def _draw(self, model: VAE, n: int, labels: torch.Tensor | None, controls: BaseModel,
              generator: torch.Generator) -> torch.Tensor:
        return model.sample(n, labels, temperature=getattr(controls, "temperature", 1.0), generator=generator)

    def _interpolate(self, model: VAE, ends: list[str], label: int | None, controls: VAEControls,
                     cfg: VAERecipeConfig) -> torch.Tensor:
        label_ids = None if label is None else torch.tensor([label])
        if all(Path(end).is_file() for end in ends):
            # Two pictures: walk between their posterior means
            images = torch.cat([to_float(load_picture(end, size=cfg.model.size, channels=cfg.model.channels))
                                for end in ends])
            z_a, z_b = model.encode(images[:1], label_ids)[0][0], model.encode(images[1:], label_ids)[0][0]
        elif any(Path(end).is_file() for end in ends):
            raise ControlError("--interpolate takes two seeds or two image files, not one of each")
        else:
            z_a, z_b = (torch.randn(cfg.model.latent_dim, generator=torch.Generator().manual_seed(parse_seed(end)))
                        * controls.temperature for end in ends)
        return model.interpolate(z_a, z_b, controls.steps, None if label is None else torch.full((controls.steps,), label))

    def _extra_metrics(self, model: VAE, cfg: VAERecipeConfig, train: ImageDataset, test: ImageDataset,
                       run: RunDir) -> dict[str, Any]:
        from PIL import Image

        test_stream = ImageStream(test)
        originals = to_float(test.images)
        labels = test.labels if cfg.model.conditional else None
        recon = torch.cat([model.reconstruct(chunk, None if labels is None else labels[i * 512:(i + 1) * 512])
                           for i, chunk in enumerate(originals.split(512))])
        # Originals above their reconstructions, 8 pairs of rows
        shown = min(64, len(originals))
        rows = []
        for start in range(0, shown, 8):
            rows += to_pixels(originals[start:start + 8]) + to_pixels(recon[start:start + 8])
        Image.fromarray(image_grid(rows, columns=8)).save(run / "reconstructions.png")
        return {
            "test_neg_elbo_nats": mean_loss(model, test_stream, 256, torch.device("cpu")),
            "test_reconstruction_mse": float(((recon - originals) / 2).pow(2).mean()),  # in [0, 1] pixel units
        }
