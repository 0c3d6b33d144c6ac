"""music-lm end to end on the tiny preset (a folder of small MIDI files, so no corpus is parsed), and its
parts: the encoding, keys, the voice-leading checker, the sampling rules, files in and out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from helpers import error_message
from muselab import api
from muselab.core.errors import ControlError, DataError
from muselab.data.scores import Score, estimate_key, load_scores, parse_key, read_midi, tune_key
from muselab.music import encoding as enc
from muselab.music.constraints import ScoreTemplateProcessor
from muselab.music.metrics import CopyIndex, in_key_share, voice_leading
from muselab.music.midi import score_to_midi
from muselab.safety.detect import detect_file

# Four voices of a C major cadence, I-IV-V-I, one chord per beat (quarter notes)
CHORDS = [(72, 67, 64, 48), (72, 69, 65, 53), (71, 67, 62, 55), (72, 67, 64, 48)]


def chorale(name: str, shift: int = 0, bars: int = 2) -> Score:
    voices: list[list] = [[], [], [], []]
    rng = np.random.default_rng(len(name))
    for beat in range(4 * bars):
        chord = CHORDS[beat % 4] if beat % 8 < 4 else CHORDS[int(rng.integers(0, 4))]
        for v in range(4):
            voices[v].append((chord[v] + shift, float(beat), 1.0))
    return Score(name, voices, 4.0, 0.0, shift % 12, "major", 90.0)


def midi_folder(root: Path, count: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"piece{i:02d}.mid").write_bytes(score_to_midi(chorale(f"piece{i}", shift=i % 5 - 2)))
    return root


@pytest.fixture(scope="module")
def music_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny music-lm run on a folder of MIDI files; tests must not modify it."""
    base = tmp_path_factory.mktemp("music")
    out = base / "run"
    api.train("music-lm", str(midi_folder(base / "midi")), out, preset="tiny", quiet=True,
              overrides=["train.max_steps=40"])
    return out


@pytest.fixture(scope="module")
def loaded(music_run: Path) -> api.Run:
    return api.load(music_run, device="cpu")


# ---- encoding, keys, checker -------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(36, 84), st.integers(0, 30), st.integers(1, 8)),
                min_size=1, max_size=30))
def test_a_score_on_the_grid_decodes_to_the_same_notes(raw: list[tuple[int, int, int, int]]) -> None:
    voices: list[list] = [[], [], [], []]
    ends = [0, 0, 0, 0]
    for v, pitch, gap, steps in raw:  # monophonic voices on the 16th grid
        start = ends[v] + gap
        voices[v].append((pitch, start / 4, steps / 4))
        ends[v] = start + steps
    score = Score("x", voices, 4.0, 0.0, 2, "minor")
    back = enc.decode(enc.encode(score, 4), 4)
    assert back.voices == voices and (back.tonic, back.mode) == (2, "minor")


def test_transposing_tokens_moves_notes_and_keys_together() -> None:
    ids = torch.tensor(enc.encode(chorale("a"), 4))
    up = enc.transpose_table(3)[ids]
    moved = enc.decode(up.tolist(), 4)
    assert moved.voices == chorale("a", shift=3).voices and moved.tonic == 3


def test_keys_are_read_and_estimated() -> None:
    assert parse_key("F# minor") == (6, "minor") and parse_key("Bb") == (10, "major") and parse_key("a") == (9, "minor")
    with pytest.raises(ValueError, match="not a key"):
        parse_key("H major")
    scale = [(p, float(i), 1.0) for i, p in enumerate([67, 69, 71, 72, 74, 76, 78, 79, 74, 71, 67])]
    assert estimate_key(scale) == (7, "major")


def test_the_checker_counts_parallels_but_not_contrary_motion() -> None:
    fifths = Score("p", [[(67, 0.0, 1.0), (69, 1.0, 1.0)], [(64, 0.0, 1.0), (65, 1.0, 1.0)],
                         [(60, 0.0, 1.0), (62, 1.0, 1.0)], [(48, 0.0, 1.0), (50, 1.0, 1.0)]])
    counted = voice_leading(fifths)
    # soprano-tenor (G-C, A-D) and alto-bass... octaves: tenor/bass C-C -> D-D
    assert counted["parallel_fifths"] >= 1 and counted["parallel_octaves"] == 1 and counted["chords"] == 2
    contrary = Score("c", [[(67, 0.0, 1.0), (67, 1.0, 1.0)], [(64, 0.0, 1.0), (65, 1.0, 1.0)],
                           [(60, 0.0, 1.0), (60, 1.0, 1.0)], [(48, 0.0, 1.0), (41, 1.0, 1.0)]])
    assert voice_leading(contrary)["parallel_fifths"] == voice_leading(contrary)["parallel_octaves"] == 0
    assert voice_leading(chorale("c"))["crossings"] == 0
    assert in_key_share(chorale("c"), 0, "major") == 1.0 and in_key_share(chorale("c"), 1, "major") < 0.5


def test_copies_are_found_in_any_key() -> None:
    index = CopyIndex([chorale("a", bars=4)])
    assert index.longest_copy(chorale("a", shift=5, bars=4)) == 16
    lone = Score("l", [[(60, 0.0, 1.0), (61, 1.0, 3.0), (70, 4.0, 0.25)], [], [], []])
    assert index.longest_copy(lone) == 0


def test_the_template_processor_pins_notes_and_avoids_parallels() -> None:
    melody = enc.to_grid(chorale("m"), 4)
    fixed = [[step[0], None, None, None] for step in melody.steps]
    template = enc.make_template(len(fixed), 16, 0, "major", fixed)
    processor = ScoreTemplateProcessor(template, avoid_parallels=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([[enc.BOS]])
    while ids.shape[1] < len(template):
        scores = processor(ids, torch.randn(1, enc.VOCAB_SIZE, generator=gen))
        ids = torch.cat([ids, torch.multinomial(scores.softmax(-1), 1, generator=gen)], dim=1)
    piece = enc.decode(ids[0].tolist(), 4)
    assert piece.voices[0] == chorale("m").voices[0]  # the melody, untouched
    assert ids[0, -1] == enc.EOS and all(piece.voices[1:])
    counted = voice_leading(piece)
    assert counted["parallel_fifths"] == counted["parallel_octaves"] == 0


# ---- files in ------------------------------------------------------------------------------------

def test_a_bad_file_is_named_and_can_be_skipped(tmp_path: Path) -> None:
    folder = midi_folder(tmp_path / "midi", count=3)
    (folder / "broken.mid").write_bytes(b"MThd not really")
    with pytest.raises(DataError) as err:
        load_scores(str(folder))
    assert "broken.mid" in error_message(err)
    data = load_scores(str(folder), skip_bad_files=True)
    assert len(data.skipped) == 1 and len(data.train) + len(data.test) == 3


def test_midi_files_read_back_as_the_same_voices(tmp_path: Path) -> None:
    path = tmp_path / "x.mid"
    path.write_bytes(score_to_midi(chorale("x", shift=2)))
    back = read_midi(path)
    assert back.voices == chorale("x", shift=2).voices and back.key_name == "D major"
    assert tune_key(back) == tune_key(chorale("y", shift=-3))  # settings of one tune share a split


# ---- the recipe ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_generate_writes_midi_and_a_piano_roll_with_provenance(loaded: api.Run, tmp_path: Path) -> None:
    import music21
    import pretty_midi

    result = loaded.generate(bars=3, key="D minor", seed=3, num_samples=2, render=False)
    assert len(result) == 2 and result.scores[0]["key_name"] == "D minor"
    assert max(n[1] + n[2] for v in result.scores[0]["voices"] for n in v) <= 12.0
    files = result.save(tmp_path / "out")
    assert sorted(p.suffix for p in files) == [".mid", ".mid", ".png", ".png"]
    for path in files:
        found = detect_file(path)
        assert found["manifest"]["recipe"] == "music-lm" and found["manifest_source"] == "embedded", found
        if path.suffix == ".png":
            assert found["watermark"] is True
    midi = files[0]
    assert len(pretty_midi.PrettyMIDI(str(midi)).instruments) == 4
    assert len(music21.converter.parse(str(midi)).parts) == 4
    again = loaded.generate(bars=3, key="D minor", seed=3, num_samples=2, render=False)
    assert again.scores == result.scores  # a seed gives the same music


def test_harmonising_keeps_the_melody_in_the_asked_key(loaded: api.Run) -> None:
    result = loaded.generate(melody="C4 D4 E4:2 G4 F4 E4:2", input_key="C major", key="E major", seed=1,
                             render=False)
    soprano = result.scores[0]["voices"][0]
    assert [n[0] for n in soprano] == [64, 66, 68, 71, 69, 68] and result.scores[0]["pinned_voices"] == [0]
    assert all(result.scores[0]["voices"][v] for v in (1, 2, 3))
    two = loaded.generate(primer="E4 G4", voices=2, bars=2, seed=2, render=False)
    kept = two.scores[0]["voices"]
    assert [n[0] for n in kept[0][:2]] == [64, 67] and kept[1] == kept[2] == [] and kept[3]


def test_bad_controls_are_one_line_errors(loaded: api.Run, tmp_path: Path) -> None:
    with pytest.raises(ControlError) as err:
        loaded.generate(melody="C4 Q4")
    assert "Q4" in error_message(err)
    with pytest.raises(ControlError, match="not both"):
        loaded.generate(melody="C4", primer="E4")
    with pytest.raises(ControlError, match="no file"):
        loaded.generate(melody=str(tmp_path / "missing.mid"))
    with pytest.raises(ControlError, match="key"):
        loaded.generate(key="Z minor")


@pytest.mark.slow
def test_evaluate_reports_metrics_beside_the_random_baseline(music_run: Path, tmp_path: Path) -> None:
    api.evaluate(music_run, device="cpu")
    metrics = json.loads((music_run / "eval.json").read_text())
    for part in ("generated", "random_baseline", "held_out_bach"):
        assert {"in_key_share", "pch_distance", "parallels_per_100_chords", "longest_copy_notes"} <= set(metrics[part])
    assert metrics["harmonized"]["bach_same_chorales"]["chords"] > 0
    assert metrics["val_nll_per_token"] < metrics["random_nll_per_token"]  # even 40 steps beat uniform guessing
    assert (music_run / "eval_piece.png").is_file() and (music_run / "eval_pitch_classes.png").is_file()
    out = tmp_path / "cli"
    done = run_cli("generate", str(music_run), "--primer", "C4 E4 G4", "--bars", "2", "--no-render", "--seed", "0", "--out",
                   str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "music_000.mid").is_file() and (out / "music_000.png").is_file()


def _can_render() -> bool:
    import shutil

    from muselab.data.soundfont import find_soundfont

    try:
        find_soundfont()
    except DataError:
        return False
    return shutil.which("fluidsynth") is not None


@pytest.mark.skipif(not _can_render(), reason="fluidsynth or a General MIDI SoundFont is not installed")
@pytest.mark.slow
def test_the_rendered_sound_plays_the_notes_of_the_midi(loaded: api.Run, tmp_path: Path) -> None:
    import librosa

    tempo = 100.0
    result = loaded.generate(melody="C4 E4 G4:0.5 A4:0.5 G4 D4:2", voices=1, program=71,
                             tempo=tempo, seed=0)  # a clarinet: the soprano alone is the melody itself
    clip, sr = result.clips[0], result.sample_rate
    f0, voiced, _ = librosa.pyin(clip, fmin=100, fmax=1000, sr=sr, frame_length=2048, hop_length=512)
    times = librosa.times_like(f0, sr=sr, hop_length=512)
    wanted = np.full(len(times), np.nan)
    for pitch, start, length in result.scores[0]["voices"][0]:  # the MIDI's notes, 50 ms in from each edge
        inside = (times >= start * 60 / tempo + 0.05) & (times < (start + length) * 60 / tempo - 0.05)
        wanted[inside] = pitch
    judged = voiced & ~np.isnan(wanted)
    cents = 1200 * np.log2(f0[judged] / (440 * 2 ** ((wanted[judged] - 69) / 12)))
    assert judged.sum() > 0.8 * (~np.isnan(wanted)).sum()
    assert (np.abs(cents) <= 20).mean() >= 0.95
    files = result.save(tmp_path / "out")
    wav = next(f for f in files if f.suffix == ".wav")
    assert detect_file(wav)["watermark"] is True


def test_pieces_are_checked_for_copies_of_the_training_pieces(loaded: api.Run) -> None:
    # a primer is measured with the rest: this one is the training pieces' first four soprano notes
    result = loaded.generate(primer="C5 C5 B4 C5", bars=2, seed=5, render=False, max_copy_notes=1)
    note = result.notes[0]["memorization"]
    assert note["checked"] is True and note["longest_copy_notes"] >= 4 and note["flagged"] is True
    assert any("repeats" in w for w in result.warnings)
    harmonised = loaded.generate(melody="C4 D4 E4 F4 G4 A4 B4 C5", seed=5, render=False)
    assert harmonised.notes[0]["memorization"]["longest_copy_notes"] < 40  # the given melody is not counted
    off = loaded.generate(bars=1, seed=5, render=False, max_copy_notes=0)
    assert off.notes[0]["memorization"] == {"checked": False, "reason": "turned off"}
