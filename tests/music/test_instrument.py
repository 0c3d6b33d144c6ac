"""music-lm played by a trained audio-ddsp instrument (`--ddsp RUN`): octave moves into the instrument's range,
one pitch curve per voice, the mixed sound and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import error_message, midi_folder
from muselab import api
from muselab.core.errors import ControlError
from muselab.data.notes import midi_to_hz
from muselab.data.scores import Score
from muselab.music.instrument import Instrument, fold_into, octave_shift, voice_curves
from muselab.safety.detect import detect_file


def test_each_voice_moves_by_octaves_to_where_most_of_its_notes_fit() -> None:
    assert octave_shift([60, 64, 67], 55, 80) == 0
    assert octave_shift([36, 40, 43], 55, 80) == 24
    assert octave_shift([84, 88], 55, 80) == -12
    # a line wider than the range: the move that keeps the most notes inside, the smallest of equals
    assert octave_shift([50, 60, 70, 80], 58, 72) == 0
    # notes still outside after the voice's move are folded in one by one
    assert [fold_into(p, 58, 72) for p in (50, 60, 80, 129)] == [62, 60, 68, 69]


def test_every_voice_gets_its_own_pitch_curve_following_its_notes() -> None:
    instrument = Instrument("test", torch.nn.Identity(), sample_rate=16000, hop=64, loudness_db=-20.0,
                            midi_low=55.0, midi_high=80.0)
    # tempo 120: a quarter lasts 0.5 s; the soprano is in range, the bass an octave too low
    score = Score("test", [[(72, 0.0, 1.0), (74, 1.0, 1.0)], [], [], [(48, 0.0, 2.0)]], tempo=120.0)
    f0, loud, n_samples, moves = voice_curves(score, (0, 1, 2, 3), instrument)
    assert f0.shape == loud.shape == (2, -(-16000 // 64)) and n_samples == 16000
    assert moves == {"octave_moves": {"bass": 12}, "notes_folded": 0}
    frame = round(0.25 * 16000 / 64)  # the middle of the first quarter
    assert f0[0, frame] == pytest.approx(midi_to_hz(72.0), rel=1e-3)
    assert f0[0, 3 * frame] == pytest.approx(midi_to_hz(74.0), rel=1e-3)
    assert f0[1, frame] == pytest.approx(midi_to_hz(60.0), rel=1e-3)
    assert loud[0, frame] == pytest.approx(-20.0, abs=0.1) and loud[1, frame] == pytest.approx(-21.0, abs=0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[api.Run, Path, Path]:
    base = tmp_path_factory.mktemp("instrument")
    music = base / "music"
    api.train("music-lm", str(midi_folder(base / "midi")), music, preset="tiny", quiet=True,
              overrides=["train.max_steps=20"])
    ddsp = base / "ddsp"
    api.train("audio-ddsp", None, ddsp, preset="tiny", quiet=True)
    return api.load(music, device="cpu"), music, ddsp


@pytest.mark.slow
def test_a_ddsp_instrument_plays_the_piece_and_the_file_is_marked(runs: tuple[api.Run, Path, Path],
                                                                  tmp_path: Path) -> None:
    loaded, _, ddsp = runs
    tempo = 120.0
    result = loaded.generate(melody="C5 E5 G5:2", tempo=tempo, ddsp=str(ddsp), seed=3)
    clip, rate = result.clips[0], result.sample_rate
    assert rate == api.load(ddsp).config.model.sample_rate
    assert len(clip) == pytest.approx(4 * 60 / tempo * rate, rel=0.01)
    assert np.isfinite(clip).all() and np.abs(clip).max() > 1e-3
    again = loaded.generate(melody="C5 E5 G5:2", tempo=tempo, ddsp=str(ddsp), seed=3)
    np.testing.assert_array_equal(again.clips[0], clip)
    wav = next(f for f in result.save(tmp_path / "out") if f.suffix == ".wav")
    assert detect_file(wav)["watermark"] is True


@pytest.mark.slow
def test_a_run_that_is_not_an_instrument_is_refused_in_one_line(runs: tuple[api.Run, Path, Path],
                                                                tmp_path: Path) -> None:
    loaded, music, _ = runs
    with pytest.raises(ControlError) as err:
        loaded.generate(melody="C5 E5", ddsp=str(music), seed=0)
    assert "is a music-lm run; pass an audio-ddsp run" in error_message(err)
    with pytest.raises(ControlError) as err:
        loaded.generate(melody="C5 E5", ddsp=str(tmp_path / "nowhere"), seed=0)
    assert "not a run directory" in error_message(err)
