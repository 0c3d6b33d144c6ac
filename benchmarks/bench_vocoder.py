"""Neural vocoder vs Griffin-Lim-32 (librosa), on sounds it was trained on and on sounds it never heard:
train the default audio-vocoder under a budget, then score both from the same mels on held-out clips.

    python benchmarks/bench_vocoder.py [--data builtin:mixed] [--minutes 10] [--set model.adversarial=true ...]
    python benchmarks/bench_vocoder.py --data builtin:mixed --minutes 10 --ship   # also ship it in the package

On builtin:mixed the held-out material is every clip of the categories never trained on (the guitar,
ensemble and drums families of General MIDI and flite's voice slt) and a share of whole clips of every
other category; both are scored per category (10 s each at most) and as "seen" and "unseen" kinds.
MRSTFT is the multi-resolution STFT distance to the original (spectral convergence + log magnitude),
MCD the standard mel cepstral distortion in dB (Kubichek, 24 mel-cepstra, c0 left out, DTW); lower is
better for both. Griffin-Lim starts from a random phase: its scores are the mean over five starts
(`eval.griffin_lim_seeds`), since one start moves a 3-second clip's MRSTFT by up to 8 %. Speed is
seconds of audio made per wall-clock second on this machine's CPU threads (x real time): in the process,
on 60 s of held-out audio from its mel, and through the command line
(`muselab generate RUN --wav` on a 60-second 44.1 kHz file: process start, reading, resampling, the
mel, the network, the watermark and the manifest).

--ship copies the run's weights (safetensors), config, evaluation and a model card with this command
into src/muselab/audio/pretrained/vocoder/, where audio-tts, `muselab generate --recipe audio-vocoder
--mel` and `builtin:audio-vocoder` find it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import budget_arguments, print_table, train_and_evaluate, write_result

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "muselab"
CLI_SECONDS = 60.0


def cli_speed(run: Path, data: str) -> dict[str, float]:
    """x real time of `muselab generate RUN --wav` on a 60 s, 44.1 kHz file, process start included."""
    from muselab.audio.dsp import resample
    from muselab.audio.vocoder_recipe import SAMPLE_RATE, VocoderRecipeConfig, load_clips
    from muselab.core.rundir import RunDir

    cfg = VocoderRecipeConfig.model_validate(RunDir(run).read_config()["config"])
    held = np.concatenate(load_clips(data, cfg.data).test)
    audio = np.tile(held, int(np.ceil(CLI_SECONDS * SAMPLE_RATE / len(held))))[: int(CLI_SECONDS * SAMPLE_RATE)]
    folder = Path(tempfile.mkdtemp(prefix="bench-vocoder-cli-"))
    source = folder / "input_44k.wav"
    sf.write(source, resample(audio, SAMPLE_RATE, 44100).numpy(), 44100)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    best = float("inf")
    for attempt in range(2):
        out = folder / f"out_{attempt}.wav"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "muselab", "generate", str(run), "--wav", str(source),
                               "--out", str(out)], capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"muselab generate failed: {done.stderr.strip()}")
        best = min(best, elapsed)
    shutil.rmtree(folder, ignore_errors=True)
    return {"cli_seconds": best, "cli_realtime_factor": CLI_SECONDS / best}


def ship(run: Path, command: str, metrics: dict) -> Path:
    """The run's weights, config, evaluation and a model card, copied into the package."""
    from muselab.audio.default_vocoder import SHIPPED_DIR, SHIPPED_MAX_BYTES

    size = (run / "model.safetensors").stat().st_size
    if size > SHIPPED_MAX_BYTES:
        raise SystemExit(f"the weights take {size / 2**20:.1f} MB, more than the {SHIPPED_MAX_BYTES / 2**20:.0f} MB "
                         "a shipped vocoder may; train a smaller model")
    staging = SHIPPED_DIR.with_name(".vocoder.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "eval.json"):
        shutil.copyfile(run / name, staging / name)
    card = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    card = card.replace(f"# {run.name}:", "# The vocoder muselab ships:", 1)
    card = card.replace(f"--config {run / 'config.json'}", "--config src/muselab/audio/pretrained/vocoder/config.json")
    scores = "\n".join(f"| {kind} | {metrics[f'mrstft_{kind}']:.3f} | {metrics[f'mrstft_griffin_lim_{kind}']:.3f} | "
                       f"{metrics[f'mcd_{kind}']:.2f} | {metrics[f'mcd_griffin_lim_{kind}']:.2f} |"
                       for kind in ("seen", "unseen") if f"mrstft_{kind}" in metrics)
    staging.joinpath("MODEL_CARD.md").write_text(
        f"{card.rstrip()}\n\n## How it was made\n\nReproduce it (from a clone, on a 2-core CPU for the budget to mean "
        f"the same):\n\n```bash\n{command}\n```\n\n| held-out kind | MRSTFT | MRSTFT Griffin-Lim-32 | MCD dB | "
        f"MCD dB Griffin-Lim-32 |\n| --- | --- | --- | --- | --- |\n{scores}\n\nIt serves audio-tts, "
        "`muselab generate --recipe audio-vocoder --mel FILE` and `builtin:audio-vocoder` when no vocoder run is "
        "named; `--griffin-lim` (audio-tts, audio-vocoder) uses Griffin-Lim instead.\n", encoding="utf-8")
    shutil.rmtree(SHIPPED_DIR, ignore_errors=True)
    staging.rename(SHIPPED_DIR)
    return SHIPPED_DIR


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_arguments(parser, minutes=10.0, name="vocoder")
    parser.add_argument("--data", default="builtin:mixed")
    parser.add_argument("--ship", action="store_true", help="copy the trained vocoder into the package")
    parser.add_argument("--no-cli", action="store_true", help="skip timing the command line")
    args = parser.parse_args()
    args.overrides = [f"eval.realtime_seconds={CLI_SECONDS:g}", *args.overrides]
    result, metrics, out, command = train_and_evaluate("audio-vocoder", args.data, args, "bench_vocoder.py")
    command = command.replace("bench_vocoder.py", f"bench_vocoder.py --data {args.data}", 1)
    command = command.replace(f" --set eval.realtime_seconds={CLI_SECONDS:g}", "", 1) + (" --ship" if args.ship else "")
    speeds = {} if args.no_cli else cli_speed(out, args.data)

    kinds = [k for k in ("", "_seen", "_unseen") if f"mrstft{k}" in metrics]
    categories = sorted({key.split(".")[1] for key in metrics if key.count(".") >= 2 and key.endswith(".mrstft")},
                        key=lambda c: (not any(k.startswith(f"unseen.{c}.") for k in metrics), c))
    print(f"{'held-out audio':<28}{'MRSTFT':>8}{'GL-32':>8}{'ratio':>7}{'MCD dB':>8}{'GL-32':>8}{'ratio':>7}")
    rows = [(f"all{k}", k) for k in kinds]
    for category in categories:
        kind = "unseen" if f"unseen.{category}.mrstft" in metrics else "seen"
        rows.append((f"{category} ({kind})", f"{kind}.{category}."))
    table = {}
    for label, key in rows:
        get = (lambda name, key=key: metrics[f"{name}{key}"]) if not key.endswith(".") else \
              (lambda name, key=key: metrics[f"{key}{name}"])
        m, g, c, gc = get("mrstft"), get("mrstft_griffin_lim"), get("mcd"), get("mcd_griffin_lim")
        table[label] = {"mrstft": m, "mrstft_griffin_lim": g, "mcd": c, "mcd_griffin_lim": gc}
        print(f"{label:<28}{m:>8.3f}{g:>8.3f}{m / g:>7.2f}{c:>8.2f}{gc:>8.2f}{c / gc:>7.2f}")
    beaten = [label for label, r in table.items() if r["mrstft"] < r["mrstft_griffin_lim"] and r["mcd"] < r["mcd_griffin_lim"]]
    summary = [("categories better than Griffin-Lim-32 on both", f"{len(beaten)} of {len(table)} rows"),
               ("x real time, in process, 60 s (network)", metrics["realtime_factor"]),
               ("x real time, in process, 60 s (Griffin-Lim-32, librosa)", metrics["realtime_factor_griffin_lim"]),
               *([("x real time, `muselab generate --wav` on 60 s at 44.1 kHz", speeds["cli_realtime_factor"])]
                 if speeds else []),
               ("targets", "every held-out category below Griffin-Lim-32 on MRSTFT and MCD; >= 50x in process, "
                           ">= 10x through the command line"),
               ("eval seconds", metrics["eval_seconds"]), ("generator parameters", metrics["generator_parameters"]),
               ("weights MB", round((out / "model.safetensors").stat().st_size / 2**20, 2)),
               ("threads", torch.get_num_threads()), ("steps", result.step), ("minutes", result.elapsed_s / 60),
               ("val_loss (reconstruction loss)", result.val_loss), ("run", str(out)), ("command", command)]
    print_table(summary)
    if args.ship:
        print(f"shipped in {ship(out, command, metrics)}")
    written = write_result(args.name, {**dict(summary), "by_category": table, **speeds,
                                       "metrics": {k: v for k, v in metrics.items()}})
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
