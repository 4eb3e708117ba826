"""Helpers of the web demo tests: the served resolution and stand-ins for the generator and
the VLM with the agreed Python APIs (the packages' own tests cover the real ones)."""

import torch

RESOLUTION = 64


class FakeGenerator:
    """Stand-in with the generation package's API: ``class_names`` and ``sample``."""

    class_names = ["red circle", "blue square"]

    def __init__(self):
        self.calls = []

    def sample(self, labels, *, cfg_scale, steps, sampler="euler", seed=0):
        # the generation API takes class indices (B,), as load_generator's Generator does
        labels = torch.as_tensor(labels, dtype=torch.long)
        assert labels.ndim == 1 and int(labels.max()) < len(self.class_names), labels
        self.calls.append(dict(labels=labels, cfg_scale=cfg_scale, steps=steps, sampler=sampler))
        g = torch.Generator().manual_seed(seed)
        return torch.rand(len(labels), 3, 32, 32, generator=g) * 2 - 1  # (B, 3, H, W) in [-1, 1]


class FakeVLM:
    """Stand-in with the understanding package's API: ``generate(images, questions)``."""

    def generate(self, images, questions, max_new_tokens=32):
        return [
            f"a {im.size[0]}x{im.size[1]} image; you asked: {q}" for im, q in zip(images, questions)
        ]


def header_only_png(path, width: int, height: int):
    """A PNG that declares ``width`` x ``height`` pixels and holds no pixel data: enough for
    anything that reads the header (a 400-megapixel image in 60 bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path
