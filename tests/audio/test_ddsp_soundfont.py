"""builtin:soundfont: one sampled instrument for audio-ddsp, its notes' pitches as labels."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest

from conftest import run_cli
from helpers import needs_synth
from muselab import api
from muselab.core.errors import ConfigError
from muselab.data.solo import INSTRUMENTS, clip_notes, f0_labels, instrument_program, make_solo_clips


@pytest.mark.parametrize("index", range(12))
def test_clips_play_one_note_at_a_time_inside_the_instruments_range(index: int) -> None:
    _, low, high = instrument_program("flute")
    notes = clip_notes(low, high, index, 4.0)
    assert notes == clip_notes(low, high, index, 4.0)  # the same clip every time
    for (pitch, velocity, start, duration), following in zip(notes, notes[1:] + [None], strict=True):
        assert low <= pitch <= high and 1 <= velocity <= 127 and duration > 0
        assert start + duration <= (following[2] + 1e-9 if following else 4.0)


def test_labels_follow_the_latest_note_and_hold_it_through_rests() -> None:
    notes = [(69, 100, 0.5, 0.2), (81, 100, 1.0, 0.5)]
    f0 = f0_labels(notes, n_frames=1 + 2 * 100, sr=100, hop=1)  # a frame every 10 ms, 2 s
    assert f0[:50].max() == 0  # nothing begun yet
    assert np.allclose(f0[50:100], 440.0)  # the note and the rest after it
    assert np.allclose(f0[100:], 880.0)


def test_instrument_names_are_forgiving_and_unknown_ones_list_the_choices() -> None:
    assert instrument_program("French-Horn") == INSTRUMENTS["french horn"]
    with pytest.raises(ConfigError, match="unknown instrument 'kazoo'.*violin"):
        instrument_program("kazoo")


@needs_synth
def test_rendered_pitch_agrees_with_the_labels() -> None:
    clips, font = make_solo_clips("clarinet", clips=6, seconds=3.0, sr=16000, hop=64)
    assert ".sf2:" in font and len(clips) == 6
    agree, voiced = 0, 0
    for clip in clips:
        assert clip.audio.shape == (48000,) and np.abs(clip.audio).max() > 1e-3
        f0, flag, _ = librosa.pyin(clip.audio, fmin=100, fmax=2000, sr=16000, frame_length=1024, hop_length=64)
        n = min(len(f0), len(clip.f0_hz))
        both = flag[:n] & (clip.f0_hz[:n] > 0)
        cents = 1200 * np.abs(np.log2(f0[:n][both] / clip.f0_hz[:n][both]))
        agree += int((cents < 50).sum())
        voiced += int(both.sum())
    assert voiced > 500 and agree / voiced > 0.85


@needs_synth
def test_audio_ddsp_trains_on_a_sampled_instrument_and_plays_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    api.train("audio-ddsp", "builtin:soundfont", out, preset="tiny", overrides=["data.instrument=flute"], quiet=True)
    run = api.load(out)
    assert run.saved["data"]["spec"] == "builtin:soundfont" and "flute" in run.saved["data"]["source"]
    assert run.saved["data"]["f0"].startswith("ground-truth labels")
    assert run.saved["data"]["train_clips"] + run.saved["data"]["test_clips"] <= 8
    audio = run.generate("C5:1 E5:1", seed=0).items[0]
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_an_unknown_instrument_is_one_line_before_anything_is_rendered(tmp_path: Path) -> None:
    done = run_cli("train", "audio-ddsp", "--data", "builtin:soundfont", "--out", str(tmp_path / "run"),
                   "--preset", "tiny", "--set", "data.instrument=kazoo")
    assert done.returncode == 2 and "kazoo" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
