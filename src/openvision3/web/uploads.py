"""Uploaded files -> RGB PIL images, or one message a person can act on.

The server never trusts an upload: files over the byte or pixel limit, files that are not
images, truncated files and decoder errors all become ``BadUpload`` with a message that names
the file by its original name (never a server path). Odd but readable images are converted by
``data.images.decode_image`` (CMYK, 16-bit, alpha composited on white, EXIF rotation) and the
conversion is reported back as a note; animated images use their first frame.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


class BadUpload(ValueError):
    """An upload the app refuses; the message is shown in the page as it is."""


@dataclass(frozen=True)
class UploadLimits:
    """Largest upload the app accepts: file size in MB (MiB, 2**20 bytes; also enforced by
    Gradio's upload route) and decoded size in megapixels (read from the header, before the
    image is decoded)."""

    max_file_mb: float = 20.0
    max_megapixels: float = 40.0

    def __post_init__(self):
        if self.max_file_mb <= 0 or self.max_megapixels <= 0:
            raise ValueError("upload limits must be positive")

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)


@dataclass
class LoadedImage:
    """A decoded upload: the RGB image and what was done to make it so ("" if nothing)."""

    image: Image.Image
    note: str = ""


def _conversion_note(mode: str, frames: int, fmt: str | None) -> str:
    notes = []
    if frames > 1:
        notes.append(f"animated {fmt or 'image'} with {frames} frames: the first frame is used")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode.startswith("I") or mode == "F":
        notes.append(f"{mode} (high bit depth) scaled to 8-bit RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("transparency composited on white")
    return "; ".join(notes)


def _bomb_pixels(err: Exception) -> int | None:
    match = re.search(r"\((\d+) pixels\)", str(err))
    return int(match.group(1)) if match else None


def _too_large(name: str, size: tuple[int, int] | int | None, limits: UploadLimits) -> str:
    """The megapixel message for an image of ``size`` (width, height), a pixel count, or
    unknown (over PIL's own limit)."""
    if isinstance(size, tuple):
        width, height = size
        what = f"{width}x{height} = {width * height / 1e6:.1f} megapixels"
    elif size is not None:
        what = f"{size / 1e6:.1f} megapixels"
    else:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        what = f"over {limit / 1e6:.0f} megapixels"
    return f"{name!r} is {what}; the limit is {limits.max_megapixels:g} megapixels"


def read_upload(path: str | os.PathLike, name: str, limits: UploadLimits) -> LoadedImage:
    """The file at ``path`` (shown to the user as ``name``) -> ``LoadedImage``.

    Raises ``BadUpload`` for a missing, over-large, non-image, truncated or corrupt file.
    """
    # Imported here: ``openvision3.data`` imports torch, which the page does not need to start.
    from openvision3.data.images import UnreadableImageError, decode_image

    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise BadUpload(f"{name!r} could not be read ({err.strerror})") from err
    if size > limits.max_bytes:
        raise BadUpload(
            f"{name!r} is {size / 2**20:.1f} MB; the limit is {limits.max_file_mb:g} MB per image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                (width, height), mode, fmt = img.size, img.mode, img.format
                frames = getattr(img, "n_frames", 1)
    except Image.DecompressionBombError as err:
        # PIL refuses images over 2 x MAX_IMAGE_PIXELS (179 MP) before we see their size; its
        # message carries the pixel count: "Image size (400000000 pixels) exceeds limit ...".
        raise BadUpload(_too_large(name, _bomb_pixels(err), limits)) from err
    except (UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise BadUpload(f"{name!r} is not an image this app can read ({FORMATS})") from err
    except OSError as err:
        raise BadUpload(f"{name!r} could not be read: {err}") from err
    if width * height > limits.max_pixels:
        raise BadUpload(_too_large(name, (width, height), limits))
    try:
        image = decode_image(path, name=name, max_pixels=limits.max_pixels)
    except UnreadableImageError as err:
        cause = err.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
        raise BadUpload(
            f"{name!r} could not be decoded (truncated or corrupt file; {reason})"
        ) from err
    return LoadedImage(image, _conversion_note(mode, frames, fmt))
