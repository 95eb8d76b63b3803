"""decode_image on a corpus of odd-but-valid and broken files (tests/corpus.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.image_io import ImageDecodeError, decode_image, image_size, is_image_name, to_rgb
from tests.corpus import CARD_H, CARD_W, QUADRANTS, build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    valid, broken = build_corpus(directory)
    return directory, valid, broken


def _read(directory, name):
    return (directory / name).read_bytes()


def test_corpus_is_rich_enough(corpus):
    _, valid, broken = corpus
    assert len(valid) >= 12 and len(broken) >= 8


def test_valid_files_decode(corpus):
    directory, valid, _ = corpus
    for name, (w, h) in valid.items():
        arr = decode_image(_read(directory, name))
        assert arr.dtype == np.uint8 and arr.shape == (h, w, 3), name
        assert arr.flags.c_contiguous and arr.flags.writeable, name
        assert image_size(_read(directory, name)) == (w, h), name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(corpus, orientation):
    directory, _, _ = corpus
    arr = decode_image(_read(directory, f"orient_{orientation}.jpg"))
    probes = {
        "top_left": arr[CARD_H // 4, CARD_W // 4],
        "top_right": arr[CARD_H // 4, 3 * CARD_W // 4],
        "bottom_left": arr[3 * CARD_H // 4, CARD_W // 4],
        "bottom_right": arr[3 * CARD_H // 4, 3 * CARD_W // 4],
    }
    for quadrant, colour in QUADRANTS.items():
        assert np.abs(probes[quadrant].astype(int) - colour).max() < 30, (orientation, quadrant, probes[quadrant])


def test_pixel_policies(corpus):
    directory, _, _ = corpus
    pal = decode_image(_read(directory, "palette_transparent.png"))
    assert (pal[:, :10] == 255).all() and (pal[:, 10:] == [255, 0, 0]).all()  # transparent -> white
    la = decode_image(_read(directory, "gray_alpha.png"))
    assert (la[:, :8] == 255).all() and (la[:, 8:] == 0).all()
    rgba = decode_image(_read(directory, "rgba_half.png"))
    assert (rgba == [127, 127, 255]).all()  # 50% blue over white
    cmyk = decode_image(_read(directory, "cmyk.jpg"))
    assert np.abs(cmyk.astype(int) - [255, 0, 0]).max() < 10
    gray16 = decode_image(_read(directory, "gray16.png"))[0, :, 0]
    expected = np.rint(np.linspace(0, 65535, 64).round() * 255 / 65535)
    assert np.abs(gray16.astype(int) - expected).max() <= 1  # scaled, not clipped at 255
    assert len(np.unique(gray16)) == 64
    assert (decode_image(_read(directory, "animated.gif")) == [255, 0, 0]).all()  # first frame
    assert (decode_image(_read(directory, "animated.png")) == [255, 0, 0]).all()
    bits = decode_image(_read(directory, "bilevel.png"))
    assert set(np.unique(bits)) == {0, 255}
    flt = decode_image(_read(directory, "float.tif"))
    assert flt[0, 0, 0] == 0 and flt[-1, -1, 0] == 255


def test_broken_files_raise_readable_errors(corpus):
    directory, _, broken = corpus
    for name, reason in broken.items():
        with pytest.raises(ImageDecodeError) as info:
            decode_image(_read(directory, name))
        assert reason in str(info.value), (name, str(info.value))
        assert isinstance(info.value, ValueError)


def test_pixel_cap_checked_before_decoding():
    big = io.BytesIO()
    Image.new("L", (300, 200)).save(big, "PNG")
    with pytest.raises(ImageDecodeError, match="300 x 200"):
        decode_image(big.getvalue(), max_pixels=50_000)
    assert decode_image(big.getvalue(), max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(ImageDecodeError, match="too large"):
        image_size(big.getvalue(), max_pixels=100)


def test_truncation_is_an_error_even_if_globally_allowed(corpus):
    directory, _, _ = corpus
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as some other library might set it
    try:
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(_read(directory, "truncated.jpg"))
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def test_image_size_is_cheap_and_oriented(corpus):
    directory, _, _ = corpus
    stored = Image.open(io.BytesIO(_read(directory, "orient_6.jpg"))).size
    assert stored == (CARD_H, CARD_W)  # stored rotated...
    assert image_size(_read(directory, "orient_6.jpg")) == (CARD_W, CARD_H)  # ...reported as shown
    assert image_size(_read(directory, "over_cap.png")) == (9000, 8000)  # header only, no pixels
    with pytest.raises(ImageDecodeError):
        image_size(b"")


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("LAB", (128, 128, 128), (119, 119, 119)),
        ("L", (7,), (7, 7, 7)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("RGBa", (0, 0, 128, 128), (127, 127, 255)),
        ("PA", None, (255, 255, 255)),
        ("La", (0, 0), (255, 255, 255)),
        ("I", (65535,), (255, 255, 255)),
        ("I;16B", (257,), (1, 1, 1)),
    ],
)
def test_to_rgb_modes(mode, value, expected):
    im = Image.new(mode, (3, 2)) if value is None else Image.new(mode, (3, 2), value)
    arr = to_rgb(im)
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8
    assert np.abs(arr[0, 0].astype(int) - expected).max() <= 2, arr[0, 0]


def test_wide_range_int_and_float_images_are_rescaled():
    ints = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert to_rgb(ints)[0, :, 0].tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[np.nan, -2.0, 2.0]], dtype=np.float32))
    assert to_rgb(floats)[0, :, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "name, ok",
    [("a.JPG", True), ("s3://b/x/y.jpeg", True), ("p.Tiff", True), ("x.webp", True), ("x.pbm", True),
     ("x.txt", False), ("x.jpg.txt", False), ("jpg", False), ("dir.jpg/file", False), (".png", False)],
)
def test_is_image_name(name, ok):
    assert is_image_name(name) is ok
