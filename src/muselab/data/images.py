"""Image data: users' folders of pictures and the built-in image sources.

Every loader returns uint8 pixels [N, C, H, W] (square, one or three channels), class labels when the
data has classes, and a JSON-able `info` (source, fingerprint, counts) for the model card. Decoding a
folder is slow, so decoded pixels are cached as safetensors, keyed by every file's path, size and
modification time. Built-in sources come from installed packages or are drawn here: no downloads.
Read top to bottom: the dataset, pixel conversions, decoding, folders, built-ins, cache, loading,
splitting, the batch stream.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps

from muselab.core.checkpoint import load_tensors, read_metadata, save_tensors
from muselab.core.errors import CheckpointError, ConfigError, DataError
from muselab.core.io import sha256_json
from muselab.data.split import hold_out

BUILTIN_PREFIX = "builtin:"
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
# Part of every cache key: bump it when decoding or generation changes, so old cache files are not reused.
_CACHE_FORMAT = 2
# A picture narrower than this on either side holds no shape to learn (a 1x1 px file, a 100,000 x 1 px
# strip): centre-cropped to a square it would be one stretched pixel, so it is refused instead.
MIN_SIDE = 4

SHAPE_CLASSES = ("circle", "square", "triangle", "star")
SHAPES_PER_CLASS = 2000
_SHAPES_SEED = 20_240_601
_SUPERSAMPLE = 4  # shapes are drawn this many times larger, then box-averaged down: anti-aliased edges
_SHAPE_MARGIN = 0.06  # free border around every shape, as a fraction of the side
_SHAPE_RADIUS = (0.22, 0.40)  # circumradius range, as a fraction of the side
_STAR_INNER = 0.45  # inner / outer radius of the five-pointed star

# Photographs that ship inside the scikit-image wheel (checked offline with 0.26), one class each.
# They are read from the package folder rather than through skimage.data.NAME(): those functions
# download a photo that is not bundled, and muselab never downloads at run time.
TEXTURE_PHOTOS = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "coffee": "coffee.png",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
}
TEXTURES_PER_CLASS = 500
_TEXTURE_CROP = 0.25  # crop side as a fraction of the photo's shorter side
_TEXTURES_SEED = 7

BUILTIN_IMAGE_SOURCES: dict[str, str] = {
    "digits": "scikit-learn's 1,797 handwritten digits (8x8 grey, 10 classes '0'..'9')",
    "shapes": f"{SHAPES_PER_CLASS * len(SHAPE_CLASSES):,} drawn circles, squares, triangles and stars "
              "(32x32 colour, 4 classes)",
    "textures": f"{TEXTURES_PER_CLASS * len(TEXTURE_PHOTOS):,} random crops of {len(TEXTURE_PHOTOS)} photographs "
                "bundled with scikit-image (one class per photograph)",
}


@dataclass
class ImageDataset:
    """Square uint8 images with optional class labels, and where they came from."""

    images: torch.Tensor  # uint8 [N, C, H, W], C = 1 or 3, H = W = size
    labels: torch.Tensor | None  # int64 [N] class index, or None when the data has no classes
    class_names: list[str]  # [] when unlabelled
    info: dict[str, Any]  # JSON-able: source, fingerprint, count, size, channels, classes, class_counts, skipped

    def __len__(self) -> int:
        return self.images.shape[0]


# --- pixel conversions ---------------------------------------------------------------------------------


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (what the models train on)."""
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float pixels in [-1, 1] (clamped; NaN becomes mid-grey so a diverged sample still saves) -> uint8."""
    pixels = (torch.nan_to_num(images.float(), nan=0.0).clamp(-1.0, 1.0) + 1.0) * 127.5
    return pixels.round().to(torch.uint8)


def _fingerprint(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    digest = hashlib.sha256(f"{tuple(images.shape)}".encode())
    digest.update(images.contiguous().numpy())
    digest.update(b"labels" if labels is not None else b"unlabelled")
    if labels is not None:
        digest.update(labels.contiguous().numpy())
    return digest.hexdigest()


def _mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


# --- decoding one picture ------------------------------------------------------------------------------

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """Any Pillow mode -> "L" or "RGB" with 8-bit values; transparent pixels become white."""
    if image.mode in _WIDE_GREY_MODES:
        # 16-bit grey: Pillow's convert("L") clips to 255 instead of scaling, which turns most pixels white
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # Icons and cut-outs are drawn for light pages: flatten them onto white, not onto black.
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return image.convert(mode)


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` and centre-crop the longer one (Lanczos, no distortion)."""
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


class UnusableImage(ValueError):
    """A file that decodes but cannot serve as a training picture; the message says why."""


def _decode(path: Path, mode: str, size: int) -> np.ndarray:
    """One file -> uint8 [size, size] or [size, size, 3]; fully decoded here so that corrupt files fail here."""
    with Image.open(path) as image:
        if min(image.size) < MIN_SIDE:
            raise UnusableImage(f"it is {image.size[0]}x{image.size[1]} px; pictures need at least {MIN_SIDE} px "
                                "on each side")
        image.draft(None, (size, size))  # JPEG only: decode big photos at a reduced scale, still >= size
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        image.load()
        return np.asarray(_fit(_convert(image, mode), size))


def load_picture(path: str | os.PathLike[str], *, size: int, channels: int) -> torch.Tensor:
    """One picture a user names (e.g. an end of an interpolation) -> uint8 [1, C, size, size]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file '{path}' does not exist")
    try:
        pixels = _decode(path, _mode(channels), size)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image '{path}' ({_decode_failure(err)})") from None
    return _stack([pixels], channels)


def _decode_failure(err: BaseException) -> str:
    if isinstance(err, Image.DecompressionBombError):
        return "too many pixels to decode safely"
    if isinstance(err, UnusableImage):
        return str(err)
    return f"{type(err).__name__}: {err}".replace("\n", " ").strip()


# --- folders of pictures -------------------------------------------------------------------------------


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _image_files(root: Path) -> list[Path]:
    """Image files under `root` (recursive, hidden files and folders skipped), sorted by relative path."""
    try:
        found = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    except OSError as e:
        raise DataError(f"cannot list folder '{root}': {e.strerror}; check its permissions") from e
    visible = [p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(visible, key=lambda p: p.relative_to(root).parts)


def _classes_of(root: Path, files: list[Path]) -> list[str | None]:
    """Each file's class: its top-level sub-folder (ImageFolder layout), or None when all lie in the root."""
    relative = [p.relative_to(root) for p in files]
    loose = [r for r in relative if len(r.parts) == 1]
    if not loose:
        return [r.parts[0] for r in relative]
    if len(loose) == len(relative):
        return [None] * len(relative)
    raise DataError(
        f"folder '{root}' mixes {len(loose)} image(s) at its top level (e.g. '{loose[0]}') with "
        f"{len(relative) - len(loose)} in sub-folders; put every image in a sub-folder named after its class, "
        "or all of them directly in the folder for unlabelled data"
    )


@dataclass
class _Decoded:
    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str]
    skipped: list[str]


def _stack(pixels: list[np.ndarray], channels: int) -> torch.Tensor:
    """A list of [H, W] or [H, W, C] uint8 arrays -> uint8 [N, C, H, W]."""
    stacked = torch.from_numpy(np.stack(pixels))
    return stacked.unsqueeze(1) if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()


def _decode_folder(root: Path, files: list[Path], size: int, channels: int, skip_bad_files: bool) -> _Decoded:
    file_classes = _classes_of(root, files)
    pixels: list[np.ndarray] = []
    kept_classes: list[str | None] = []
    skipped: list[str] = []
    for path, cls in zip(files, file_classes, strict=True):
        try:
            pixels.append(_decode(path, _mode(channels), size))
        # Pillow's format plugins raise many types on malformed input (OSError, SyntaxError, ValueError,
        # struct.error, EOFError...): any of them means this one file cannot be used.
        except Exception as err:
            if not skip_bad_files:
                raise DataError(
                    f"cannot decode image '{path}' ({_decode_failure(err)}); replace or remove it, "
                    "or pass --skip-bad-files to leave unreadable images out"
                ) from None
            skipped.append(path.relative_to(root).as_posix())
            continue
        kept_classes.append(cls)
    if len(pixels) < 2:
        raise DataError(
            f"folder '{root}' has only {len(pixels)} readable image(s) ({len(skipped)} skipped as unreadable); "
            "training needs at least two: add images or replace the broken ones"
        )
    if kept_classes[0] is None:
        return _Decoded(_stack(pixels, channels), None, [], skipped)
    class_names = sorted({c for c in kept_classes if c is not None})
    index = {name: i for i, name in enumerate(class_names)}
    labels = torch.tensor([index[c] for c in kept_classes if c is not None], dtype=torch.int64)
    return _Decoded(_stack(pixels, channels), labels, class_names, skipped)


# --- built-in sources ----------------------------------------------------------------------------------


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 [N, C, h, w] (antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _builtin_digits(size: int, channels: int) -> _Decoded:
    from sklearn.datasets import load_digits

    digits = load_digits()  # bundled with scikit-learn: values 0..16
    grey = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    images = _resize_uint8(grey, size).expand(-1, channels, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return _Decoded(images, labels, [str(d) for d in range(10)], [])


def _shape_outline(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon corners of a square, triangle or five-pointed star, all inside the circle (cx, cy, radius)."""
    radii = {"square": [radius], "triangle": [radius], "star": [radius, radius * _STAR_INNER]}[kind]
    corners = {"square": 4, "triangle": 3, "star": 10}[kind]
    return [
        (cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / corners),
         cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def _hsv_colours(rng: np.random.Generator, n: int, saturation: tuple[float, float],
                 value: tuple[float, float]) -> list[tuple[int, int, int]]:
    hue, sat, val = rng.uniform(0, 1, n), rng.uniform(*saturation, n), rng.uniform(*value, n)
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)) for h, s, v in zip(hue, sat, val, strict=True)]


def make_shapes(size: int, channels: int, per_class: int = SHAPES_PER_CLASS,
                seed: int = _SHAPES_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawn shapes, uint8 [N, C, size, size] and labels (index into SHAPE_CLASSES), classes interleaved.

    Every random choice is made up front in fractions of the side, so the same seed draws the same
    scenes at any size. Each shape's circumscribed circle stays `_SHAPE_MARGIN` inside the border.
    """
    n = per_class * len(SHAPE_CLASSES)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPE_CLASSES)
    radius = rng.uniform(*_SHAPE_RADIUS, n)
    slack = 1.0 - 2.0 * (radius + _SHAPE_MARGIN)
    cx = radius + _SHAPE_MARGIN + rng.uniform(0, 1, n) * slack
    cy = radius + _SHAPE_MARGIN + rng.uniform(0, 1, n) * slack
    angle = rng.uniform(0, 2 * math.pi, n)
    fills = _hsv_colours(rng, n, saturation=(0.5, 1.0), value=(0.75, 1.0))
    backgrounds = _hsv_colours(rng, n, saturation=(0.0, 0.6), value=(0.05, 0.4))
    side = size * _SUPERSAMPLE
    pixels = []
    for i in range(n):
        canvas = Image.new("RGB", (side, side), backgrounds[i])
        draw = ImageDraw.Draw(canvas)
        kind = SHAPE_CLASSES[labels[i]]
        x, y, r = cx[i] * side, cy[i] * side, radius[i] * side
        if kind == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fills[i])
        else:
            draw.polygon(_shape_outline(kind, x, y, r, angle[i]), fill=fills[i])
        pixels.append(np.asarray(canvas.reduce(_SUPERSAMPLE).convert(_mode(channels))))
    return _stack(pixels, channels), torch.from_numpy(labels.astype(np.int64))


def _builtin_shapes(size: int, channels: int) -> _Decoded:
    images, labels = make_shapes(size, channels)
    return _Decoded(images, labels, list(SHAPE_CLASSES), [])


def _bundled_photo(name: str) -> Path:
    import skimage.data

    path = Path(skimage.data.__file__).parent / TEXTURE_PHOTOS[name]
    if not path.is_file():
        raise DataError(f"the photograph '{path.name}' that builtin:textures needs is not in this scikit-image "
                        "install; reinstall scikit-image from its wheel (muselab never downloads data)")
    return path


def _builtin_textures(size: int, channels: int) -> _Decoded:
    pixels, labels = [], []
    for index, name in enumerate(TEXTURE_PHOTOS):
        with Image.open(_bundled_photo(name)) as photo:
            photo = _convert(photo, _mode(channels))
        crop = round(_TEXTURE_CROP * min(photo.size))
        # one generator per photograph, so adding a photograph leaves the other classes' crops unchanged
        rng = np.random.default_rng([_TEXTURES_SEED, index])
        lefts = rng.integers(0, photo.width - crop + 1, TEXTURES_PER_CLASS)
        tops = rng.integers(0, photo.height - crop + 1, TEXTURES_PER_CLASS)
        for left, top in zip(lefts.tolist(), tops.tolist(), strict=True):
            box = (left, top, left + crop, top + crop)
            pixels.append(np.asarray(photo.resize((size, size), Image.Resampling.LANCZOS, box=box)))
        labels += [index] * TEXTURES_PER_CLASS
    return _Decoded(_stack(pixels, channels), torch.tensor(labels, dtype=torch.int64), list(TEXTURE_PHOTOS), [])


def _texture_cache_key() -> dict[str, Any]:
    import skimage

    return {"skimage": skimage.__version__, "photos": TEXTURE_PHOTOS, "per_class": TEXTURES_PER_CLASS,
            "crop": _TEXTURE_CROP, "seed": _TEXTURES_SEED}


# name -> (builder, what else the cached result depends on); None: too quick to be worth a cache file
_BUILTINS: dict[str, tuple[Callable[[int, int], _Decoded], Callable[[], dict[str, Any]] | None]] = {
    "digits": (_builtin_digits, None),
    "shapes": (_builtin_shapes, lambda: {"per_class": SHAPES_PER_CLASS, "seed": _SHAPES_SEED,
                                         "radius": _SHAPE_RADIUS, "margin": _SHAPE_MARGIN}),
    "textures": (_builtin_textures, _texture_cache_key),
}


def builtin_image_names() -> list[str]:
    """Names usable as ``builtin:NAME``."""
    return list(_BUILTINS)


def _known_builtins() -> str:
    return ", ".join(f"{BUILTIN_PREFIX}{name}" for name in _BUILTINS)


# --- cache ---------------------------------------------------------------------------------------------


def _cache_folder(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab"
    return Path(base).expanduser() / "images"


def _cache_file(folder: Path, label: str, slot: str) -> Path:
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_")[:40] or "images"
    return folder / f"{readable}-{slot[:32]}.safetensors"


def _read_cache(path: Path, key: str, size: int, channels: int) -> _Decoded | None:
    """The cached decode, or None when the file is missing, stale, corrupt or not ours (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        if meta.get("key") != key:
            return None
        tensors = load_tensors(path)
        images, labels = tensors["images"], tensors.get("labels")
        class_names, skipped = json.loads(meta["class_names"]), json.loads(meta["skipped"])
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return None
    shape_ok = images.dtype == torch.uint8 and images.ndim == 4 and tuple(images.shape[1:]) == (channels, size, size)
    labels_ok = (labels is None and not class_names) or (
        labels is not None and labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
        and bool(class_names) and int(labels.min()) >= 0 and int(labels.max()) < len(class_names))
    if not (shape_ok and labels_ok and isinstance(class_names, list) and isinstance(skipped, list)):
        return None
    return _Decoded(images, labels, class_names, skipped)


def _write_cache(path: Path, key: str, decoded: _Decoded, source: str) -> None:
    tensors = {"images": decoded.images}
    if decoded.labels is not None:
        tensors["labels"] = decoded.labels
    metadata = {"key": key, "source": source, "class_names": json.dumps(decoded.class_names),
                "skipped": json.dumps(decoded.skipped)}
    try:
        save_tensors(path, tensors, metadata)
    except OSError as err:
        # The cache only saves time: a read-only or full disk must not stop a run.
        warnings.warn(f"could not write the image cache '{path}' ({err.strerror}); images will be decoded "
                      "again next time", stacklevel=3)


def _cached(folder: Path, label: str, slot_parts: dict[str, Any], content_parts: dict[str, Any], source: str,
            size: int, channels: int, build: Callable[[], _Decoded]) -> _Decoded:
    """`build()`, or its result cached under `folder`.

    The file name comes from `slot_parts` (what was asked for), so a folder whose files change keeps one
    cache file that is overwritten rather than a trail of stale ones; the full key stored inside it also
    covers `content_parts` (the files' sizes and times) and the Pillow version that decoded or drew them.
    """
    key = sha256_json({"format": _CACHE_FORMAT, "pillow": PIL.__version__, **slot_parts, **content_parts})
    path = _cache_file(folder, label, sha256_json(slot_parts))
    decoded = _read_cache(path, key, size, channels)
    if decoded is None:
        decoded = build()
        _write_cache(path, key, decoded, source)
    return decoded


# --- loading -------------------------------------------------------------------------------------------


def _check_shape_options(size: int, channels: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"image size must be a positive whole number of pixels, got {size!r}; use e.g. 32")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"image channels must be 1 (grey) or 3 (colour), got {channels!r}")


def _dataset(decoded: _Decoded, source: str, size: int, channels: int) -> ImageDataset:
    counts = torch.bincount(decoded.labels, minlength=len(decoded.class_names)).tolist() \
        if decoded.labels is not None else []
    info = {
        "source": source,
        "fingerprint": _fingerprint(decoded.images, decoded.labels),
        "count": int(decoded.images.shape[0]),
        "size": size,
        "channels": channels,
        "classes": list(decoded.class_names),
        "class_counts": dict(zip(decoded.class_names, counts, strict=True)),
        "skipped": list(decoded.skipped),
    }
    return ImageDataset(decoded.images, decoded.labels, list(decoded.class_names), info)


def _load_builtin(spec: str, size: int, channels: int, cache_dir: Path | None) -> ImageDataset:
    name = spec[len(BUILTIN_PREFIX):]
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in image source {spec!r}; use one of: {_known_builtins()}")
    build, depends_on = _BUILTINS[name]
    if depends_on is None:
        decoded = build(size, channels)
    else:
        slot_parts = {"builtin": name, "size": size, "channels": channels}
        decoded = _cached(_cache_folder(cache_dir), f"builtin-{name}", slot_parts, depends_on(), spec, size,
                          channels, lambda: build(size, channels))
    return _dataset(decoded, spec, size, channels)


def _load_folder(root: Path, size: int, channels: int, skip_bad_files: bool, cache_dir: Path | None) -> ImageDataset:
    files = _image_files(root)
    if not files:
        raise DataError(f"folder '{root}' has no image files ({_extensions()}, searched recursively); "
                        "put your images in it, in one sub-folder per class if they have classes")
    if len(files) == 1:
        raise DataError(f"folder '{root}' holds a single image ('{files[0].name}'); training and the "
                        "train/test split need many images: add more")
    try:
        stats = [p.stat() for p in files]
    except OSError as e:
        raise DataError(f"cannot read '{e.filename}': {e.strerror}; check its permissions") from e
    listing = [[p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns] for p, st in zip(files, stats, strict=True)]
    slot_parts = {"folder": str(root), "size": size, "channels": channels, "skip_bad_files": skip_bad_files}
    decoded = _cached(_cache_folder(cache_dir), root.name, slot_parts, {"files": listing}, str(root), size, channels,
                      lambda: _decode_folder(root, files, size, channels, skip_bad_files))
    return _dataset(decoded, str(root), size, channels)


def load_images(spec: str | os.PathLike[str], *, size: int, channels: int, skip_bad_files: bool = False,
                cache_dir: Path | None = None) -> ImageDataset:
    """Load square uint8 images from a folder or ``builtin:NAME`` (see BUILTIN_IMAGE_SOURCES).

    A folder's images (.png .jpg .jpeg .webp .bmp, searched recursively, hidden entries skipped) are
    read in order of their relative paths. Images in sub-folders take the top-level sub-folder's name
    as their class; images directly in the folder are unlabelled. Each image is converted to grey
    (channels=1) or RGB (channels=3), scaled so its shorter side is `size` and centre-cropped.
    Decoded pixels are cached in `cache_dir` (default ``$MUSELAB_CACHE/images`` or
    ``~/.cache/muselab/images``); any change to a file's size or modification time invalidates it.
    """
    _check_shape_options(size, channels)
    spec = os.fspath(spec)
    if spec.startswith(BUILTIN_PREFIX):
        return _load_builtin(spec, size, channels, cache_dir)
    choices = f"pass a folder of images ({_extensions()}) or builtin:NAME (one of: {_known_builtins()})"
    if not spec.strip():
        raise DataError(f"no image data given; {choices}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"image data path '{spec}' does not exist; {choices}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"'{spec}' is a single image; training and the train/test split need many: "
                            "pass the folder that holds your images")
        raise DataError(f"'{spec}' is a file, not a folder; {choices}")
    return _load_folder(path.resolve(), size, channels, skip_bad_files, cache_dir)


# --- splitting -----------------------------------------------------------------------------------------


def _subset(data: ImageDataset, rows: np.ndarray, part: str, test_share: float, seed: int) -> ImageDataset:
    index = torch.from_numpy(rows)
    labels = data.labels[index] if data.labels is not None else None
    decoded = _Decoded(data.images[index], labels, data.class_names, data.info.get("skipped", []))
    subset = _dataset(decoded, data.info["source"], data.info["size"], data.info["channels"])
    subset.info.update(split=part, test_share=test_share, split_seed=seed, parent_fingerprint=data.info["fingerprint"])
    return subset


def split_images(data: ImageDataset, test_share: float = 0.1, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(train, test): a deterministic split, stratified by class when labelled; both parts keep the original order.

    Images are held out in the order of a stable hash of `seed` and their pixels (`muselab.data.split`), so
    an image lands on the same side whatever its position in the set, and copies of one image stay together."""
    if isinstance(test_share, bool) or not isinstance(test_share, int | float) or not 0 < test_share < 1:
        raise ConfigError(f"test_share must be a number between 0 and 1 (exclusive), got {test_share!r}")
    n = len(data)
    if n < 2:
        raise DataError(f"{n} image(s) cannot be split into non-empty train and test parts; add images")
    salt = f"{seed}:".encode()
    pixels = data.images.numpy()
    keys = [salt + pixels[i].tobytes() for i in range(n)]
    is_test = np.array(hold_out(keys, test_share, data.labels.tolist() if data.labels is not None else None))
    return (_subset(data, np.flatnonzero(~is_test), "train", test_share, seed),
            _subset(data, np.flatnonzero(is_test), "test", test_share, seed))


# --- the Trainer's batch source ------------------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive whole number, got {batch_size!r}")


class ImageStream:
    """Batches of float images in [-1, 1] with labels (zeros when the data has no classes)."""

    def __init__(self, data: ImageDataset) -> None:
        if len(data) == 0:
            raise DataError("the image set is empty; add images")
        self.data = data
        self._labels = data.labels if data.labels is not None else torch.zeros(len(data), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.data)

    def _batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": to_float(self.data.images[rows]), "label": self._labels[rows]}

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A training batch of images drawn uniformly with replacement (the generator decides which)."""
        _check_batch_size(batch_size)
        return self._batch(torch.randint(len(self), (batch_size,), generator=generator))

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The whole set in its fixed order, `batch_size` at a time; at most `limit` batches (0 = all)."""
        _check_batch_size(batch_size)
        starts = range(0, len(self), batch_size)
        for number, start in enumerate(starts):
            if limit and number >= limit:
                return
            yield self._batch(torch.arange(start, min(start + batch_size, len(self))))
