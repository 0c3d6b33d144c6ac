"""MIDI rendered with a General MIDI SoundFont: notes land where they are written, programs sound
different, drums use the percussion channel, and missing software is a one-line error naming the package."""

from __future__ import annotations

import io
from pathlib import Path

import mido
import numpy as np
import pytest

from helpers import error_message, needs_synth
from muselab.core.errors import DataError
from muselab.data import soundfont
from muselab.data.soundfont import (
    DRUMS,
    MidiNote,
    find_soundfont,
    gm_family,
    notes_to_midi,
    render_midi,
    render_notes,
)


def test_notes_become_a_midi_file_with_one_channel_per_program_and_drums_on_channel_10() -> None:
    data = notes_to_midi([(24, 60, 90, 0.0, 0.5), (40, 67, 100, 0.25, 1.0), MidiNote(38, 1.0, 0.1, program=DRUMS)])
    midi = mido.MidiFile(file=io.BytesIO(data))
    messages = [m for m in midi.tracks[0] if not m.is_meta]
    programs = {m.channel: m.program for m in messages if m.type == "program_change"}
    assert programs == {0: 24, 1: 40}
    drum = [m for m in messages if m.type == "note_on" and m.note == 38]
    assert drum[0].channel == 9
    assert abs(midi.length - 1.25) < 1e-3  # the violin's note ends last, at 1.25 s


def test_a_program_argument_overrides_and_too_many_programs_are_refused() -> None:
    midi = mido.MidiFile(file=io.BytesIO(notes_to_midi([(60, 100, 0.0, 0.5), (0, 64, 100, 0.0, 0.5)], program=73)))
    assert {m.program for m in midi.tracks[0] if m.type == "program_change"} == {73}
    with pytest.raises(ValueError, match="at most 15"):
        notes_to_midi([(p, 60, 100, 0.0, 0.1) for p in range(16)])
    with pytest.raises(ValueError, match="out of range"):
        MidiNote(60, 0.0, 0.5, velocity=0)
    assert gm_family(25) == "guitar" and gm_family(DRUMS) == "drums"


@needs_synth
def test_rendered_notes_start_where_written_and_programs_differ() -> None:
    sr = 22050
    guitar = render_notes([(60, 100, 0.5, 0.5)], program=24, sr=sr, seconds=1.5)
    flute = render_notes([(60, 100, 0.5, 0.5)], program=73, sr=sr, seconds=1.5)
    assert guitar.dtype == np.float32 and guitar.shape == (int(1.5 * sr),)
    for wav in (guitar, flute):
        assert np.abs(wav[: int(0.49 * sr)]).max() < 1e-4  # silent before the note
        assert np.abs(wav[int(0.52 * sr): int(0.9 * sr)]).max() > 0.01  # sounding during it
    spectra = [np.abs(np.fft.rfft(w[int(0.55 * sr): int(0.95 * sr)])) for w in (guitar, flute)]
    spectra = [s / s.sum() for s in spectra]
    assert np.abs(spectra[0] - spectra[1]).sum() > 0.3  # a plucked string is not a flute


@needs_synth
def test_a_midi_path_and_its_bytes_render_the_same(tmp_path: Path) -> None:
    data = notes_to_midi([MidiNote(62, 0.1, 0.3, program=0), MidiNote(36, 0.2, 0.1, program=DRUMS)])
    (tmp_path / "a.mid").write_bytes(data)
    from_path = render_midi(tmp_path / "a.mid", 16000)
    assert np.array_equal(from_path, render_midi(data, 16000))
    assert np.abs(from_path).max() > 0.01
    (tmp_path / "b.mid").write_text("not midi")
    with pytest.raises(DataError, match="not a standard MIDI file"):
        render_midi(tmp_path / "b.mid")


def test_missing_fluidsynth_or_soundfont_is_one_line_naming_the_package(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.setattr(soundfont.shutil, "which", lambda name: None)
    with pytest.raises(DataError) as err:
        render_notes([(60, 100, 0.0, 0.1)])
    assert "apt-get install fluidsynth" in error_message(err)
    monkeypatch.undo()
    monkeypatch.delenv(soundfont.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(soundfont, "SOUNDFONT_DIRS", (str(tmp_path),))
    with pytest.raises(DataError) as err:
        find_soundfont()
    assert "apt-get install fluid-soundfont-gm" in error_message(err)
    monkeypatch.setenv(soundfont.SOUNDFONT_ENV, str(tmp_path / "mine.sf2"))
    with pytest.raises(DataError) as err:
        find_soundfont()
    assert "MUSELAB_SOUNDFONT" in error_message(err)
    (tmp_path / "mine.sf2").write_bytes(b"x")
    assert find_soundfont() == tmp_path / "mine.sf2"
