"""Shared fixtures of the web demo tests: a tiny exported model served at 64 px, its gallery,
the tab handlers, stand-ins for the generator and VLM, and awkward upload files."""

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import save_pretrained
from tests.web._web_helpers import RESOLUTION, FakeGenerator, FakeVLM


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An ``ov3-mu`` export (random weights, tiny VAE in vae/)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ov3mu_web")
    save_pretrained(OpenVision3(model_config("ov3-mu")), str(path), card={"trained_on": "nothing"})
    return str(path)


@pytest.fixture(scope="session")
def pipeline(tiny_model):
    import openvision3

    return openvision3.load(tiny_model, device="cpu", resolution=RESOLUTION)


@pytest.fixture(scope="session")
def gallery(tmp_path_factory):
    from openvision3.web.gallery import synthetic_gallery

    return synthetic_gallery(tmp_path_factory.mktemp("gallery"), RESOLUTION, count=6)


@pytest.fixture()
def handlers(pipeline, gallery):
    from openvision3.web.handlers import Handlers
    from openvision3.web.parts import Part

    return Handlers(
        pipeline,
        gallery,
        generator=Part("generator", model=FakeGenerator()),
        vlm=Part("vlm", model=FakeVLM()),
    )


def _rgb(seed: int, size=(48, 40)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture()
def uploads(tmp_path):
    """name -> path: a good PNG, CMYK JPEG, 16-bit PNG, RGBA PNG, animated GIF, a text file
    named .png, a truncated PNG, and a PNG of 1200x1000 pixels (small in bytes)."""
    files = {}

    def put(name):
        files[name] = tmp_path / name
        return files[name]

    Image.fromarray(_rgb(0)).save(put("good.png"))
    Image.fromarray(_rgb(1)).convert("CMYK").save(put("cmyk.jpg"))
    deep = np.random.RandomState(2).randint(0, 65536, (40, 40), dtype=np.uint16)
    Image.fromarray(deep).save(put("deep16.png"))
    rgba = np.random.RandomState(3).randint(0, 256, (40, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(put("rgba.png"))
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "green", "blue")]
    frames[0].save(put("anim.gif"), save_all=True, append_images=frames[1:], duration=100)
    put("notes.png").write_text("this is not an image")
    data = files["good.png"].read_bytes()
    put("broken.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (1200, 1000), "gray").save(put("huge.png"))
    return files
