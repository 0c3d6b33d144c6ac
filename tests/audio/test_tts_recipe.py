"""The audio-tts recipe: duration targets from flite's phones, the length regulator and the synthesis controls
on the model, and a tiny model trained on builtin:speech end to end (generate, save, detect, errors, long text)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import error_message
from muselab import api
from muselab.audio.tts.features import align_durations, symbols_of
from muselab.audio.tts.frontend import Frontend
from muselab.audio.tts.model import length_regulate, scaled_durations
from muselab.audio.tts_recipe import SAMPLE_RATE
from muselab.core.errors import ControlError
from muselab.safety.detect import detect_file

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="builtin:speech needs flite")


# -------------------------------------------------------------------------------- units, no training

def test_flite_phones_become_frame_durations_of_the_front_ends_phonemes() -> None:
    symbols = symbols_of(Frontend().phonemize("The cat."))  # <bos> DH AH K AE T <lp>
    assert symbols == ["<bos>", "DH", "AH", "K", "AE", "T", "<lp>"]
    # flite says "dh iy" for "the": a substitution keeps its duration; ax is read as AH
    phones = [("pau", 0.1), ("dh", 0.15), ("iy", 0.2), ("k", 0.3), ("ae", 0.4), ("t", 0.45), ("pau", 0.6)]
    frames = round(0.6 * SAMPLE_RATE / 256) + 1
    durations = align_durations(symbols, phones, frames)
    assert durations.sum() == frames and (durations >= 0).all()
    assert durations[3] == round(0.3 * SAMPLE_RATE / 256) - round(0.2 * SAMPLE_RATE / 256)  # K matched
    # a phone flite adds is given to the symbol before it, so nothing is lost
    extra = align_durations(symbols, [*phones[:4], ("ah", 0.35), *phones[4:]], frames)
    assert extra.sum() == frames and extra[3] > durations[3]


def test_length_regulator_repeats_each_phoneme_for_its_frames() -> None:
    hidden = torch.arange(6, dtype=torch.float32).view(1, 3, 2)
    frames, mask = length_regulate(hidden, torch.tensor([[2, 0, 3]]))
    assert mask.tolist() == [[True] * 5]
    assert frames[0, :, 0].tolist() == [0, 0, 4, 4, 4]


def test_speed_two_halves_the_total_within_one_frame() -> None:
    durations = torch.rand(4, 50) * 12
    full = scaled_durations(durations, torch.ones(4, 50)).sum(1)
    half = scaled_durations(durations, torch.full((4, 50), 0.5)).sum(1)
    assert ((half - full / 2).abs() <= 1).all()


# ------------------------------------------------------------------------------ a tiny trained model

@pytest.fixture(scope="module")
def tts_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("builtin:speech needs flite (apt-get install flite)")
    out = tmp_path_factory.mktemp("runs") / "tts"
    api.train("audio-tts", "builtin:speech", out, preset="tiny", quiet=True)
    return out


def _ids(run: api.Run, text: str) -> torch.Tensor:
    return torch.tensor([run.assets["inventory"].encode(symbols_of(Frontend().phonemize(text)))])


@pytest.mark.slow
@needs_flite
def test_speak_save_and_detect(tts_run: Path, tmp_path: Path) -> None:
    run = api.load(tts_run, device="cpu")
    result = run.generate("Dr. Smith paid $3.50 at 10:30. The boat drifted toward the shore!", seed=1)
    (audio,) = result.items
    assert result.sample_rate == 22050 and audio.dtype == np.float32 and np.isfinite(audio).all()
    words = result.timing[0]["words"]
    assert [w["word"] for w in words[:3]] == ["doctor", "smith", "paid"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] <= w["end"] <= len(audio) / 22050 + 1e-3 for w in words)
    assert len(result.timing[0]["sentences"]) == 2
    path, timestamps = result.save(tmp_path / "speech.wav")
    assert timestamps.name == "speech.words.json"
    assert json.loads(timestamps.read_text())["words"][0]["word"] == "doctor"
    found = detect_file(path)
    assert found["kind"] == "audio" and found["watermark"] is True
    assert found["manifest"]["recipe"] == "audio-tts" and found["manifest"]["controls"]["text"].startswith("Dr.")


@pytest.mark.slow
@needs_flite
def test_speed_and_pitch_shift_act_on_the_model(tts_run: Path) -> None:
    run = api.load(tts_run, device="cpu")
    ids = _ids(run, "The old boat drifted slowly toward the rocky shore, and then it stopped.")
    speaker = torch.zeros(1, dtype=torch.long)
    normal = run.model.synthesise(ids, speaker)
    fast = run.model.synthesise(ids, speaker, speed=2.0)
    total, half = int(normal["mel_lengths"][0]), int(fast["mel_lengths"][0])
    assert total > 20
    assert abs(half - total / 2) <= 0.1 * total / 2
    up = run.model.synthesise(ids, speaker, pitch_shift=12.0)
    voiced = normal["f0_hz"][0] > 0
    assert voiced.any()
    ratio = up["f0_hz"][0][voiced] / normal["f0_hz"][0][voiced]
    assert torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=0.05)
    # and through the whole pipeline: twice as fast is half as long
    slow_audio = run.generate("The old boat drifted slowly toward the rocky shore.", seed=0).items[0]
    fast_audio = run.generate("The old boat drifted slowly toward the rocky shore.", speed=2.0, seed=0).items[0]
    assert abs(len(fast_audio) - len(slow_audio) / 2) <= 0.1 * len(slow_audio) / 2
    # the pipeline shifts the sound itself (dsp.shift_pitch, tested there): same length, other samples
    high_audio = run.generate("The old boat drifted slowly toward the rocky shore.", pitch_shift=12.0, seed=0).items[0]
    assert len(high_audio) == len(slow_audio) and not np.allclose(high_audio, slow_audio)


@pytest.mark.slow
@needs_flite
def test_unknown_speaker_and_empty_text_are_one_line_errors(tts_run: Path) -> None:
    run = api.load(tts_run, device="cpu")
    with pytest.raises(ControlError) as err:
        run.generate("Hello.", speaker="nobody")
    message = error_message(err)
    assert "nobody" in message and "slt" in message and "\n" not in message
    for text in ("", "   ", "!!! ???"):
        with pytest.raises(ControlError) as err:
            run.generate(text)
        assert "\n" not in error_message(err)
    by_index = run.generate("Hello.", speaker="1", seed=0)
    assert by_index.notes[0]["speaker"] == run.assets["speakers"][1]


@pytest.mark.slow
@needs_flite
def test_ten_thousand_characters_are_split_and_spoken(tts_run: Path) -> None:
    run = api.load(tts_run, device="cpu")
    run.config.synthesis.griffin_lim_iters = 1  # the test is about splitting, not sound quality
    sentence = "The quick brown fox, who was 21 years old, jumped over 3 lazy dogs on May 5th. "
    text = (sentence * (10_000 // len(sentence) + 1))[:10_000]
    result = run.generate(text, seed=0)
    timing = result.timing[0]
    assert len(timing["sentences"]) >= 100
    assert timing["words"][-1]["end"] <= len(result.items[0]) / 22050 + 1e-3


class _FakeG2PRun:
    """Stands in for a trained text-seq2seq run: pronounces every word as 'Z IY1 R OW0'."""

    class recipe:  # noqa: N801 - mimics Run.recipe.name
        name = "text-seq2seq"

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def generate(self, input: list[str]) -> object:  # noqa: A002 - the control's name
        self.asked.append(list(input))
        return type("Result", (), {"input_indices": list(range(len(input))),
                                   "items": [["Z", "IY1", "R", "OW0"] for _ in input]})()


@pytest.mark.slow
@needs_flite
def test_g2p_run_pronounces_words_the_dictionary_lacks(tts_run: Path) -> None:
    from muselab.audio.tts_recipe import TTSControls
    from muselab.core.registry import GenerationContext

    run = api.load(tts_run, device="cpu")
    fake = _FakeG2PRun()
    context = GenerationContext(policy=None, load_run=lambda path: fake)
    text = "The zorblaxian ship landed."
    result = run.recipe.generate(run.model, run.config, run.assets, TTSControls(text=text, g2p=str(tts_run), seed=0),
                                 context)
    assert fake.asked == [["zorblaxian"]]
    assert result.notes[0]["g2p"]["words"] == ["zorblaxian"] and "spelled_out" not in result.notes[0]
    # without one the word is spelled letter by letter and reported
    spelled = run.generate(text, seed=0)
    assert spelled.notes[0]["spelled_out"] == ["zorblaxian"]
    # four phonemes take less time than ten letter names
    assert len(result.items[0]) < len(spelled.items[0])


@pytest.mark.slow
@needs_flite
def test_g2p_must_be_a_text_seq2seq_run(tts_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ControlError) as err:
        api.load(tts_run, device="cpu").generate("Hello.", g2p=str(tts_run))
    assert "audio-tts run" in error_message(err) and "\n" not in error_message(err)
    with pytest.raises(ControlError) as err:
        api.load(tts_run, device="cpu").generate("Hello.", g2p=str(tmp_path))
    assert "not a run directory" in error_message(err)


@pytest.mark.slow
@needs_flite
def test_text_file_on_the_command_line(tts_run: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    story = tmp_path / "story.txt"
    story.write_text("The boat drifted.\nIt reached the shore at 10:30.\n", encoding="utf-8")
    out = tmp_path / "story.wav"
    done = run_cli("generate", str(tts_run), "--text-file", str(story), "--seed", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    words = json.loads((tmp_path / "story.words.json").read_text())
    assert [w["word"] for w in words["words"]][:3] == ["the", "boat", "drifted"]
    assert [w["word"] for w in words["words"]][-2:] == ["ten", "thirty"]
    both = run_cli("generate", str(tts_run), "--text", "Hi.", "--text-file", str(story), "--out",
                   str(tmp_path / "x.wav"))
    assert both.returncode == 2 and "not both" in both.stderr and len(both.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@needs_flite
def test_speaker_changes_the_voice(tts_run: Path) -> None:
    """flite's slt is a woman's voice, rms a man's: the model gives slt the higher predicted pitch."""
    run = api.load(tts_run, device="cpu")
    speakers = run.assets["speakers"]
    ids = _ids(run, "The old boat drifted slowly toward the rocky shore, and then it stopped.")
    medians = {}
    for name in ("slt", "rms"):
        out = run.model.synthesise(ids, torch.tensor([speakers.index(name)]))
        f0 = out["f0_hz"][0]
        medians[name] = float(f0[f0 > 0].median())
    assert medians["slt"] > 1.25 * medians["rms"], medians


def _evaluable_copy(tts_run: Path, tmp_path: Path) -> api.Run:
    """The shared run copied and loaded: evaluation writes into its run folder."""
    run_dir = tmp_path / "tts"
    shutil.copytree(tts_run, run_dir)
    return api.load(run_dir, device="cpu")


@pytest.mark.slow
@needs_flite
def test_evaluate_scores_the_model_and_the_vocoder_alone(tts_run: Path, tmp_path: Path) -> None:
    from muselab.core.errors import ConfigError

    run = _evaluable_copy(tts_run, tmp_path)
    run_dir = run.path
    metrics = run.evaluate(overrides=["eval.sentences=2", "eval.samples=1"])
    for key in ("mcd_db", "f0_rmse_cents", "wer", "resynth_mcd_db", "resynth_wer", "wer_flite_reference",
                "realtime_factor"):
        assert key in metrics, key
    # the recognizer understands flite itself, and vocoding flite's own mel costs little; a model trained
    # for seconds is far worse than either
    assert metrics["wer_flite_reference"] <= 0.35 and metrics["resynth_wer"] <= 0.5
    assert metrics["mcd_db"] > metrics["resynth_mcd_db"]
    # per speaker too (two sentences: the first two speakers), adding up to the whole
    by_speaker = metrics["wer_by_speaker"]
    assert len(by_speaker) == 2 and all(set(v) == {"wer", "resynth_wer", "wer_flite_reference"}
                                        for v in by_speaker.values())
    assert min(v["wer"] for v in by_speaker.values()) <= metrics["wer"] <= max(v["wer"] for v in by_speaker.values())
    from muselab.audio.tts_recipe import TTSControls, choose_vocoder

    assert json.loads((run_dir / "eval.json").read_text())["vocoder"] == choose_vocoder(TTSControls())[1]
    for name in ("spectrograms.png", "alignment.png", "samples/tts.wav", "samples/resynth.wav",
                 "samples/flite_000.wav"):
        assert (run_dir / name).is_file(), name
    with pytest.raises(ConfigError):
        run.evaluate(overrides=["model.dim=8"])


@pytest.mark.slow
@needs_flite
def test_evaluate_on_a_file_of_validation_sentences(tts_run: Path, tmp_path: Path) -> None:
    from muselab.core.errors import DataError

    run = _evaluable_copy(tts_run, tmp_path)
    sentences = tmp_path / "validation.txt"
    sentences.write_text("# chosen for this test\nThe bus leaves at noon.\n\nWe ate bread by the river.\n")
    metrics = run.evaluate(overrides=[f"eval.sentences_file={sentences}", "eval.sentences=5", "eval.samples=0"])
    assert metrics["eval_sentences"] == 2 and str(sentences) in metrics["references"]
    assert set(metrics["wer_by_speaker"]) == set(run.assets["speakers"][:2])  # the voices take turns
    assert metrics["wer_flite_reference"] <= 0.5
    # what the recogniser heard, sentence by sentence: the errors add up to each WER
    heard = json.loads((tmp_path / "tts" / "eval_transcripts.json").read_text())["sentences"]
    assert [h["sentence"] for h in heard] == ["The bus leaves at noon.", "We ate bread by the river."]
    words = sum(len(h["words"].split()) for h in heard)
    for part, key in (("muselab", "wer"), ("vocoder_on_reference_mel", "resynth_wer"),
                      ("reference", "wer_flite_reference")):
        assert sum(h[part]["errors"] for h in heard) == pytest.approx(metrics[key] * words)
    run.evaluate(overrides=[f"eval.sentences_file={sentences}", "eval.samples=0", "eval.recognizer=false"])
    assert not (tmp_path / "tts" / "eval_transcripts.json").exists()  # no stale transcripts beside a new eval.json
    for bad, text in (("missing.txt", None), ("empty.txt", "# nothing\n\n")):
        path = tmp_path / bad
        if text is not None:
            path.write_text(text)
        with pytest.raises(DataError):
            run.evaluate(overrides=[f"eval.sentences_file={path}", "eval.samples=0"])
