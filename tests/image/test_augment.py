"""DiffAugment: shapes, gradients, what each transform does to an image, and policy parsing."""

from __future__ import annotations

import pytest
import torch

from muselab.image.augment import TRANSFORMS, cutout, diff_augment, parse_policy, translation

ALL = "color,translation,cutout"


def images(b: int = 6, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    # Values in [0.1, 0.9]: an exact zero can only come from padding or cutout
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


@pytest.mark.parametrize("policy", ["", "color", "translation", "cutout", ALL])
@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (2, 1, 8, 8), (3, 3, 32, 16)])
def test_shape_and_dtype_are_kept(policy, shape):
    x = torch.rand(shape) * 2 - 1
    y = diff_augment(x, policy)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("policy", list(TRANSFORMS) + [ALL])
def test_gradients_flow_to_the_input(policy):
    x = images().requires_grad_(True)
    weights = torch.randn(x.shape)
    (diff_augment(x, policy) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_translation_shifts_each_image_and_pads_with_zeros():
    torch.manual_seed(1)
    x = images(b=16)
    y = translation(x)
    max_shift = 16 // 8
    shifts = []
    for out, src in zip(y, x, strict=True):
        matches = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                padded = torch.nn.functional.pad(src, (max_shift,) * 4)
                expected = padded[:, max_shift - dy:max_shift - dy + 16, max_shift - dx:max_shift - dx + 16]
                if torch.equal(out, expected):
                    matches.append((dy, dx))
        assert len(matches) == 1, "each output is its input shifted by one offset within 1/8 of the size"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1, "images get their own shifts"
    assert any(s != (0, 0) for s in shifts)


def test_cutout_zeroes_one_square_of_at_most_half_the_side_and_keeps_the_rest():
    torch.manual_seed(2)
    x = images(b=32)
    y = cutout(x)
    zeroed = y == 0
    assert torch.equal(y[~zeroed], x[~zeroed])
    assert torch.equal(zeroed, zeroed[:, :1].expand_as(zeroed)), "the same pixels in every channel"
    for mask in zeroed[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        # a solid rectangle, the part of an 8x8 square inside the image; at least a quarter of it
        assert mask.sum() == len(rows) * len(cols)
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)


def test_color_draws_once_per_image_and_follows_the_global_seed():
    same = images(b=1).expand(8, -1, -1, -1)
    torch.manual_seed(3)
    a = diff_augment(same, "color")
    torch.manual_seed(3)
    b = diff_augment(same, "color")
    assert torch.equal(a, b)
    assert len({tuple(img.flatten()[:4].tolist()) for img in a}) == 8
    # the jitter is drawn per image, not per pixel: a flat image stays flat
    flat = diff_augment(torch.full((4, 3, 8, 8), 0.3), "color")
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))


def test_parse_policy_canonical_order_and_errors():
    assert parse_policy("") == ()
    assert parse_policy(" cutout , translation,") == ("translation", "cutout")
    assert parse_policy(["cutout", "color", "cutout"]) == ("color", "cutout")
    with pytest.raises(ValueError) as err:
        parse_policy("translation,zoom")
    assert "'zoom'" in str(err.value) and "color, translation, cutout" in str(err.value)
    with pytest.raises(ValueError):
        diff_augment(images(), "flip")


def test_empty_policy_is_the_identity():
    x = images()
    assert diff_augment(x, "") is x
