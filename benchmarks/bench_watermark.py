"""Invisible watermarks: detection rate after common attacks, false positives, PSNR/SNR and speed.

    python benchmarks/bench_watermark.py [--images 200] [--clips 200] [--null 1000] [--name watermark]

Marked files: images are crops of photographs bundled with scikit-image (no download), resized to 128-256
px per side, plus smooth generated fields; audio clips are made here at 16 kHz (harmonic notes, melodies,
chirps, filtered noise, with pauses). Every marked file is attacked and then detected with the default key.

False positives: the thresholds are fixed in muselab.safety.watermark by the detectors' null distributions
(FALSE_POSITIVE_RATE), not fitted here. They are checked on `--null` fresh unmarked files per medium, drawn
from other sources and seeds than the marked ones (images: other scikit-image pictures, scikit-learn's
digits, muselab's drawn shapes, random noise, colour gradients, and photo crops from another seed; audio:
builtin:tones, white/pink/brown noise, flite speech when installed, pure tones and hum, and clips from
another seed), each through a random one of the attacks (or none). The table gives the score distribution
of those files per source and overall and the share at or above the threshold. The MP3 attack needs the
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


NULL_QUANTILES = (0.5, 0.9, 0.99, 0.999)
NULL_PHOTOS = ("chelsea", "colorwheel", "logo", "horse", "checkerboard", "shepp_logan_phantom", "microaneurysms")
WORDS = ("the small river runs under a stone bridge while children count the boats and old men talk about "
         "weather markets music seven yellow windows quietly open before morning light reaches every garden").split()


def _sized(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A picture as uint8 RGB resized to 64-256 px per side."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float64)
        pixels = (255 * (values - values.min()) / (np.ptp(values) + 1e-12)).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    height, width = (int(s) for s in rng.integers(64, 257, size=2))
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., :3])).resize((width, height),
                                                                                    Image.Resampling.BICUBIC))


def null_image_sources(rng: np.random.Generator) -> dict[str, Callable[[], np.ndarray]]:
    """Unmarked images from sources the marked set does not use (photo crops: another seed)."""
    import skimage.data
    from sklearn.datasets import load_digits

    from muselab.data.images import make_shapes

    others = [getattr(skimage.data, name)() for name in NULL_PHOTOS]
    digits = load_digits().images
    shapes = make_shapes(64, 3, per_class=25, seed=1)[0].permute(0, 2, 3, 1).numpy()
    photos = load_photos()

    def other_picture() -> np.ndarray:
        picture = others[rng.integers(len(others))]
        side = min(picture.shape[:2])
        crop = int(side * rng.uniform(0.5, 1.0))
        top, left = rng.integers(picture.shape[0] - crop + 1), rng.integers(picture.shape[1] - crop + 1)
        return _sized(picture[top:top + crop, left:left + crop], rng)

    def gradient() -> np.ndarray:
        height, width = (int(s) for s in rng.integers(64, 257, size=2))
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * x + np.sin(angle) * y if rng.random() < 0.5 else np.hypot(x - 0.5, y - 0.5)
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-12)
        ends = rng.uniform(0, 255, size=(2, 3))
        return np.rint(ends[0] + ramp[..., None] * (ends[1] - ends[0])).astype(np.uint8)

    def noise() -> np.ndarray:
        height, width = (int(s) for s in rng.integers(64, 257, size=2))
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    return {"other scikit-image pictures": other_picture,
            "digits (scikit-learn)": lambda: _sized(digits[rng.integers(len(digits))], rng),
            "shapes (muselab, seed 1)": lambda: _sized(shapes[rng.integers(len(shapes))], rng),
            "uniform noise": noise, "gradients": gradient,
            "photo crops (another seed)": lambda: make_image(photos, rng)}


def _speech(rng: np.random.Generator, flite: str) -> np.ndarray:
    words = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 12))))
    voice = ("slt", "rms", "awb", "kal16")[rng.integers(4)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "speech.wav")
        subprocess.run([flite, "-voice", voice, "-t", words, "-o", str(path)], check=True, capture_output=True)
        audio, rate = sf.read(path, dtype="float32")
    if rate != SR:
        from scipy import signal

        audio = signal.resample_poly(audio, SR, rate).astype(np.float32)
    return audio * rng.uniform(0.2, 1.0) / (np.abs(audio).max() + 1e-9)


def _coloured_noise(rng: np.random.Generator) -> np.ndarray:
    n = int(SR * rng.uniform(2.0, 4.0))
    exponent = rng.choice([0.0, 1.0, 2.0])  # white, pink, brown
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum[1:] /= np.fft.rfftfreq(n, 1 / SR)[1:] ** (exponent / 2)
    spectrum[0] = 0
    out = np.fft.irfft(spectrum, n=n)
    return (out * rng.uniform(0.05, 0.6) / (np.abs(out).max() + 1e-12)).astype(np.float32)


def _tones_and_hum(rng: np.random.Generator) -> np.ndarray:
    n = int(SR * rng.uniform(2.0, 4.0))
    t = np.arange(n) / SR
    if rng.random() < 0.5:  # one steady pure tone
        out = np.sin(2 * np.pi * rng.uniform(50, 4000) * t)
    else:  # mains hum and its harmonics over a little noise
        mains = rng.choice([50.0, 60.0])
        out = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * mains * k * t) for k in range(1, 8))
        out = out + 0.01 * rng.normal(size=n)
    return (out * rng.uniform(0.05, 0.6) / np.abs(out).max()).astype(np.float32)


def null_audio_sources(rng: np.random.Generator, count: int) -> dict[str, Callable[[], np.ndarray]]:
    """Unmarked clips from sources the marked set does not use (made-here clips: another seed)."""
    from muselab.data.tones import make_tones

    flite = shutil.which("flite")
    tones = iter([clip.audio for clip in make_tones(count // (5 if flite else 4) + 1, 4.0, SR, 64, seed=1)])
    sources: dict[str, Callable[[], np.ndarray]] = {
        "builtin:tones (seed 1)": lambda: next(tones),
        "white/pink/brown noise": lambda: _coloured_noise(rng),
        "pure tones and hum": lambda: _tones_and_hum(rng),
        "made-here clips (another seed)": lambda: make_clip(rng),
    }
    if flite:
        sources["flite speech"] = lambda: _speech(rng, flite)
    return sources


def null_scores(sources: dict[str, Callable[[], np.ndarray]], variants: list[Callable[[np.ndarray], np.ndarray]],
                score: Callable[[np.ndarray], float], count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`count` unmarked files split evenly over the sources, each through a random variant."""
    names = list(sources)
    return {name: np.array([score(variants[rng.integers(len(variants))](sources[name]()))
                            for _ in range(count // len(names) + (i < count % len(names)))])
            for i, name in enumerate(names)}


def null_summary(by_source: dict[str, np.ndarray], threshold: float) -> tuple[list, dict]:
    """Rows and a record of the null scores: per source and overall mean, std, max, quantiles and the share
    at or above `threshold`."""
    def stats(z: np.ndarray) -> dict[str, float]:
        return {"count": int(z.size), "mean": float(z.mean()), "std": float(z.std()), "max": float(z.max()),
                **{f"q{q:g}": float(np.quantile(z, q)) for q in NULL_QUANTILES},
                "false_positive_rate": float(np.mean(z >= threshold)), "false_positives": int(np.sum(z >= threshold))}

    every = np.concatenate(list(by_source.values()))
    record = {"threshold": threshold, "overall": stats(every), "by_source": {k: stats(v) for k, v in by_source.items()}}
    rows = [(f"  {name}", f"n {s['count']}, z mean {s['mean']:.2f} std {s['std']:.2f} max {s['max']:.2f}, "
                          f"{s['false_positives']} at or above")
            for name, s in record["by_source"].items()]
    overall = record["overall"]
    quantiles = ", ".join(f"q{q:g} {overall[f'q{q:g}']:.2f}" for q in NULL_QUANTILES)
    rows.insert(0, ("", f"all {overall['count']}: z mean {overall['mean']:.2f} std {overall['std']:.2f} "
                        f"max {overall['max']:.2f}; {quantiles}"))
    return rows, record


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
    null_rng = np.random.default_rng([rng.integers(2**32), 1])
    null_rows, null_record = null_summary(
        null_scores(null_image_sources(null_rng), list(image_attacks(null_rng).values()), wm.image_score,
                    null_count, null_rng), wm.IMAGE_THRESHOLD)
    square = make_image(photos, rng)[:256, :256]
    square = np.asarray(Image.fromarray(square).resize((256, 256)))
    timing = best_of(lambda: wm.embed_image(square), 5)
    detect_timing = best_of(lambda: wm.detect_image(square), 5)
    rows = [(f"image {name}", _rate(hits[name], count, scores[name])) for name in attacks]
    overall = null_record["overall"]
    rows += [
        ("image threshold", f"z >= {wm.IMAGE_THRESHOLD:.2f} (fixed: N(0, 1) tail {wm.FALSE_POSITIVE_RATE:g})"),
        ("image false positives", f"{100 * overall['false_positive_rate']:.2f} % of {null_count} fresh unmarked"),
        ("image unmarked z", null_rows[0][1]), *[(f"image{name}", text) for name, text in null_rows[1:]],
        ("image PSNR min / mean", f"{min(psnrs):.1f} / {np.mean(psnrs):.1f} dB"),
        ("image embed 256x256 / detect", f"{timing * 1000:.1f} / {detect_timing * 1000:.1f} ms"),
    ]
    record = {"detection_rate": {k: hits[k] / count for k in attacks},
              "z_p5_median": {k: [float(np.percentile(v, 5)), float(np.median(v))] for k, v in scores.items()},
              "false_positive_rate": overall["false_positive_rate"], "null": null_record,
              "threshold": wm.IMAGE_THRESHOLD, "psnr_min_db": min(psnrs), "psnr_mean_db": float(np.mean(psnrs)),
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
    null_rng = np.random.default_rng([rng.integers(2**32), 1])
    null_rows, null_record = null_summary(
        null_scores(null_audio_sources(null_rng, null_count), list(audio_attacks(null_rng, None).values()),
                    lambda x: wm.audio_score(x, SR), null_count, null_rng), wm.AUDIO_THRESHOLD)
    four_s = make_clip(rng)
    four_s = np.resize(four_s, 4 * SR)
    timing = best_of(lambda: wm.embed_audio(four_s, SR), 5)
    detect_timing = best_of(lambda: wm.detect_audio(four_s, SR), 5)
    rows = [(f"audio {name}", _rate(hits[name], count, scores[name])) for name in attacks]
    if not lame:
        rows.append(("audio mp3 128k", "skipped: no `lame` encoder installed"))
    overall = null_record["overall"]
    rows += [
        ("audio threshold", f"z >= {wm.AUDIO_THRESHOLD:.2f} (fixed: max of {wm.BLOCK} N(0, 1) lags, tail "
                            f"{wm.FALSE_POSITIVE_RATE:g})"),
        ("audio false positives", f"{100 * overall['false_positive_rate']:.2f} % of {null_count} fresh unmarked"),
        ("audio unmarked z", null_rows[0][1]), *[(f"audio{name}", text) for name, text in null_rows[1:]],
        ("audio SNR min / mean", f"{min(snrs):.1f} / {np.mean(snrs):.1f} dB"),
        ("audio embed 4 s / detect", f"{timing * 1000:.1f} / {detect_timing * 1000:.1f} ms"),
    ]
    record = {"detection_rate": {k: hits[k] / count for k in attacks},
              "z_p5_median": {k: [float(np.percentile(v, 5)), float(np.median(v))] for k, v in scores.items()},
              "mp3": "lame -b 128" if lame else "skipped: no lame",
              "false_positive_rate": overall["false_positive_rate"], "null": null_record,
              "threshold": wm.AUDIO_THRESHOLD, "snr_min_db": min(snrs), "snr_mean_db": float(np.mean(snrs)),
              "embed_4s_ms": timing * 1000, "detect_4s_ms": detect_timing * 1000, "clips": count,
              "null_clips": null_count}
    return rows, record


def _rate(hits: int, count: int, scores: list[float]) -> str:
    return f"{100 * hits / count:5.1f} %  (z p5 {np.percentile(scores, 5):4.1f}, median {np.median(scores):4.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--null", type=int, default=1000, help="fresh unmarked files per medium")
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
