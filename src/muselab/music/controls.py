"""music-lm's generation controls: one validated model from which the CLI options, REST schema and web form
derive."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from muselab.data.scores import parse_key

# Which voices a piece of 1-4 voices keeps (0 soprano ... 3 bass): the outer voices first
VOICES_KEPT = {1: (0,), 2: (0, 3), 3: (0, 1, 3), 4: (0, 1, 2, 3)}


class MusicGenerationControls(BaseModel):
    """How to write music with a music-lm run: from nothing, after a primer, or harmonising a melody."""

    model_config = ConfigDict(extra="forbid")

    primer: str = Field(
        "", description="How the piece begins: notes as NAME:BEATS (\"C4 E4 G4:2\", R a rest; the soprano) or a "
                        "MIDI/MusicXML file (its parts pin the voices they fill); empty starts from nothing.")
    melody: str = Field(
        "", description="Harmonise this melody: notes as NAME:BEATS or a MIDI/MusicXML file (its top part); the "
                        "model writes alto, tenor and bass under it.")
    bars: int = Field(8, ge=1, le=128, description="Length in bars (a primer counts; a melody sets its own length).")
    beats_per_bar: int = Field(4, ge=2, le=8, description="Quarter notes per bar.")
    key: str | None = Field(
        None, description="Key of the piece, e.g. \"C major\", \"F# minor\", \"Bb\"; a primer or melody is "
                          "transposed into it. Unset: a melody's own key, else C major.")
    input_key: str | None = Field(
        None, description="The key the primer or melody is written in (unset: estimated from its notes).")
    tempo: float = Field(90.0, ge=20, le=300, allow_inf_nan=False, description="Quarter notes per minute.")
    voices: int = Field(4, ge=1, le=4, description="Voices written: 1 soprano, 2 soprano and bass, 3 adds alto, "
                                                  "4 all (a melody keeps at least soprano and bass).")
    temperature: float = Field(0.9, ge=0, le=5, allow_inf_nan=False,
                               description="Randomness: below 1 safer, above 1 wilder; 0 always the likeliest.")
    top_k: int = Field(0, ge=0, description="Sample only from the k likeliest tokens; 0 turns it off.")
    top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False,
                         description="Nucleus sampling: keep the likeliest tokens adding up to p; 1 turns it off.")
    avoid_parallels: bool = Field(
        True, description="Never write parallel fifths or octaves between two voices (a voice-leading rule "
                          "applied while sampling).")
    program: int = Field(0, ge=0, le=127, description="General MIDI instrument of every voice (0 piano, 19 church "
                                                      "organ, 52 choir aahs, 73 flute).")
    render: bool = Field(True, description="Also write the sound (WAV) rendered with a General MIDI SoundFont "
                                           "through FluidSynth, when they are installed.")
    ddsp: str | None = Field(None, description="An audio-ddsp run that plays every voice instead of the SoundFont "
                                               "(each voice moved by octaves into the instrument's trained range).")
    max_copy_notes: int = Field(
        40, ge=0, description="Most notes in a row one voice may share with a training piece (in any key) before the "
                              "piece is flagged; 0 turns the check off (held-out Bach chorales share up to 37).")
    memorization: Literal["flag", "resample", "reject", "off"] = Field(
        "flag", description="A piece over --max-copy-notes: flag it, redraw then flag (resample), redraw then refuse "
                            "(reject), or off.")
    num_samples: int = Field(1, ge=1, le=64, description="How many pieces to write, in one batch.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="Random seed: the same seed gives the same music; unset differs each run.")

    @field_validator("key", "input_key")
    @classmethod
    def _readable_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_key(value)
            return value.strip()
        return None
