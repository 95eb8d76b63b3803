"""Image bytes -> H x W x 3 uint8 RGB, robust to what real folders and buckets contain.

Pre-processing that belongs with the predictor (docs/architecture.md): no Ray, no HTTP here.

Policy, decided once for the whole system:
- Orientation: the EXIF Orientation tag (values 1-8) is applied, so the array is the
  image as viewers show it; widths/heights everywhere are of the oriented image.
- Transparency is composited on **white**. Transparent pixels have no colour of their
  own (often black), and on black many logos/icons/line drawings (dark on transparent)
  would vanish; white is also what browsers and the web page show behind them.
- Multi-frame files (animated GIF/WebP/APNG, multi-page TIFF): the first frame.
- High bit depth: 16-bit gray is scaled 0..65535 -> 0..255 (not clipped); 32-bit int
  and float images are scaled from their range (see `to_rgb`).
- CMYK goes through the embedded ICC profile when there is one, else Pillow's
  multiplicative formula (Adobe-inverted JPEGs are handled by Pillow's decoder).
- Only raster formats are opened (`FORMATS`): Pillow can also open EPS/PDF-like
  formats by running Ghostscript, which a service taking untrusted bytes must not do.
- Safety: the pixel cap is checked on the header *before* any pixel is decoded;
  truncated data is an error, never a partly grey image.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageDecodeError",
    "ImageTooLarge",
    "decode_image",
    "image_size",
    "is_image_name",
    "looks_like_image",
    "SNIFF_BYTES",
    "to_rgb",
    "IMAGE_EXTENSIONS",
    "FORMATS",
    "DEFAULT_MAX_PIXELS",
]

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
#: Pillow format names we open ("JPEG" also opens MPO, the multi-picture JPEG of some
#: cameras; "PPM" covers .pgm/.pbm).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM")

_EXIF_ORIENTATION = 0x0112
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; `str(e)` is a reason fit for an errors table
    or an HTTP 4xx message."""


class ImageTooLarge(ImageDecodeError):
    """A readable image header with more pixels than allowed (our cap, or Pillow's
    decompression-bomb guard, which fires in the header parser before ours can)."""


def is_image_name(path: str) -> bool:
    """Whether a path or URI has an image extension we decode (case-insensitive)."""
    name = str(path).rsplit("/", 1)[-1]
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


#: Bytes `looks_like_image` needs from the start of a file.
SNIFF_BYTES = 16


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file start like a format we decode (for files whose
    name has no image extension: cameras, exports and buckets often drop it)."""
    if any(head.startswith(magic) for magic, _ in _SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n"


# --------------------------------------------------------------------------- helpers
_truncation_lock = threading.Lock()


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make Pillow fail on truncated files for the duration of a decode.

    `ImageFile.LOAD_TRUNCATED_IMAGES` is a process-wide flag (False by default). If some
    other library switched it on, turn it off around our decode and restore it after.
    The flag is global, so this is serialised with a lock; in the default case it is
    untouched and no lock is taken.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _truncation_lock:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _describe_unrecognised(data: bytes) -> str:
    """A human reason for bytes Pillow could not identify."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if width == 0 or height == 0:  # Pillow refuses these without saying why
            return f"image has a zero dimension ({width} x {height})"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return f"corrupt {fmt} header (the file starts like {fmt} but its header cannot be parsed)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "corrupt WEBP header"
    head = data[:1024].lstrip()
    lowered = head[:256].lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg", b"<head", b"<body")) or (
        head.startswith(b"<") and b"<html" in lowered
    ):
        return "not an image: the bytes are HTML/XML text (an error page or a vector/SVG file?)"
    # The reason names the kind of bytes, never the bytes themselves: it reaches HTTP clients
    # and errors tables, and a text file may hold a secret.
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "not an image: the bytes are text"
    return "not an image: unrecognised format"


def _pillow_reason(error: Exception) -> str:
    """Pillow's message up to its first colon: some messages go on to quote the file's bytes
    ("Token too long in file header: <token>"), which must not reach a client."""
    return str(error).split(":", 1)[0].strip()[:200]


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image too large (decompression bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_describe_unrecognised(bytes(data[:1024]))) from None
    except Exception as e:  # Pillow raises many types on malformed headers
        raise ImageDecodeError(f"corrupt image header: {type(e).__name__}: {_pillow_reason(e)}") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has a zero dimension ({width} x {height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image too large: {width} x {height} = {width * height} pixels > cap {max_pixels}")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if 1 <= int(value) <= 8 else 1
    except Exception:  # unreadable EXIF must not make a good image unusable
        return 1


def _scale_to_u8(arr: np.ndarray, *, assume_16bit: bool) -> np.ndarray:
    """High-range single-channel values -> uint8.

    16-bit data maps 0..65535 onto 0..255 with rounding (v * 255 / 65535); anything
    else (32-bit ints outside 0..65535, floats) maps its own finite range linearly,
    except floats already in [0, 1], which are taken as normalised intensities.
    """
    if assume_16bit:
        wide = arr.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif arr.dtype.kind in "iu" and lo >= 0 and hi <= 65535:
        return _scale_to_u8(arr, assume_16bit=True)
    values = np.where(finite, values, lo)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((values - lo) * scale), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _icc_to_srgb(im: Image.Image) -> Image.Image | None:
    icc = im.info.get("icc_profile")
    if not icc:
        return None
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # a broken or unsupported profile: fall back to the formula
        return None


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms

        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(im, transform)
    except Exception:
        return im.convert("RGB")


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow image (already loaded) -> H x W x 3 uint8 RGB, C-contiguous.

    See the module docstring for the policy on alpha, bit depth and colour spaces.
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I;16S"):
        gray = np.asarray(im)
        if mode == "I;16S":  # signed 16-bit: use its range
            gray = _scale_to_u8(gray.astype(np.int32), assume_16bit=False)
        else:
            gray = _scale_to_u8(gray, assume_16bit=True)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("I", "F"):
        gray = _scale_to_u8(np.asarray(im), assume_16bit=False)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    # `has_transparency_data` covers palette/"transparency" keys and alpha modes (Pillow >= 10.1).
    has_transparency = getattr(im, "has_transparency_data", None)
    if has_transparency is None:
        has_transparency = "transparency" in im.info
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or has_transparency:
        if mode == "La":  # premultiplied: Pillow converts La only to LA
            im = im.convert("LA")
        if mode == "RGBa":
            im = im.convert("RGBA")
        return _composite_on_white(np.asarray(im.convert("RGBA")))
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode == "CMYK":
        managed = _icc_to_srgb(im)
        return np.array(managed if managed is not None else im.convert("RGB"), dtype=np.uint8)
    if mode == "LAB":
        return np.array(_lab_to_rgb(im), dtype=np.uint8)
    try:
        # 1, L, P, RGBX, YCbCr, HSV and anything else Pillow knows how to convert.
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"unsupported pixel mode {mode!r}: {e}") from None


# --------------------------------------------------------------------------- API
def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an H x W x 3 uint8 RGB array (EXIF-oriented, first frame).

    Raises `ImageDecodeError` with a readable reason for empty, non-image, truncated,
    corrupt, zero-sized or over-`max_pixels` input.
    """
    data = bytes(data)
    im = _open(data, max_pixels)
    try:
        with _strict_truncation():
            im.seek(0)  # first frame of animations / multi-page files
            im.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image too large (decompression bomb guard): {e}") from None
    except MemoryError:
        raise ImageDecodeError(f"not enough memory to decode a {im.size[0]} x {im.size[1]} {im.format} image") from None
    except Exception as e:  # OSError "image file is truncated", SyntaxError, zlib errors, …
        fmt = im.format or "image"
        raise ImageDecodeError(f"truncated or corrupt {fmt} data: {_pillow_reason(e)}") from None
    if _orientation(im) != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:
            pass  # keep the stored orientation rather than fail on a broken EXIF block
    arr = to_rgb(im)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:  # defensive: never hand on odd arrays
        raise ImageDecodeError(f"decoder produced an array of shape {arr.shape} / {arr.dtype}")
    return arr


def image_size(data: bytes | bytearray | memoryview, *, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of the image as `decode_image` would return it, from the header
    only (no pixels are decoded). Raises `ImageDecodeError` like `decode_image` for
    unreadable headers, and for images over `max_pixels` when one is given."""
    im = _open(bytes(data), max_pixels if max_pixels is not None else 1 << 62)
    width, height = im.size
    if _orientation(im) in (5, 6, 7, 8):  # these orientations rotate by 90 degrees
        return height, width
    return width, height
