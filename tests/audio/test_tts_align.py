"""Learned durations: monotonic alignment search recovers known durations, hard EM learns them from
sound alone, and a folder in the LJSpeech layout (no phone times) trains end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from muselab import api
from muselab.audio.tts.align import learn_durations, monotonic_alignment_search

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="builtin:speech needs flite")


def _frames_of(means: np.ndarray, durations: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """[C, T] frames: symbol i's mean repeated durations[i] times, plus Gaussian noise."""
    frames = np.repeat(means, durations, axis=0).T
    return frames + noise * rng.standard_normal(frames.shape)


def test_search_recovers_known_durations_in_a_padded_batch() -> None:
    rng = np.random.default_rng(0)
    lengths = [12, 9, 5]
    truth = [rng.integers(1, 9, n) for n in lengths]
    n_max, t_max = max(lengths), max(int(d.sum()) for d in truth)
    log_p = np.zeros((3, n_max, t_max))
    for b, durations in enumerate(truth):
        means = 2.0 * rng.standard_normal((len(durations), 16))
        frames = _frames_of(means, durations, 0.3, rng)
        log_p[b, : len(durations), : frames.shape[1]] = -0.5 * ((means[:, :, None] - frames[None]) ** 2).sum(1)
    found = monotonic_alignment_search(log_p, lengths, [int(d.sum()) for d in truth])
    for b, durations in enumerate(truth):
        assert found[b, : len(durations)].tolist() == durations.tolist()
        assert (found[b, len(durations):] == 0).all()


def test_search_is_monotonic_and_gives_every_symbol_a_frame_even_against_the_evidence() -> None:
    # all the evidence says "symbol 0" everywhere: the path must still visit every symbol once
    log_p = np.full((1, 4, 10), -100.0)
    log_p[0, 0, :] = 0.0
    found = monotonic_alignment_search(log_p, [4], [10])
    assert found.tolist() == [[7, 1, 1, 1]]
    with pytest.raises(ValueError):
        monotonic_alignment_search(np.zeros((1, 5, 3)), [5], [3])


def test_hard_em_learns_durations_from_frames_alone() -> None:
    """Utterances over a small 'phoneme' set with speaker-dependent spectra: from a flat start, the
    learned boundaries land within a frame of the truth, where a uniform split is far off."""
    rng = np.random.default_rng(1)
    n_symbols, channels = 10, 20
    voices = [rng.standard_normal((n_symbols, channels)) * 1.5 for _ in range(2)]
    ids, speakers, mels, truth = [], [], [], []
    for k in range(60):
        # a leading silence, as every utterance has, then symbols that differ from their neighbours (between
        # two copies of one symbol the boundary cannot be heard)
        symbols = np.cumsum(np.concatenate([[0], rng.integers(1, n_symbols, rng.integers(6, 14))])) % n_symbols
        durations = rng.integers(1, 25, len(symbols))
        ids.append(symbols)
        speakers.append(k % 2)
        mels.append(_frames_of(voices[k % 2][symbols], durations, 0.8, rng))
        truth.append(durations)
    learned = learn_durations(ids, speakers, mels, n_symbols, rounds=6)

    def boundary_error(found: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(np.cumsum(f) - np.cumsum(t)).mean() for f, t in zip(found, truth, strict=True)]))

    assert all(int(f.sum()) == m.shape[1] and (f >= 1).all() for f, m in zip(learned, mels, strict=True))
    uniform = [np.diff(np.round(np.linspace(0, m.shape[1], len(s) + 1))).astype(int) for s, m in zip(ids, mels,
                                                                                                   strict=True)]
    assert boundary_error(uniform) > 5.0
    assert boundary_error(learned) < 0.5


def _ljspeech_folder(root: Path, lines: list[str]) -> Path:
    """Sentences 'spoken' as gliding tones with pauses between words (no flite needed)."""
    (root / "wavs").mkdir(parents=True)
    sr = 16000
    rng = np.random.default_rng(0)
    rows = []
    for k, text in enumerate(lines):
        pieces = [np.zeros(int(0.15 * sr))]
        for word in text.split():
            t = np.arange(int(0.08 * sr * len(word))) / sr
            f0 = 110 + 40 * rng.random() + 30 * t
            tone = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / sr) * np.hanning(len(t))
            pieces += [tone, np.zeros(int(0.06 * sr))]
        sf.write(root / "wavs" / f"utt{k:03d}.wav", np.concatenate(pieces).astype(np.float32), sr)
        rows.append(f"utt{k:03d}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_an_ljspeech_folder_trains_end_to_end_with_learned_durations(tmp_path: Path) -> None:
    words = "the old boat drifted slowly toward a rocky shore while gulls cried over grey water".split()
    lines = [" ".join(words[i % 9:i % 9 + 4 + i % 3]) + "." for i in range(14)]
    folder = _ljspeech_folder(tmp_path / "voice", lines)
    out = tmp_path / "run"
    api.train("audio-tts", str(folder), out, preset="tiny", quiet=True, max_steps=4,
              overrides=["data.alignment_rounds=3"])
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["alignment"] == "mas" and "monotonic alignment search" in config["data"]["durations"]
    run = api.load(out, device="cpu")
    assert run.assets["alignment"] == "mas" and run.assets["speakers"] == ["voice"]
    result = run.generate("The boat drifted toward the shore.", seed=0)
    audio = result.items[0]
    assert np.isfinite(audio).all() and len(audio) > 0.2 * 22050
    assert [w["word"] for w in result.timing[0]["words"]][:2] == ["the", "boat"]
    # evaluated against its own recordings, not flite's
    metrics = run.evaluate(overrides=["eval.sentences=1", "eval.recognizer=false"])
    assert "recordings" in metrics["references"] and metrics["mcd_db"] > 0 and metrics["alignment"] == "mas"
    assert (out / "alignment.png").is_file() and (out / "samples" / "reference_000.wav").is_file()


def test_an_empty_folder_is_a_one_line_error(tmp_path: Path) -> None:
    from helpers import error_message
    from muselab.core.errors import DataError

    with pytest.raises(DataError) as err:
        api.train("audio-tts", str(tmp_path), tmp_path / "run", preset="tiny", quiet=True)
    assert "metadata.csv" in error_message(err) and "\n" not in error_message(err)


@pytest.mark.slow
@needs_flite
def test_learned_durations_match_flites_own_phone_times() -> None:
    """On flite's recordings, where the true durations are known, hard EM from a flat start lands on
    flite's phone boundaries to within a couple of frames on average (a uniform split: about 8)."""
    from muselab.audio.tts.features import extract, extract_unaligned
    from muselab.audio.tts.frontend import Frontend
    from muselab.audio.tts.inventory import PhonemeInventory
    from muselab.data.speech import load_speech

    data = load_speech("builtin:speech", utterances=60, voices=["slt"])
    frontend, inventory = Frontend(), PhonemeInventory()
    unaligned = [extract_unaligned(u, data, frontend, inventory) for u in data.utterances]
    learned = learn_durations([f.ids for f in unaligned], [0] * len(unaligned), [f.mel for f in unaligned],
                              len(inventory), rounds=8)
    flite = [extract(u, data, frontend, inventory).durations for u in data.utterances]
    error = np.mean([np.abs(np.cumsum(a) - np.cumsum(b)).mean() for a, b in zip(learned, flite, strict=True)])
    assert error < 2.5, error
