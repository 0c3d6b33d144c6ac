import numpy as np
import pytest
import soundfile as sf

from helpers import error_message, write
from muselab.audio.io import list_audio_files, load_audio, save_audio
from muselab.core.errors import DataError


def sine(freq: float = 440.0, sr: int = 16000, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
def test_save_then_load_round_trips(tmp_path, ext):
    wav = sine()
    path = tmp_path / f"tone{ext}"
    assert save_audio(path, wav, 16000) == []
    loaded, sr, notes = load_audio(path)
    assert sr == 16000 and notes == [] and loaded.dtype == np.float32 and loaded.ndim == 1
    if ext == ".ogg":  # lossy: same length and the same tone, not the same samples
        assert len(loaded) == len(wav)
        assert np.corrcoef(loaded, wav)[0, 1] > 0.99
    else:
        np.testing.assert_allclose(loaded, wav, atol=1e-4)


def test_save_replaces_a_file_atomically_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "out" / "tone.wav"
    save_audio(path, sine(amplitude=0.1), 16000)
    save_audio(path, sine(amplitude=0.5), 16000)
    assert [p.name for p in path.parent.iterdir()] == ["tone.wav"]
    assert np.abs(load_audio(path)[0]).max() == pytest.approx(0.5, abs=1e-3)


def test_loud_audio_is_scaled_down_not_clipped(tmp_path):
    path = tmp_path / "loud.wav"
    notes = save_audio(path, sine(amplitude=2.0), 16000)
    assert len(notes) == 1 and "scaled down" in notes[0]
    loaded = load_audio(path)[0]
    assert np.abs(loaded).max() == pytest.approx(0.99, abs=1e-3)
    assert np.corrcoef(loaded, sine())[0, 1] > 0.9999  # the shape survives: no flattened peaks


def test_save_refuses_non_finite_audio_and_unknown_extensions(tmp_path):
    bad = sine()
    bad[10] = np.nan
    with pytest.raises(DataError) as err:
        save_audio(tmp_path / "nan.wav", bad, 16000)
    assert "NaN" in error_message(err)
    with pytest.raises(DataError) as err:
        save_audio(tmp_path / "tone.mp4", sine(), 16000)
    assert ".wav" in error_message(err)
    assert list(tmp_path.iterdir()) == []


def test_resampling_is_reported_in_a_note(tmp_path):
    path = tmp_path / "cd.wav"
    save_audio(path, sine(sr=44100, seconds=1.0), 44100)
    wav, sr, notes = load_audio(path, sr=16000)
    assert sr == 16000 and len(wav) == 16000
    assert notes == ["resampled 44100 Hz -> 16000 Hz"]
    assert np.argmax(np.abs(np.fft.rfft(wav))) == 440


def test_stereo_is_mixed_to_mono_unless_asked_not_to(tmp_path):
    left, right = sine(440), sine(660, amplitude=0.25)
    path = tmp_path / "stereo.flac"
    save_audio(path, np.stack([left, right]), 16000)
    mono, _, notes = load_audio(path)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-4)
    assert notes == ["mixed 2 channels down to mono"]
    both, _, notes = load_audio(path, mono=False)
    assert both.shape == (2, len(left)) and notes == []


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_audio(tmp_path / "nope.wav")
    assert "does not exist" in error_message(err)


def test_corrupt_file_names_the_file_and_the_supported_formats(tmp_path):
    path = write(tmp_path / "noise.wav", np.random.default_rng(0).bytes(4000))
    with pytest.raises(DataError) as err:
        load_audio(path)
    msg = error_message(err)
    assert "noise.wav" in msg and ".wav, .flac, .ogg" in msg


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError) as err:
        load_audio(path)
    assert "no audio samples" in error_message(err)


def test_silent_file_is_refused(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    with pytest.raises(DataError) as err:
        load_audio(path)
    assert "silent" in error_message(err)


def test_too_short_file_is_refused(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, sine(seconds=0.05), 16000)
    with pytest.raises(DataError) as err:
        load_audio(path)
    assert "0.050 s" in error_message(err) and "0.1 s" in error_message(err)
    assert len(load_audio(path, min_seconds=0.01)[0]) == 800


def test_non_finite_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    wav = sine()
    wav[100] = np.inf
    sf.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(DataError) as err:
        load_audio(path)
    assert "NaN or infinite" in error_message(err)


def test_list_audio_files_is_recursive_sorted_and_skips_other_files(tmp_path):
    for name in ("b/two.flac", "a.wav", "b/one.OGG", ".hidden/x.wav", "notes.txt", "c/._junk.wav"):
        write(tmp_path / name, b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_audio_files(tmp_path)]
    assert found == ["a.wav", "b/one.OGG", "b/two.flac"]
    assert list_audio_files(tmp_path / "a.wav") == [tmp_path / "a.wav"]


def test_list_audio_files_errors(tmp_path):
    write(tmp_path / "readme.txt", "no audio here")
    with pytest.raises(DataError) as err:
        list_audio_files(tmp_path)
    assert "no audio files" in error_message(err)
    with pytest.raises(DataError) as err:
        list_audio_files(tmp_path / "missing")
    assert "does not exist" in error_message(err)
