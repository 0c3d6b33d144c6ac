"""The `audio-ddsp` recipe: a DDSP instrument learned from monophonic recordings, played from notes or
from another recording (timbre transfer).

Data is `builtin:tones`, `builtin:soundfont` (one sampled instrument, `data/solo.py`) or a folder (or one file) of wav/flac/ogg recordings, resampled to the model's
rate. Long recordings are cut into clips of `data.clip_seconds`; whole clips are held out for
evaluation (evenly spaced, so the split is the same every time). Read top to bottom: config, data,
notes and controls, the recipe (generation, evaluation).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from muselab.audio.ddsp import DDSP, DDSPConfig
from muselab.audio.synth import harmonic_synth
from muselab.core.config import Section, TrainConfig
from muselab.core.errors import ConfigError, ControlError, DataError
from muselab.core.io import Fields, sha256_json
from muselab.core.registry import (
    Capabilities,
    EvalAudio,
    Evaluation,
    GenerationContext,
    PreparedData,
    Recipe,
    Sizing,
)
from muselab.core.results import AudioResult
from muselab.core.rundir import RunDir
from muselab.core.sizing import PresetRows
from muselab.data.audio_features import (
    ClipFeatures,
    FeatureSettings,
    FrameWindows,
    extract_features,
    is_cached,
)
from muselab.data.notes import SILENCE_DB, NoteEvent, notes_to_curves, read_notes
from muselab.data.solo import DEFAULT_INSTRUMENT, INSTRUMENTS, SOLO_DESCRIPTION, instrument_program
from muselab.data.split import hold_out
from muselab.data.tones import TONES_DESCRIPTION

logger = logging.getLogger(__name__)  # notes for the user; the CLI shows them on stderr

BUILTIN_TONES = "builtin:tones"
BUILTIN_SOUNDFONT = "builtin:soundfont"
TONE_SECONDS = 4.0  # each clip of builtin:tones and of builtin:soundfont
MAX_SECONDS = 600  # longest phrase --notes may ask for


# ---------------------------------------------------------------------------------------------------
# Config


class DDSPDataConfig(Section):
    window_seconds: float = Field(0.5, ge=0.25, le=8, description="length of the training windows")
    clip_seconds: float = Field(8.0, ge=1, le=60, description="longer recordings are cut into clips of this length "
                                                              "(the unit of the held-out split and of the cache)")
    test_share: float = Field(0.1, gt=0, lt=0.5, description="share of the clips held out for evaluation")
    f0: Literal["auto", "pyin", "labels"] = Field(
        "auto", description="pitch source: pyin, or labels (the built-in data's true f0: builtin:tones' synthesis, "
                            "builtin:soundfont's notes); auto = labels for built-in data (pYIN on builtin:tones' 13 "
                            "minutes takes over 10 minutes on 2 cores), pyin otherwise")
    tones_clips: int = Field(200, ge=2, le=2000, description="clips of builtin:tones (4 s each)")
    instrument: str = Field(DEFAULT_INSTRUMENT, description="the instrument builtin:soundfont plays: "
                                                            + ", ".join(sorted(INSTRUMENTS)))
    soundfont_clips: int = Field(150, ge=2, le=2000, description="clips of builtin:soundfont (4 s each)")
    fmin: float = Field(50.0, ge=20, description="lowest pitch pYIN looks for, Hz")
    fmax: float = Field(1600.0, le=4000, description="highest pitch pYIN looks for, Hz")
    skip_bad_files: bool = Field(False, description="leave unreadable, empty or silent audio files out (and count "
                                                    "them) instead of stopping")

    @field_validator("instrument")
    @classmethod
    def _known_instrument(cls, value: str) -> str:
        try:
            instrument_program(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return value


class DDSPEvalConfig(Section):
    clips: int = Field(20, ge=1, description="held-out clips resynthesised, at most")
    pitch_notes: int = Field(12, ge=2, le=48, description="notes across the trained range for the pitch test")
    realtime_seconds: float = Field(10.0, ge=1, description="audio rendered to time the realtime factor")


class DDSPRecipeConfig(Section):
    data: DDSPDataConfig = DDSPDataConfig()
    model: DDSPConfig = DDSPConfig()
    # Ten minutes on a 2-core CPU (the schedule fits itself to the budget): about 2,000 steps
    train: TrainConfig = TrainConfig(max_steps=20_000, max_minutes=10.0, batch_size=16, lr=2e-3, warmup_steps=100,
                                     min_lr_ratio=0.1, weight_decay=0.0, grad_clip=3.0, eval_every=500,
                                     eval_batches=4, checkpoint_every=500, log_every=20)
    eval: DDSPEvalConfig = DDSPEvalConfig()


def feature_settings(cfg: DDSPRecipeConfig) -> FeatureSettings:
    if not cfg.data.fmin < cfg.data.fmax < cfg.model.sample_rate / 2:
        raise ConfigError(f"data.fmin ({cfg.data.fmin:g}) must be below data.fmax ({cfg.data.fmax:g}), and that "
                          f"below half the sample rate ({cfg.model.sample_rate / 2:g} Hz)")
    return FeatureSettings(sample_rate=cfg.model.sample_rate, hop=cfg.model.hop, fmin=cfg.data.fmin,
                           fmax=cfg.data.fmax, n_mfcc=cfg.model.n_mfcc)


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass
class RawClip:
    name: str
    audio: np.ndarray
    f0_labels: np.ndarray | None = None


def _cut(name: str, audio: np.ndarray, piece: int) -> list[RawClip]:
    """A recording cut into pieces of `piece` samples; a short remainder joins the last piece."""
    count = max(1, len(audio) // piece)
    bounds = [i * piece for i in range(count)] + [len(audio)]
    if count == 1:
        return [RawClip(name, audio)]
    return [RawClip(f"{name}#{i + 1}", audio[a:b]) for i, (a, b) in enumerate(pairwise(bounds))]


def _split(clips: Sequence[RawClip], share: float) -> tuple[list[RawClip], list[RawClip]]:
    """Held-out clips chosen by the shared stable-hash rule on their names; at least one when there are two."""
    held = hold_out([c.name for c in clips], share)
    return ([c for c, h in zip(clips, held, strict=True) if not h], [c for c, h in zip(clips, held, strict=True) if h])


def _raw_clips(cfg: DDSPRecipeConfig, spec: str) -> tuple[list[RawClip], list[RawClip], str]:
    """(train, test, source) before feature extraction."""
    sr, hop = cfg.model.sample_rate, cfg.model.hop
    if spec == BUILTIN_TONES:
        from muselab.data.tones import TONES_DESCRIPTION, make_tones, tones_split

        train, test = tones_split(make_tones(cfg.data.tones_clips, TONE_SECONDS, sr, hop), cfg.data.test_share)
        labelled = cfg.data.f0 in ("auto", "labels")

        def raw(clips: list, offset: int) -> list[RawClip]:
            return [RawClip(f"tones-{clip.instrument}-{offset + i}", clip.audio, clip.f0_hz if labelled else None)
                    for i, clip in enumerate(clips)]

        return raw(train, 0), raw(test, len(train)), TONES_DESCRIPTION
    if spec == BUILTIN_SOUNDFONT:
        from muselab.data.solo import make_solo_clips

        solo, font = make_solo_clips(cfg.data.instrument, cfg.data.soundfont_clips, TONE_SECONDS, sr, hop)
        labelled = cfg.data.f0 in ("auto", "labels")
        train, test = _split([RawClip(c.name, c.audio, c.f0_hz if labelled else None) for c in solo],
                             cfg.data.test_share)
        return train, test, f"{cfg.data.instrument} from {font}, held notes and melodies rendered with FluidSynth"
    if spec.startswith("builtin:"):
        raise DataError(f"unknown built-in audio data '{spec}'; audio-ddsp knows {BUILTIN_TONES} and "
                        f"{BUILTIN_SOUNDFONT}, or pass a folder of monophonic wav/flac/ogg recordings")
    if cfg.data.f0 == "labels":
        raise ConfigError("data.f0=labels needs built-in data (recordings have no pitch labels); use pyin or auto")
    from muselab.audio.io import list_audio_files, load_audio

    root = Path(spec)
    clips: list[RawClip] = []
    changes: dict[str, int] = {}
    skipped: list[str] = []
    for path in list_audio_files(root):
        try:
            audio, _, notes = load_audio(path, sr=sr)
        except DataError as err:
            if not cfg.data.skip_bad_files:
                raise
            skipped.append(str(err))
            continue
        for note in notes:
            changes[note] = changes.get(note, 0) + 1
        name = str(path.relative_to(root)) if root.is_dir() else path.name
        clips += _cut(name, audio, round(cfg.data.clip_seconds * sr))
    for note, count in changes.items():
        logger.info(f"{note} ({count} file{'s' if count > 1 else ''}): audio-ddsp works at {sr} Hz")
    if skipped:
        logger.warning(f"skipped {len(skipped)} bad audio file(s) (data.skip_bad_files), e.g. {skipped[0]}")
    if not clips:
        raise DataError(f"no usable audio file under '{root}'" + (f" ({len(skipped)} skipped)" if skipped else ""))
    train, test = _split(clips, cfg.data.test_share)
    return train, test, f"audio files under {root}"


def load_features(cfg: DDSPRecipeConfig, spec: str) -> tuple[list[ClipFeatures], list[ClipFeatures], dict[str, Any]]:
    """Features of the training and held-out clips, plus what config.json records about the data."""
    settings = feature_settings(cfg)
    train_raw, test_raw, source = _raw_clips(cfg, spec)
    every = train_raw + test_raw
    todo = [c for c in every if c.f0_labels is None and not is_cached(c.audio, settings)]
    if todo:
        minutes = sum(len(c.audio) for c in todo) / settings.sample_rate / 60
        logger.info(f"tracking pitch with pYIN in {len(todo)} clips ({minutes:.1f} min of audio; cached for next time)")
    started = time.monotonic()
    train = [extract_features(c.audio, settings, c.name, c.f0_labels) for c in train_raw]
    test = [extract_features(c.audio, settings, c.name, c.f0_labels) for c in test_raw]
    if todo:
        logger.info(f"pitch tracking took {time.monotonic() - started:.0f} s")
    unpitched = [c.name for c in train + test if not c.pitched]
    train = [c for c in train if c.pitched]
    test = [c for c in test if c.pitched]
    if not train:
        raise DataError(f"no pitched sound found in '{spec}': audio-ddsp learns monophonic pitched instruments "
                        "(a voice, a flute, a violin...), not noise, drums or silence")
    if unpitched:
        logger.warning(f"left out {len(unpitched)} clip(s) with no pitched sound, e.g. {unpitched[0]}")
    if not test:
        logger.warning("every clip is used for training (one clip, or none pitched among the held-out ones): "
              "the evaluation scores training audio")
        test = train[-1:]
    f0_source = "labels" if train_raw and train_raw[0].f0_labels is not None else "pyin"
    info = {"spec": spec, "source": source,
            "fingerprint": sha256_json({"clips": [c.name for c in train + test],
                                        "audio": [hash_clip(c) for c in train + test]}),
            "train_clips": len(train), "test_clips": len(test),
            "train_minutes": round(sum(c.n_frames for c in train) * settings.hop / settings.sample_rate / 60, 2),
            "f0": ("ground-truth labels of the built-in data (pYIN is used for recordings and for evaluation)"
                   if f0_source == "labels" else f"pYIN ({settings.fmin:g}-{settings.fmax:g} Hz)")}
    return train, test, info


def hash_clip(clip: ClipFeatures) -> str:
    return hashlib.sha256(clip.audio.tobytes()).hexdigest()[:16]


# What data_stats.json holds (see data_stats)
_STATS_FIELDS = Fields(required={"loudness_mean": "finite", "loudness_std": "finite", "midi_low": "finite",
                                 "midi_high": "finite"})


def data_stats(clips: Sequence[ClipFeatures]) -> dict[str, float]:
    """The loudness normalisation and the pitch range the model was trained on (voiced frames)."""
    loud = np.concatenate([c.loudness_db for c in clips])
    voiced_midi = np.concatenate([69.0 + 12.0 * np.log2(c.f0_hz[c.voiced] / 440.0) for c in clips])
    return {"loudness_mean": float(loud.mean()), "loudness_std": float(loud.std()),
            "midi_low": float(np.percentile(voiced_midi, 2)), "midi_high": float(np.percentile(voiced_midi, 98))}


# ---------------------------------------------------------------------------------------------------
# Notes and controls


def parse_notes(text: str, tempo: float) -> list[NoteEvent]:
    """The notes of `read_notes` timed at `tempo` beats per minute."""
    seconds_per_beat = 60.0 / tempo
    events: list[NoteEvent] = []
    start = 0.0
    for midi, beats in read_notes(text):
        events.append(NoteEvent(midi, start, beats * seconds_per_beat))
        start += beats * seconds_per_beat
    if start > MAX_SECONDS:
        raise ControlError(f"--notes last {start:.0f} s at this tempo; the limit is {MAX_SECONDS} s: play fewer "
                           "notes or raise --tempo")
    return events


class DDSPControls(BaseModel):
    """What an audio-ddsp instrument can be asked to play."""

    model_config = ConfigDict(extra="forbid")

    notes: str | None = Field(None, description="Notes to play as NAME:BEATS, R for a rest, e.g. "
                                                "\"C4:0.5 E4:0.5 G4:1 R:0.5\" (a bare name is one beat).")
    tempo: float = Field(120.0, ge=20, le=400, allow_inf_nan=False, description="Beats per minute for --notes.")
    loudness: float = Field(-20.0, ge=-60, le=0, allow_inf_nan=False,
                            description="Level of the notes in A-weighted dB (0 = a full-scale 1 kHz sine).")
    wav: str | None = Field(None, description="A recording to re-play with this instrument (timbre transfer): its "
                                              "pitch and loudness are tracked and rendered again.")
    pitch_shift: float = Field(0.0, ge=-36, le=36, allow_inf_nan=False,
                               description="Semitones to shift the pitch of --wav by.")
    loudness_shift: float = Field(0.0, ge=-40, le=40, allow_inf_nan=False,
                                  description="Decibels to add to the loudness of --wav.")
    timbre: str | None = Field(None, description="A recording whose timbre to use (only for models trained with "
                                                 "model.use_z).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="Random seed of the noise; the same seed gives the same audio.")

    @field_validator("notes")
    @classmethod
    def _readable_notes(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                read_notes(value)  # the syntax; the length depends on --tempo and is checked when playing
            except ControlError as err:
                raise ValueError(str(err)) from None  # reported as "bad value for --notes: ..."
        return value


# ---------------------------------------------------------------------------------------------------
# The recipe


def _recording(path: str, settings: FeatureSettings, what: str) -> ClipFeatures:
    """A user's recording (for --wav or --timbre) -> features; one-line errors for unusable files."""
    from muselab.audio.io import load_audio

    audio, _, _ = load_audio(path, sr=settings.sample_rate)
    if len(audio) < settings.hop * 2:
        raise DataError(f"{what} '{path}' is too short to play; use a recording of at least 0.1 s")
    clip = extract_features(audio, settings, name=path)
    if not clip.pitched:
        raise DataError(f"no pitched sound found in {what} '{path}': use a recording of one instrument or voice "
                        "playing notes")
    return clip


def _as_batch(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0) for a in arrays]


# The default preset's sizing rule (README: "Defaults that fit the data"), rows by minutes of training audio:
# builtin:tones and builtin:soundfont (about 12 and 9 minutes) sit in the middle row, the preset as tuned. Under
# two minutes, batch 8: on 1.4 minutes of builtin:tones in 4 minutes its best validation loss was 1.241 against
# the preset's 1.339 (batch 16).
DDSP_ROWS = PresetRows("train_minutes", (2.0, 60.0), widen=("model.hidden", "model.gru"), small_batch=8)


class AudioDDSPRecipe(Recipe):
    name = "audio-ddsp"
    summary = "DDSP harmonic-plus-noise instrument from monophonic recordings; play notes or re-play a recording"
    config_class = DDSPRecipeConfig
    controls_class = DDSPControls
    default_data = BUILTIN_TONES
    data_formats = ("a folder of (or one) monophonic .wav, .flac or .ogg recordings of one instrument or voice; "
                    "long ones are cut into data.clip_seconds clips")
    builtin_data = {BUILTIN_TONES: TONES_DESCRIPTION, BUILTIN_SOUNDFONT: SOLO_DESCRIPTION}
    capabilities = Capabilities(main_control="notes", writes_files=True)
    presets = {
        "tiny": {
            "data": {"tones_clips": 8, "soundfont_clips": 8, "window_seconds": 0.5},
            "model": {"hidden": 16, "gru": 16, "mlp_layers": 1, "n_harmonics": 20, "n_noise_bands": 17},
            "train": {"max_steps": 8, "batch_size": 2, "warmup_steps": 2, "eval_every": 4, "eval_batches": 1,
                      "checkpoint_every": 4, "log_every": 2},
            "eval": {"clips": 2, "pitch_notes": 3, "realtime_seconds": 2.0},
        },
        "default": {},
        "base": {"data": {"window_seconds": 2.0},
                 "model": {"hidden": 512, "gru": 512, "mlp_layers": 3, "n_harmonics": 100},
                 "train": {"max_steps": 30_000, "max_minutes": None, "batch_size": 32, "lr": 1e-3,
                           "eval_every": 2000, "checkpoint_every": 2000}},
    }

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        return DDSP_ROWS.size(self.config_class(), stats, budget_minutes)

    # -- data -------------------------------------------------------------------------------------
    def prepare_data(self, cfg: DDSPRecipeConfig, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        train, test, info = load_features(cfg, data)
        window = max(1, round(cfg.data.window_seconds * cfg.model.sample_rate / cfg.model.hop))
        sources = [FrameWindows(clips, window, cfg.model.hop, cfg.model.sample_rate, cfg.model.use_z)
                   for clips in (train, test)]
        stats = data_stats(train)
        return PreparedData(sources[0], sources[1], info, {"stats": stats})

    def build_model(self, cfg: DDSPRecipeConfig, assets: dict[str, Any]) -> DDSP:
        stats = assets.get("stats", {})
        return DDSP(cfg.model, stats.get("loudness_mean", -40.0), stats.get("loudness_std", 20.0))

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        run.write_json("data_stats.json", assets["stats"])

    def load_assets(self, cfg: DDSPRecipeConfig, run: RunDir) -> dict[str, Any]:
        path = run / "data_stats.json"
        if not path.is_file():
            raise DataError(f"'{path}' is missing; the run directory is incomplete")
        return {"stats": run.read_json("data_stats.json", _STATS_FIELDS)}

    def check_transfer(self, cfg: DDSPRecipeConfig, source_cfg: DDSPRecipeConfig, prepared: PreparedData,
                       source: Path) -> None:
        mine, theirs = cfg.model, source_cfg.model
        if (mine.sample_rate, mine.hop, mine.use_z) != (theirs.sample_rate, theirs.hop, theirs.use_z):
            raise ConfigError(f"--init-from '{source}' works at {theirs.sample_rate} Hz, hop {theirs.hop}, use_z "
                              f"{theirs.use_z}; set model.sample_rate, model.hop and model.use_z to match")

    # -- generation -------------------------------------------------------------------------------
    def _timbre(self, model: DDSP, cfg: DDSPRecipeConfig, controls: DDSPControls) -> torch.Tensor | None:
        if not cfg.model.use_z:
            if controls.timbre is not None:
                raise ControlError("this model was trained without a timbre code (model.use_z=false): leave out "
                                   "--timbre")
            return None
        if controls.timbre is None:
            raise ControlError("this model was trained with a timbre code: add --timbre RECORDING (e.g. one of its "
                               "training recordings)")
        clip = _recording(controls.timbre, feature_settings(cfg), "--timbre")
        return torch.from_numpy(clip.mfcc).unsqueeze(0)

    def curves(self, cfg: DDSPRecipeConfig, controls: DDSPControls) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(f0 Hz, loudness dB, requested f0 Hz, n_samples) the controls ask for."""
        sr, hop = cfg.model.sample_rate, cfg.model.hop
        if controls.notes is not None and controls.wav is not None:
            raise ControlError("give --notes or --wav, not both")
        if controls.notes is not None:
            if controls.pitch_shift or controls.loudness_shift:
                raise ControlError("--pitch-shift and --loudness-shift apply to --wav; for --notes write the notes "
                                   "you want and set --loudness")
            return notes_to_curves(parse_notes(controls.notes, controls.tempo), controls.loudness, sr, hop)
        if controls.wav is None:
            raise ControlError("nothing to play: give --notes (e.g. \"C4:0.5 E4:0.5 G4:1\") or --wav RECORDING")
        clip = _recording(controls.wav, feature_settings(cfg), "--wav")
        f0 = clip.f0_hz * 2.0 ** (controls.pitch_shift / 12.0)
        loud = np.maximum(clip.loudness_db + controls.loudness_shift, SILENCE_DB)
        requested = np.where(clip.voiced, f0, 0.0)
        return f0.astype(np.float32), loud.astype(np.float32), requested.astype(np.float32), len(clip.audio)

    def generate(self, model: DDSP, cfg: DDSPRecipeConfig, assets: dict[str, Any], controls: DDSPControls,
                 context: GenerationContext) -> AudioResult:
        f0, loud, requested, n_samples = self.curves(cfg, controls)
        if f0.max() >= cfg.model.sample_rate / 2:
            raise ControlError(f"the pitch reaches {f0.max():.0f} Hz, above half the sample rate "
                               f"({cfg.model.sample_rate / 2:.0f} Hz): play lower notes or shift less")
        z_mfcc = self._timbre(model, cfg, controls)
        f0_t, loud_t = _as_batch(f0, loud)
        audio = model.render(f0_t, loud_t, z_mfcc, seed=controls.seed)[0, :n_samples].numpy()
        timing = {"f0_hz": f0, "f0_requested": requested, "hop": cfg.model.hop}
        note: dict[str, Any] = {}
        peak = float(np.abs(audio).max())
        if peak > 0.99:  # 16-bit WAV clips at 1: scale down instead
            audio = audio * (0.99 / peak)
            note["level"] = f"scaled down by {20 * math.log10(peak / 0.99):.1f} dB to avoid clipping"
        return AudioResult(clips=[audio.astype(np.float32)], sample_rate=cfg.model.sample_rate, timing=[timing],
                           notes=[note])

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, model: DDSP, cfg: DDSPRecipeConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> dict[str, Any]:
        from muselab.audio.dsp import mrstft_distance
        from muselab.audio.timbre import AverageSpectrum, mfcc_dtw_distance

        if data is None:
            raise DataError("this run does not record its data; pass --data")
        train, test, _ = load_features(cfg, data)
        test = test[:cfg.eval.clips]
        sr = cfg.model.sample_rate
        resynth = [self._resynthesize(model, cfg, clip) for clip in test]
        sines = [best_gain_sine(clip, sr, cfg.model.hop) for clip in test]
        # The stronger baseline: the training set's average spectrum at each clip's pitch and loudness
        average = AverageSpectrum.fit(train, cfg.model.n_harmonics, cfg.model.n_noise_bands, sr, cfg.model.hop)
        averaged = [average.render(clip.f0_hz, clip.loudness_db) for clip in test]

        def mean_of(score: Any, renders: Sequence[np.ndarray]) -> float:
            return float(np.mean([score(audio, clip.audio) for audio, clip in zip(renders, test, strict=True)]))

        def timbre(audio: np.ndarray, reference: np.ndarray) -> float:
            return mfcc_dtw_distance(audio, reference, sr)

        pitch = self._pitch_test(model, cfg, assets, test, run)
        metrics: dict[str, Any] = {
            "mrstft": mean_of(mrstft_distance, resynth),
            "mrstft_sine_baseline": float(np.mean([score for _, score in sines])),
            "mrstft_avg_spectrum_baseline": mean_of(mrstft_distance, averaged),
            # Timbre apart from the training loss: librosa MFCCs compared after DTW alignment
            "timbre_mfcc_dtw": mean_of(timbre, resynth),
            "timbre_mfcc_dtw_avg_spectrum_baseline": mean_of(timbre, averaged),
            "timbre_mfcc_dtw_sine_baseline": mean_of(timbre, [audio for audio, _ in sines]),
        }
        metrics["mrstft_ratio"] = metrics["mrstft_sine_baseline"] / metrics["mrstft"]
        metrics["timbre_mfcc_dtw_ratio"] = metrics["timbre_mfcc_dtw_avg_spectrum_baseline"] / metrics["timbre_mfcc_dtw"]
        metrics.update(pitch["metrics"])
        metrics["realtime_factor"] = realtime_factor(model, test, cfg.eval.realtime_seconds, cfg.model.hop, sr)
        metrics["heldout_clips"] = len(test)
        return Evaluation(metrics, audio=self._pictures_and_samples(model, cfg, run, test[0], resynth[0], pitch))

    def _resynthesize(self, model: DDSP, cfg: DDSPRecipeConfig, clip: ClipFeatures) -> np.ndarray:
        f0, loud = _as_batch(clip.f0_hz, clip.loudness_db)
        mfcc = torch.from_numpy(clip.mfcc).unsqueeze(0) if cfg.model.use_z else None
        return model.render(f0, loud, mfcc, seed=0)[0].numpy()

    def _pitch_test(self, model: DDSP, cfg: DDSPRecipeConfig, assets: dict[str, Any], test: list[ClipFeatures],
                    run: RunDir) -> dict[str, Any]:
        """Notes spread over the trained range, rendered and tracked with pYIN: the share of voiced frames
        within 20 cents of the requested pitch (and the share of requested frames pYIN finds voiced)."""
        from muselab.audio.dsp import f0_pyin

        stats = assets["stats"]
        pitches = np.rint(np.linspace(stats["midi_low"], stats["midi_high"], cfg.eval.pitch_notes)).astype(int)
        names = " ".join(f"{_note_name(int(p))}:1 R:0.25" for p in pitches)
        controls = DDSPControls(notes=names, tempo=120.0, loudness=_typical_loudness(test), seed=0,
                                timbre=None)
        f0, loud, requested, n_samples = self.curves(cfg, controls)
        mfcc = torch.from_numpy(test[0].mfcc).unsqueeze(0) if cfg.model.use_z else None
        audio = model.render(*_as_batch(f0, loud), mfcc, seed=0)[0, :n_samples].numpy()
        settings = feature_settings(cfg)
        # pYIN on every 4th frame (as for the training data): the same test, a quarter of the time
        stride = settings.pyin_stride
        tracked, _ = f0_pyin(audio, settings.sample_rate, cfg.model.hop * stride, fmin=settings.fmin,
                             fmax=settings.fmax)
        asked = requested[::stride][:len(tracked)]
        tracked = tracked[:len(asked)]
        both = (tracked > 0) & (asked > 0)
        cents = 1200.0 * np.abs(np.log2(np.where(both, tracked, 1.0) / np.where(both, asked, 1.0)))
        within = float((cents[both] <= 20.0).mean()) if both.any() else 0.0
        voiced_share = float(both.sum() / max(1, (asked > 0).sum()))
        return {"metrics": {"pitch_within_20_cents": within, "pitch_voiced_share": voiced_share},
                "audio": audio, "requested": asked, "tracked": tracked, "controls": controls,
                "frame_seconds": cfg.model.hop * stride / settings.sample_rate}

    def _pictures_and_samples(self, model: DDSP, cfg: DDSPRecipeConfig, run: RunDir, clip: ClipFeatures,
                              resynth: np.ndarray, pitch: dict[str, Any]) -> list[EvalAudio]:
        from muselab.audio.dsp import log_mel
        from muselab.audio.plots import plot_f0, plot_spectrograms

        sr, hop = cfg.model.sample_rate, 256
        panels = [(title, log_mel(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), sr, 1024, hop, 80,
                                  fmax=None).numpy())
                  for title, wav in (("original (held out)", clip.audio), ("resynthesis", resynth))]
        plot_spectrograms(panels, run / "spectrograms.png", sr, hop, title=clip.name)
        times = np.arange(len(pitch["requested"])) * pitch["frame_seconds"]
        plot_f0(times, pitch["requested"], pitch["tracked"], run / "f0.png")
        return [EvalAudio("eval_resynthesis.wav", [resynth], sr, {"resynthesis_of": clip.name, "seed": 0}),
                EvalAudio("eval_notes.wav", [pitch["audio"]], sr, pitch["controls"].model_dump())]


def _note_name(midi: int) -> str:
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    return f"{names[midi % 12]}{midi // 12 - 1}"


def _typical_loudness(clips: Sequence[ClipFeatures]) -> float:
    """The median loudness of the voiced frames, clamped to the --loudness range."""
    loud = np.concatenate([c.loudness_db[c.voiced] for c in clips])
    return float(np.clip(np.median(loud), -60.0, 0.0))


def best_gain_sine(clip: ClipFeatures, sample_rate: int, hop: int) -> tuple[np.ndarray, float]:
    """The baseline: a sine at the clip's f0 whose amplitude follows the clip's short-time energy (RMS x
    sqrt 2), times the single gain (searched on a 3 dB grid, then 0.5 dB) that minimises the MRSTFT distance."""
    from scipy.signal import fftconvolve

    from muselab.audio.dsp import mrstft_distance

    audio = torch.from_numpy(clip.audio)
    # The mean square under a 64 ms Hann window centred on each frame: several periods even at 50 Hz,
    # so the envelope does not ripple with the waveform's phase
    window = np.hanning(1025)[1:-1]
    mean_square = fftconvolve(clip.audio.astype(np.float64) ** 2, window / window.sum(), mode="same")
    amplitude = torch.from_numpy(np.sqrt(2.0 * np.maximum(mean_square[::hop][:clip.n_frames], 0.0))).float()
    f0 = torch.from_numpy(clip.f0_hz)
    sine = harmonic_synth(f0[None], amplitude[None], torch.ones(1, clip.n_frames, 1), sample_rate,
                          clip.n_frames * hop)[0]

    def score(db: float) -> float:
        return mrstft_distance(sine * 10 ** (db / 20), audio)

    grid = np.arange(-12.0, 12.1, 3.0)
    best = min(grid, key=score)
    fine = np.arange(best - 2.0, best + 2.01, 0.5)
    best = min(fine, key=score)
    return (sine * 10 ** (best / 20)).numpy(), score(best)


def realtime_factor(model: DDSP, clips: Sequence[ClipFeatures], seconds: float, hop: int, sample_rate: int) -> float:
    """Seconds of audio rendered per second of wall time (decoder + synth, one batch of >= `seconds`),
    the best of five timed runs after a warm-up (the least disturbed by other work on the machine)."""
    n_frames = math.ceil(seconds * sample_rate / hop)
    reps = math.ceil(n_frames / sum(c.n_frames for c in clips))
    f0 = np.tile(np.concatenate([c.f0_hz for c in clips]), reps)[:n_frames]
    loud = np.tile(np.concatenate([c.loudness_db for c in clips]), reps)[:n_frames]
    mfcc = (torch.from_numpy(np.concatenate([c.mfcc for c in clips])[:n_frames]).unsqueeze(0)
            if model.cfg.use_z else None)
    f0_t, loud_t = _as_batch(f0, loud)
    model.render(f0_t[:, :500], loud_t[:, :500], None if mfcc is None else mfcc[:, :500])  # warm-up
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        model.render(f0_t, loud_t, mfcc)
        best = min(best, time.perf_counter() - started)
    return n_frames * hop / sample_rate / best
