"""The vocoder on builtin:mixed and with the inputs users bring: held-out categories stay out of
training and are scored apart, augmentation, 44.1/16 kHz and stereo input, silence in gives silence
out, and the shipped default vocoder (a run directory inside the package) with its Griffin-Lim fallback."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_cli
from helpers import error_message
from muselab import api
from muselab.audio import default_vocoder
from muselab.audio.vocoder import MEL, Generator, VocoderConfig, mel_spectrogram
from muselab.audio.vocoder_recipe import (
    Augmentation,
    SegmentSource,
    VocoderDataConfig,
    griffin_lim_from_mel,
    load_clips,
    resample_piece,
)
from muselab.core.errors import CheckpointError
from muselab.data.mixed import HELD_OUT_CATEGORIES


def _can_make_mixed() -> bool:
    from muselab.core.errors import DataError
    from muselab.data.soundfont import find_soundfont

    try:
        find_soundfont()
    except DataError:
        return False
    return shutil.which("fluidsynth") is not None and shutil.which("flite") is not None


needs_synth = pytest.mark.skipif(not _can_make_mixed(), reason="builtin:mixed needs fluidsynth, a SoundFont and flite")
TINY_MIXED = {"programs_per_family": 1, "clips_per_program": 1, "utterances": 8, "tones": 4, "clip_seconds": 1.0}


@pytest.fixture(scope="module")
def tones_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vocoder"
    api.train("audio-vocoder", "builtin:tones", out, preset="tiny", quiet=True)
    return out


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 330 * t) * np.minimum(1, 20 * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave, 0.5 * wave], axis=1)


# -- builtin:mixed -------------------------------------------------------------------------------------
@needs_synth
def test_mixed_holds_out_whole_categories_and_scores_them_apart(tmp_path: Path) -> None:
    cfg = VocoderDataConfig(mixed=TINY_MIXED, test_share=0.25)
    clips = load_clips("builtin:mixed", cfg)
    assert set(HELD_OUT_CATEGORIES) == {"guitar", "ensemble", "drums", "voice:slt"}
    info = clips.info
    assert info["held_out_categories"] == list(HELD_OUT_CATEGORIES) and info["sample_rate"] == MEL.sr
    for category in HELD_OUT_CATEGORIES:  # never trained on, all test material
        assert info["categories"][category]["train_seconds"] == 0 and info["categories"][category]["test_seconds"] > 0
    trained = {c for c, row in info["categories"].items() if row["train_seconds"] > 0}
    assert {"voice:rms", "voice:awb", "voice:kal16", "tones"} <= trained and len(trained) >= 14
    assert set(clips.unseen) == set(HELD_OUT_CATEGORIES)
    # the unseen categories choose nothing in training: validation holds only seen material
    assert len(clips.validation) == sum(c not in clips.unseen for c in clips.test_categories) < len(clips.test)
    again = load_clips("builtin:mixed", cfg)  # from the cache, the same clips
    assert info["fingerprint"] == again.info["fingerprint"]
    assert all(np.array_equal(a, b) for a, b in zip(clips.train, again.train, strict=True))
    assert all(c.dtype == np.float32 and np.abs(c).max() > 1e-3 for c in clips.train + clips.test)


@needs_synth
def test_training_and_evaluation_on_mixed_report_seen_and_unseen_categories(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    api.train("audio-vocoder", "builtin:mixed", out, preset="tiny", max_steps=2,
              overrides=["eval.griffin_lim_iters=2", "eval.samples=0"], quiet=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["held_out_categories"] == list(HELD_OUT_CATEGORIES)
    assert saved["config"]["model"] and MEL.fmax is None  # full band: mels reach 11,025 Hz
    metrics = api.evaluate(out)
    for kind in ("seen", "unseen"):
        for key in ("mrstft", "mrstft_griffin_lim", "mcd", "mcd_griffin_lim"):
            assert np.isfinite(metrics[f"{key}_{kind}"]) and metrics[f"{key}_{kind}"] > 0
    for category in HELD_OUT_CATEGORIES:
        assert np.isfinite(metrics[f"unseen.{category}.mcd_griffin_lim"])
    assert metrics["unseen_categories"] == ", ".join(HELD_OUT_CATEGORIES)
    assert "librosa" in metrics["griffin_lim_baseline"]


# -- augmentation --------------------------------------------------------------------------------------
def test_resampling_moves_the_pitch_and_stays_band_limited() -> None:
    sr, n = MEL.sr, 8192
    t = torch.arange(round(n * 1.3)) / sr
    piece = torch.sin(2 * math.pi * 1000 * t) + torch.sin(2 * math.pi * 10000 * t)
    up = resample_piece(piece, 2 ** (4 / 12), n)  # four semitones up
    spectrum = torch.fft.rfft(up * torch.hann_window(n)).abs()
    freqs = torch.fft.rfftfreq(n, 1 / sr)
    assert abs(float(freqs[spectrum.argmax()]) - 1000 * 2 ** (4 / 12)) < 10
    assert float(spectrum[freqs > 10500].max()) < 1e-3 * float(spectrum.max())  # 10 kHz * 1.26 did not fold back


def test_augmented_segments_are_reproducible_never_clip_and_validation_is_untouched() -> None:
    clips = [(0.9 * np.sin(np.arange(30000) / 7.0)).astype(np.float32)]
    source = SegmentSource(clips, 4096, Augmentation((-18.0, 12.0), 4.0, 0.5))
    first = source.sample(16, torch.Generator().manual_seed(1))["audio"]
    assert torch.equal(first, source.sample(16, torch.Generator().manual_seed(1))["audio"])
    peaks = first.abs().amax(dim=1)
    assert float(peaks.max()) <= 0.99 + 1e-6 and float(peaks.min()) < 0.5  # loud ones capped, quiet ones made
    assert len({round(float(p), 3) for p in peaks}) > 8
    plain = next(SegmentSource(clips, 4096, Augmentation((-18.0, 12.0), 4.0, 1.0)).eval_batches(2))["audio"]
    assert torch.equal(plain[0], torch.from_numpy(clips[0][:4096]))


# -- inputs users bring --------------------------------------------------------------------------------
@pytest.mark.parametrize(("sr", "channels"), [(44100, 1), (16000, 1), (22050, 2)])
def test_other_rates_are_resampled_and_stereo_mixed_with_a_note(tones_run: Path, tmp_path: Path, sr: int,
                                                                channels: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="muselab")
    path = tmp_path / "in.wav"
    sf.write(path, _tone(1.0, sr, channels), sr)
    result = api.load(tones_run).generate(str(path))
    (audio,) = result.items
    assert result.sample_rate == 22050 and audio.shape == (22050,)
    expected = f"resampled {sr} Hz -> 22050 Hz" if sr != 22050 else "mixed 2 channels down to mono"
    assert result.notes[0]["input_changes"] == [expected]
    assert expected in caplog.text


def test_silence_in_gives_silence_out(tones_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros((22050, 2), np.float32), 44100)
    run = api.load(tones_run)
    assert not np.any(run.generate(str(path)).items[0])
    assert not np.any(run.generate(str(path), griffin_lim=True).items[0])
    # a trained network that adds energy everywhere still leaves silent frames silent
    generator = Generator(VocoderConfig(dim=16, intermediate=16, layers=1))
    torch.nn.init.constant_(generator.head.bias, 3.0)
    floor = torch.full((1, MEL.n_mels, 12), math.log(MEL.log_floor))
    loud = floor.clone()
    loud[..., 6:] = 0.0
    with torch.no_grad():
        out = generator(loud)[0]
    assert float(out[: 4 * MEL.hop].abs().max()) == 0.0 and float(out[-4 * MEL.hop:].abs().max()) > 1e-3


def test_the_mel_covers_the_full_band() -> None:
    t = torch.arange(22050) / 22050
    high = mel_spectrogram(0.5 * torch.sin(2 * math.pi * 10000 * t))
    assert int(high.mean(dim=1).argmax()) >= MEL.n_mels - 4  # 10 kHz lands in the top bands
    assert griffin_lim_from_mel(high).shape == (high.shape[1] * MEL.hop,)


# -- the default vocoder -------------------------------------------------------------------------------
def _ship_format(run: Path, folder: Path) -> Path:
    """A run in the shipped format: weights, config, evaluation and card, nothing else."""
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "MODEL_CARD.md"):
        shutil.copy2(run / name, folder / name)
    return folder


def test_the_shipped_format_serves_mel_generation_and_tts(tones_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from muselab.audio.tts_recipe import TTSControls, choose_vocoder

    shipped = _ship_format(tones_run, tmp_path / "pretrained" / "vocoder")
    monkeypatch.setattr(default_vocoder, "SHIPPED_DIR", shipped)
    monkeypatch.delenv(default_vocoder.DEFAULT_VOCODER_ENV, raising=False)
    mel_file = tmp_path / "mel.npy"
    np.save(mel_file, np.full((80, 12), -4.0, np.float32))
    result = api.load("builtin:audio-vocoder").generate(mel=str(mel_file))
    assert result.items[0].shape == (12 * MEL.hop,) and result.notes[0]["method"] == "vocoder"
    vocoder, name = choose_vocoder(TTSControls(text="hi"))
    assert vocoder is not None and name == "builtin:audio-vocoder"
    assert choose_vocoder(TTSControls(text="hi", griffin_lim=True)) == (None, "griffin_lim")
    monkeypatch.setenv(default_vocoder.DEFAULT_VOCODER_ENV, "none")
    assert choose_vocoder(TTSControls(text="hi")) == (None, "griffin_lim")


def test_without_a_shipped_vocoder_griffin_lim_serves_and_builtin_is_one_line(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_vocoder, "SHIPPED_DIR", tmp_path / "nothing")
    monkeypatch.delenv(default_vocoder.DEFAULT_VOCODER_ENV, raising=False)
    assert default_vocoder.load_default_vocoder() is None and default_vocoder.default_vocoder_name() == "griffin_lim"
    with pytest.raises(CheckpointError) as err:
        api.load("builtin:audio-vocoder")
    assert "muselab train audio-vocoder" in error_message(err)


@pytest.mark.slow
def test_cli_mel_without_a_run_uses_the_default_vocoder(tones_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = _ship_format(tones_run, tmp_path / "shipped")
    monkeypatch.setenv(default_vocoder.DEFAULT_VOCODER_ENV, str(shipped))
    np.save(tmp_path / "mel.npy", np.full((80, 20), -4.0, np.float32))
    done = run_cli("generate", "--recipe", "audio-vocoder", "--mel", str(tmp_path / "mel.npy"),
                   "--out", str(tmp_path / "out.wav"))
    assert done.returncode == 0, done.stderr
    assert sf.info(tmp_path / "out.wav").frames == 20 * MEL.hop
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(44100, np.float32), 44100)
    done = run_cli("generate", "builtin:audio-vocoder", "--wav", str(silent), "--out", str(tmp_path / "quiet.wav"))
    assert done.returncode == 0, done.stderr
    assert "resampled 44100 Hz -> 22050 Hz" in done.stderr
    assert np.abs(sf.read(tmp_path / "quiet.wav")[0]).max() < 1e-3  # only the watermark, far below hearing
