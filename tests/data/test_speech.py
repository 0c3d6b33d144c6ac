"""Speech data: LJSpeech-layout folders (validated line by line) and builtin:speech made with flite."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import error_message
from muselab.core.errors import ConfigError, DataError
from muselab.data import speech
from muselab.data.speech import (
    SPEECH_VOICES,
    builtin_sentences,
    held_out_sentences,
    is_held_out,
    load_speech,
)

HAVE_FLITE = shutil.which("flite") is not None
needs_flite = pytest.mark.skipif(not HAVE_FLITE, reason="flite is not installed (apt-get install flite)")


def tone(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def make_folder(root: Path, lines: list[str], rates: dict[str, int] | None = None) -> Path:
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    for line in lines:
        uid = line.split("|")[0]
        if uid and "/" not in uid:
            sr = (rates or {}).get(uid, 22050)
            sf.write(root / "wavs" / f"{uid}.wav", tone(0.5, sr), sr)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


GOOD = ["LJ001-0001|Printing, in the only sense|printing in the only sense",
        "LJ001-0002|Dr. Smith paid $3.50.|doctor smith paid three dollars and fifty cents",
        "LJ001-0003|Two fields only"]


def test_ljspeech_folder_loads(tmp_path: Path) -> None:
    data = load_speech(make_folder(tmp_path / "voice", GOOD))
    assert [u.id for u in data.utterances] == ["LJ001-0001", "LJ001-0002", "LJ001-0003"]
    assert data.utterances[1].normalized == "doctor smith paid three dollars and fifty cents"
    assert data.utterances[2].normalized == "Two fields only"  # no third field: the text itself
    assert data.sample_rate == 22050 and data.notes == [] and data.speakers == ["voice"]
    audio = data.audio(data.utterances[0])
    assert audio.dtype == np.float32 and audio.shape == (11025,)
    assert data.info["utterances"] == 3 and data.info["minutes_per_speaker"]["voice"] == pytest.approx(0.03, abs=0.01)


def test_other_sample_rates_are_resampled_with_a_note(tmp_path: Path) -> None:
    data = load_speech(make_folder(tmp_path / "v", GOOD, rates={"LJ001-0003": 16000}))
    assert data.sample_rate == 22050
    assert data.notes == ["1 file at 16000 Hz will be resampled to 22050 Hz"]
    assert data.audio(data.utterances[2]).shape == (11025,)
    assert load_speech(tmp_path / "v", sample_rate=16000).audio(data.utterances[0]).shape == (8000,)


@pytest.mark.parametrize(("lines", "match"), [
    (["LJ1|text|norm|extra"], "line 1: expected id|text|normalized .* found 4 fields"),
    (["LJ1"], "line 1: expected id|text|normalized .* found 1 field;"),
    (["LJ1|   |x"], "line 1: the text of 'LJ1' is empty"),
    (["../x|hello"], "not a plain file name"),
    (["LJ1|hello", "", "LJ1|again"], "line 3: the id 'LJ1' is already used on line 1"),
])
def test_bad_lines_are_one_line_errors(tmp_path: Path, lines: list[str], match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        load_speech(make_folder(tmp_path / "v", lines))
    error_message(err)


def test_missing_unreadable_and_empty_audio(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "v", GOOD)
    (root / "wavs" / "LJ001-0002.wav").unlink()
    with pytest.raises(DataError, match=r"line 2: the audio file .*LJ001-0002.wav' is missing") as err:
        load_speech(root)
    error_message(err)
    (root / "wavs" / "LJ001-0002.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(DataError, match=r"line 2: cannot read .*LJ001-0002.wav' as audio") as err:
        load_speech(root)
    error_message(err)
    sf.write(root / "wavs" / "LJ001-0002.wav", np.zeros(0, np.float32), 22050)
    with pytest.raises(DataError, match="holds no audio samples"):
        load_speech(root)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no metadata.csv"):
        load_speech(tmp_path)
    (tmp_path / "metadata.csv").write_text("\n\n")
    with pytest.raises(DataError, match="lists no utterances"):
        load_speech(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        load_speech(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown built-in speech source"):
        load_speech("builtin:nope")
    with pytest.raises(ConfigError, match="at least 8000 Hz"):
        load_speech(tmp_path, sample_rate=100)


def test_held_out_rule_is_stable() -> None:
    # Written out independently of the loader: md5 of the lowercased words, top 52 bits, below 0.05.
    def rule(text: str) -> bool:
        key = " ".join("".join(c for c in w if c.isalnum() or c == "'") for w in text.lower().split())
        return (int(hashlib.md5(key.encode()).hexdigest(), 16) >> 76) / 2**52 < 0.05

    sentences = builtin_sentences()
    assert len(sentences) >= 700 and len(set(sentences)) == len(sentences)
    held = held_out_sentences()
    assert held == [s for s in sentences if rule(s)]
    assert 0.03 < len(held) / len(sentences) < 0.08
    # Case and punctuation do not move a sentence.
    assert all(is_held_out(s.upper().rstrip(".") + "!") for s in held)
    # The split is pinned: these held-out sentences stay held out in every muselab version.
    assert held[:3] == ["The old boat drifted slowly toward the rocky shore.",
                        "Every player on the team wore a white shirt.",
                        "The lamp cast long shadows across the floor."]


def test_builtin_plan_is_balanced_and_extends() -> None:
    small = speech._builtin_plan(20, SPEECH_VOICES)
    large = speech._builtin_plan(2000, SPEECH_VOICES)
    assert large[:20] == small
    assert len({uid for uid, _, _ in large}) == 2000  # no voice reads a sentence twice
    per_voice = {v: sum(1 for _, _, voice in large if voice == v) for v in SPEECH_VOICES}
    assert max(per_voice.values()) - min(per_voice.values()) <= 2
    everything = speech._builtin_plan(None, SPEECH_VOICES)
    assert len(everything) == 4 * len(builtin_sentences())
    with pytest.raises(ConfigError, match="ask for 1 to"):
        speech._builtin_plan(len(everything) + 1, SPEECH_VOICES)


def test_without_flite_one_line_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech, "flite_version", lambda: None)
    with pytest.raises(DataError, match="apt-get install flite") as err:
        load_speech("builtin:speech", utterances=2, cache_dir=tmp_path)
    error_message(err)


@needs_flite
def test_builtin_speech_small_build(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    data = load_speech("builtin:speech", utterances=8, cache_dir=tmp_path,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (8, 8)
    assert len(data) == 8 and data.speakers == sorted(SPEECH_VOICES) and data.sample_rate == 16000
    frame = 256 / 16000
    for u in data.utterances:
        audio = data.audio(u)
        assert u.file_sample_rate == 16000 and len(audio) / 16000 == pytest.approx(u.seconds, abs=1e-6)
        assert u.text in builtin_sentences() and u.speaker in SPEECH_VOICES
        ends = [t for _, t in u.phones]
        assert ends == sorted(ends) and ends[0] > 0
        durations = np.diff([0.0, *ends])
        assert durations.sum() == pytest.approx(len(audio) / 16000, abs=frame)
        assert u.phones[0][0] == "pau" and u.phones[-1][0] == "pau" and len(u.phones) > 10
        assert float(np.abs(audio).max()) > 0.05
    # Cached: a second load makes nothing, and a larger one only the new utterances.
    again = load_speech("builtin:speech", utterances=8, cache_dir=tmp_path)
    assert again.fingerprint == data.fingerprint and again.notes == []
    larger = load_speech("builtin:speech", utterances=10, cache_dir=tmp_path)
    assert larger.notes == ["built 2 utterances with flite " + str(speech.flite_version())]
    assert [u.id for u in larger.utterances[:8]] == [u.id for u in data.utterances]
    # A damaged cache file is made again.
    data.utterances[0].path.with_suffix(".json").write_text("{broken")
    assert load_speech("builtin:speech", utterances=8, cache_dir=tmp_path).notes[0].startswith("built 1 ")


@needs_flite
def test_builtin_speech_held_out_and_resampling(tmp_path: Path) -> None:
    # Enough utterances to reach a held-out sentence, with one voice to stay quick.
    second_held = builtin_sentences().index(held_out_sentences()[1])
    data = load_speech("builtin:speech", utterances=second_held + 1, voices=["slt"], cache_dir=tmp_path,
                       sample_rate=22050)
    train, test = data.split()
    assert [u.text for u in test] == held_out_sentences()[:2]
    assert len(train) == second_held - 1 and not {u.text for u in train} & set(held_out_sentences())
    assert data.info["held_out"] == 2 and data.speakers == ["slt"]
    assert any("resampled to 22050 Hz" in n for n in data.notes)
    u = test[0]
    assert len(data.audio(u)) == pytest.approx(u.seconds * 22050, abs=2)
    with pytest.raises(ConfigError, match="voices must be distinct names"):
        load_speech("builtin:speech", utterances=2, voices=["slt", "nobody"], cache_dir=tmp_path)
