"""Helpers of the inference tests (fixtures are in conftest.py)."""

import numpy as np
from PIL import Image

RES = 32  # pixels; the ov3-mu grid at 32 px is 2 x 2 tokens
GOOD = ["cmyk.jpg", "deep16.png", "good.png", "rgba.png", "sub/good2.jpg"]
BAD = ["broken.png", "notes.jpg"]


def random_image(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)
