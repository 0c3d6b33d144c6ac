"""The audio-vocoder recipe end to end: data, generate from a recording or a mel (API and CLI), the
Griffin-Lim baseline, one-line errors, and evaluation's metrics, picture and samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_cli
from helpers import error_message
from muselab import api
from muselab.audio.dsp import log_mel
from muselab.audio.vocoder import MEL
from muselab.audio.vocoder_recipe import SegmentSource, VocoderDataConfig, load_clips, read_mel
from muselab.core.errors import ControlError, DataError
from muselab.data.tones import render_notes
from muselab.safety.detect import detect_file


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vocoder"
    api.train("audio-vocoder", "builtin:tones", out, preset="tiny", quiet=True)
    return out


def _write_tone(path: Path, sr: int = 16000, seconds: float = 1.0, pitch: float = 60.0) -> Path:
    clip = render_notes("clarinet", [(pitch, 0.05, seconds - 0.1)], seconds, loudness=0.5, sample_rate=sr)
    sf.write(path, clip.audio, sr)
    return path


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tone(tmp_path_factory.mktemp("audio") / "in.wav")


def test_generate_from_a_recording_resamples_it_and_keeps_its_length(vocoder_run: Path, recording: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="muselab")
    result = api.load(vocoder_run).generate(str(recording), seed=3)
    (audio,) = result.items
    assert result.kind == "audio" and result.sample_rate == MEL.sr == 22050
    assert audio.dtype == np.float32 and audio.shape == (22050,) and np.isfinite(audio).all()
    assert result.notes[0]["method"] == "vocoder"
    assert result.notes[0]["input_changes"] == ["resampled 16000 Hz -> 22050 Hz"]
    assert "resampled 16000 Hz -> 22050 Hz" in caplog.text  # a logged note, which the CLI prints
    assert result.controls["wav"] == str(recording)


def test_a_mel_npy_either_way_round_gives_frames_times_hop_samples(vocoder_run: Path, tmp_path: Path) -> None:
    mel = log_mel(torch.from_numpy(sf.read(_write_tone(tmp_path / "t.wav", sr=22050))[0].astype(np.float32)))
    np.save(tmp_path / "mel.npy", mel.numpy())
    np.save(tmp_path / "mel_t.npy", mel.numpy().T.astype(np.float64))
    run = api.load(vocoder_run)
    first = run.generate(mel=str(tmp_path / "mel.npy")).items[0]
    transposed = run.generate(mel=str(tmp_path / "mel_t.npy")).items[0]
    assert first.shape == (mel.shape[1] * MEL.hop,)
    assert np.allclose(first, transposed, atol=1e-5)


def test_griffin_lim_path_is_the_baseline_and_follows_the_seed(vocoder_run: Path, recording: Path) -> None:
    run = api.load(vocoder_run)
    network = run.generate(str(recording)).items[0]
    baseline = run.generate(str(recording), griffin_lim=True, seed=1)
    again = run.generate(str(recording), griffin_lim=True, seed=1).items[0]
    other_seed = run.generate(str(recording), griffin_lim=True, seed=2).items[0]
    assert baseline.notes[0]["method"] == "griffin_lim" and baseline.items[0].shape == network.shape
    assert np.array_equal(baseline.items[0], again) and not np.array_equal(again, other_seed)
    assert not np.allclose(baseline.items[0], network)


def test_iterations_trade_speed_for_a_more_consistent_spectrum_and_leave_the_model_as_trained(
        vocoder_run: Path, recording: Path) -> None:
    from muselab.audio.dsp import magnitude

    run = api.load(vocoder_run)
    trained = run.model.generator.phase_iterations
    default = run.generate(str(recording))
    assert default.notes[0]["iterations"] == trained
    mel = run.model.input_mel(torch.from_numpy(sf.read(recording)[0].astype(np.float32))[None, :16000])
    with torch.no_grad():
        wanted, _ = run.model.generator.polar(mel)

    def inconsistency(iterations: int) -> float:
        """How far the waveform's STFT magnitude lands from the magnitude the network asked for."""
        made = run.model.vocode(mel[0], iterations)
        got = magnitude(made, MEL.n_fft, MEL.hop)[..., : mel.shape[-1]]
        return float((got - wanted[0]).norm() / wanted[0].norm())

    assert inconsistency(24) < 0.8 * inconsistency(1)
    assert run.model.generator.phase_iterations == trained  # an inference choice, not a change to the model
    more = run.generate(str(recording), iterations=24)
    assert more.notes[0]["iterations"] == 24 and not np.allclose(more.items[0], default.items[0])
    baseline = run.generate(str(recording), griffin_lim=True, seed=1, iterations=4)
    assert baseline.notes[0]["iterations"] == 4
    assert not np.allclose(baseline.items[0], run.generate(str(recording), griffin_lim=True, seed=1).items[0])


def _npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def test_bad_inputs_are_one_line_errors(vocoder_run: Path, recording: Path, tmp_path: Path) -> None:
    run = api.load(vocoder_run)
    nan_mel = np.full((80, 20), -5.0, dtype=np.float32)
    nan_mel[3, 4] = np.nan
    cases = {
        "has shape (64, 20)": {"mel": _npy(tmp_path / "shape.npy", np.zeros((64, 20), np.float32))},
        "NaN or infinite": {"mel": _npy(tmp_path / "nan.npy", nan_mel)},
        "holds int64": {"mel": _npy(tmp_path / "int.npy", np.zeros((80, 20), np.int64))},
        "not a natural-log": {"mel": _npy(tmp_path / "db.npy", np.full((80, 20), -100.0, np.float32))},
        "does not exist": {"mel": str(tmp_path / "missing.npy")},
        "is not a .npy file": {"mel": str(recording)},
        "exactly one of --wav": {"mel": _npy(tmp_path / "ok.npy", np.full((80, 20), -5.0, np.float32)),
                                 "wav": str(recording)},
    }
    for expected, controls in cases.items():
        with pytest.raises(ControlError) as err:
            run.generate(**controls)
        message = error_message(err)
        assert expected in message
        assert "80" in message or "--wav" in message or "does not exist" in message
    with pytest.raises(ControlError) as err:
        run.generate()
    assert "exactly one of --wav" in error_message(err)
    with pytest.raises(DataError) as err:
        run.generate(str(tmp_path / "missing.wav"))
    assert "does not exist" in error_message(err)


@pytest.mark.slow
def test_cli_writes_a_watermarked_wav_with_its_manifest(vocoder_run: Path, recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    done = run_cli("generate", str(vocoder_run), "--wav", str(recording), "--out", str(out), "--seed", "4")
    assert done.returncode == 0, done.stderr
    assert "resampled 16000 Hz -> 22050 Hz" in done.stderr
    found = detect_file(out)
    assert found["kind"] == "audio" and found["watermark"]
    assert found["manifest"]["recipe"] == "audio-vocoder" and found["manifest"]["sample_rate"] == 22050
    assert json.loads((tmp_path / "out.wav.json").read_text())["controls"]["wav"] == str(recording)
    assert sf.info(out).frames == 22050


def test_cli_refuses_a_bad_mel_in_one_line_with_exit_2(vocoder_run: Path, tmp_path: Path) -> None:
    bad = run_cli("generate", str(vocoder_run), "--mel", _npy(tmp_path / "bad.npy", np.zeros((3, 4, 5))),
                  "--out", str(tmp_path / "bad.wav"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "[80, frames]" in bad.stderr
    assert not (tmp_path / "bad.wav").exists()


def test_evaluate_writes_every_metric_the_picture_and_samples(vocoder_run: Path) -> None:
    metrics = api.evaluate(vocoder_run)
    for key in ("mrstft", "mcd", "mrstft_griffin_lim", "mcd_griffin_lim", "realtime_factor",
                "realtime_factor_griffin_lim"):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["eval_clips"] == 4 and metrics["eval_seconds"] == 4.0  # one 1 s clip per instrument
    assert json.loads((vocoder_run / "eval.json").read_text())["mcd"] == metrics["mcd"]
    assert (vocoder_run / "spectrograms.png").stat().st_size > 10_000
    samples = vocoder_run / "samples"
    assert detect_file(samples / "vocoder.wav")["watermark"]
    assert detect_file(samples / "griffin_lim.wav")["manifest"]["controls"]["griffin_lim"] is True
    assert sf.info(samples / "original_000.wav").samplerate == 22050


def test_the_griffin_lim_baseline_is_scored_as_the_mean_over_its_random_starts(vocoder_run: Path) -> None:
    from muselab.audio.dsp import mel_cepstral_distortion, mrstft_distance
    from muselab.audio.vocoder_recipe import VocoderRecipeConfig, griffin_lim_librosa, mel_spectrogram

    run = api.load(vocoder_run)
    cfg: VocoderRecipeConfig = run.config
    clips = load_clips("builtin:tones", cfg.data).test
    metrics = run.evaluate(overrides=["eval.griffin_lim_seeds=3", "eval.samples=0"])
    assert "mean over 3 random initial phases" in metrics["griffin_lim_baseline"]
    per_seed = []  # every clip is 1 s: the length-weighted average is the plain mean
    for seed in range(3):
        outs = [(griffin_lim_librosa(mel_spectrogram(torch.from_numpy(c)), 32, seed)[:len(c)], c) for c in clips]
        per_seed.append((np.mean([mrstft_distance(o, c) for o, c in outs]),
                         np.mean([mel_cepstral_distortion(c, o.numpy(), 22050) for o, c in outs])))
    assert metrics["mrstft_griffin_lim"] == pytest.approx(np.mean([m for m, _ in per_seed]), rel=1e-5)
    assert metrics["mcd_griffin_lim"] == pytest.approx(np.mean([d for _, d in per_seed]), rel=1e-5)
    assert len({round(m, 6) for m, _ in per_seed}) == 3  # the starts differ, so one draw is not the mean


def test_read_mel_accepts_a_batch_of_one() -> None:
    mel = np.full((1, 80, 12), -4.0, dtype=np.float32)
    path = Path(pytest.importorskip("tempfile").mkdtemp()) / "b.npy"
    np.save(path, mel)
    assert read_mel(path).shape == (80, 12)


def test_a_folder_is_split_by_whole_files_with_a_note_on_resampling(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="muselab")
    for i, sr in enumerate((16000, 22050, 44100)):
        _write_tone(tmp_path / f"clip_{i}.wav", sr=sr, pitch=55.0 + i)
    clips = load_clips(str(tmp_path), VocoderDataConfig(test_share=0.25))
    assert (len(clips.train), len(clips.test)) == (2, 1)
    assert all(len(c) == 22050 for c in clips.train + clips.test)
    assert "resampled 2 of 3 files to 22050 Hz" in caplog.text
    assert clips.info["fingerprint"] == load_clips(str(tmp_path), VocoderDataConfig(test_share=0.25)).info["fingerprint"]


def test_data_errors_are_one_line(tmp_path: Path) -> None:
    _write_tone(tmp_path / "only.wav")
    for spec, expected in ((str(tmp_path), "at least 2"), ("builtin:digits", "builtin:tones"),
                           (str(tmp_path / "nowhere"), "does not exist")):
        with pytest.raises(DataError) as err:
            load_clips(spec, VocoderDataConfig())
        assert expected in error_message(err)


def test_segments_are_reproducible_and_validation_covers_whole_segments() -> None:
    clips = [np.arange(5000, dtype=np.float32), np.arange(1000, dtype=np.float32)]
    source = SegmentSource(clips, 2048)
    first = source.sample(8, torch.Generator().manual_seed(0))["audio"]
    assert first.shape == (8, 2048)
    assert torch.equal(first, source.sample(8, torch.Generator().manual_seed(0))["audio"])
    batches = list(source.eval_batches(2))
    assert [b["audio"].shape[0] for b in batches] == [2, 1]  # two of the long clip, one padded short one
    assert float(batches[-1]["audio"][0, 1500]) == 0.0


@pytest.mark.slow
def test_adversarial_training_runs_in_two_phases_through_the_trainer(tmp_path: Path) -> None:
    out = tmp_path / "gan"
    api.train("audio-vocoder", "builtin:tones", out, preset="tiny", overrides=["model.phase=network", "model.adversarial=true", "model.periods=[2,3]"],
              max_steps=2, quiet=True)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_discriminator", "loss_generator", "d_real", "d_fake", "mel_l1"} <= set(record)
    assert all(np.isfinite(record[k]) for k in ("loss_discriminator", "loss_generator"))
    assert api.load(out).generate(mel=_npy(tmp_path / "m.npy", np.full((80, 8), -5.0, np.float32))).items[0].shape \
        == (8 * MEL.hop,)
