"""Image data: folder layouts, decoding, errors, the cache, the built-ins, splitting and batching."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import error_message, write
from muselab.core.errors import ConfigError, DataError
from muselab.data import images as images_module
from muselab.data.images import (
    BUILTIN_IMAGE_SOURCES,
    SHAPE_CLASSES,
    SHAPES_PER_CLASS,
    TEXTURE_PHOTOS,
    TEXTURES_PER_CLASS,
    ImageDataset,
    ImageStream,
    builtin_image_names,
    load_images,
    make_shapes,
    split_images,
    to_float,
    to_uint8,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # A load without cache_dir must never write into the real ~/.cache during tests.
    monkeypatch.setenv("MUSELAB_CACHE", str(tmp_path_factory.mktemp("muselab-cache")))


def save(path: Path, image: Image.Image | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path)
    return path


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def numbered_folder(root: Path, per_class: dict[str, int] | None = None, loose: int = 0) -> Path:
    """Images whose grey level is their running number (so each one can be recognised after a split)."""
    number = 0
    for name, count in (per_class or {}).items():
        for i in range(count):
            save(root / name / f"{i:03d}.png", np.full((6, 6), number, dtype=np.uint8))
            number += 1
    for i in range(loose):
        save(root / f"{i:03d}.png", np.full((6, 6), number, dtype=np.uint8))
        number += 1
    return root


def numbers(data: ImageDataset) -> list[int]:
    return data.images[:, 0, 0, 0].tolist()


def load(path: Path, cache: Path, size: int = 4, channels: int = 1, **kw) -> ImageDataset:
    return load_images(str(path), size=size, channels=channels, cache_dir=cache, **kw)


# --- folder layouts ------------------------------------------------------------------------------------


def test_subfolders_are_classes_sorted_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    save(root / "dog" / "a.png", solid((0, 0, 200)))
    save(root / "dog" / "b.JPG", solid((0, 0, 200)))
    save(root / "cat" / "kittens" / "deep.png", solid((200, 0, 0)))  # deeper levels belong to the top folder
    save(root / "cat" / "x.webp", solid((200, 0, 0)))
    save(root / "bird" / "y.bmp", solid((0, 200, 0)))
    data = load(root, tmp_path / "cache", size=8, channels=3)
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.labels is not None and data.labels.dtype == torch.int64
    assert data.labels.tolist() == [0, 1, 1, 2, 2]  # files sorted by relative path: cat/kittens/deep < cat/x
    assert data.images.dtype == torch.uint8 and tuple(data.images.shape) == (5, 3, 8, 8)
    # each class's pixels are its colour, so the labels really follow the folders
    dominant = data.images.float().mean(dim=(2, 3)).argmax(dim=1).tolist()
    assert dominant == [1, 0, 0, 2, 2]
    assert data.info["class_counts"] == {"bird": 1, "cat": 2, "dog": 2}
    assert data.info["classes"] == ["bird", "cat", "dog"] and data.info["count"] == 5 == len(data)
    assert data.info["source"] == str(root.resolve()) and data.info["skipped"] == []
    assert len(data.info["fingerprint"]) == 64


def test_images_in_the_root_are_unlabelled(tmp_path: Path) -> None:
    data = load(numbered_folder(tmp_path / "flat", loose=3), tmp_path / "cache")
    assert data.labels is None and data.class_names == [] and data.info["class_counts"] == {}
    assert numbers(data) == [0, 1, 2]


def test_search_is_recursive_case_insensitive_sorted_and_skips_other_files(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for rel, level in [("b/2.PNG", 20), ("a/z/1.Jpeg", 10), ("a/0.png", 0), ("b/10.png", 30)]:
        save(root / rel, np.full((6, 6), level, dtype=np.uint8))
    write(root / "a" / "notes.txt", "not an image")
    save(root / "a" / ".hidden.png", np.full((6, 6), 99, dtype=np.uint8))
    save(root / ".thumbs" / "t.png", np.full((6, 6), 98, dtype=np.uint8))
    first = load(root, tmp_path / "cache1")
    # relative-path order: a/0, a/z/1, b/10, b/2 (JPEG may shift a grey level by one)
    assert np.allclose(numbers(first), [0, 10, 30, 20], atol=2)
    assert first.class_names == ["a", "b"] and first.labels.tolist() == [0, 0, 1, 1]
    second = load(root, tmp_path / "cache2")
    assert torch.equal(first.images, second.images) and first.info["fingerprint"] == second.info["fingerprint"]


# --- resizing and conversions ---------------------------------------------------------------------------


def test_landscape_is_centre_cropped_after_scaling_the_shorter_side(tmp_path: Path) -> None:
    columns = np.tile((np.arange(40) * 5).astype(np.uint8), (20, 1))  # 40 wide, 20 high, grey = 5 * column
    save(tmp_path / "wide" / "a.png", columns)
    save(tmp_path / "wide" / "b.png", columns)
    data = load(tmp_path / "wide", tmp_path / "cache", size=20)
    # the height already fits: the middle 20 columns (10..29) are kept untouched
    expected = torch.from_numpy((np.arange(10, 30) * 5).astype(np.uint8))
    assert tuple(data.images.shape) == (2, 1, 20, 20)
    assert torch.equal(data.images[0, 0], expected.expand(20, 20))


def test_downscaling_keeps_the_centre_of_a_portrait_image(tmp_path: Path) -> None:
    # 20 wide, 40 high: a red top quarter, green middle half, blue bottom quarter
    portrait = np.zeros((40, 20, 3), dtype=np.uint8)
    portrait[:10, :, 0] = portrait[10:30, :, 1] = portrait[30:, :, 2] = 255
    save(tmp_path / "tall" / "a.png", portrait)
    save(tmp_path / "tall" / "b.png", portrait)
    data = load(tmp_path / "tall", tmp_path / "cache", size=10, channels=3)
    image = data.images[0].float()
    assert tuple(image.shape) == (3, 10, 10)
    assert image[1].mean() > 240 and image[0].mean() < 15 and image[2].mean() < 15


def test_modes_are_converted_to_the_runs_channels(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    save(root / "0_grey.png", Image.new("L", (8, 8), 77))
    save(root / "1_rgb.png", solid((255, 0, 0), (8, 8)))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent: becomes white
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 4))  # opaque blue top half stays blue
    save(root / "2_rgba.png", rgba)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    save(root / "3_palette.png", palette)
    clear = Image.new("P", (8, 8), 0)
    clear.putpalette([10, 20, 30] * 256)
    clear.info["transparency"] = 0
    save(root / "4_palette_transparent.png", clear)
    save(root / "5_sixteen_bit.png", np.full((8, 8), 100 * 257, dtype=np.uint16))
    save(root / "6_grey_alpha.png", Image.new("LA", (8, 8), (0, 0)))
    assert Image.open(root / "5_sixteen_bit.png").mode.startswith("I")

    rgb = load(root, tmp_path / "cache", size=8, channels=3).images
    assert rgb[0, :, 4, 4].tolist() == [77, 77, 77]
    assert rgb[1, :, 4, 4].tolist() == [255, 0, 0]
    assert rgb[2, :, 1, 4].tolist() == [0, 0, 255] and rgb[2, :, 6, 4].tolist() == [255, 255, 255]
    assert rgb[3, :, 4, 4].tolist() == [200, 30, 40]
    assert rgb[4, :, 4, 4].tolist() == [255, 255, 255]
    assert rgb[5, :, 4, 4].tolist() == [100, 100, 100]  # scaled from 16 bits, not clipped to white
    assert rgb[6, :, 4, 4].tolist() == [255, 255, 255]

    grey = load(root, tmp_path / "cache", size=8, channels=1).images
    assert tuple(grey.shape) == (7, 1, 8, 8)
    red_luma = solid((255, 0, 0)).convert("L").getpixel((0, 0))
    assert grey[:, 0, 4, 4].tolist() == [77, red_luma, 255, Image.new("RGB", (1, 1), (200, 30, 40)).convert("L")
                                         .getpixel((0, 0)), 255, 100, 255]


# --- errors --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load(tmp_path / "nowhere", tmp_path / "cache")
    msg = error_message(err)
    assert "does not exist" in msg and "builtin:shapes" in msg


def test_folder_without_images_names_the_extensions(tmp_path: Path) -> None:
    write(tmp_path / "docs" / "readme.txt", "hello")
    with pytest.raises(DataError) as err:
        load(tmp_path / "docs", tmp_path / "cache")
    msg = error_message(err)
    assert "no image files" in msg and ".png" in msg and ".jpg" in msg


def test_a_single_image_is_refused(tmp_path: Path) -> None:
    one = save(tmp_path / "one" / "only.png", solid((1, 2, 3)))
    with pytest.raises(DataError) as err:
        load(tmp_path / "one", tmp_path / "cache")
    assert "single image" in error_message(err)
    with pytest.raises(DataError) as err:
        load(one, tmp_path / "cache")
    assert "single image" in error_message(err) and "folder" in error_message(err)


def test_a_non_image_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load(write(tmp_path / "list.csv", "a,b\n"), tmp_path / "cache")
    assert "not a folder" in error_message(err)


def test_mixed_layout_explains_the_two_layouts(tmp_path: Path) -> None:
    save(tmp_path / "mixed" / "loose.png", solid((1, 2, 3)))
    save(tmp_path / "mixed" / "cls" / "inside.png", solid((1, 2, 3)))
    with pytest.raises(DataError) as err:
        load(tmp_path / "mixed", tmp_path / "cache")
    msg = error_message(err)
    assert "loose.png" in msg and "sub-folder" in msg and "unlabelled" in msg


def test_unknown_builtin_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_images("builtin:faces", size=8, channels=1, cache_dir=tmp_path)
    msg = error_message(err)
    assert builtin_image_names() == ["digits", "shapes", "textures"] == list(BUILTIN_IMAGE_SOURCES)
    assert all(f"builtin:{name}" in msg for name in builtin_image_names())


@pytest.mark.parametrize("size, channels", [(0, 3), (-4, 1), (8.5, 3), (True, 3), (8, 2), (8, 4), (8, "3")])
def test_bad_size_or_channels_is_a_config_error(tmp_path: Path, size, channels) -> None:
    with pytest.raises(ConfigError) as err:
        load_images("builtin:digits", size=size, channels=channels, cache_dir=tmp_path)
    error_message(err)


def bad_files_folder(root: Path) -> Path:
    for i in range(3):
        save(root / f"good{i}.png", solid((10 * i, 0, 0)))
    write(root / "garbage.png", b"this is not a picture at all")
    whole = (root / "good0.png").read_bytes()
    save(root / "big.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    write(root / "truncated.png", (root / "big.png").read_bytes()[: len(whole) + 200])
    (root / "big.png").unlink()
    return root


@pytest.mark.parametrize("bad", ["garbage.png", "truncated.png"])
def test_a_corrupt_file_is_named_with_the_fix(tmp_path: Path, bad: str) -> None:
    root = bad_files_folder(tmp_path / "bad")
    other = {"garbage.png": "truncated.png", "truncated.png": "garbage.png"}[bad]
    (root / other).unlink()
    with pytest.raises(DataError) as err:
        load(root, tmp_path / "cache")
    msg = error_message(err)
    assert bad in msg and "--skip-bad-files" in msg


def test_skip_bad_files_records_what_was_skipped(tmp_path: Path) -> None:
    data = load(bad_files_folder(tmp_path / "bad"), tmp_path / "cache", skip_bad_files=True)
    assert len(data) == 3 and data.info["count"] == 3
    assert data.info["skipped"] == ["garbage.png", "truncated.png"]


@pytest.mark.parametrize("odd_size", [(1, 1), (100_000, 1), (2, 100_000)])
def test_a_picture_without_room_for_a_shape_is_named_or_skipped(tmp_path: Path, odd_size: tuple[int, int]) -> None:
    root = numbered_folder(tmp_path / "odd", loose=3)
    save(root / "odd.png", Image.new("L", odd_size, 200))
    with pytest.raises(DataError) as err:
        load(root, tmp_path / "cache")
    msg = error_message(err)
    assert "odd.png" in msg and f"{odd_size[0]}x{odd_size[1]} px" in msg and "--skip-bad-files" in msg
    data = load(root, tmp_path / "cache", skip_bad_files=True)
    assert len(data) == 3 and data.info["skipped"] == ["odd.png"]


def test_a_very_wide_picture_with_room_is_centre_cropped(tmp_path: Path) -> None:
    root = numbered_folder(tmp_path / "wide", loose=2)
    save(root / "wide.png", Image.new("L", (100_000, 8), 200))
    assert len(load(root, tmp_path / "cache", size=8, channels=1)) == 3


def test_too_few_readable_images_after_skipping(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    save(root / "good.png", solid((1, 2, 3)))
    write(root / "broken.png", b"nope")
    with pytest.raises(DataError) as err:
        load(root, tmp_path / "cache", skip_bad_files=True)
    assert "only 1 readable" in error_message(err)


def test_decompression_bomb_is_a_bad_file_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = numbered_folder(tmp_path / "bomb", loose=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8)  # 36 pixels is now more than twice the limit
    with pytest.raises(DataError) as err:
        load(root, tmp_path / "cache")
    assert "000.png" in error_message(err) and "too many pixels" in error_message(err)


# --- the cache -----------------------------------------------------------------------------------------


def test_cache_hit_returns_identical_tensors_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = numbered_folder(tmp_path / "set", {"a": 2, "b": 3})
    first = load(root, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is fresh")

    monkeypatch.setattr(images_module, "_decode", no_decoding)
    again = load(root, tmp_path / "cache")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.class_names == again.class_names and first.info == again.info


def test_a_modified_or_added_file_invalidates_the_cache(tmp_path: Path) -> None:
    root = numbered_folder(tmp_path / "set", loose=3)
    assert numbers(load(root, tmp_path / "cache")) == [0, 1, 2]
    changed = root / "001.png"
    stat = changed.stat()
    save(changed, np.full((6, 6), 200, dtype=np.uint8))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert numbers(load(root, tmp_path / "cache")) == [0, 200, 2]
    save(root / "003.png", np.full((6, 6), 50, dtype=np.uint8))
    assert numbers(load(root, tmp_path / "cache")) == [0, 200, 2, 50]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # overwritten, not piled up


def test_a_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    root = numbered_folder(tmp_path / "set", {"a": 2, "b": 2})
    first = load(root, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.safetensors")
    cached.write_bytes(b"\x00" * 40)
    rebuilt = load(root, tmp_path / "cache")
    assert torch.equal(first.images, rebuilt.images) and torch.equal(first.labels, rebuilt.labels)
    assert cached.stat().st_size > 40  # written again


def test_default_cache_folder_follows_muselab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSELAB_CACHE", str(tmp_path / "home-cache"))
    load_images(str(numbered_folder(tmp_path / "set", loose=2)), size=4, channels=1)
    assert len(list((tmp_path / "home-cache" / "images").glob("*.safetensors"))) == 1


# --- built-ins -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ImageDataset:
    return load_images("builtin:shapes", size=32, channels=3, cache_dir=tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> ImageDataset:
    def offline(*args, **kwargs):
        raise AssertionError("builtin:textures tried to use the network")

    # The photographs must come from the installed package: any connection attempt fails the test.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", offline)
        patch.setattr(socket, "create_connection", offline)
        return load_images("builtin:textures", size=24, channels=3, cache_dir=tmp_path_factory.mktemp("tex"))


def test_shapes_are_balanced_rgb_32(shapes: ImageDataset) -> None:
    assert tuple(shapes.images.shape) == (SHAPES_PER_CLASS * 4, 3, 32, 32) and shapes.images.dtype == torch.uint8
    assert shapes.class_names == list(SHAPE_CLASSES)
    assert shapes.info["class_counts"] == {name: SHAPES_PER_CLASS for name in SHAPE_CLASSES}
    assert shapes.labels[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # interleaved: any prefix is balanced


def test_every_shape_is_inside_the_image_and_large(shapes: ImageDataset) -> None:
    pixels = shapes.images[:400].int()
    background = pixels[:, :, 0, 0]
    border = torch.cat([pixels[:, :, 0, :], pixels[:, :, -1, :], pixels[:, :, :, 0], pixels[:, :, :, -1]], dim=2)
    assert torch.equal(border, background[:, :, None].expand_as(border))  # nothing touches the edge
    covered = (pixels - background[:, :, None, None]).abs().sum(dim=1).gt(30).float().mean(dim=(1, 2))
    assert covered.min() > 0.04 and covered.mean() > 0.12


def test_shapes_are_deterministic_at_any_size() -> None:
    first, labels = make_shapes(32, 3, per_class=5)
    again, _ = make_shapes(32, 3, per_class=5)
    assert torch.equal(first, again) and labels.tolist() == [0, 1, 2, 3] * 5
    bigger, _ = make_shapes(64, 3, per_class=5)
    # the same scenes, drawn sharper: shrinking the big ones gives nearly the small ones
    shrunk = torch.nn.functional.avg_pool2d(bigger.float(), 2)
    assert (shrunk - first.float()).abs().mean() < 4
    grey, _ = make_shapes(16, 1, per_class=5)
    assert tuple(grey.shape) == (20, 1, 16, 16)


@pytest.mark.slow  # regenerates 8,000 shapes
def test_shapes_load_the_same_twice(shapes: ImageDataset, tmp_path: Path) -> None:
    regenerated = load_images("builtin:shapes", size=32, channels=3, cache_dir=tmp_path)
    assert torch.equal(regenerated.images, shapes.images) and torch.equal(regenerated.labels, shapes.labels)
    assert regenerated.info == shapes.info


def test_textures_come_from_bundled_photos_one_class_each(textures: ImageDataset) -> None:
    n_classes = len(TEXTURE_PHOTOS)
    assert tuple(textures.images.shape) == (TEXTURES_PER_CLASS * n_classes, 3, 24, 24)
    assert textures.class_names == list(TEXTURE_PHOTOS)
    assert torch.bincount(textures.labels).tolist() == [TEXTURES_PER_CLASS] * n_classes
    # crops are different places of their photo, not one crop repeated
    per_class = textures.images.float().reshape(n_classes, TEXTURES_PER_CLASS, -1)
    assert (per_class.std(dim=1).mean(dim=1) > 5).all()


def test_textures_load_the_same_twice_from_cache(textures: ImageDataset, tmp_path: Path) -> None:
    grey = load_images("builtin:textures", size=24, channels=1, cache_dir=tmp_path)
    again = load_images("builtin:textures", size=24, channels=1, cache_dir=tmp_path)
    assert tuple(grey.images.shape) == (len(textures), 1, 24, 24)
    assert torch.equal(grey.images, again.images) and torch.equal(grey.labels, textures.labels)


@pytest.mark.slow  # imports scikit-learn (seconds)
def test_digits_are_scikit_learns_1797(tmp_path: Path) -> None:
    native = load_images("builtin:digits", size=8, channels=1, cache_dir=tmp_path)
    assert tuple(native.images.shape) == (1797, 1, 8, 8) and native.images.dtype == torch.uint8
    assert native.class_names == [str(d) for d in range(10)] and len(native.info["class_counts"]) == 10
    assert native.images.max() == 255 and native.images.min() == 0
    big = load_images("builtin:digits", size=16, channels=3, cache_dir=tmp_path)
    assert tuple(big.images.shape) == (1797, 3, 16, 16)
    assert torch.equal(big.images[:, 0], big.images[:, 2]) and torch.equal(big.labels, native.labels)
    assert native.info["fingerprint"] == load_images("builtin:digits", size=8, channels=1).info["fingerprint"]


# --- splitting -----------------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_complete(tmp_path: Path) -> None:
    data = load(numbered_folder(tmp_path / "set", {"a": 30, "b": 20, "c": 10}), tmp_path / "cache")
    train, test = split_images(data, test_share=0.2, seed=3)
    assert sorted(numbers(train) + numbers(test)) == list(range(60))
    assert torch.bincount(test.labels).tolist() == [6, 4, 2]
    assert numbers(train) == sorted(numbers(train))  # the original order is kept
    assert train.class_names == test.class_names == ["a", "b", "c"]
    assert test.info["split"] == "test" and test.info["count"] == 12
    assert test.info["class_counts"] == {"a": 6, "b": 4, "c": 2}
    assert test.info["parent_fingerprint"] == data.info["fingerprint"] != test.info["fingerprint"]
    again_train, again_test = split_images(data, test_share=0.2, seed=3)
    assert numbers(again_test) == numbers(test) and numbers(again_train) == numbers(train)
    assert numbers(split_images(data, test_share=0.2, seed=4)[1]) != numbers(test)


def test_small_splits_keep_both_parts_non_empty(tmp_path: Path) -> None:
    labelled = load(numbered_folder(tmp_path / "few", {"a": 1, "b": 1, "c": 3}), tmp_path / "cache")
    train, test = split_images(labelled, test_share=0.1)
    assert len(test) == 1 and len(train) == 4
    assert int(test.labels[0]) == 2  # a one-image class stays in training
    tie = load(numbered_folder(tmp_path / "tie", {"a": 1, "b": 3}), tmp_path / "cache")
    train, test = split_images(tie, test_share=0.5)  # quotas 0.5 and 1.5: the spare place must not take "a"
    assert test.labels.tolist() == [1, 1] and train.labels.tolist() == [0, 1]
    flat = load(numbered_folder(tmp_path / "two", loose=2), tmp_path / "cache")
    train, test = split_images(flat, test_share=0.9)
    assert len(train) == len(test) == 1 and test.labels is None


def test_split_errors(tmp_path: Path) -> None:
    data = load(numbered_folder(tmp_path / "two", loose=2), tmp_path / "cache")
    for share in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError) as err:
            split_images(data, test_share=share)
        error_message(err)
    one = split_images(data)[0]
    with pytest.raises(DataError) as err:
        split_images(one)
    assert "cannot be split" in error_message(err)


# --- pixels and batches --------------------------------------------------------------------------------


def test_float_round_trip_is_exact_and_clamped() -> None:
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    as_float = to_float(every)
    assert as_float.dtype == torch.float32 and as_float.min() == -1 and as_float.max() == 1
    assert torch.equal(to_uint8(as_float), every)
    assert to_uint8(torch.tensor([-3.0, 2.0, float("nan")])).tolist() == [0, 255, 128]


def test_stream_samples_are_seeded_batches_in_range(tmp_path: Path) -> None:
    data = load(numbered_folder(tmp_path / "set", {"a": 3, "b": 4}), tmp_path / "cache", size=5, channels=3)
    stream = ImageStream(data)
    assert len(stream) == 7
    batch = stream.sample(16, torch.Generator().manual_seed(0))
    assert tuple(batch["image"].shape) == (16, 3, 5, 5) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["label"].dtype == torch.int64 and tuple(batch["label"].shape) == (16,)
    # the label belongs to the image: images 0..2 are class a, 3..6 class b
    ids = to_uint8(batch["image"])[:, 0, 0, 0]
    assert torch.equal(batch["label"], (ids >= 3).long())
    again = stream.sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(again["image"], batch["image"]) and torch.equal(again["label"], batch["label"])
    other = stream.sample(16, torch.Generator().manual_seed(1))
    assert not torch.equal(other["image"], batch["image"])


def test_unlabelled_stream_gives_zero_labels(tmp_path: Path) -> None:
    stream = ImageStream(load(numbered_folder(tmp_path / "flat", loose=3), tmp_path / "cache"))
    batch = stream.sample(4, torch.Generator().manual_seed(0))
    assert batch["label"].tolist() == [0, 0, 0, 0] and batch["label"].dtype == torch.int64
    with pytest.raises(ConfigError):
        stream.sample(0, torch.Generator())


def test_eval_batches_cover_every_image_once_in_order(tmp_path: Path) -> None:
    stream = ImageStream(load(numbered_folder(tmp_path / "set", {"a": 4, "b": 3}), tmp_path / "cache"))
    batches = list(stream.eval_batches(3))
    assert [len(b["image"]) for b in batches] == [3, 3, 1]
    seen = torch.cat([to_uint8(b["image"])[:, 0, 0, 0] for b in batches]).tolist()
    assert seen == list(range(7))
    assert torch.cat([b["label"] for b in batches]).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert [len(b["image"]) for b in stream.eval_batches(3, limit=2)] == [3, 3]
