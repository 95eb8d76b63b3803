"""A corpus of odd-but-valid and broken image files, generated on the fly.

`build_corpus(dir)` writes the files and returns what decoding them must give:
- valid:  name -> (width, height) of the decoded, EXIF-oriented image
- broken: name -> a substring of the `ImageDecodeError` message

Used by tests/model/test_image_io.py and by the pipeline's end-to-end test (every
broken file must end up in the errors table with that reason, every valid one encoded).
The constants below let tests check pixels, not only sizes.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, features

# Orientation test card, as displayed: 48 x 32 with four coloured quadrants.
CARD_W, CARD_H = 48, 32
QUADRANTS = {  # quadrant -> colour
    "top_left": (255, 0, 0),
    "top_right": (0, 200, 0),
    "bottom_left": (0, 0, 255),
    "bottom_right": (255, 255, 255),
}


def card() -> np.ndarray:
    """The orientation card as it must look after decoding (H x W x 3)."""
    img = np.zeros((CARD_H, CARD_W, 3), np.uint8)
    h2, w2 = CARD_H // 2, CARD_W // 2
    img[:h2, :w2] = QUADRANTS["top_left"]
    img[:h2, w2:] = QUADRANTS["top_right"]
    img[h2:, :w2] = QUADRANTS["bottom_left"]
    img[h2:, w2:] = QUADRANTS["bottom_right"]
    return img


def stored_for_orientation(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that viewers applying EXIF `orientation` show
    `displayed`. Written from the EXIF definitions with numpy, independently of Pillow."""
    d = displayed
    return {
        1: d,
        2: d[:, ::-1],  # displayed = mirror(stored)
        3: d[::-1, ::-1],  # rotate 180
        4: d[::-1, :],  # mirror vertically
        5: d.transpose(1, 0, 2),  # transpose (main diagonal)
        6: np.rot90(d, 1),  # viewers rotate stored 90 deg clockwise
        7: d[::-1, ::-1].transpose(1, 0, 2),  # transverse (anti-diagonal)
        8: np.rot90(d, -1),  # viewers rotate stored 90 deg counter-clockwise
    }[orientation].copy()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def build_corpus(directory: str | Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Write the corpus into `directory`; return (valid, broken) as described above."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    valid: dict[str, tuple[int, int]] = {}
    broken: dict[str, str] = {}
    for name, (data, size) in {**_orientations(), **_colour_modes(), **_animations(), **_plain_and_odd()}.items():
        (out / name).write_bytes(data)
        valid[name] = size
    for name, (data, reason) in _broken().items():
        (out / name).write_bytes(data)
        broken[name] = reason
    return valid, broken


def _orientations() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """EXIF orientations 1..8 (JPEG, as cameras write them): {name: (bytes, (width, height))}."""
    files = {}
    for o in range(1, 9):
        stored = Image.fromarray(stored_for_orientation(card(), o))
        exif = Image.Exif()
        exif[0x0112] = o
        files[f"orient_{o}.jpg"] = (_encode(stored, "JPEG", quality=95, exif=exif.tobytes()), (CARD_W, CARD_H))
    return files


def _colour_modes() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Palette, alpha, CMYK, 16-bit and 1-bit images."""
    # palette PNG, index 0 transparent (left half), index 1 red (right half)
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (10, 0, 20, 10))
    # LA: black, transparent left half
    alpha = Image.new("L", (16, 16), 255)
    alpha.paste(0, (0, 0, 8, 16))
    la = Image.merge("LA", (Image.new("L", (16, 16), 0), alpha))
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)  # 16-bit: the whole 0..65535 range
    bits = (np.indices((9, 17)).sum(axis=0) % 2).astype(bool)  # 1-bit checkerboard
    return {
        "palette_transparent.png": (_encode(pal, "PNG", transparency=0), (20, 10)),
        "gray_alpha.png": (_encode(la, "PNG"), (16, 16)),
        # RGBA: blue at half opacity
        "rgba_half.png": (_encode(Image.new("RGBA", (10, 10), (0, 0, 255, 128)), "PNG"), (10, 10)),
        # CMYK JPEG (as print workflows produce): no cyan, full magenta + yellow = red
        "cmyk.jpg": (_encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG", quality=95), (30, 20)),
        "gray16.png": (_encode(Image.fromarray(np.tile(ramp, (4, 1))), "PNG"), (64, 4)),
        "bilevel.png": (_encode(Image.fromarray(bits), "PNG"), (17, 9)),
    }


def _animations() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Red, green, blue frames: decoding gives the first (red) one; WebP where Pillow has it."""
    frames = [Image.new("RGB", (12, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    files = {
        "animated.gif": (_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
                         (12, 8)),
        "animated.png": (_encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50), (12, 8)),
    }
    if features.check("webp"):
        files["animated.webp"] = (_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
                                  (12, 8))
        files["photo.webp"] = (_encode(Image.fromarray(_noise(21, 33, 1)), "WEBP", lossless=True), (33, 21))
    return files


def _plain_and_odd() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Plain images in every other format, and odd shapes and names."""
    return {
        "gray.jpg": (_encode(Image.new("L", (25, 15), 90), "JPEG"), (25, 15)),
        "tiny.png": (_encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), (1, 1)),
        "very_wide.png": (_encode(Image.fromarray(_noise(2, 4000, 2)), "PNG"), (4000, 2)),
        "UPPER_CASE.JPEG": (_encode(Image.fromarray(_noise(7, 9, 3)), "JPEG"), (9, 7)),
        "rgb_lzw.tiff": (_encode(Image.fromarray(_noise(11, 13, 4)), "TIFF", compression="tiff_lzw"), (13, 11)),
        "float.tif": (_encode(Image.fromarray(np.linspace(0, 1, 40, dtype=np.float32).reshape(5, 8)), "TIFF"), (8, 5)),
        "image.bmp": (_encode(Image.fromarray(_noise(7, 13, 5)), "BMP"), (13, 7)),
        "image.ppm": (_encode(Image.fromarray(_noise(6, 5, 6)), "PPM"), (5, 6)),
        "gray.pgm": (_encode(Image.new("L", (4, 3), 200), "PPM"), (4, 3)),
    }


def _broken() -> dict[str, tuple[bytes, str]]:
    """Files no image decoder should accept: {name: (bytes, what is wrong)}."""
    good_jpeg = _encode(Image.fromarray(_noise(64, 64, 7)), "JPEG")
    good_png = _encode(Image.fromarray(_noise(64, 64, 8)), "PNG")
    return {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) * 6 // 10], "truncated"),
        "truncated.png": (good_png[: len(good_png) * 6 // 10], "truncated"),
        "notes.jpg": (b"these are my holiday notes, not a picture\n", "text"),
        "error_page.jpg": (b"<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n", "HTML"),
        "bomb.png": (_png_header_only(100_000, 100_000), "too large"),
        "over_cap.png": (_png_header_only(9000, 8000), "9000 x 8000"),  # 72 M pixels > the 64 M default cap
        "corrupt_header.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, "corrupt PNG"),
        "zero_width.png": (_png_header_only(0, 10), "zero dimension"),
        "random.jpg": (np.random.default_rng(9).integers(0, 256, 300, dtype=np.uint8).tobytes(), "not an image"),
        # PostScript: Pillow could render it with Ghostscript; we must refuse to.
        "postscript.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not an image"),
    }
