"""Image generation controls: one validated schema per image recipe, shared by the CLI and the API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from muselab.core.controls import aliases


class ImageControls(BaseModel):
    """What every image model can be asked for."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(16, ge=1, le=10_000, description="Images to generate.",
                             **aliases("num_samples", "n"))
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed; the same seed gives the same images.")
    label: str | None = Field(None, description="Class to generate, by name or index (conditional models; "
                                                "default: every class in turn).")
    interpolate: list[str] | None = Field(None, min_length=2, max_length=2,
                                          description="Two seeds to walk between instead of sampling (a strip "
                                                      "and an animated GIF).")
    steps: int = Field(8, ge=2, le=64, description="Images in an interpolation, both ends included.")
    memorization: Literal["flag", "resample", "reject", "off"] = Field(
        "flag", description="Images as close to a training image as near-duplicates are: flag them in their "
                            "manifests, draw them again and flag those still close (resample), draw them again "
                            "and refuse those still close (reject), or do not check (off).")


class GANControls(ImageControls):
    truncation: float = Field(1.0, ge=0, le=2, allow_inf_nan=False,
                              description="Scale of the latent noise: below 1 trades diversity for quality; 0 "
                                          "gives one image per label.")


class VAEControls(ImageControls):
    interpolate: list[str] | None = Field(None, min_length=2, max_length=2,
                                          description="Two seeds or two image files to walk between instead of "
                                                      "sampling (a strip and an animated GIF).")
    temperature: float = Field(1.0, gt=0, le=5, allow_inf_nan=False,
                               description="Scale of the prior when sampling: below 1 gives typical images, above "
                                           "1 unusual ones.")


# How a diffusion sampler's steps spread over the noise levels (`muselab.image.diffusion.sampling_timesteps`)
Spacing = Literal["uniform", "quadratic", "log_snr", "karras"]


class DiffusionControls(ImageControls):
    """`steps` here counts denoising steps (as in other diffusion tools); the images of an interpolation
    are `frames`."""

    steps: int = Field(25, ge=1, le=10_000, description="Denoising steps, spread over the model's noise levels as "
                                                        "--spacing says (at most model.timesteps): more is slower "
                                                        "and closer to the model's own distribution.")
    # Uniform by default: on shapes it gave both 25-step samplers by far the lowest Fréchet distance
    # (benchmarks/results/diffusion_samplers_spacings_shapes.json)
    spacing: Spacing = Field(
        "uniform", description="How the steps spread over the noise levels: uniform in the timestep; quadratic, "
                               "log_snr and karras put more of them where little noise is left.")
    frames: int = Field(8, ge=2, le=64, description="Images in an interpolation, both ends included.")
    # DPM-Solver++(2M) by default: at 25 steps on digits its Fréchet distance is 1.06x DDPM-1000's against
    # DDIM's 1.32x, at the same speed (benchmarks/results/diffusion_samplers_digits.json)
    sampler: Literal["ddim", "ddpm", "dpm++2m"] = Field(
        "dpm++2m", description="ddim: DDIM, deterministic at --eta 0; ddpm: ancestral sampling (fresh noise every "
                            "step, --eta is 1); dpm++2m: DPM-Solver++(2M), deterministic and second order (each "
                            "step also uses the one before).")
    eta: float = Field(0.0, ge=0, le=1, allow_inf_nan=False,
                       description="DDIM's noise per step: 0 = deterministic, 1 = as much as ancestral sampling "
                                   "(above 0 without --sampler, DDIM samples).")
    guidance: float | None = Field(None, ge=0, le=20, allow_inf_nan=False,
                                   description="Classifier-free guidance scale (conditional models): 1 = none, "
                                               "above 1 follows the label more closely at some cost in variety, 0 "
                                               "ignores it. Default: the scale `muselab evaluate` chose for the "
                                               "run on held-out images (1.5 before it has run).")
    init_image: str | None = Field(None, description="A picture to start from (image-to-image, SDEdit): it is "
                                                     "noised --strength of the way and denoised again.")
    strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                   description="How far --init-image is noised: 0 returns it, 1 ignores it "
                                               "(default 0.6, or 1 with --mask).")
    mask: str | None = Field(None, description="A picture the size of --init-image's: white where new pixels "
                                               "are drawn (inpainting), black where the picture is kept "
                                               "exactly.")
