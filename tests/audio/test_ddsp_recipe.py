"""The audio-ddsp recipe end to end on the tiny preset: notes, generation, timbre transfer, CLI, errors,
evaluation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from helpers import error_message
from muselab import api
from muselab.audio.ddsp_recipe import DDSPControls, best_gain_sine, parse_notes
from muselab.audio.dsp import f0_pyin
from muselab.core.controls import parse_controls
from muselab.core.errors import ControlError, DataError
from muselab.data.audio_features import ClipFeatures, FeatureSettings, extract_features
from muselab.data.notes import notes_to_curves
from muselab.safety.detect import detect_file

SR = 16000


@pytest.fixture(scope="module")
def ddsp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny audio-ddsp run on builtin:tones; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp("runs") / "ddsp"
    api.train("audio-ddsp", None, out, preset="tiny", quiet=True)
    return out


@pytest.fixture(scope="module")
def loaded(ddsp_run: Path) -> api.Run:
    return api.load(ddsp_run)


def sine_file(path: Path, hz: float = 220.0, seconds: float = 1.0, level: float = 0.3) -> Path:
    t = np.arange(round(seconds * SR)) / SR
    sf.write(path, (level * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    return path


# ---- notes ----------------------------------------------------------------------------------------

def test_notes_are_read_as_name_and_beats_with_rests_at_the_tempo():
    events = parse_notes("C4:0.5 E4:0.5 R:1 G4", tempo=120)
    assert [e.midi for e in events] == [60, 64, None, 67]
    assert [e.start_s for e in events] == [0.0, 0.25, 0.5, 1.0]
    assert [e.seconds for e in events] == [0.25, 0.25, 0.5, 0.5]
    assert [e.seconds for e in parse_notes("C4:0.5 R:1", tempo=60)] == [0.5, 1.0]


@pytest.mark.parametrize("text, fragment", [("H4:1", "note name"), ("C4:x", "beats"), ("C4:0", "beats"),
                                            ("R:1 R:2", "only rests"), ("  ", "empty"), ("C12:1", "outside"),
                                            (" ".join(["C4:64"] * 20), "limit")])
def test_bad_note_tokens_are_one_line_control_errors(text, fragment):
    with pytest.raises(ControlError) as err:
        parse_notes(text, tempo=120)
    assert fragment in error_message(err)


def test_a_bad_note_is_refused_when_the_controls_are_validated():
    with pytest.raises(ControlError) as err:
        parse_controls(DDSPControls, {"notes": "C4:1 X9:1"})
    assert error_message(err).startswith("bad value for --notes")


def test_note_curves_sound_only_where_notes_are_and_hold_the_pitch_through_rests():
    f0, loud, requested, n = notes_to_curves(parse_notes("R:0.5 A4:1 R:1", 120), -20.0, SR, 64)
    assert n == round(1.25 * SR)
    times = np.arange(len(f0)) * 64 / SR
    playing = (times >= 0.25) & (times < 0.75)
    assert np.allclose(requested[playing], 440.0) and np.all(requested[~playing] == 0)
    assert np.allclose(f0, 440.0)  # rests hold the note's pitch; their loudness makes them silent
    assert loud[~playing].max() == -80.0
    assert loud[playing].max() == pytest.approx(-20.0)


# ---- generation -------------------------------------------------------------------------------------

def test_generate_plays_the_notes_for_their_length_and_is_deterministic(loaded):
    first = loaded.generate("C4:0.5 E4:0.5", seed=3)
    assert first.kind == "audio" and first.sample_rate == SR
    assert first.items[0].dtype == np.float32 and first.items[0].shape == (round(0.5 * SR),)
    assert np.array_equal(first.items[0], loaded.generate("C4:0.5 E4:0.5", seed=3).items[0])
    slow = loaded.generate("C4:0.5 E4:0.5", seed=3, tempo=60)
    assert slow.items[0].shape == (SR,)
    assert first.controls["seed"] == 3 and len(first.timing[0]["f0_requested"]) == len(first.timing[0]["f0_hz"])


def test_timbre_transfer_with_an_octave_up_doubles_the_pitch(loaded, tmp_path):
    source = sine_file(tmp_path / "sine.wav", hz=220.0, seconds=1.0)
    result = loaded.generate(wav=str(source), pitch_shift=12, seed=0)
    audio = result.items[0]
    assert audio.shape == (SR,)
    requested = result.timing[0]["f0_requested"]
    assert np.median(requested[requested > 0]) == pytest.approx(440.0, rel=0.01)
    tracked, _ = f0_pyin(audio, SR, 256, fmin=100, fmax=1000)
    assert np.median(tracked[tracked > 0]) == pytest.approx(440.0, rel=0.02)


@pytest.mark.parametrize("controls, error, fragment", [
    ({"notes": "C4:1", "wav": "x.wav"}, ControlError, "not both"),
    ({}, ControlError, "nothing to play"),
    ({"wav": "missing.wav"}, DataError, "does not exist"),
    ({"notes": "C4:1", "pitch_shift": 3}, ControlError, "--wav"),
    ({"notes": "C4:1", "timbre": "x.wav"}, ControlError, "--timbre"),
])
def test_unusable_controls_are_one_line_errors(loaded, controls, error, fragment):
    with pytest.raises(error) as err:
        loaded.generate(**controls)
    assert fragment in error_message(err)


def test_a_silent_or_unpitched_recording_is_refused(loaded, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SR, dtype=np.float32), SR)
    with pytest.raises(DataError) as err:
        loaded.generate(wav=str(silent))
    assert "silent" in error_message(err)
    noise = tmp_path / "noise.wav"
    sf.write(noise, np.random.default_rng(0).uniform(-0.3, 0.3, SR).astype(np.float32), SR)
    with pytest.raises(DataError) as err:
        loaded.generate(wav=str(noise))
    assert "no pitched sound found" in error_message(err)


def test_a_folder_without_pitched_sound_is_refused_before_training(tmp_path):
    folder = tmp_path / "drums"
    folder.mkdir()
    sf.write(folder / "hit.wav", np.random.default_rng(1).uniform(-0.5, 0.5, 2 * SR).astype(np.float32), SR)
    with pytest.raises(DataError) as err:
        api.train("audio-ddsp", str(folder), tmp_path / "run", preset="tiny", quiet=True)
    assert "no pitched sound found in" in error_message(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_folder_of_recordings_is_resampled_pitch_tracked_and_split_by_whole_clips(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="muselab")
    folder = tmp_path / "flute"
    folder.mkdir()
    t = np.arange(round(1.5 * 44100)) / 44100
    for i, hz in enumerate((262.0, 330.0, 392.0)):
        tone = sum(0.2 / k * np.sin(2 * np.pi * hz * k * t) for k in range(1, 4))
        sf.write(folder / f"take{i}.wav", tone.astype(np.float32), 44100)
    api.train("audio-ddsp", str(folder), tmp_path / "run", preset="tiny", max_steps=2, quiet=True)
    assert "resampled 44100 Hz -> 16000 Hz" in caplog.text  # a logged note, which the CLI prints
    saved = api.load(tmp_path / "run").saved["data"]
    assert (saved["train_clips"], saved["test_clips"]) == (2, 1)
    assert saved["f0"].startswith("pYIN")
    stats = api.load(tmp_path / "run").assets["stats"]
    assert 59.5 < stats["midi_low"] < stats["midi_high"] < 67.5  # C4 to G4


# ---- CLI --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_writes_a_watermarked_wav_with_its_manifest(ddsp_run, tmp_path):
    out = tmp_path / "x.wav"
    done = run_cli("generate", str(ddsp_run), "--notes", "C4:2 E4:2", "--seed", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    found = detect_file(out)
    assert found["kind"] == "audio" and found["watermark"] is True
    assert found["manifest"]["recipe"] == "audio-ddsp" and found["manifest"]["controls"]["notes"] == "C4:2 E4:2"
    assert sf.info(out).samplerate == SR and sf.info(out).frames == 2 * SR


@pytest.mark.slow
def test_cli_reports_a_bad_note_in_one_line_with_exit_2(ddsp_run, tmp_path):
    done = run_cli("generate", str(ddsp_run), "--notes", "C4:1 Q4:1", "--out", str(tmp_path / "y.wav"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--notes" in done.stderr


# ---- evaluation -------------------------------------------------------------------------------------

def _clip_of(audio: np.ndarray, hz: float) -> ClipFeatures:
    labels = np.full(len(audio) // 64, hz)
    return extract_features(audio.astype(np.float32), FeatureSettings(), "test", f0_labels=labels)


def test_the_sine_baseline_matches_a_sine_and_not_a_rich_tone():
    t = np.arange(SR) / SR
    envelope = np.minimum(1.0, t / 0.1) * np.minimum(1.0, (1.0 - t) / 0.1)
    sine = _clip_of(0.4 * envelope * np.sin(2 * np.pi * 220.0 * t), 220.0)
    rich = _clip_of(envelope * sum(0.4 / k * np.sin(2 * np.pi * 220.0 * k * t) for k in range(1, 12)), 220.0)
    _, on_sine = best_gain_sine(sine, SR, 64)
    _, on_rich = best_gain_sine(rich, SR, 64)
    # ~0.5 is the floor of this distance for a perfect magnitude with another phase (sin vs cos at 220 Hz
    # differ by 0.57): the baseline is as good as a sine can be on a sine, and far off on a rich tone
    assert on_sine < 0.6 and on_rich > 4 * on_sine


@pytest.mark.slow
def test_evaluate_writes_the_metrics_pictures_and_labelled_samples(ddsp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ddsp_run, run)
    metrics = api.evaluate(run)
    for key in ("mrstft", "mrstft_sine_baseline", "mrstft_ratio", "pitch_within_20_cents", "realtime_factor",
                "mrstft_avg_spectrum_baseline", "timbre_mfcc_dtw", "timbre_mfcc_dtw_avg_spectrum_baseline",
                "timbre_mfcc_dtw_sine_baseline", "timbre_mfcc_dtw_ratio"):
        assert np.isfinite(metrics[key])
    assert metrics["mrstft_ratio"] == pytest.approx(metrics["mrstft_sine_baseline"] / metrics["mrstft"])
    assert metrics["timbre_mfcc_dtw_ratio"] == pytest.approx(metrics["timbre_mfcc_dtw_avg_spectrum_baseline"]
                                                             / metrics["timbre_mfcc_dtw"])
    assert 0.0 <= metrics["pitch_within_20_cents"] <= 1.0 and metrics["realtime_factor"] > 0
    for picture in ("spectrograms.png", "f0.png"):
        assert (run / picture).stat().st_size > 1000
    sample = detect_file(run / "samples" / "eval_resynthesis.wav")
    assert sample["watermark"] and sample["manifest"]["recipe"] == "audio-ddsp"
