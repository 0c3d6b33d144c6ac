"""Text-generation controls: one validated model from which the CLI options, REST schema and web form derive."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from muselab.core.controls import aliases, option_name, parse_controls

__all__ = ["DEFAULT_MAX_COPY_CHARS", "TextGenerationControls", "parse_controls", "option_name"]

# Longest verbatim copy of the training text a sample may hold before the memorization guard acts.
# Measured on tinyshakespeare (train/validation split as text-lm makes it): 300-character windows of the
# held-out human text copy 17 characters from the training text at the median, 22 at the 95th percentile
# and 31 at most (200 windows); samples of a briefly trained char model copy 10-14. 100 leaves three
# times the longest copy new text showed, and still flags a sample that is half a memorised passage.
DEFAULT_MAX_COPY_CHARS = 100


class TextGenerationControls(BaseModel):
    """How to sample text from a language model. Every default leaves its processor off except temperature."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[str] = Field(
        "", description="Text the samples continue; empty starts from scratch (Python: a list, one batch per length).")
    max_new_tokens: int = Field(
        200, ge=1, le=100_000, description="Most tokens to generate per sample (the prompt is not counted)."
    )
    temperature: float = Field(
        0.8,
        ge=0,
        allow_inf_nan=False,
        description="Randomness: below 1 is safer, above 1 is wilder; 0 always picks the likeliest token.",
    )
    top_k: int = Field(0, ge=0, description="Sample only from the k likeliest tokens; 0 turns it off.")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Nucleus sampling: keep the fewest likeliest tokens whose probability adds up to p; 1 turns it off.",
    )
    min_p: float = Field(
        0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Drop tokens less likely than min-p times the likeliest one; 0 turns it off.",
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Make tokens already in the text less likely (above 1) or more likely (below 1); 1 turns it off.",
    )
    no_repeat_ngram_size: int = Field(
        0, ge=0, description="Never repeat a run of this many tokens (prompt included); 0 turns it off."
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Stop a sample where any of these strings appears; the output ends just before it.",
    )
    num_samples: int = Field(1, ge=1, le=256, description="How many samples to generate (per prompt), in one batch.")
    # Bounded to what torch.Generator.manual_seed accepts, so a bad seed is a control error, not a crash.
    seed: int | None = Field(
        None,
        ge=0,
        le=2**64 - 1,
        description="Random seed: the same seed gives the same text; unset differs each run.",
    )
    stream: bool = Field(True, description="Print tokens as they are generated (CLI, one sample only).")
    policy: str | None = Field(
        None, description="A moderation policy TOML file: edits to the default policy, for the prompt and samples."
    )
    ban: list[str] = Field(
        default_factory=list,
        description="A word or phrase the model may not write (on top of the policy's block and redact words).",
    )
    max_copy_chars: int = Field(
        DEFAULT_MAX_COPY_CHARS,
        ge=0,
        description="Longest verbatim copy of the training text a sample may hold; 0 turns the guard off.",
    )
    memorization: Literal["flag", "resample", "reject", "off"] = Field(
        "flag", description="A sample over --max-copy-chars: flag it, redraw then flag (resample), redraw "
                            "then refuse (reject), or off.",
        **aliases("memorization", deprecated=("copy_guard",)))

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        # An empty stop string matches everywhere and would end every sample before its first token.
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value
