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

    def put(name: str, data: bytes) -> None:
        (out / name).write_bytes(data)

    # EXIF orientations 1..8 (JPEG, as cameras write them)
    for o in range(1, 9):
        stored = Image.fromarray(stored_for_orientation(card(), o))
        exif = Image.Exif()
        exif[0x0112] = o
        put(f"orient_{o}.jpg", _encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
        valid[f"orient_{o}.jpg"] = (CARD_W, CARD_H)

    # palette PNG, index 0 transparent (left half), index 1 red (right half)
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (10, 0, 20, 10))
    put("palette_transparent.png", _encode(pal, "PNG", transparency=0))
    valid["palette_transparent.png"] = (20, 10)

    # LA: black, transparent left half
    alpha = Image.new("L", (16, 16), 255)
    alpha.paste(0, (0, 0, 8, 16))
    la = Image.merge("LA", (Image.new("L", (16, 16), 0), alpha))
    put("gray_alpha.png", _encode(la, "PNG"))
    valid["gray_alpha.png"] = (16, 16)

    # RGBA: blue at half opacity
    put("rgba_half.png", _encode(Image.new("RGBA", (10, 10), (0, 0, 255, 128)), "PNG"))
    valid["rgba_half.png"] = (10, 10)

    # CMYK JPEG (as print workflows produce): no cyan, full magenta + yellow = red
    put("cmyk.jpg", _encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG", quality=95))
    valid["cmyk.jpg"] = (30, 20)

    # 16-bit grayscale PNG: a ramp over the whole 0..65535 range
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    put("gray16.png", _encode(Image.fromarray(np.tile(ramp, (4, 1))), "PNG"))
    valid["gray16.png"] = (64, 4)

    # 1-bit checkerboard
    bits = (np.indices((9, 17)).sum(axis=0) % 2).astype(bool)
    put("bilevel.png", _encode(Image.fromarray(bits), "PNG"))
    valid["bilevel.png"] = (17, 9)

    # animations: red, green, blue frames -> first (red) frame
    frames = [Image.new("RGB", (12, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    put("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0))
    valid["animated.gif"] = (12, 8)
    put("animated.png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50))
    valid["animated.png"] = (12, 8)
    if features.check("webp"):
        put("animated.webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True))
        valid["animated.webp"] = (12, 8)
        put("photo.webp", _encode(Image.fromarray(_noise(21, 33, 1)), "WEBP", lossless=True))
        valid["photo.webp"] = (33, 21)

    # plain and odd-shaped
    put("gray.jpg", _encode(Image.new("L", (25, 15), 90), "JPEG"))
    valid["gray.jpg"] = (25, 15)
    put("tiny.png", _encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    valid["tiny.png"] = (1, 1)
    put("very_wide.png", _encode(Image.fromarray(_noise(2, 4000, 2)), "PNG"))
    valid["very_wide.png"] = (4000, 2)
    put("UPPER_CASE.JPEG", _encode(Image.fromarray(_noise(7, 9, 3)), "JPEG"))
    valid["UPPER_CASE.JPEG"] = (9, 7)
    put("rgb_lzw.tiff", _encode(Image.fromarray(_noise(11, 13, 4)), "TIFF", compression="tiff_lzw"))
    valid["rgb_lzw.tiff"] = (13, 11)
    put("float.tif", _encode(Image.fromarray(np.linspace(0, 1, 40, dtype=np.float32).reshape(5, 8)), "TIFF"))
    valid["float.tif"] = (8, 5)
    put("image.bmp", _encode(Image.fromarray(_noise(7, 13, 5)), "BMP"))
    valid["image.bmp"] = (13, 7)
    put("image.ppm", _encode(Image.fromarray(_noise(6, 5, 6)), "PPM"))
    valid["image.ppm"] = (5, 6)
    put("gray.pgm", _encode(Image.new("L", (4, 3), 200), "PPM"))
    valid["gray.pgm"] = (4, 3)

    # ---------------------------------------------------------------- broken
    put("empty.jpg", b"")
    broken["empty.jpg"] = "empty file"
    good_jpeg = _encode(Image.fromarray(_noise(64, 64, 7)), "JPEG")
    put("truncated.jpg", good_jpeg[: len(good_jpeg) * 6 // 10])
    broken["truncated.jpg"] = "truncated"
    good_png = _encode(Image.fromarray(_noise(64, 64, 8)), "PNG")
    put("truncated.png", good_png[: len(good_png) * 6 // 10])
    broken["truncated.png"] = "truncated"
    put("notes.jpg", b"these are my holiday notes, not a picture\n")
    broken["notes.jpg"] = "text"
    put("error_page.jpg", b"<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n")
    broken["error_page.jpg"] = "HTML"
    put("bomb.png", _png_header_only(100_000, 100_000))
    broken["bomb.png"] = "too large"
    put("over_cap.png", _png_header_only(9000, 8000))  # 72 M pixels > the 64 M default cap
    broken["over_cap.png"] = "9000 x 8000"
    put("corrupt_header.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    broken["corrupt_header.png"] = "corrupt PNG"
    put("zero_width.png", _png_header_only(0, 10))
    broken["zero_width.png"] = "zero dimension"
    put("random.jpg", np.random.default_rng(9).integers(0, 256, 300, dtype=np.uint8).tobytes())
    broken["random.jpg"] = "not an image"
    # PostScript: Pillow could render it with Ghostscript; we must refuse to.
    put("postscript.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    broken["postscript.jpg"] = "not an image"
    return valid, broken
