"""Uploads: every odd or bad file gives an RGB image with a note, or one clear message."""

import pytest

from openvision3.web.uploads import BadUpload, UploadLimits, read_upload
from tests.web._web_helpers import header_only_png

LIMITS = UploadLimits(max_file_mb=1.0, max_megapixels=1.0)


def test_good_image_has_no_note(uploads):
    loaded = read_upload(uploads["good.png"], "good.png", LIMITS)
    assert loaded.image.mode == "RGB" and loaded.image.size == (48, 40)
    assert loaded.note == ""


@pytest.mark.parametrize(
    "name, note",
    [
        ("cmyk.jpg", "CMYK converted to RGB"),
        ("deep16.png", "scaled to 8-bit RGB"),
        ("rgba.png", "transparency composited on white"),
        ("anim.gif", "animated GIF with 3 frames: the first frame is used"),
    ],
)
def test_odd_images_are_converted_and_say_so(uploads, name, note):
    loaded = read_upload(uploads[name], name, LIMITS)
    assert loaded.image.mode == "RGB"
    assert note in loaded.note


def test_animated_image_uses_its_first_frame(uploads):
    image = read_upload(uploads["anim.gif"], "anim.gif", LIMITS).image
    assert image.getpixel((20, 20)) == (255, 0, 0)


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.png", "'notes.png' is not an image this app can read"),
        ("broken.png", "'broken.png' could not be decoded (truncated or corrupt file"),
        ("huge.png", "'huge.png' is 1200x1000 = 1.2 megapixels; the limit is 1 megapixels"),
    ],
)
def test_bad_files_give_one_clear_message(uploads, name, message):
    with pytest.raises(BadUpload) as err:
        read_upload(uploads[name], name, LIMITS)
    assert message in str(err.value)
    assert str(uploads[name].parent) not in str(err.value)  # no server path in the page


def test_file_over_the_byte_limit_is_refused_before_opening(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 1_600_000)  # not even an image: the size check comes first
    with pytest.raises(BadUpload, match=r"'big.png' is 1.5 MB; the limit is 1 MB per image"):
        read_upload(big, "big.png", LIMITS)


def test_missing_file(tmp_path):
    with pytest.raises(BadUpload, match="could not be read"):
        read_upload(tmp_path / "gone.png", "gone.png", LIMITS)


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        UploadLimits(max_file_mb=0)


@pytest.mark.parametrize(
    "width, height, message",
    [
        (13_000, 12_000, "'big.png' is 13000x12000 = 156.0 megapixels; the limit is 1 megapixels"),
        # over PIL's own limit (2 x MAX_IMAGE_PIXELS, 179 MP): PIL refuses it before we see it
        (20_000, 20_000, "'big.png' is 400.0 megapixels; the limit is 1 megapixels"),
    ],
)
def test_huge_images_get_the_megapixel_message(tmp_path, width, height, message):
    path = header_only_png(tmp_path / "big.png", width, height)
    with pytest.raises(BadUpload) as err:
        read_upload(path, "big.png", LIMITS)
    assert str(err.value) == message
