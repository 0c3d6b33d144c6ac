"""Invisible watermarks: detection rate after common attacks, false positives, PSNR/SNR and speed.

    python benchmarks/bench_watermark.py [--images 200] [--clips 200] [--null 1000] [--name watermark]

Images: crops of the photographs bundled with scikit-image (no download), resized to 128-256 px per
side, plus smooth generated fields. Audio: 16 kHz clips made here (harmonic notes, melodies, chirps,
filtered noise, with pauses). Every marked file is attacked and then detected with the default key.
The thresholds are calibrated on `--null` unmarked files per medium (the unmarked set and random
variants: crops, noise, JPEG, gain, trims) as the smallest z with <= 1 % false positives, and the
detection rates are reported at the thresholds in muselab.safety.watermark. The MP3 attack needs the
`lame` encoder and is skipped when it is not installed. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
from common import best_of, print_table, time_call, write_result
from PIL import Image

from muselab.safety import watermark as wm

SR = 16_000
PHOTOS = ("astronaut", "brick", "camera", "cat", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "cell")


# ---------------------------------------------------------------- data


def load_photos() -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, name)() for name in PHOTOS]


def make_image(photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A random crop of a photograph resized to 128-256 px per side, or (1 in 10) a smooth field."""
    height, width = (int(s) for s in rng.integers(128, 257, size=2))
    if rng.random() < 0.1:
        field = rng.normal(size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(field[..., c])).resize((width, height), Image.Resampling.BICUBIC))
                  for c in range(3)]
        smooth = np.stack(planes, axis=-1)
        return np.clip(128 + 50 * smooth, 0, 255).astype(np.uint8)
    photo = photos[rng.integers(len(photos))]
    side = min(photo.shape[:2])
    crop = int(side * rng.uniform(0.35, 1.0))
    top, left = rng.integers(photo.shape[0] - crop + 1), rng.integers(photo.shape[1] - crop + 1)
    crop_h = min(photo.shape[0] - top, int(crop * rng.uniform(0.8, 1.25)))
    patch = np.ascontiguousarray(photo[top : top + crop_h, left : left + crop])
    return np.asarray(Image.fromarray(patch).resize((width, height), Image.Resampling.LANCZOS))


def _adsr(n: int, rng: np.random.Generator) -> np.ndarray:
    attack = max(1, int(n * rng.uniform(0.01, 0.1)))
    env = np.exp(-np.arange(n) / (n * rng.uniform(0.2, 1.5)))
    env[:attack] *= np.linspace(0, 1, attack)
    return env


def make_clip(rng: np.random.Generator) -> np.ndarray:
    """2-4 s of a melody of harmonic notes, a chirp, filtered noise or a mix, with pauses."""
    n = int(SR * rng.uniform(2.0, 4.0))
    t = np.arange(n) / SR
    kind = rng.integers(4)
    out = np.zeros(n)
    if kind in (0, 3):  # melody of harmonic notes with vibrato
        pos = 0
        while pos < n:
            length = min(n - pos, int(SR * rng.uniform(0.15, 0.6)))
            f0 = 110 * 2 ** (rng.integers(0, 30) / 12)
            tt = t[:length]
            vib = 1 + 0.005 * np.sin(2 * np.pi * rng.uniform(4, 7) * tt)
            partials = sum(rng.uniform(0.2, 1) / k * np.sin(2 * np.pi * f0 * k * vib * tt + rng.uniform(0, 6))
                           for k in range(1, int(rng.integers(2, 12))))
            if rng.random() > 0.2:  # else a pause
                out[pos : pos + length] += partials * _adsr(length, rng)
            pos += length
    if kind in (1, 3):  # chirp
        f_start, f_end = rng.uniform(100, 1000), rng.uniform(200, 6000)
        phase = 2 * np.pi * (f_start * t + (f_end - f_start) * t * t / (2 * t[-1]))
        out += 0.5 * np.sin(phase)
    if kind in (2, 3):  # filtered noise bursts
        from scipy import signal

        noise = rng.normal(size=n)
        low = rng.uniform(100, 2000)
        sos = signal.butter(4, [low, min(7000, low * rng.uniform(1.5, 6))], btype="band", fs=SR, output="sos")
        gate = (np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > rng.uniform(-0.5, 0.5)).astype(float)
        out += 0.7 * signal.sosfilt(sos, noise) * gate
    out *= rng.uniform(0.05, 0.6) / (np.abs(out).max() + 1e-9)
    return out.astype(np.float32)


# ---------------------------------------------------------------- attacks


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((round(width * factor), round(height * factor)), Image.Resampling.BILINEAR)
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def crop(image: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Remove `share` of the height and of the width, split at random between the two sides."""
    height, width = image.shape[:2]
    cut_h, cut_w = round(height * share), round(width * share)
    top, left = rng.integers(cut_h + 1), rng.integers(cut_w + 1)
    return image[top : top + height - cut_h, left : left + width - cut_w]


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(image + rng.normal(0, sigma * 255, image.shape)), 0, 255).astype(np.uint8)


def brightness(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(np.rint(image * gain), 0, 255).astype(np.uint8)


def image_attacks(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        "none": lambda x: x,
        "jpeg 75": lambda x: jpeg(x, 75),
        "jpeg 50": lambda x: jpeg(x, 50),
        "resize 0.75": lambda x: rescale(x, 0.75),
        "resize 0.5 (report)": lambda x: rescale(x, 0.5),
        "crop 10% (report)": lambda x: crop(x, 0.1, rng),
        "noise 0.02": lambda x: gaussian_noise(x, 0.02, rng),
        "brightness +20%": lambda x: brightness(x, 1.2),
    }


def mp3(audio: np.ndarray, lame: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav, coded, back = Path(tmp, "in.wav"), Path(tmp, "in.mp3"), Path(tmp, "back.wav")
        sf.write(wav, audio, SR, subtype="PCM_16")
        subprocess.run([lame, "--quiet", "-b", "128", str(wav), str(coded)], check=True)
        subprocess.run([lame, "--quiet", "--decode", str(coded), str(back)], check=True)
        decoded, _ = sf.read(back, dtype="float32")
    return decoded if decoded.ndim == 1 else decoded.mean(axis=1)


def resample_round_trip(audio: np.ndarray) -> np.ndarray:
    import librosa

    up = librosa.resample(audio, orig_sr=SR, target_sr=22_050)
    return librosa.resample(up, orig_sr=22_050, target_sr=SR)


def white_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = np.mean(audio.astype(np.float64) ** 2)
    return (audio + rng.normal(0, np.sqrt(power * 10 ** (-snr_db / 10)), audio.size)).astype(np.float32)


def audio_attacks(rng: np.random.Generator, lame: str | None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    attacks: dict[str, Callable[[np.ndarray], np.ndarray]] = {"none": lambda x: x}
    if lame:
        attacks["mp3 128k"] = lambda x: mp3(x, lame)
    attacks.update({
        "resample 16k-22.05k-16k": resample_round_trip,
        "white noise 20 dB": lambda x: white_noise(x, 20.0, rng),
        "gain -6 dB": lambda x: (x * 10 ** (-6 / 20)).astype(np.float32),
        "trim 10% start": lambda x: x[int(0.1 * x.size) :],
    })
    return attacks


# ---------------------------------------------------------------- measurement


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse > 0 else float("inf")


def snr(clean: np.ndarray, marked: np.ndarray) -> float:
    noise = np.mean((marked.astype(np.float64) - clean) ** 2)
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / noise))


def calibrate(null_scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """Smallest threshold (z >= threshold counts as marked) with at most max_fpr of null scores above."""
    ranked = np.sort(null_scores)[::-1]
    allowed = int(np.floor(max_fpr * ranked.size))
    return float(np.nextafter(ranked[allowed], np.inf))


def image_null(photos: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    scores = []
    variants = list(image_attacks(rng).values())
    for _ in range(count):
        image = make_image(photos, rng)
        scores.append(wm.image_score(variants[rng.integers(len(variants))](image)))
    return np.array(scores)


def audio_null(count: int, rng: np.random.Generator) -> np.ndarray:
    variants = list(audio_attacks(rng, None).values())
    return np.array([wm.audio_score(variants[rng.integers(len(variants))](make_clip(rng)), SR)
                     for _ in range(count)])


def run_images(count: int, null_count: int, rng: np.random.Generator) -> tuple[list, dict]:
    photos = load_photos()
    attacks = image_attacks(rng)
    hits = {name: 0 for name in attacks}
    psnrs, embed_s, scores = [], [], {name: [] for name in attacks}
    for _ in range(count):
        image = make_image(photos, rng)
        seconds, (marked, embedded) = time_call(lambda image=image: wm.embed_image(image))
        embed_s.append(seconds)
        assert embedded
        psnrs.append(psnr(image, marked))
        for name, attack in attacks.items():
            result = wm.detect_image(attack(marked))
            hits[name] += result.found
            scores[name].append(result.score)
    null = image_null(photos, null_count, rng)
    square = make_image(photos, rng)[:256, :256]
    square = np.asarray(Image.fromarray(square).resize((256, 256)))
    timing = best_of(lambda: wm.embed_image(square), 5)
    detect_timing = best_of(lambda: wm.detect_image(square), 5)
    rows = [(f"image {name}", _rate(hits[name], count, scores[name])) for name in attacks]
    calibrated = calibrate(null)
    rows += [
        ("image false positives", f"{100 * np.mean(null >= wm.IMAGE_THRESHOLD):.2f} % of {null_count} unmarked"),
        ("image null z mean / std", f"{null.mean():.2f} / {null.std():.2f}"),
        ("image calibrated threshold", f"{calibrated:.2f} (module: {wm.IMAGE_THRESHOLD})"),
        ("image PSNR min / mean", f"{min(psnrs):.1f} / {np.mean(psnrs):.1f} dB"),
        ("image embed 256x256 / detect", f"{timing * 1000:.1f} / {detect_timing * 1000:.1f} ms"),
    ]
    record = {"detection_rate": {k: hits[k] / count for k in attacks},
              "z_p5_median": {k: [float(np.percentile(v, 5)), float(np.median(v))] for k, v in scores.items()},
              "false_positive_rate": float(np.mean(null >= wm.IMAGE_THRESHOLD)),
              "null_z_mean": float(null.mean()), "null_z_std": float(null.std()),
              "null_z_max": float(null.max()), "calibrated_threshold": calibrated,
              "module_threshold": wm.IMAGE_THRESHOLD, "psnr_min_db": min(psnrs), "psnr_mean_db": float(np.mean(psnrs)),
              "embed_256_ms": timing * 1000, "detect_256_ms": detect_timing * 1000, "images": count,
              "null_images": null_count}
    return rows, record


def run_audio(count: int, null_count: int, rng: np.random.Generator) -> tuple[list, dict]:
    lame = shutil.which("lame")
    attacks = audio_attacks(rng, lame)
    hits = {name: 0 for name in attacks}
    snrs, scores = [], {name: [] for name in attacks}
    for _ in range(count):
        clip = make_clip(rng)
        marked = wm.embed_audio(clip, SR)
        snrs.append(snr(clip, marked))
        for name, attack in attacks.items():
            result = wm.detect_audio(attack(marked), SR)
            hits[name] += result.found
            scores[name].append(result.score)
    null = audio_null(null_count, rng)
    four_s = make_clip(rng)
    four_s = np.resize(four_s, 4 * SR)
    timing = best_of(lambda: wm.embed_audio(four_s, SR), 5)
    detect_timing = best_of(lambda: wm.detect_audio(four_s, SR), 5)
    rows = [(f"audio {name}", _rate(hits[name], count, scores[name])) for name in attacks]
    if not lame:
        rows.append(("audio mp3 128k", "skipped: no `lame` encoder installed"))
    calibrated = calibrate(null)
    rows += [
        ("audio false positives", f"{100 * np.mean(null >= wm.AUDIO_THRESHOLD):.2f} % of {null_count} unmarked"),
        ("audio null z mean / std", f"{null.mean():.2f} / {null.std():.2f}"),
        ("audio calibrated threshold", f"{calibrated:.2f} (module: {wm.AUDIO_THRESHOLD})"),
        ("audio SNR min / mean", f"{min(snrs):.1f} / {np.mean(snrs):.1f} dB"),
        ("audio embed 4 s / detect", f"{timing * 1000:.1f} / {detect_timing * 1000:.1f} ms"),
    ]
    record = {"detection_rate": {k: hits[k] / count for k in attacks},
              "z_p5_median": {k: [float(np.percentile(v, 5)), float(np.median(v))] for k, v in scores.items()},
              "mp3": "lame -b 128" if lame else "skipped: no lame",
              "false_positive_rate": float(np.mean(null >= wm.AUDIO_THRESHOLD)),
              "null_z_mean": float(null.mean()), "null_z_std": float(null.std()),
              "null_z_max": float(null.max()), "calibrated_threshold": calibrated,
              "module_threshold": wm.AUDIO_THRESHOLD, "snr_min_db": min(snrs), "snr_mean_db": float(np.mean(snrs)),
              "embed_4s_ms": timing * 1000, "detect_4s_ms": detect_timing * 1000, "clips": count,
              "null_clips": null_count}
    return rows, record


def _rate(hits: int, count: int, scores: list[float]) -> str:
    return f"{100 * hits / count:5.1f} %  (z p5 {np.percentile(scores, 5):4.1f}, median {np.median(scores):4.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--null", type=int, default=1000, help="unmarked files per medium for calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=("images", "audio"), help="measure only the other medium")
    parser.add_argument("--name", default="watermark")
    args = parser.parse_args()
    rows: list[tuple[str, object]] = []
    record: dict[str, object] = {"seed": args.seed}
    if args.skip != "images":
        image_rows, record["image"] = run_images(args.images, args.null, np.random.default_rng(args.seed))
        rows += image_rows
    if args.skip != "audio":
        audio_rows, record["audio"] = run_audio(args.clips, args.null, np.random.default_rng(args.seed + 1))
        rows += audio_rows
    rows.append(("targets", ">= 95 % after each attack except resize 0.5 and crop; PSNR >= 38 dB; SNR >= 30 dB"))
    print_table(rows)
    print(f"written {write_result(args.name, {'rows': dict(rows), **record})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
