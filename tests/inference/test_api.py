"""The Pipeline API: flexible inputs, export -> load round trip, methods' shapes."""

import io
import json
import os

import numpy as np
import pytest
import torch

from openvision3.data.transforms import from_uint8
from openvision3.inference.api import Pipeline, PipelineConfig, load
from openvision3.inference.bench import open_clip_vit
from openvision3.models.encoder import Encoder, EncoderConfig
from openvision3.models.vae import MissingWeightsError
from openvision3.pretrained import load_pretrained, save_pretrained
from tests.inference._inference_helpers import RES, random_image


@pytest.fixture(scope="module")
def pipe(model_dir):
    return load(model_dir, device="cpu", resolution=RES)


def test_every_input_type_gives_the_same_tokens(pipe, tmp_path):
    img = random_image(0, size=(RES, RES))
    path = tmp_path / "a.png"
    img.save(path)
    arr = np.asarray(img)  # (H, W, 3) uint8
    chw = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W) uint8
    inputs = {
        "path": str(path),
        "pathlib": path,
        "bytes": path.read_bytes(),
        "numpy": arr,
        "uint8": chw,
        "float": from_uint8(chw),
        "batch4d": chw[None],
    }
    ref = pipe.encode(img)
    assert ref.shape == (1, 4, 32) and ref.dtype == torch.float32
    for name, x in inputs.items():
        assert torch.allclose(pipe.encode(x), ref, atol=1e-6), name
    other = pipe.encode(random_image(1, size=(RES, RES)))
    assert (other - ref).abs().max() > 1e-3  # the comparison can fail


def test_any_size_goes_through_the_training_transform(pipe):
    big = random_image(5, size=(80, 48))  # not square, not the target size
    as_tensor = torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1)
    a = pipe.encode([big, big])
    assert a.shape == (2, 4, 32)
    assert torch.allclose(pipe.encode(from_uint8(as_tensor)), a[:1], atol=1e-6)
    padded = Pipeline(pipe.model, PipelineConfig(resolution=RES, resize="pad")).encode(big)
    assert (padded - a[:1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="multiple of the pixel patch"):
        Pipeline(pipe.model, PipelineConfig(resolution=RES + 8))


def test_methods(pipe):
    imgs = [random_image(i, size=(40, 40)) for i in range(2)]
    tokens = pipe.encode(imgs)
    grid = pipe.tokens_to_grid(tokens)  # (B, D, h, w)
    assert grid.shape == (2, 32, 2, 2)
    assert torch.equal(grid[:, :, 1, 0], tokens[:, 2])  # row-major: (i, j) -> i * w + j
    assert pipe.decode(tokens).shape == (2, 3, RES, RES)
    recon = pipe.reconstruct(imgs)
    assert recon.shape == (2, 3, RES, RES) and recon.abs().max() <= 1
    assert [im.size for im in pipe.to_pil(recon)] == [(RES, RES)] * 2
    emb = pipe.embed_image(imgs)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    text = pipe.embed_text(["a cat", "a dog", "a car"])
    assert text.shape == (3, 16)
    probs = pipe.zero_shot(imgs, ["cat", "dog", "car"])
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        scale = pipe.model.logit_scale.exp()
    expected = scale * emb @ pipe.class_weights(["cat", "dog", "car"]).t()
    assert torch.allclose(probs, expected.softmax(-1), atol=1e-5)
    caps = pipe.caption(imgs, max_len=6)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    _, pooled = pipe.encode_with_pooled(imgs)
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), emb, atol=1e-5)


def test_export_load_round_trip_offline(tmp_path, model_dir):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    original = load_pretrained(model_dir)
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    out = tmp_path / "export"
    save_pretrained(original, str(out), card={"dataset": "synthetic"})
    card = json.loads((out / "model_card.json").read_text())
    assert card["dataset"] == "synthetic" and card["vae"]["convention"] == "ov3"
    loaded = load(str(out), device="cpu", resolution=RES)
    with torch.no_grad():
        ref = original.encode(x)
    assert torch.equal(loaded.encode(x), ref)
    with pytest.raises(MissingWeightsError, match="neither a local directory"):
        load("nobody/no-such-openvision3-model", device="cpu")


def test_version_1_exports_keep_their_caption_decoder(tmp_path, model_dir):
    """Exports written before caption.image_pos existed load with the prefix they were
    trained with ("none"), not the newer default."""
    original = load_pretrained(model_dir)
    assert original.cfg.caption is not None
    out = tmp_path / "export"
    save_pretrained(original, str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["version"] == 2
    assert load_pretrained(str(out)).cfg.caption.image_pos == "sincos"
    config["version"] = 1
    del config["model"]["caption"]["image_pos"]
    (out / "config.json").write_text(json.dumps(config))
    assert load_pretrained(str(out)).cfg.caption.image_pos == "none"


def test_load_runs_at_the_resolution_the_export_was_trained_at(tmp_path, model_dir):
    """``save_pretrained(resolution=...)`` records it; ``load`` defaults to it. Exports
    without it (written before it existed) keep the position grid's default (256 px)."""
    model = load_pretrained(model_dir)
    out = tmp_path / "export"
    save_pretrained(model, str(out), resolution=64)
    assert json.loads((out / "config.json").read_text())["resolution"] == 64
    assert json.loads((out / "model_card.json").read_text())["resolution"] == 64
    pipe = load(str(out), device="cpu")
    assert pipe.resolution == 64 and pipe.token_grid() == (4, 4)
    assert pipe.encode(random_image(0)).shape == (1, (64 // 16) ** 2, 32)
    assert load(str(out), device="cpu", resolution=RES).resolution == RES  # asked for: wins
    assert "resolution" not in json.loads(open(os.path.join(model_dir, "config.json")).read())
    assert load(model_dir, device="cpu").resolution == 16 * 16
    with pytest.raises(ValueError, match="multiple of 16"):
        save_pretrained(model, str(tmp_path / "bad"), resolution=40)


def test_open_clip_reference_matches_our_encoder():
    """The bench's released-recipe ViT is our encoder in open_clip's layout (sin-cos and
    learned tables, native and other grids)."""
    for pos in ("sincos", "learned"):
        enc = Encoder(
            EncoderConfig(width=32, depth=2, heads=2, embed_dim=8, pos_embed=pos, pos_grid=(2, 2))
        )
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(0.02 * torch.randn_like(p))
        for grid in ((2, 2), (3, 3)):
            z = torch.randn(2, 16, 2 * grid[0], 2 * grid[1])
            vit = open_clip_vit(enc, grid)
            with torch.no_grad():
                pooled, tokens = vit(z)
                assert (tokens - enc(z)).abs().max() < 1e-5
                assert (pooled - enc.pool(enc(z))).abs().max() < 1e-5


def test_bytes_io_and_bad_inputs(pipe):
    buf = io.BytesIO()
    random_image(3, size=(RES, RES)).save(buf, format="PNG")
    assert pipe.encode(buf.getvalue()).shape == (1, 4, 32)
    from openvision3.data.images import UnreadableImageError

    with pytest.raises(UnreadableImageError):
        pipe.encode(b"not an image")
    with pytest.raises(ValueError, match="uint8"):
        pipe.encode(np.zeros((8, 8, 3), dtype=np.float64))
