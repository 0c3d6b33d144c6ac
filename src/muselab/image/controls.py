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
