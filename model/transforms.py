"""Image resizing and prompt geometry between original pixels and the model's input.

The model sees the image resized so its shortest edge is `shortest_edge` (the reference
demo's torchvision `Resize(512, BICUBIC)`, optionally capped by `max_size`), then padded
bottom/right to the size divisibility. Prompts arrive in original pixels and are
rasterised as masks in model-input pixels (SEEM encodes every visual prompt as a mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .types import Box, MaskPrompt, Point, Polygon, Scribble, SpatialPrompt


class PromptError(ValueError):
    """A prompt that cannot be applied to this image (the message says why)."""


def resized_size(height: int, width: int, shortest_edge: int | None, max_size: int | None = None) -> tuple[int, int]:
    """Output size of torchvision's Resize(shortest_edge, max_size=max_size) rule."""
    if shortest_edge is None:
        return height, width
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    new_short = max(1, new_short)  # a very thin image keeps at least one row/column
    return (new_short, new_long) if height <= width else (new_long, new_short)


def padded_size(size: tuple[int, int], divisibility: int) -> tuple[int, int]:
    return tuple(-(-s // divisibility) * divisibility for s in size)  # type: ignore[return-value]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x h x w float32 (0..255), bicubic as PIL does it (antialiased)."""
    return PreparedImage(resize_pixels(image, size), (int(image.shape[0]), int(image.shape[1]))).tensor()


def resize_pixels(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 -> h x w x 3 uint8, bicubic as PIL does it (antialiased)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


@dataclass(frozen=True)
class PreparedImage:
    """An image resized for one model, with the geometry that maps results back to it.

    `pixels` is the input_size H x W x 3 uint8 image. Normalising and padding to the size
    divisibility happen inside `SeemPredictor.encode`, per batch: uint8 pixels are 4x
    smaller to move between processes than normalised floats.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def tensor(self) -> torch.Tensor:
        """3 x h x w float32 (0..255), what `Seem.normalize_and_pad` takes."""
        return torch.from_numpy(np.array(self.pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1).to(torch.float32)


def prepare_image(image: np.ndarray, shortest_edge: int | None, max_size: int | None) -> PreparedImage:
    """Resize an H x W x 3 uint8 RGB image by the shortest-edge rule (see `resized_size`)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    h, w = int(image.shape[0]), int(image.shape[1])
    size = resized_size(h, w, shortest_edge, max_size)
    return PreparedImage(np.ascontiguousarray(resize_pixels(image, size)), (h, w))


class PromptRasterizer:
    """Turns prompts given in original pixels into masks of the model-input size."""

    def __init__(self, original_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        self.original_size = original_size
        self.input_size = input_size
        self.sy = input_size[0] / original_size[0]
        self.sx = input_size[1] / original_size[1]

    def _check_xy(self, x: float, y: float, what: str) -> None:
        h, w = self.original_size
        if not (np.isfinite(x) and np.isfinite(y)):
            raise PromptError(f"{what}: coordinates must be finite numbers")
        if not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"{what} ({x:g}, {y:g}) is outside the image (width {w}, height {h})")

    def _map(self, x: float, y: float) -> tuple[float, float]:
        """Pixel-centre mapping: the centre of original pixel i lands on the centre of its image."""
        return (x + 0.5) * self.sx - 0.5, (y + 0.5) * self.sy - 0.5

    def rasterize(self, prompt: SpatialPrompt) -> np.ndarray:
        """One prompt -> bool mask (input size)."""
        if isinstance(prompt, Point):
            return self._point(prompt)
        if isinstance(prompt, Box):
            return self._box(prompt)
        if isinstance(prompt, (Scribble, Polygon)):
            return self._stroke(prompt)
        if isinstance(prompt, MaskPrompt):
            return self._mask(prompt)
        raise PromptError(f"unknown prompt type {type(prompt).__name__}")

    def _point(self, prompt: Point) -> np.ndarray:
        h, w = self.input_size
        self._check_xy(prompt.x, prompt.y, "point")
        x, y = self._map(prompt.x, prompt.y)
        cx = int(min(max(round(x), 0), w - 1))
        cy = int(min(max(round(y), 0), h - 1))
        mask = np.zeros((h, w), dtype=bool)
        mask[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2] = True  # the reference's 3x3 click
        return mask

    def _box(self, prompt: Box) -> np.ndarray:
        h, w = self.input_size
        for x, y in ((prompt.x0, prompt.y0), (prompt.x1, prompt.y1)):
            self._check_xy(x, y, "box corner")
        if prompt.x1 < prompt.x0 or prompt.y1 < prompt.y0:
            raise PromptError("box: x1 must be >= x0 and y1 must be >= y0")
        x0 = int(np.floor(prompt.x0 * self.sx))
        y0 = int(np.floor(prompt.y0 * self.sy))
        x1 = int(np.ceil((prompt.x1 + 1) * self.sx)) - 1
        y1 = int(np.ceil((prompt.y1 + 1) * self.sy)) - 1
        mask = np.zeros((h, w), dtype=bool)
        mask[max(y0, 0):min(y1, h - 1) + 1, max(x0, 0):min(x1, w - 1) + 1] = True
        return mask

    def _stroke(self, prompt: Scribble | Polygon) -> np.ndarray:
        """A scribble (a polyline `width` pixels wide) or a filled polygon."""
        h, w = self.input_size
        points = prompt.path if isinstance(prompt, Scribble) else prompt.points
        what = "scribble point" if isinstance(prompt, Scribble) else "polygon point"
        if len(points) == 0:
            raise PromptError(f"{what}s: empty")
        if isinstance(prompt, Polygon) and len(points) < 3:
            raise PromptError("polygon: needs at least 3 points")
        for x, y in points:
            self._check_xy(x, y, what)
        mapped = [self._map(x, y) for x, y in points]
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        if isinstance(prompt, Polygon):
            draw.polygon(mapped, fill=1, outline=1)
        elif len(mapped) == 1:
            draw.point(mapped, fill=1)
        else:
            draw.line(mapped, fill=1, width=max(1, int(prompt.width)))
        mask = np.asarray(canvas, dtype=bool)
        if not mask.any():  # a degenerate stroke still marks its first point
            x, y = mapped[0]
            mask = mask.copy()
            mask[int(min(max(round(y), 0), h - 1)), int(min(max(round(x), 0), w - 1))] = True
        return mask

    def _mask(self, prompt: MaskPrompt) -> np.ndarray:
        h, w = self.input_size
        m = np.asarray(prompt.mask)
        if m.shape != tuple(self.original_size):
            raise PromptError(f"mask prompt has shape {m.shape}, the image is {self.original_size}")
        if not m.any():
            raise PromptError("mask prompt is empty")
        img = Image.fromarray(m.astype(np.uint8) * 255)
        return np.asarray(img.resize((w, h), Image.NEAREST)) > 127

    def prompt_masks(self, prompts: tuple[SpatialPrompt, ...], padded: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Union of positive and of negative prompts -> (pos, neg), each 1 x Hp x Wp bool."""
        pos = np.zeros(padded, dtype=bool)
        neg = np.zeros(padded, dtype=bool)
        h, w = self.input_size
        for prompt in prompts:
            target = pos if prompt.positive else neg
            target[:h, :w] |= self.rasterize(prompt)
        return torch.from_numpy(pos)[None], torch.from_numpy(neg)[None]


def mask_to_memory(mask: np.ndarray, input_size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """A boolean mask in original pixels -> memory logits at stride 4 of the padded input.

    The decoder only asks where sigmoid(resized memory) >= 0.5, so logits of +-1 placed by
    the mask's coverage of each stride-4 cell reproduce the mask's support.
    """
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=input_size, mode="bilinear", align_corners=False)
    m = F.pad(m, (0, padded[1] - input_size[1], 0, padded[0] - input_size[0]))
    cover = F.avg_pool2d(m, 4)
    return (cover >= 0.5).to(torch.float32) * 2.0 - 1.0  # 1 x 1 x Hp/4 x Wp/4
