"""The whole model: gradients, the pixel path through the frozen VAE, overfitting, round trip."""

import pytest
import torch

from openvision3.losses.objective import Objective, ObjectiveConfig
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import load_pretrained, save_pretrained
from openvision3.tokenizer import Tokenizer


def tiny_batch(b=4, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = Tokenizer(32)
    words = ["red circle", "blue square", "green star", "small yellow heart", "black ring"]
    texts = [words[i % len(words)] for i in range(b)]
    caps = [f"a picture of a {t} in the middle" for t in texts]
    return {
        "images": torch.rand(b, 3, res, res, generator=g) * 2 - 1,
        "text": tok(texts),
        "text_2": tok(caps),
        "caption": tok(caps),
    }


@pytest.fixture
def model():
    torch.manual_seed(0)
    return OpenVision3(model_config("ov3-mu"))


def test_forward_shapes(model):
    out = model(tiny_batch())
    assert out["image_embeds"].shape == (4, 16) and out["text_embeds"].shape == (4, 16)
    assert out["latents"].shape == out["latents_hat"].shape == (4, 16, 4, 4)
    assert out["images_hat"].shape == (4, 3, 32, 32)
    assert out["caption_logits"].shape == (4, 31, 49408)
    assert model.logit_scale.shape == (1,)
    assert model.encode(tiny_batch()["images"]).shape == (4, 4, 32)


def test_every_trainable_parameter_gets_a_finite_gradient(model):
    model.train()
    total, terms = Objective(ObjectiveConfig())(model(tiny_batch()))
    total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        else:
            assert name.startswith("vae."), name
            assert p.grad is None, name
    assert {"loss", "rec", "und", "contrastive", "caption", "pixel_l1", "latent_l1"} <= set(terms)


def test_pixel_loss_reaches_encoder_through_frozen_vae_decoder(model):
    out = model(tiny_batch(), contrastive=False, caption=False)
    assert set(out) == {"latents", "latents_hat", "images", "images_hat"}
    pixel = (out["images"] - out["images_hat"]).abs().mean()
    pixel.backward()
    g = model.encoder.blocks[0].attn.qkv.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())


def test_branch_flags_skip_heads(model):
    out = model(tiny_batch(), reconstruction=False, caption=False)
    assert "images_hat" not in out and "caption_logits" not in out and "image_embeds" in out


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = OpenVision3(model_config("ov3-mu"))
    model.train()
    objective = Objective(ObjectiveConfig())
    batch = tiny_batch(b=4, res=32)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(100):
        loss, terms = objective(model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else {k: float(v) for k, v in terms.items()}
    last = {k: float(v) for k, v in terms.items()}
    assert last["loss"] < first["loss"] / 8, (first, last)
    assert last["caption"] < first["caption"] / 10, (first, last)
    assert last["contrastive"] < first["contrastive"] / 10, (first, last)
    assert last["latent_l1"] < first["latent_l1"] / 3, (first, last)


def test_save_pretrained_round_trip(tmp_path, model):
    model.eval()
    save_pretrained(model, str(tmp_path / "export"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "model_card.json",
        "vae",
    ]
    loaded = load_pretrained(str(tmp_path / "export"))
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.equal(model.encode(batch["images"]), loaded.encode(batch["images"]))
        assert torch.equal(model.embed_text(batch["text"]), loaded.embed_text(batch["text"]))
        assert torch.equal(model.reconstruct(batch["images"]), loaded.reconstruct(batch["images"]))
    assert model.caption(batch["images"][:2], max_len=6) == loaded.caption(
        batch["images"][:2], max_len=6
    )
    # latent-only loading
    latent_only = load_pretrained(str(tmp_path / "export"), vae=None)
    z = torch.randn(1, 16, 4, 4)
    assert torch.equal(latent_only.encode_latents(z), model.encode_latents(z))


def test_config_mismatch_is_a_clear_error():
    cfg = model_config("ov3-mu")
    cfg.text.embed_dim = 8
    with pytest.raises(ValueError, match="embed_dim"):
        cfg.__post_init__()
