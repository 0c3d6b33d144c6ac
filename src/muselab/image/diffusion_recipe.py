"""The `image-diffusion` recipe: a small U-Net diffusion model (DDPM training, DDIM or ancestral sampling,
classifier-free guidance, image-to-image and inpainting) on a folder of images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field

from muselab.core.config import Section, TrainConfig
from muselab.core.errors import CheckpointError, ControlError
from muselab.core.io import Fields
from muselab.core.registry import GenerationContext, Sizing
from muselab.core.results import ImageResult
from muselab.core.rundir import RunDir
from muselab.data.images import ImageDataset, load_picture, to_float
from muselab.image.controls import DiffusionControls
from muselab.image.diffusion import Diffusion, DiffusionConfig
from muselab.image.recipe import IMAGE_WIDE_MINUTES, ImageDataConfig, ImageEvalConfig, ImageRecipe, parse_seed
from muselab.image.vae import slerp

IMG2IMG_STRENGTH = 0.6  # --strength when --init-image comes without a mask: keeps the layout, redraws detail
# Images this large with under an hour train a narrow U-Net on small batches: on builtin:shapes (32 px) in
# 15 minutes the tuned width 32 / batch 64 made 1,245 steps, width 16 / batch 32 5,803 (with v-prediction,
# control accuracy 84 %) (benchmarks/results/image_models_shapes*.json)
NARROW_FROM_SIZE = 32
NARROW_LAYER = {"model": {"width": 16}, "train": {"batch_size": 32}}
# `muselab evaluate` tries these guidance scales and keeps, as the run's default, the one whose samples lie
# closest to the held-out images by kernel distance (unbiased at any sample size, unlike the Fréchet
# distance, and the held-out part of a small set is small). The best scale is the data's: on digits the
# Fréchet distance rose from guidance 1 to 2 (0.21, 0.58, 0.86), on shapes it fell (3.6, 1.5, 0.62)
# (image_models_digits_defaults.json, image_models_shapes_defaults.json)
GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0)
# Every preset's U-Net is conditioned by adaptive GroupNorm and trained with min-SNR-5 weighting (model fields
# that stay off by default, so runs made before them load and resume as they were). On builtin:shapes in 15
# minutes the two lifted control accuracy without guidance from 57 % to 83 %, and at guidance 2 from 86 % to
# 92 %, the judge's own accuracy on real test images (benchmarks/results/image_models_shapes_scale_shift*.json)
TRAINING_CHOICES = {"scale_shift": True, "loss_weighting": "min_snr"}
GUIDANCE_FILE = "guidance.json"
_GUIDANCE_FIELDS = Fields(required={"guidance": "finite"}, optional={"sweep": "objects"})


class DiffusionEvalConfig(ImageEvalConfig):
    guidance_images: int = Field(400, ge=0, description="images generated at each guidance scale when evaluate "
                                                        "chooses the run's default guidance on the held-out "
                                                        "images (conditional models; 0 = keep the current one)")


class DiffusionRecipeConfig(Section):
    data: ImageDataConfig = ImageDataConfig()
    model: DiffusionConfig = DiffusionConfig()
    # Diffusion practice: a short warm-up, no weight decay, an EMA of the weights for sampling (the saved
    # weights). Sized by step time, not yet by quality (bench_diffusion.py decides): on 2 busy CPU cores a
    # 2-block, batch-128 U-Net managed 113 steps in 3 minutes (control accuracy 72 %), so the default has
    # one block per level and batch 64, about 4x the steps; --max-minutes fits the schedule to any budget.
    train: TrainConfig = TrainConfig(max_steps=6000, batch_size=64, lr=1e-3, warmup_steps=200, min_lr_ratio=0.1,
                                     weight_decay=0.0, grad_clip=1.0, ema_decay=0.999, eval_every=1000,
                                     checkpoint_every=1000)
    eval: DiffusionEvalConfig = DiffusionEvalConfig()


class ImageDiffusionRecipe(ImageRecipe):
    name = "image-diffusion"
    summary = "U-Net diffusion model (DDPM/DDIM, classifier-free guidance, image-to-image, inpainting)"
    config_class = DiffusionRecipeConfig
    controls_class = DiffusionControls
    presets = {
        "tiny": {
            "model": {"width": 8, "res_blocks": 1, "timesteps": 100, **TRAINING_CHOICES},
            "train": {"max_steps": 20, "batch_size": 16, "eval_every": 10, "checkpoint_every": 10, "log_every": 5},
            "eval": {"samples_per_class": 20, "samples": 100, "reference_images": 200, "guidance_images": 40},
        },
        "default": {"model": TRAINING_CHOICES},
        "base": {"model": {"width": 128, "res_blocks": 2, "attention_resolution": 16, "dropout": 0.1,
                           **TRAINING_CHOICES},
                 "train": {"max_steps": 100_000, "batch_size": 128, "lr": 2e-4, "ema_decay": 0.9999}},
    }

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        sizing = super().size_for_data(stats, budget_minutes)
        size = stats.get("size", 0)
        short = budget_minutes is not None and budget_minutes < IMAGE_WIDE_MINUTES
        if sizing.rule == "large" or size < NARROW_FROM_SIZE or not short:
            return sizing
        layer = {section: dict(values) for section, values in sizing.layer.items()}
        for section, values in NARROW_LAYER.items():
            layer.setdefault(section, {}).update(values)
        return Sizing(rule=f"{sizing.rule}, narrow", inputs={**sizing.inputs, "size": size}, layer=layer)

    def build_model(self, cfg: DiffusionRecipeConfig, assets: dict[str, Any]) -> Diffusion:
        model = Diffusion(cfg.model)
        if "guidance" in assets:
            model.guidance = assets["guidance"]
        return model

    def load_assets(self, cfg: BaseModel, run: RunDir) -> dict[str, Any]:
        assets = super().load_assets(cfg, run)
        if (run / GUIDANCE_FILE).is_file():  # written by evaluate; a run never evaluated keeps the default
            guidance = run.read_json(GUIDANCE_FILE, _GUIDANCE_FIELDS)["guidance"]
            if not 0 <= guidance <= 20:
                raise CheckpointError(f"'{run / GUIDANCE_FILE}' gives guidance {guidance}, outside 0 to 20; "
                                      "delete the file and run muselab evaluate again")
            assets["guidance"] = float(guidance)
        return assets

    def run_defaults(self, model: Diffusion, cfg: DiffusionRecipeConfig, assets: dict[str, Any]) -> dict[str, Any]:
        return {"guidance": model.guidance}

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, model: Diffusion, cfg: DiffusionRecipeConfig, assets: dict[str, Any],
                 controls: DiffusionControls, context: GenerationContext) -> ImageResult:
        if controls.interpolate and controls.init_image:
            raise ControlError("--interpolate walks between two seeds: leave out --init-image")
        if controls.init_image is None and (controls.mask is not None or controls.strength is not None):
            option = "--mask" if controls.mask is not None else "--strength"
            raise ControlError(f"{option} needs --init-image: the picture to start from")
        if controls.steps > cfg.model.timesteps:
            raise ControlError(f"--steps must be at most {cfg.model.timesteps} (the model's noise levels), "
                               f"got {controls.steps}")
        return super().generate(model, cfg, assets, controls, context)

    def _picture(self, path: str, model: Diffusion, channels: int) -> torch.Tensor:
        return to_float(load_picture(path, size=model.cfg.size, channels=channels))

    def _draw(self, model: Diffusion, n: int, labels: torch.Tensor | None, controls: BaseModel,
              generator: torch.Generator) -> torch.Tensor:
        c: DiffusionControls = controls  # type: ignore[assignment]
        init = mask = None
        strength = 1.0
        if c.init_image is not None:
            init = self._picture(c.init_image, model, model.cfg.channels)
            if c.mask is not None:
                mask = (self._picture(c.mask, model, 1) > 0).float()  # white (above mid-grey) = redraw
            strength = c.strength if c.strength is not None else (1.0 if mask is not None else IMG2IMG_STRENGTH)
        eta = 1.0 if c.sampler == "ddpm" else c.eta
        return model.sample(n, labels, steps=c.steps, eta=eta, order=_order(c), guidance=c.guidance,
                            generator=generator, init=init, strength=strength, mask=mask, spacing=c.spacing)

    def _interpolate(self, model: Diffusion, ends: list[str], label: int | None, controls: DiffusionControls,
                     cfg: DiffusionRecipeConfig) -> torch.Tensor:
        """Frames from noise along the great circle between two seeds' noise, each decoded deterministically
        (DDIM at eta 0, or DPM-Solver++), so every frame follows from its noise alone and neighbours look alike."""
        shape = (cfg.model.channels, cfg.model.size, cfg.model.size)
        a, b = (torch.randn(shape, generator=torch.Generator().manual_seed(parse_seed(end))) for end in ends)
        noise = slerp(a.flatten(), b.flatten(), torch.linspace(0, 1, controls.frames)).view(-1, *shape)
        labels = None if label is None else torch.full((controls.frames,), label)
        return model.sample(controls.frames, labels, steps=controls.steps, eta=0.0, order=_order(controls),
                            guidance=controls.guidance, noise=noise, spacing=controls.spacing)

    # -- evaluation -----------------------------------------------------------------------------------
    def _choose_controls(self, model: Diffusion, cfg: DiffusionRecipeConfig, assets: dict[str, Any], run: RunDir,
                         data: str, net: Any, heldout: ImageDataset) -> dict[str, Any]:
        """The run's guidance (conditional models, evaluated on their own data): samples at each of
        GUIDANCE_SCALES (the same noise and labels, the default sampler) against the held-out images; the
        scale with the lowest kernel distance is kept in guidance.json and the evaluation samples use it."""
        if not (cfg.model.conditional and cfg.eval.guidance_images and data == assets.get("data_spec")):
            return {"guidance": model.guidance}
        classes = cfg.model.num_classes
        labels = torch.arange(classes).repeat_interleave(max(1, cfg.eval.guidance_images // classes))
        sweep = guidance_sweep(model, net, to_float(heldout.images), labels, GUIDANCE_SCALES, k=cfg.eval.k)
        model.guidance = float(min(sweep, key=lambda scale: sweep[scale]["kid_muselab"]))
        assets["guidance"] = model.guidance
        run.write_json(GUIDANCE_FILE, {"guidance": model.guidance,
                                       "chosen_by": "lowest kid_muselab against the held-out images", "sweep": sweep})
        return {"guidance": model.guidance, "guidance_sweep": sweep}


def _order(controls: DiffusionControls) -> int:
    """2 for DPM-Solver++(2M); a request for noise (--eta above 0) without --sampler gets DDIM, which has it."""
    wants_noise = controls.eta > 0 and "sampler" not in controls.model_fields_set
    return 2 if controls.sampler == "dpm++2m" and not wants_noise else 1


def guidance_sweep(model: Diffusion, net: Any, reference: torch.Tensor, labels: torch.Tensor,
                   scales: Sequence[float], k: int = 3) -> dict[str, dict[str, float]]:
    """Kernel and Fréchet distance, control accuracy, precision and recall against `reference` images of
    samples for `labels` at each guidance scale: the default sampler and steps, the same noise for every
    scale."""
    from muselab.image.metrics import image_quality_report

    defaults = DiffusionControls()
    sweep = {}
    for scale in scales:
        generator = torch.Generator().manual_seed(0)
        fakes = torch.cat([model.sample(len(chunk), chunk, steps=defaults.steps, order=_order(defaults),
                                        guidance=scale, generator=generator, spacing=defaults.spacing)
                           for chunk in labels.split(1000)])
        report = image_quality_report(net, reference, fakes, labels, k=k)
        sweep[f"{scale:g}"] = {key: report[key] for key in ("kid_muselab", "fd_muselab", "control_accuracy",
                                                            "precision", "recall")}
    return sweep
