"""Shared fixtures of the inference tests: a tiny exported model and awkward image files."""

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import save_pretrained
from tests.inference._inference_helpers import random_image


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """An ``ov3-mu`` export (random weights, tiny VAE saved in vae/)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ov3mu")
    save_pretrained(OpenVision3(model_config("ov3-mu")), str(path), card={"trained_on": "nothing"})
    return str(path)


@pytest.fixture()
def awkward_folder(tmp_path):
    """5 decodable images (RGB PNG, RGB JPEG in a sub-folder, CMYK JPEG, 16-bit PNG, RGBA PNG)
    and 2 bad files (a truncated PNG, a text file named .jpg)."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    random_image(0).save(root / "good.png")
    random_image(1, (40, 56)).save(root / "sub" / "good2.jpg", quality=95)
    random_image(2).convert("CMYK").save(root / "cmyk.jpg")
    deep = np.random.RandomState(3).randint(0, 65536, (40, 40), dtype=np.uint16)
    Image.fromarray(deep).save(root / "deep16.png")
    rgba = np.random.RandomState(4).randint(0, 256, (40, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    (root / "notes.jpg").write_text("this is not an image")
    data = (root / "good.png").read_bytes()
    (root / "broken.png").write_bytes(data[: len(data) // 2])
    (root / "readme.txt").write_text("ignored: not an image extension")
    assert Image.open(root / "deep16.png").mode.startswith("I")
    assert Image.open(root / "cmyk.jpg").mode == "CMYK"
    return root
