"""Turning image tensors into pictures a person looks at: grids, strips, animations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from muselab.data.images import to_uint8

MIN_DISPLAY_SIDE = 64  # tiny images (8x8 digits) are enlarged, pixel for pixel, until a cell is this wide


def to_pixels(images: torch.Tensor) -> list[np.ndarray]:
    """Images [N, C, H, W] in [-1, 1] -> uint8 arrays [H, W] (grey) or [H, W, 3] (colour)."""
    array = to_uint8(images.detach().cpu()).numpy()
    return [img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0) for img in array]


def from_pixels(pixels: np.ndarray) -> torch.Tensor:
    """One uint8 picture [H, W] or [H, W, 3] -> float32 [C, H, W] in [-1, 1] (the inverse of to_pixels)."""
    array = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32) / 127.5 - 1.0


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def image_grid(images: Sequence[np.ndarray], columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Tile uint8 images (all one shape) row by row into one picture, with a thin grey gap between cells.
    Small images are enlarged by an integer factor so the grid is readable."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    side = images[0].shape[0]
    factor = max(1, math.ceil(MIN_DISPLAY_SIDE / side))
    cells = [_enlarge(img, factor) for img in images]
    h, w = cells[0].shape[:2]
    shape = (rows * h + (rows + 1) * gap, columns * w + (columns + 1) * gap, *cells[0].shape[2:])
    grid = np.full(shape, 128, dtype=np.uint8)
    for index, cell in enumerate(cells):
        r, c = divmod(index, columns)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        grid[top:top + h, left:left + w] = cell
    return grid


def enlarged(image: np.ndarray) -> np.ndarray:
    """One image, enlarged like a grid cell (for animation frames of tiny images)."""
    return _enlarge(image, max(1, math.ceil(MIN_DISPLAY_SIDE / image.shape[0])))
