"""Invisible watermarks: found with the right key, after common edits, and nowhere else."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from muselab.safety import watermark as wm

SR = 16_000


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Colour and grey photographs bundled with scikit-image, at sizes generated images have."""
    return [_photo("astronaut", (192, 160)), _photo("camera", (128, 128)), _photo("coffee", (256, 200))]


def _clip(seed: int, seconds: float = 3.0) -> np.ndarray:
    """Harmonic notes with pauses between them, like a short generated melody."""
    rng = np.random.default_rng(seed)
    n, out = int(SR * seconds), []
    while sum(map(len, out)) < n:
        t = np.arange(int(SR * rng.uniform(0.2, 0.5))) / SR
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        note = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.exp(-3 * t)
        out += [note, np.zeros(int(SR * 0.1))]
    return (0.3 * np.concatenate(out)[:n]).astype(np.float32)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_marked_images_are_found_with_the_key_and_keep_their_look(photos):
    for photo in photos:
        marked, embedded = wm.embed_image(photo)
        assert embedded and marked.shape == photo.shape and marked.dtype == np.uint8
        assert _psnr(photo, marked) >= 38.0
        result = wm.detect_image(marked)
        assert result.found and result.confidence > 0.999 and result.score > wm.IMAGE_THRESHOLD


def test_unmarked_images_and_wrong_keys_are_not_found(photos):
    for photo in photos:
        assert not wm.detect_image(photo).found
        marked, _ = wm.embed_image(photo, key="my own key")
        assert wm.detect_image(marked, key="my own key").found
        assert not wm.detect_image(marked).found  # the default key is another key
        assert not wm.detect_image(marked, key="my own key!").found


def test_image_mark_survives_jpeg_noise_brightness_and_resizing(photos):
    rng = np.random.default_rng(0)
    for photo in photos:
        marked, _ = wm.embed_image(photo)
        height, width = marked.shape[:2]
        attacked = [
            _jpeg(marked, 75),
            np.clip(np.rint(marked + rng.normal(0, 0.02 * 255, marked.shape)), 0, 255).astype(np.uint8),
            np.clip(np.rint(marked * 1.2), 0, 255).astype(np.uint8),
            np.asarray(Image.fromarray(marked).resize((width * 3 // 4, height * 3 // 4))),  # not resized back
        ]
        for image in attacked:
            assert wm.detect_image(image).found


def test_embedding_is_deterministic_and_leaves_alpha_alone(photos):
    rgba = np.dstack([photos[0], np.full(photos[0].shape[:2], 77, np.uint8)])
    first, _ = wm.embed_image(rgba)
    second, _ = wm.embed_image(rgba)
    assert np.array_equal(first, second)
    assert np.all(first[..., 3] == 77)
    assert wm.detect_image(first).found


def test_images_too_small_come_back_unchanged():
    tiny = np.random.default_rng(0).integers(0, 256, (wm.MIN_IMAGE_SIDE - 1, 200, 3), dtype=np.uint8)
    out, embedded = wm.embed_image(tiny)
    assert not embedded and out is tiny
    assert not wm.detect_image(tiny).found


def test_bad_image_arrays_are_rejected():
    with pytest.raises(ValueError):
        wm.embed_image(np.zeros((100, 100, 3), dtype=np.float32))


def test_marked_audio_is_found_quiet_and_survives_common_edits():
    rng = np.random.default_rng(1)
    for seed in range(3):
        clip = _clip(seed)
        marked = wm.embed_audio(clip, SR)
        assert marked.dtype == np.float32 and marked.shape == clip.shape
        snr = 10 * np.log10(np.mean(clip.astype(float) ** 2) / np.mean((marked.astype(float) - clip) ** 2))
        assert snr >= 30.0
        assert wm.detect_audio(marked, SR).found
        noise = rng.normal(0, np.sqrt(np.mean(marked**2) / 100), marked.size).astype(np.float32)  # 20 dB SNR
        for attacked in (marked * 0.5, marked + noise, marked[int(0.1 * marked.size) :]):
            result = wm.detect_audio(attacked, SR)
            assert result.found and result.confidence > 0.99


def test_unmarked_audio_and_wrong_keys_are_not_found():
    for seed in range(3):
        clip = _clip(seed + 10)
        assert not wm.detect_audio(clip, SR).found
        marked = wm.embed_audio(clip, SR, key="studio key")
        assert wm.detect_audio(marked, SR, key="studio key").found
        assert not wm.detect_audio(marked, SR).found


def test_audio_at_other_rates_and_silence():
    clip = _clip(3)
    up = np.interp(np.arange(int(clip.size * 22_050 / SR)) * SR / 22_050, np.arange(clip.size), clip)
    marked = wm.embed_audio(up.astype(np.float32), 22_050)
    assert wm.detect_audio(marked, 22_050).found
    silence = np.zeros(SR, dtype=np.float32)
    assert not np.any(wm.embed_audio(silence, SR))
    assert not wm.detect_audio(silence, SR).found


def test_thresholds_are_where_the_null_distributions_reach_the_false_positive_rate():
    image_z, audio_z = wm.IMAGE_THRESHOLD, wm.AUDIO_THRESHOLD
    assert 1.0 - (1.0 - wm._normal_sf(image_z)) == pytest.approx(wm.FALSE_POSITIVE_RATE, rel=1e-6)
    # the audio score is the best of BLOCK lags: P(max >= z) = 1 - (1 - P(lag >= z)) ** BLOCK
    assert 1.0 - (1.0 - wm._normal_sf(audio_z)) ** wm.BLOCK == pytest.approx(wm.FALSE_POSITIVE_RATE, rel=1e-6)
    assert 3.0 < image_z < 3.2 and 4.8 < audio_z < 5.0


def test_unmarked_scores_follow_the_null_the_thresholds_assume():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (int(rng.integers(64, 200)), 160, 3), dtype=np.uint8) for _ in range(150)]
    z = np.array([wm.image_score(image) for image in images])
    assert abs(z.mean()) < 0.3 and 0.8 < z.std() < 1.2 and np.mean(z >= wm.IMAGE_THRESHOLD) <= 0.01
    clips = [rng.normal(0, 0.1, int(SR * rng.uniform(1, 3))).astype(np.float32) for _ in range(60)]
    best = np.array([wm.audio_score(clip, SR) for clip in clips])
    # the maximum of 2,048 standard normals: median about 3.4, 99.9 % below AUDIO_THRESHOLD
    assert 3.1 < np.median(best) < 3.8 and np.mean(best >= wm.AUDIO_THRESHOLD) <= 0.02
