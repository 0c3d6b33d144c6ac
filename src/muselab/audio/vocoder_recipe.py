"""The `audio-vocoder` recipe: a neural vocoder (log-mel -> waveform) trained on builtin:mixed,
builtin:tones or a folder of recordings, compared with the untrained baseline, Griffin-Lim.

Data: whole clips at 22,050 Hz, a deterministic share of them held out (for builtin:mixed also whole
categories: instrument families and a voice never trained on); training draws random segments, each
at a random gain and, for a share of them, resampled by up to a few semitones (pitch and tempo shift,
band-limited), and the model computes their mels itself. Generation vocodes a log-mel `.npy` (`--mel`)
or resynthesises a recording from its own mel (`--wav`; other rates are resampled, stereo is mixed
down, silence stays silence), with the network or, for comparison, Griffin-Lim (`--griffin-lim`).
Evaluation scores both against the original held-out audio (MRSTFT, MCD), per category and for seen
and unseen kinds of sound, with Griffin-Lim-32 run by librosa as the baseline; times both, and writes
a spectrogram comparison and example WAVs into the run directory.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from muselab.audio.dsp import (
    griffin_lim,
    mel_cepstral_distortion,
    mrstft_distance,
)
from muselab.audio.vocoder import (
    MEL,
    MEL_FMAX,
    SILENT_FRAME_MARGIN,
    RealGenerator,
    Vocoder,
    VocoderConfig,
    mel_pseudo_inverse,
    mel_spectrogram,
)
from muselab.core.config import Section, TrainConfig
from muselab.core.errors import ControlError, DataError
from muselab.core.registry import (
    Capabilities,
    EvalAudio,
    Evaluation,
    ExportSpec,
    GenerationContext,
    PreparedData,
    Recipe,
    Sizing,
)
from muselab.core.results import AudioResult
from muselab.core.rundir import RunDir
from muselab.core.sizing import PresetRows
from muselab.data.mixed import MIXED_DESCRIPTION
from muselab.data.split import hold_out
from muselab.data.tones import TONES_DESCRIPTION

logger = logging.getLogger(__name__)  # notes for the user; the CLI shows them on stderr

SAMPLE_RATE = MEL.sr
MEL_DESCRIPTION = (f"{MEL.sr:,} Hz, n_fft {MEL.n_fft}, hop {MEL.hop}, {MEL.n_mels} Slaney mels from 0 to {MEL_FMAX:g} Hz, "
                   "natural-log magnitude (muselab.audio.vocoder.mel_spectrogram)")
# A natural-log magnitude mel of audio within [-1, 1] stays below about 3; values far outside this
# range are some other scale (decibels, power, no log) that the vocoder would turn into noise
MEL_VALUE_RANGE = (-30.0, 8.0)


# -- config ------------------------------------------------------------------------------------------
class MixedDataConfig(Section):
    """How much of builtin:mixed to make (see muselab.data.mixed)."""

    programs_per_family: int = Field(8, ge=1, le=8, description="General MIDI programs played per family (drums: "
                                                                  "one kit)")
    clips_per_program: int = Field(2, ge=1, description="clips each program plays")
    utterances: int = Field(240, ge=0, description="flite utterances, the four voices taking turns")
    tones: int = Field(40, ge=0, description="builtin:tones clips")
    clip_seconds: float = Field(3.0, ge=1.0, description="length of each instrument and tones clip in seconds")


class VocoderDataConfig(Section):
    clips: int = Field(200, ge=2, description="clips of builtin:tones to render, or utterances of builtin:speech to "
                                              "read (ignored for other data)")
    clip_seconds: float = Field(4.0, ge=0.5, description="length of each builtin:tones clip in seconds")
    mixed: MixedDataConfig = MixedDataConfig()
    segment: int = Field(8192, ge=2048, description=f"training segment in samples, a multiple of {MEL.hop}")
    test_share: float = Field(0.1, gt=0, lt=0.5, description="share of whole clips held out for evaluation")
    skip_bad_files: bool = Field(False, description="leave unreadable, empty or silent audio files out (and count "
                                                    "them) instead of stopping")
    gain_db: tuple[float, float] = Field((-18.0, 6.0), description="training segments are scaled by a gain drawn "
                                         "from this range in dB (never above a peak of 1)")
    pitch_shift: float = Field(4.0, ge=0, le=12, description="training segments chosen for it (resample_share) "
                               "are resampled by up to this many semitones up or down (0 = off)")
    resample_share: float = Field(0.5, ge=0, le=1, description="share of training segments resampled")

    @field_validator("gain_db")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError("give the range as [low, high]")
        return value

    @field_validator("segment")
    @classmethod
    def _whole_frames(cls, value: int) -> int:
        if value % MEL.hop:
            raise ValueError(f"must be a multiple of the hop, {MEL.hop}")
        return value


class VocoderEvalConfig(Section):
    max_seconds: float = Field(60.0, gt=0, description="held-out audio scored, at most (whole clips, in order)")
    category_seconds: float = Field(10.0, gt=0, description="held-out audio scored per category of builtin:mixed, "
                                                            "at most")
    realtime_seconds: float = Field(10.0, gt=0, description="seconds of audio the speed is timed on")
    griffin_lim_iters: int = Field(32, ge=1, description="iterations of the Griffin-Lim baseline")
    griffin_lim_seeds: int = Field(5, ge=1, description="random initial phases the Griffin-Lim baseline is scored "
                                                        "from, its scores the mean over them (one draw is noisy: on "
                                                        "a 3-second clip its MRSTFT varies by up to 8 % with the seed)")
    samples: int = Field(3, ge=0, description="held-out clips written to RUN/samples as WAVs")


class VocoderRecipeConfig(Section):
    data: VocoderDataConfig = VocoderDataConfig()
    model: VocoderConfig = VocoderConfig()
    train: TrainConfig = TrainConfig(max_steps=None, max_minutes=10.0, batch_size=8, lr=3e-3, beta1=0.8,
                                     beta2=0.99, warmup_steps=50, min_lr_ratio=0.05, weight_decay=0.01,
                                     grad_clip=10.0, eval_every=500, eval_batches=8, checkpoint_every=500)
    eval: VocoderEvalConfig = VocoderEvalConfig()


class VocoderControls(BaseModel):
    """Vocode one log-mel or resynthesise one recording."""

    model_config = ConfigDict(extra="forbid")

    wav: str | None = Field(None, description="A recording (WAV, FLAC, Ogg; resampled to 22,050 Hz) to "
                                              "resynthesise from its own mel spectrogram.")
    mel: str | None = Field(None, description="A .npy log-mel, [80, frames] or [frames, 80]: "
                                              f"{MEL_DESCRIPTION}.")
    griffin_lim: bool = Field(False, description="Use the Griffin-Lim baseline (32 iterations) instead of "
                                                 "the network, for comparison.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed of Griffin-Lim's initial phase (the "
                                                                   "network itself draws nothing).")
    iterations: int | None = Field(None, ge=1, le=256, description="Griffin-Lim iterations that make the phase: "
                                   "the network's (default: as many as it was trained with) or, with --griffin-lim, "
                                   "the baseline's (default 32). More are slower and closer to a consistent "
                                   "spectrum, which helps noisy and percussive sound most.")


# -- data --------------------------------------------------------------------------------------------
@dataclass
class Clips:
    """Whole clips at SAMPLE_RATE, float32 [T] each, split into training and held-out ones; for
    builtin:mixed each held-out clip's category, and which categories were never trained on."""

    train: list[np.ndarray]
    test: list[np.ndarray]
    info: dict[str, Any]
    test_categories: list[str] | None = None
    unseen: tuple[str, ...] = ()

    @property
    def validation(self) -> list[np.ndarray]:
        """The held-out clips that choose the best weights: never those of unseen categories, which
        must stay out of every choice made in training."""
        if self.test_categories is None:
            return self.test
        return [c for c, k in zip(self.test, self.test_categories, strict=True) if k not in self.unseen]


@functools.lru_cache(maxsize=2)
def _render_tones(clips: int, seconds: float) -> tuple[Any, ...]:
    """builtin:tones at the vocoder's rate, kept for the process: evaluation after training reuses it."""
    from muselab.data.tones import make_tones

    return tuple(make_tones(clips, seconds, sample_rate=SAMPLE_RATE, hop=MEL.hop))


def load_clips(spec: str, cfg: VocoderDataConfig) -> Clips:
    """builtin:mixed, builtin:tones, or a folder of at least two audio files, as whole clips."""
    if spec == "builtin:mixed":
        return _load_mixed(cfg)
    if spec == "builtin:tones":
        from muselab.data.tones import TONES_DESCRIPTION, TONES_VERSION, tones_split

        parts = tones_split(_render_tones(cfg.clips, cfg.clip_seconds), test_share=cfg.test_share)
        train, test = ([clip.audio for clip in part] for part in parts)
        key = f"tones-v{TONES_VERSION}-{cfg.clips}-{cfg.clip_seconds}-{SAMPLE_RATE}-{cfg.test_share}"
        info = {"source": TONES_DESCRIPTION, "fingerprint": hashlib.sha256(key.encode()).hexdigest()}
    elif spec == "builtin:speech":
        train, test, info = _speech_clips(cfg.clips)
    elif spec.startswith("builtin:"):
        raise DataError(f"unknown data '{spec}' for audio-vocoder; use builtin:mixed, builtin:speech, builtin:tones "
                        "or a folder of audio files")
    else:
        train, test, info = _load_folder(Path(spec), cfg.test_share, cfg.skip_bad_files)
    return Clips(train, test, _summary(info, spec, train, test))


def _summary(info: dict[str, Any], spec: str, train: list[np.ndarray], test: list[np.ndarray]) -> dict[str, Any]:
    return {**info, "spec": spec, "sample_rate": SAMPLE_RATE, "mel": MEL_DESCRIPTION, "train_clips": len(train),
            "test_clips": len(test), "train_seconds": round(sum(map(len, train)) / SAMPLE_RATE, 2),
            "test_seconds": round(sum(map(len, test)) / SAMPLE_RATE, 2)}


def _load_mixed(cfg: VocoderDataConfig) -> Clips:
    from muselab.data.mixed import HELD_OUT_CATEGORIES, MixedSize, load_mixed

    data = load_mixed(MixedSize(**cfg.mixed.model_dump()), test_share=cfg.test_share, progress=logger.info)
    train, test = [c.audio for c in data.train], [c.audio for c in data.test]
    return Clips(train, test, _summary(data.info, "builtin:mixed", train, test), [c.category for c in data.test],
                 HELD_OUT_CATEGORIES)


def _speech_clips(utterances: int) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """The first `utterances` of builtin:speech (flite's four voices) at the vocoder's rate; its held-out
    sentences are the test clips, as for audio-tts."""
    from muselab.audio.io import load_audio
    from muselab.data.speech import SPEECH_DESCRIPTION, SPEECH_VOICES, builtin_sentences, load_speech

    data = load_speech("builtin:speech", utterances=min(utterances, len(builtin_sentences()) * len(SPEECH_VOICES)))
    train_u, test_u = data.split()
    train = [load_audio(u.path, sr=SAMPLE_RATE, min_seconds=0.0)[0] for u in train_u]
    test = [load_audio(u.path, sr=SAMPLE_RATE, min_seconds=0.0)[0] for u in test_u]
    if not test:  # a small build may hold no held-out sentence: the last utterance is held out then
        test = [train.pop()]
    return train, test, {"source": SPEECH_DESCRIPTION, "fingerprint": data.fingerprint}


def _load_folder(root: Path, test_share: float, skip_bad_files: bool = False
                 ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    from muselab.audio.io import list_audio_files, load_audio

    files, skipped = list_audio_files(root), []
    if len(files) < 2:
        raise DataError(f"'{root}' holds {len(files)} audio file; the vocoder needs at least 2 (whole files are "
                        "held out for evaluation): add more recordings or split a long one")
    digest = hashlib.sha256()
    wavs, keys, changed = [], [], {}
    for path in files:
        try:
            wav, _, notes = load_audio(path, sr=SAMPLE_RATE, min_seconds=0.1)
        except DataError as err:
            if not skip_bad_files:
                raise
            skipped.append(str(err))
            continue
        for note in notes:
            kind = note.split(" ")[0]  # "resampled", "mixed"
            changed[kind] = changed.get(kind, 0) + 1
        name = path.relative_to(root).as_posix() if path != root else path.name
        digest.update(name.encode())
        digest.update(wav.tobytes())
        wavs.append(wav)
        keys.append(name)
    if skipped:
        logger.warning(f"skipped {len(skipped)} bad audio file(s) (data.skip_bad_files), e.g. {skipped[0]}")
    if len(wavs) < 2:
        raise DataError(f"'{root}' holds {len(wavs)} usable audio file(s) ({len(skipped)} skipped); the vocoder "
                        "needs at least 2")
    # Whole files are held out by the shared stable-hash rule on their path (at least one).
    held = hold_out(keys, test_share)
    train = [w for w, h in zip(wavs, held, strict=True) if not h]
    test = [w for w, h in zip(wavs, held, strict=True) if h]
    if changed.get("resampled"):
        logger.info(f"resampled {changed['resampled']} of {len(files)} files to {SAMPLE_RATE} Hz")
    if changed.get("mixed"):
        logger.info(f"mixed {changed['mixed']} of {len(files)} files down to mono")
    return train, test, {"source": f"audio folder '{root}'", "files": len(wavs), "skipped_files": len(skipped),
                         "fingerprint": digest.hexdigest()}


@dataclass(frozen=True)
class Augmentation:
    """What training does to each segment: a random gain, and for a share of segments a resampling by a
    random ratio (pitch and tempo move together, as a tape played faster or slower). Resampling is done
    in the frequency domain, so a raised segment loses what would fold above Nyquist and a lowered one
    has an empty top band, as band-limited recordings (16 kHz speech) do."""

    gain_db: tuple[float, float] = (0.0, 0.0)
    pitch_shift: float = 0.0  # semitones, up or down
    resample_share: float = 0.0

    @classmethod
    def of(cls, cfg: VocoderDataConfig) -> Augmentation:
        return cls(tuple(cfg.gain_db), cfg.pitch_shift, cfg.resample_share)  # type: ignore[arg-type]


RESAMPLE_MARGIN = 512  # samples dropped at each end of a resampled piece (the FFT's wrap-around)
MAX_PEAK = 0.99


def resample_piece(piece: torch.Tensor, ratio: float, length: int) -> torch.Tensor:
    """`piece` played `ratio` times faster (pitch up by 12 * log2(ratio) semitones), band-limited by
    truncating or zero-padding its spectrum; the middle `length` samples."""
    n_in = piece.shape[-1]
    n_out = round(n_in / ratio)
    spectrum = torch.fft.rfft(piece)
    kept = torch.zeros(n_out // 2 + 1, dtype=spectrum.dtype)
    bins = min(len(kept), len(spectrum))
    kept[:bins] = spectrum[:bins]
    out = torch.fft.irfft(kept, n_out) * (n_out / n_in)
    start = (n_out - length) // 2
    return out[start:start + length]


class SegmentSource:
    """Random fixed-length segments of whole clips for training (augmented as `augment` says); every
    whole segment, in order, for validation. Clips shorter than a segment are padded with silence."""

    def __init__(self, clips: list[np.ndarray], segment: int, augment: Augmentation | None = None) -> None:
        self.segment = segment
        self.augment = augment or Augmentation()
        self.clips = [torch.from_numpy(np.pad(c, (0, max(0, segment - len(c))))) for c in clips]
        # Every start position equally likely: a clip is drawn in proportion to its length
        self.starts = torch.tensor([len(c) - segment + 1 for c in self.clips], dtype=torch.float64)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        aug, seg = self.augment, self.segment
        which = torch.multinomial(self.starts, batch_size, replacement=True, generator=generator)
        draws = torch.rand(batch_size, 4, generator=generator, dtype=torch.float64)
        pieces = []
        for i, (position, resample_draw, shift_draw, gain_draw) in zip(which.tolist(), draws.tolist(), strict=True):
            clip = self.clips[i]
            ratio = 1.0
            if aug.pitch_shift and resample_draw < aug.resample_share:
                ratio = 2.0 ** ((2 * shift_draw - 1) * aug.pitch_shift / 12)
            need = seg if ratio == 1.0 else math.ceil((seg + 2 * RESAMPLE_MARGIN) * ratio) + 2
            offset = int(position * max(1, len(clip) - need + 1))
            piece = clip[offset:offset + need]
            if len(piece) < need:
                piece = torch.nn.functional.pad(piece, (0, need - len(piece)))
            if ratio != 1.0:
                piece = resample_piece(piece, ratio, seg)
            if aug.gain_db != (0.0, 0.0):
                low, high = aug.gain_db
                gain = 10.0 ** ((low + gain_draw * (high - low)) / 20)
                peak = float(piece.abs().max())
                piece = piece * (min(gain, MAX_PEAK / peak) if peak > 0 else gain)
            pieces.append(piece.float())
        return {"audio": torch.stack(pieces)}

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        pieces = [clip[start:start + self.segment] for clip in self.clips
                  for start in range(0, len(clip) - self.segment + 1, self.segment)]
        for count, first in enumerate(range(0, len(pieces), batch_size)):
            if limit and count >= limit:
                return
            yield {"audio": torch.stack(pieces[first:first + batch_size])}


# -- controls: reading a mel ---------------------------------------------------------------------------
def read_mel(path: str | Path) -> torch.Tensor:
    """A user's log-mel .npy as float32 [n_mels, frames], checked against the vocoder's settings."""
    path = Path(path)
    expected = f"expected a log-mel [{MEL.n_mels}, frames] or [frames, {MEL.n_mels}] ({MEL_DESCRIPTION})"
    if not path.is_file():
        raise ControlError(f"--mel file '{path}' does not exist; check the path")
    with path.open("rb") as file:
        is_npy = file.read(6) == b"\x93NUMPY"
    if not is_npy:
        raise ControlError(f"--mel '{path}' is not a .npy file; save the mel with numpy.save: {expected}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ControlError(f"cannot read --mel '{path}' ({reason}); save the mel with numpy.save: {expected}") from None
    if not isinstance(array, np.ndarray) or array.dtype.names is not None:
        raise ControlError(f"--mel '{path}' holds no plain array; {expected}")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]  # a batch of one
    if array.ndim != 2 or MEL.n_mels not in array.shape:
        raise ControlError(f"--mel '{path}' has shape {tuple(array.shape)}; {expected}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ControlError(f"--mel '{path}' holds {array.dtype} values; {expected}, as floats")
    if not np.isfinite(array).all():
        raise ControlError(f"--mel '{path}' contains NaN or infinite values; {expected}")
    mel = array if array.shape[0] == MEL.n_mels else array.T
    low, high = float(mel.min()), float(mel.max())
    if low < MEL_VALUE_RANGE[0] or high > MEL_VALUE_RANGE[1]:
        raise ControlError(f"--mel '{path}' has values from {low:.3g} to {high:.3g}, not a natural-log magnitude "
                           f"mel (about -11.5 to 3); {expected}")
    return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))


# -- synthesis -----------------------------------------------------------------------------------------
def linear_from_mel(mel: torch.Tensor) -> torch.Tensor:
    """The linear magnitude spectrum [n_fft // 2 + 1, F] of a log-mel by pseudo-inverse (clamped at 0);
    frames that are silent in the mel stay silent."""
    linear = torch.clamp(mel_pseudo_inverse().to(mel.device, mel.dtype) @ mel.exp(), min=0.0)
    return linear * (mel.amax(dim=-2, keepdim=True) > math.log(MEL.log_floor) + SILENT_FRAME_MARGIN)


def griffin_lim_from_mel(mel: torch.Tensor, n_iter: int = 32, seed: int = 0) -> torch.Tensor:
    """The fallback: the mel's pseudo-inverse, then muselab's fast Griffin-Lim (torch); F frames give
    F * hop samples, as the network's output."""
    return griffin_lim(linear_from_mel(mel), MEL.n_fft, MEL.hop, n_iter=n_iter, seed=seed,
                       length=mel.shape[-1] * MEL.hop)


def griffin_lim_librosa(mel: torch.Tensor, n_iter: int = 32, seed: int = 0) -> torch.Tensor:
    """The baseline the evaluation and benchmarks compare with: librosa's Griffin-Lim (fast, momentum
    0.99, random initial phase) from the same pseudo-inverse linear spectrum."""
    import librosa

    wav = librosa.griffinlim(linear_from_mel(mel).numpy(), n_iter=n_iter, hop_length=MEL.hop, n_fft=MEL.n_fft,
                             window="hann", center=True, momentum=0.99, init="random", random_state=seed)
    length = mel.shape[-1] * MEL.hop  # librosa makes (F - 1) * hop samples; padded as the network's F * hop
    return torch.from_numpy(np.pad(wav, (0, max(0, length - len(wav))))[:length].astype(np.float32))


def synthesise(model: Vocoder, mel: torch.Tensor, use_griffin_lim: bool, seed: int, iterations: int) -> torch.Tensor:
    """The waveform of `mel` by the network, with `iterations` of its Griffin-Lim phase, or by Griffin-Lim
    alone with as many."""
    if use_griffin_lim:
        return griffin_lim_from_mel(mel, iterations, seed)
    return model.vocode(mel, iterations)


# -- the recipe ----------------------------------------------------------------------------------------
# The default preset's sizing rule (README: "Defaults that fit the data"), rows by seconds of training audio:
# builtin:mixed, builtin:tones and builtin:speech (10 to 40 minutes) sit in the middle row, the preset as tuned.
# Under three minutes, batch 4: on 86 s of builtin:tones in 4 minutes its best validation loss was 0.257 against
# the preset's 0.266 (batch 8).
VOCODER_ROWS = PresetRows("train_seconds", (180.0, 7200.0), widen=("model.dim", "model.intermediate"),
                          small_batch=4)


# A learnt magnitude and the phase from 6 fast Griffin-Lim iterations started from the phase integrated from its
# gradients; the magnitude regressed on the real spectrum for the first 60 % of training, then learnt through the
# iterations, from the mel's pseudo-inverse floored at a tenth of its bands' mean magnitude. On builtin:mixed in 10
# CPU minutes: MRSTFT 0.938 and MCD 2.02 dB against 1.077 and 2.41 for Griffin-Lim-32, lower on both in 18 of the
# 22 held-out categories (17 with another seed), 53x real time on one thread beside another job
# (benchmarks/results/vocoder_prior_floor_10.json); a floor of 0.03 or 0.2: 16 of 22; no floor 0.935 and 2.14, 14
# (vocoder_phase_gradient_start_6_iterations.json); 8 iterations score the same, slower (0.936 and 2.13, 14, 50x:
# vocoder_phase_gradient_start.json); from zero phase 1.020 and 2.22, 11
# (vocoder_griffin_lim_phase_waveform_last_40_val_reconstruction.json); the regression alone 1.065 and 2.36
# (vocoder_griffin_lim_phase.json); the phase from the network 1.139 and 2.89 (vocoder_mixed_loaded_machine.json).
GRIFFIN_LIM_PHASE = {"phase": "griffin_lim", "phase_iterations": 6, "phase_start": "gradient", "prior_floor": 0.1,
                     "magnitude_target": "waveform", "waveform_share": 0.4}


class VocoderRecipe(Recipe):
    name = "audio-vocoder"
    summary = "neural vocoder (mel spectrogram -> waveform), compared with Griffin-Lim"
    config_class = VocoderRecipeConfig
    controls_class = VocoderControls
    default_data = "builtin:mixed"
    data_formats = "a folder of at least two .wav, .flac or .ogg recordings (whole files are held out)"
    builtin_data = {"builtin:mixed": MIXED_DESCRIPTION, "builtin:tones": TONES_DESCRIPTION,
                    "builtin:speech": "flite's four voices speaking plain sentences (data.clips utterances; the "
                                      "held-out sentences are the test clips): a speech-only vocoder for audio-tts"}
    capabilities = Capabilities(main_control="wav", writes_files=True)
    presets = {
        "tiny": {
            "data": {"clips": 8, "clip_seconds": 1.0, "segment": 4096, "test_share": 0.25,
                     "mixed": {"programs_per_family": 1, "clips_per_program": 1, "utterances": 8, "tones": 4,
                               "clip_seconds": 1.0}},
            "model": {"dim": 32, "intermediate": 64, "layers": 2, "disc_channels": 4, **GRIFFIN_LIM_PHASE},
            "train": {"max_steps": 6, "max_minutes": None, "batch_size": 4, "warmup_steps": 2, "eval_every": 3,
                      "eval_batches": 2, "checkpoint_every": 3, "log_every": 1},
            "eval": {"realtime_seconds": 1.0, "samples": 1, "category_seconds": 1.0, "griffin_lim_seeds": 2},
        },
        "default": {"model": GRIFFIN_LIM_PHASE},
        "base": {  # Vocos's own recipe, for a GPU: phase from the network, adversarial training
            "data": {"segment": 16384},
            "model": {"dim": 512, "intermediate": 1536, "adversarial": True, "disc_channels": 32},
            "train": {"max_steps": 100_000, "max_minutes": None, "batch_size": 32, "lr": 5e-4},
        },
    }

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        return VOCODER_ROWS.size(self.config_class(), stats, budget_minutes)

    # -- data -------------------------------------------------------------------------------------
    def prepare_data(self, cfg: VocoderRecipeConfig, data: str,
                     assets: dict[str, Any] | None = None) -> PreparedData:
        clips = load_clips(data, cfg.data)
        return PreparedData(SegmentSource(clips.train, cfg.data.segment, Augmentation.of(cfg.data)),
                            SegmentSource(clips.validation, cfg.data.segment), clips.info, {})

    def build_model(self, cfg: VocoderRecipeConfig, assets: dict[str, Any]) -> Vocoder:
        return Vocoder(cfg.model)

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        """Nothing to save: the mel settings are fixed (MEL) and the weights say the rest."""

    def load_assets(self, cfg: VocoderRecipeConfig, run: RunDir) -> dict[str, Any]:
        return {}

    def check_transfer(self, cfg: VocoderRecipeConfig, source_cfg: VocoderRecipeConfig, prepared: PreparedData,
                       source: Path) -> None:
        """Any vocoder serves any audio: the mel settings are the same for all."""

    def export_module(self, model: Vocoder, cfg: VocoderRecipeConfig, assets: dict[str, Any]) -> ExportSpec:
        # batch 2, not 1: torch.export fixes an axis whose example size is 1
        mel = torch.randn(2, MEL.n_mels, 8, generator=torch.Generator().manual_seed(0)) - 4.0
        return ExportSpec(
            RealGenerator(model.generator), (mel,), ["mel"], ["waveform"],
            {"mel": {0: "batch", 2: "frames"}, "waveform": {0: "batch", 1: "samples"}},
            description="the generator in real arithmetic (its inverse STFT as matrix products): a log-mel "
                        "spectrogram to a waveform, hop samples per frame",
            meaning={"mel": f"float32 [batch, {MEL.n_mels}, frames]: {MEL_DESCRIPTION}",
                     "waveform": f"float32 [batch, frames * {MEL.hop}] at {SAMPLE_RATE} Hz, within about [-1, 1]"},
            pair_with={"sample_rate": SAMPLE_RATE, "n_fft": MEL.n_fft, "hop": MEL.hop, "n_mels": MEL.n_mels,
                       "fmin": MEL.fmin, "fmax": MEL.fmax, "mel": "natural log of the magnitude mel "
                       "(muselab.audio.dsp.log_mel), Slaney mel scale and norm"})

    def shipped_run(self) -> Path | None:
        from muselab.audio.default_vocoder import default_vocoder_dir

        return default_vocoder_dir()

    # -- generation -------------------------------------------------------------------------------
    def generate(self, model: Vocoder, cfg: VocoderRecipeConfig, assets: dict[str, Any],
                 controls: VocoderControls, context: GenerationContext) -> AudioResult:
        if (controls.wav is None) == (controls.mel is None):
            raise ControlError("give exactly one of --wav FILE (a recording to resynthesise) or --mel FILE "
                               f"(a .npy log-mel [{MEL.n_mels}, frames])")
        changes: list[str] = []
        if controls.wav is not None:
            from muselab.audio.io import load_audio

            wav, _, changes = load_audio(controls.wav, sr=SAMPLE_RATE, allow_silent=True)
            for change in changes:
                logger.info(f"{controls.wav}: {change}")
            mel, length = mel_spectrogram(torch.from_numpy(wav)), len(wav)
        else:
            mel = read_mel(controls.mel)
            length = mel.shape[-1] * MEL.hop
        iterations = controls.iterations or (cfg.eval.griffin_lim_iters if controls.griffin_lim
                                             else model.generator.phase_iterations)
        audio = synthesise(model, mel, controls.griffin_lim, controls.seed, iterations)[:length]
        # how it was made, for the manifest
        note = {"method": "griffin_lim" if controls.griffin_lim else "vocoder", "iterations": iterations,
                "input_changes": changes}
        return AudioResult(clips=[audio.numpy().astype(np.float32)], sample_rate=SAMPLE_RATE, notes=[note])

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, model: Vocoder, cfg: VocoderRecipeConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> dict[str, Any]:
        if data is None:
            raise DataError("this run does not record its data; pass --data")
        clips = load_clips(data, cfg.data)
        scored = _scored_clips(clips, cfg.eval)
        n_iter, seeds = cfg.eval.griffin_lim_iters, cfg.eval.griffin_lim_seeds
        rows: list[dict[str, Any]] = []
        examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for category, clip in scored:
            wav = torch.from_numpy(clip)
            mel = mel_spectrogram(wav)
            vocoded = model.vocode(mel)[:len(clip)]
            # Griffin-Lim starts from a random phase: its scores are the mean over `seeds` starts
            baselines = [griffin_lim_librosa(mel, n_iter, seed)[:len(clip)] for seed in range(seeds)]
            rows.append({"category": category, "seconds": len(clip) / SAMPLE_RATE, **_mean_scores([vocoded], wav),
                         **_mean_scores(baselines, wav, "_griffin_lim")})
            if len(examples) < max(1, cfg.eval.samples) and all(c != category for c, _ in scored[:len(rows) - 1]):
                examples.append((clip, vocoded.numpy(), baselines[0].numpy()))
        metrics: dict[str, Any] = _averages(rows)
        if clips.test_categories is not None:
            metrics.update(_by_category(rows, clips.unseen))
        metrics.update(_speeds(model, [clip for _, clip in scored], cfg.eval.realtime_seconds, n_iter))
        metrics.update({"eval_clips": len(rows), "eval_seconds": round(sum(r["seconds"] for r in rows), 2),
                        "griffin_lim_baseline": f"librosa.griffinlim, {n_iter} iterations, momentum 0.99, from the "
                                                f"mel's pseudo-inverse; scores the mean over {seeds} random initial "
                                                f"phases (seeds 0 to {seeds - 1})",
                        "generator_parameters": model.num_parameters("generator"),
                        "threads": torch.get_num_threads()})
        return Evaluation(metrics, audio=self._write_pictures_and_samples(model, examples, cfg.eval.samples, run, data))

    def _write_pictures_and_samples(self, model: Vocoder, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                                    n_samples: int, run: RunDir, data: str) -> list[EvalAudio]:
        from muselab.audio.io import save_audio
        from muselab.audio.plots import plot_spectrograms

        original, vocoded, baseline = examples[0]
        panels = [(name, mel_spectrogram(torch.from_numpy(x)).numpy()) for name, x in
                  (("original", original), ("vocoder", vocoded), ("Griffin-Lim", baseline))]
        plot_spectrograms(panels, run / "spectrograms.png", SAMPLE_RATE, MEL.hop, title="held-out clip 1")
        if not n_samples:
            return []
        folder = run / "samples"
        folder.mkdir(exist_ok=True)
        chosen = examples[:n_samples]
        for i, example in enumerate(chosen):  # the held-out originals: not generated, so no manifest
            save_audio(folder / f"original_{i:03d}.wav", example[0], SAMPLE_RATE)
        return [EvalAudio(f"{stem}.wav", [example[index] for example in chosen], SAMPLE_RATE,
                          {"source": f"held-out clips of {data}", "griffin_lim": use_gl, "seed": 0})
                for stem, index, use_gl in (("vocoder", 1, False), ("griffin_lim", 2, True))]


def _mean_scores(outputs: list[torch.Tensor], original: torch.Tensor, suffix: str = "") -> dict[str, float]:
    """MRSTFT and MCD of each output against the original, averaged over the outputs."""
    return {f"mrstft{suffix}": float(np.mean([mrstft_distance(out, original) for out in outputs])),
            f"mcd{suffix}": float(np.mean([mel_cepstral_distortion(original, out, SAMPLE_RATE) for out in outputs]))}


def _scored_clips(clips: Clips, cfg: VocoderEvalConfig) -> list[tuple[str | None, np.ndarray]]:
    """(category, clip) of the held-out clips scored: whole clips in order until `max_seconds` of audio
    (at least one clip), or for builtin:mixed until `category_seconds` per category, unseen ones first."""
    if clips.test_categories is None:
        return [(None, clip) for clip in _first_seconds(clips.test, cfg.max_seconds)]
    order = list(dict.fromkeys(sorted(clips.test_categories, key=lambda c: (c not in clips.unseen,))))
    scored = []
    for category in order:
        members = [clip for clip, c in zip(clips.test, clips.test_categories, strict=True) if c == category]
        scored += [(category, clip) for clip in _first_seconds(members, cfg.category_seconds)]
    return scored


def _first_seconds(test: list[np.ndarray], max_seconds: float) -> list[np.ndarray]:
    """Whole clips, in order, until `max_seconds` of audio (at least one clip)."""
    chosen, total = [], 0
    for clip in test:
        if chosen and total + len(clip) > max_seconds * SAMPLE_RATE:
            break
        chosen.append(clip)
        total += len(clip)
    return chosen


SCORES = ("mrstft", "mrstft_griffin_lim", "mcd", "mcd_griffin_lim")


def _averages(rows: list[dict[str, Any]], suffix: str = "") -> dict[str, float]:
    """Each score averaged over clips, weighted by their length."""
    weights = np.array([r["seconds"] for r in rows])
    return {f"{key}{suffix}": float(np.average([r[key] for r in rows], weights=weights)) for key in SCORES}


def _by_category(rows: list[dict[str, Any]], unseen: tuple[str, ...]) -> dict[str, Any]:
    """Scores for the seen and the unseen kinds of sound, and per category (`unseen.guitar.mrstft`, ...)."""
    metrics: dict[str, Any] = {}
    for kind, members in (("seen", [r for r in rows if r["category"] not in unseen]),
                          ("unseen", [r for r in rows if r["category"] in unseen])):
        if members:
            metrics.update(_averages(members, f"_{kind}"))
    categories = list(dict.fromkeys(r["category"] for r in rows))
    beaten = 0
    for category in categories:
        scores = _averages([r for r in rows if r["category"] == category])
        beaten += scores["mrstft"] < scores["mrstft_griffin_lim"] and scores["mcd"] < scores["mcd_griffin_lim"]
        kind = "unseen" if category in unseen else "seen"
        metrics.update({f"{kind}.{category}.{key}": value for key, value in scores.items()})
    metrics["unseen_categories"] = ", ".join(c for c in categories if c in unseen)
    metrics["categories_better_than_griffin_lim"] = f"{beaten} of {len(categories)} (both MRSTFT and MCD lower)"
    return metrics


def _speeds(model: Vocoder, clips: list[np.ndarray], seconds: float, n_iter: int) -> dict[str, float]:
    """Seconds of audio made per wall-clock second, by the network (inference mode) and by Griffin-Lim
    (librosa), from the same mel: the held-out clips end to end, repeated up to `seconds`."""
    audio = np.concatenate(clips)
    repeats = math.ceil(seconds * SAMPLE_RATE / len(audio))
    mel = mel_spectrogram(torch.from_numpy(np.tile(audio, repeats)[: max(len(audio), round(seconds * SAMPLE_RATE))]))
    audio_seconds = mel.shape[-1] * MEL.hop / SAMPLE_RATE
    model.vocode(mel[:, :64])  # warm-up: the first call pays for allocations and kernel choice
    network = _best_time(lambda: model.vocode(mel))
    baseline = _best_time(lambda: griffin_lim_librosa(mel, n_iter), repeats=1)
    return {"realtime_factor": audio_seconds / network, "realtime_factor_griffin_lim": audio_seconds / baseline,
            "realtime_seconds": round(audio_seconds, 2)}


def _best_time(work: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of a few runs: the least disturbed by whatever else the machine is doing."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)
