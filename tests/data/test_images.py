"""decode_image: every odd format comes out as 8-bit RGB; bad input raises a named error."""

import io

import numpy as np
import pytest
from PIL import Image

from openvision3.data.images import UnreadableImageError, decode_image


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_of(data, **kw):
    img = decode_image(data, "k", **kw)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def test_cmyk_jpeg():
    cmyk = Image.new("RGB", (24, 16), (200, 50, 10)).convert("CMYK")
    px = rgb_of(encode(cmyk, "JPEG", quality=95))
    assert px.shape == (16, 24, 3)
    assert np.abs(px[8, 12] - [200, 50, 10]).max() <= 8


def test_transparency_is_composited_on_white():
    assert (rgb_of(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG")) == 255).all()
    half = rgb_of(encode(Image.new("LA", (8, 8), (0, 128)), "PNG"))
    assert np.abs(half - 127).max() <= 1
    pal = Image.new("RGBA", (8, 8), (0, 0, 255, 0)).convert("P")
    assert "transparency" in Image.open(io.BytesIO(encode(pal, "PNG"))).info
    assert (rgb_of(encode(pal, "PNG")) == 255).all()
    opaque = rgb_of(encode(Image.new("RGBA", (8, 8), (10, 20, 30, 255)), "PNG"))
    assert (opaque == [10, 20, 30]).all()


def test_16_bit_is_scaled_not_clipped():
    arr = np.array([[0, 40000, 65535]], dtype=np.uint16)
    px = rgb_of(encode(Image.fromarray(arr), "PNG"))
    assert px[0, :, 0].tolist() == [0, 156, 255]  # 40000 / 257 = 155.6


def test_grayscale_and_path_input(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (5, 7), 77).save(path)
    px = rgb_of(str(path))
    assert px.shape == (7, 5, 3) and (px == 77).all()


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all" * 5, b"\x89PNG\r\n\x1a\n" + b"\0" * 30]
)
def test_garbage_raises_named_error(data):
    with pytest.raises(UnreadableImageError, match="sample-42"):
        decode_image(data, "sample-42")


def test_truncated_jpeg_raises():
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    with pytest.raises(UnreadableImageError, match="cut.jpg"):
        decode_image(data[: len(data) // 2], "cut.jpg")


def test_huge_images_are_drafted_or_refused():
    data = encode(Image.new("RGB", (2000, 1000), (1, 2, 3)), "JPEG")
    small = decode_image(data, "big", draft_size=100)
    assert min(small.size) >= 100 and small.size[0] <= 500  # JPEG decoded at 1/4 or 1/8
    with pytest.raises(UnreadableImageError, match="too large"):
        decode_image(encode(Image.new("L", (200, 200)), "PNG"), "big.png", max_pixels=10_000)
