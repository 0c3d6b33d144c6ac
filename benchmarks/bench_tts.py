"""Text to speech on builtin:speech: train the default audio-tts (and an audio-vocoder on speech) under a
budget, then score the held-out sentences against flite's own recordings of them.

    python benchmarks/bench_tts.py [--minutes 30] [--vocoder-minutes 20] [--sentences 45] [--set KEY=VALUE ...]

Intelligibility is the word error rate of pocketsphinx (an offline recogniser with its own English model)
on muselab's speech, printed beside its WER on flite's recordings of the same sentences (the recogniser's
own floor) and on the vocoder's resynthesis of flite's mel (the vocoder's share). MCD (DTW, dB) and f0 RMSE
(cents) compare with flite's recordings. Speed: a 10-second utterance through the front end, the acoustic
model and the vocoder, best of three, as times real time. Controls, measured on the sound: --speed 2
(duration ratio), --pitch-shift 12 (ratio of pYIN median f0), and each speaker's median f0.
`--controls-of RUN` measures only the controls and speed of a trained run. `--vocoder-minutes 0` trains no vocoder: the default one speaks (the one muselab ships, else Griffin-Lim).
Targets (issue 16): WER <= 0.25 with 30 + 20 minutes of training, >= 20x real time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Timer, print_table, write_result

from muselab import api

TEN_SECONDS = ("The old boat drifted slowly toward the rocky shore, and the gulls cried over the grey water. "
               "A tall man in a brown coat walked along the beach with his dog. They stopped to watch the "
               "waves roll in before the rain began to fall.")


def median_f0(audio: np.ndarray, sr: int) -> float:
    from muselab.audio.dsp import f0_pyin

    f0, _ = f0_pyin(audio, sr, 256, 50.0, 1000.0, resolution=0.25)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if len(voiced) else float("nan")


def voice_print(audio: np.ndarray, sr: int) -> np.ndarray:
    """A crude speaker embedding: the mean MFCC c1..c19 over frames within 40 dB of the loudest."""
    import librosa

    mfcc = librosa.feature.mfcc(y=audio, sr=sr, n_mfcc=20, n_fft=1024, hop_length=256)
    energy = librosa.feature.rms(y=audio, frame_length=1024, hop_length=256)[0][: mfcc.shape[1]]
    loud = energy > energy.max() * 10 ** (-40 / 20)
    return mfcc[1:, loud].mean(axis=1)


def controls(run: api.Run, vocoder: str | None) -> dict[str, float]:
    """What --speed, --pitch-shift and --speaker do to the sound (not to the model's own numbers)."""
    text = "The old boat drifted slowly toward the rocky shore."
    other = "Every player on the team wore a white shirt to the game."
    base = run.generate(text, seed=0, vocoder=vocoder).items[0]
    fast = run.generate(text, seed=0, vocoder=vocoder, speed=2.0).items[0]
    high = run.generate(text, seed=0, vocoder=vocoder, pitch_shift=12.0).items[0]
    out = {"speed2_duration_ratio": len(fast) / len(base),
           "pitch_shift12_f0_ratio": median_f0(high, 22050) / median_f0(base, 22050)}
    prints: dict[str, list[np.ndarray]] = {}
    for speaker in run.assets["speakers"]:
        spoken = [run.generate(t, seed=0, vocoder=vocoder, speaker=speaker).items[0] for t in (text, other)]
        out[f"median_f0_hz_{speaker}"] = median_f0(spoken[0], 22050)
        prints[speaker] = [voice_print(a, 22050) for a in spoken]
    # --speaker changes the voice when two speakers saying the same sentence are further apart than one
    # speaker saying two sentences
    names = list(prints)
    between = [np.linalg.norm(prints[a][0] - prints[b][0]) for i, a in enumerate(names) for b in names[i + 1:]]
    within = [np.linalg.norm(p[0] - p[1]) for p in prints.values()]
    if between:
        out["voice_print_distance_between_speakers"] = float(np.mean(between))
        out["voice_print_distance_smallest_between_speakers"] = float(np.min(between))
        out["voice_print_distance_within_speaker"] = float(np.mean(within))
    return out


def realtime(run: api.Run, vocoder: str | None) -> tuple[float, float]:
    """(seconds of speech, x real time) of the 10-second text: front end + acoustic model + vocoder."""
    from muselab.audio.tts_recipe import TTSControls

    request = TTSControls(text=TEN_SECONDS, seed=0, vocoder=vocoder)
    best, seconds = float("inf"), 0.0
    for _ in range(3):
        with Timer() as clock, torch.no_grad():
            audio, _ = run.recipe.speak(run.model, run.config, run.assets, request)
        best, seconds = min(best, clock.seconds), len(audio) / 22050
    return seconds, seconds / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="acoustic model's training budget")
    parser.add_argument("--vocoder-minutes", type=float, default=20.0, help="vocoder's budget (0: Griffin-Lim)")
    parser.add_argument("--vocoder-utterances", type=int, default=600, help="builtin:speech utterances it learns")
    parser.add_argument("--sentences", type=int, default=45, help="held-out sentences scored (45 = all)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="audio-tts config fields")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--controls-of", metavar="RUN", help="train nothing: measure the controls and speed of "
                                                           "this audio-tts run (writes tts_controls.json)")
    args = parser.parse_args()
    if args.controls_of:
        run = api.load(args.controls_of, device="cpu")
        seconds, speed = realtime(run, None)
        rows = [*controls(run, None).items(), ("10 s utterance: x real time", speed), ("run", args.controls_of),
                ("trained steps", json.loads((Path(args.controls_of) / "trainer_state.json").read_text())["step"]), ("vocoder", "the default (shipped, else Griffin-Lim)")]
        print_table(rows)
        command = f"python benchmarks/bench_tts.py --controls-of {args.controls_of}"
        print(f"wrote {write_result('tts_controls', dict(rows) | {'command': command})}")
        return 0
    quiet = not sys.stderr.isatty()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-tts-"))
    vocoder = None
    rows: list[tuple[str, object]] = []
    if args.vocoder_minutes > 0:
        vocoder = str(root / "vocoder")
        trained = api.train("audio-vocoder", "builtin:speech", vocoder, preset=args.preset, overwrite=True,
                            max_minutes=args.vocoder_minutes, quiet=quiet,
                            overrides=[f"data.clips={args.vocoder_utterances}"])
        rows += [("vocoder steps", trained.step), ("vocoder minutes", trained.elapsed_s / 60)]
    tts = root / "tts"
    trained = api.train("audio-tts", "builtin:speech", tts, preset=args.preset, overrides=args.overrides,
                        max_minutes=args.minutes, overwrite=True, quiet=quiet)
    run = api.load(tts, device="cpu")
    metrics = run.evaluate(overrides=[f"eval.sentences={args.sentences}"]
                           + ([f"eval.vocoder={vocoder}"] if vocoder else []))
    seconds, speed = realtime(run, vocoder)
    measured = controls(run, vocoder)
    print(f"{'held-out sentences':<34}{'muselab':>10}{'vocoder on flite mel':>22}{'flite itself':>14}")
    print(f"{'WER (pocketsphinx, lower better)':<34}{metrics['wer']:>10.3f}{metrics['resynth_wer']:>22.3f}"
          f"{metrics['wer_flite_reference']:>14.3f}")
    for voice, wer in metrics.get("wer_by_speaker", {}).items():
        print(f"{'  WER, ' + voice:<34}{wer['wer']:>10.3f}{wer['resynth_wer']:>22.3f}{wer['wer_flite_reference']:>14.3f}")
    print(f"{'MCD dB vs flite (lower better)':<34}{metrics['mcd_db']:>10.2f}{metrics['resynth_mcd_db']:>22.2f}")
    ours_cents, resynth_cents = metrics["f0_rmse_cents"], metrics["resynth_f0_rmse_cents"]
    print(f"{'f0 RMSE cents vs flite':<34}{ours_cents if ours_cents is not None else float('nan'):>10.1f}"
          f"{resynth_cents if resynth_cents is not None else float('nan'):>22.1f}")
    print()
    rows += [("tts steps", trained.step), ("tts minutes", trained.elapsed_s / 60),
             ("tts parameters", run.model.num_parameters()), ("vocoder", metrics["vocoder"]),
             ("10 s utterance: seconds", seconds), ("10 s utterance: x real time", speed),
             *measured.items(), ("run folder", str(root)),
             ("targets", "WER <= 0.25; >= 20x real time; speed2 ratio 0.45-0.55; pitch ratio 1.9-2.1")]
    print_table(rows)
    command = (f"python benchmarks/bench_tts.py --minutes {args.minutes:g} --vocoder-minutes "
               f"{args.vocoder_minutes:g} --sentences {args.sentences} --preset {args.preset}"
               + "".join(f" --set {o}" for o in args.overrides))
    path = write_result("tts", {"command": command, "metrics": metrics, "realtime": {"seconds": seconds,
                                                                                   "x_real_time": speed},
                                "controls": measured, "tts_steps": trained.step,
                                "tts_minutes": trained.elapsed_s / 60, "vocoder": vocoder or "griffin_lim",
                                "run_folder": str(root)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
