"""One transform for train/eval/inference; to_uint8 rounds."""

import pytest
import torch
from PIL import Image

from openvision3.data.transforms import ImageTransformConfig, build_transform, from_uint8, to_uint8


def test_to_uint8_rounds_not_truncates():
    x = torch.tensor([200.6 / 127.5 - 1.0, 10.4 / 127.5 - 1.0, -1.5, 1.5])
    assert to_uint8(x).tolist() == [201, 10, 0, 255]  # truncation would give 200 for the first


def test_uint8_round_trip_is_exact():
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(levels)), levels)
    img = Image.fromarray(levels.reshape(16, 16, 1).expand(16, 16, 3).numpy())
    x = build_transform(ImageTransformConfig(resolution=16), train=False)(img)
    assert torch.equal(to_uint8(x)[0], levels.reshape(16, 16))


@pytest.mark.parametrize("policy", ["center_crop", "resize", "pad"])
def test_policies_shape_and_range(policy):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    x = build_transform(ImageTransformConfig(resolution=16, resize=policy), train=False)(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    corner = x[:, 0, 0]
    if policy == "pad":  # letterbox: top rows are grey padding, the middle is the image
        assert corner.abs().max() < 0.01
        assert torch.allclose(x[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))
    else:
        assert torch.allclose(corner, torch.tensor([1.0, -1.0, -1.0]))


def test_train_randomness_only_when_asked():
    img = Image.effect_noise((48, 32), 60).convert("RGB")
    cfg = ImageTransformConfig(resolution=16, crop_scale=(0.3, 0.6), hflip=0.5)
    ev = build_transform(cfg, train=False)
    assert torch.equal(ev(img), ev(img))
    tr = build_transform(cfg, train=True)
    torch.manual_seed(0)
    a = tr(img)
    torch.manual_seed(0)
    assert torch.equal(a, tr(img))
    assert any(not torch.equal(a, tr(img)) for _ in range(5))


def test_config_validation():
    for bad in [
        dict(resize="stretch"),
        dict(crop_scale=(0.5, 0.2)),
        dict(hflip=2.0),
        dict(resolution=0),
    ]:
        with pytest.raises(ValueError):
            ImageTransformConfig(**bad)
