"""Parity with the authors' released encoders (``UCSC-VLAA/openvision3-vit-*``): an open_clip
``VisionTransformer`` on 16-channel latents (patch conv without bias, no ``ln_pre``, average
pooling, LayerNorm eps 1e-6), loaded through ``pretrained.convert_released_state_dict``."""

import json
from functools import partial

import pytest
import torch
from open_clip.transformer import LayerNorm, VisionTransformer
from torch import nn

from openvision3.models.openvision3 import MissingComponentError
from openvision3.pretrained import load_pretrained


def upstream_vit(width=768, layers=12, heads=12, grid=16, embed_dim=512):
    vit = VisionTransformer(
        image_size=grid * 2,
        patch_size=2,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=4,
        no_ln_pre=True,
        pool_type="avg",
        final_ln_after_pool=True,
        output_tokens=True,
        output_dim=embed_dim,
        norm_layer=partial(LayerNorm, eps=1e-6),
    )
    vit.conv1 = nn.Conv2d(16, width, 2, 2, bias=False)
    with torch.no_grad():  # open_clip's init leaves LN affines and biases trivial: perturb them
        for p in vit.parameters():
            if p.ndim == 1:
                p.add_(0.02 * torch.randn_like(p))
    return vit.eval()


def write_released(tmp_path, vit, prefix="visual.", **vision_extra):
    width = vit.conv1.out_channels
    vision = {
        "image_size": vit.grid_size[0] * 2,
        "patch_size": 2,
        "width": width,
        "layers": len(vit.transformer.resblocks),
        "head_width": 64,
        "mlp_ratio": 4,
        "no_ln_pre": True,
        "pool_type": "avg",
        "final_ln_after_pool": True,
        "output_tokens": True,
        "in_channels": 16,
        "norm_kwargs": {"eps": 1e-6},
    }
    vision.update(vision_extra)
    cfg = {"model_cfg": {"embed_dim": vit.proj.shape[1], "vision_cfg": vision}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    sd = {prefix + k: v for k, v in vit.state_dict().items()}
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    return tmp_path


def test_released_b2_parity(tmp_path):
    vit = upstream_vit()
    assert len(vit.state_dict()) == 150
    model = load_pretrained(str(write_released(tmp_path, vit, "visual.")), vae=None)
    latents = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        pooled_ref, tokens_ref = vit(latents)
        tokens = model.encode_latents(latents)
        pooled = model.embed_latents(latents)
    assert tokens.shape == (2, 256, 768)
    assert (tokens - tokens_ref).abs().max() <= 1e-5
    assert (pooled - pooled_ref).abs().max() <= 1e-5
    with pytest.raises(MissingComponentError, match="only the encoder"):
        model.decode(tokens)
    with pytest.raises(MissingComponentError, match="text encoder"):
        model.embed_text(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(MissingComponentError, match="VAE"):
        model.encode(torch.zeros(1, 3, 64, 64))


def test_released_unprefixed_keys_and_other_grid(tmp_path):
    vit = upstream_vit(width=64, layers=2, heads=1, grid=8, embed_dim=32)
    model = load_pretrained(str(write_released(tmp_path, vit, prefix="")), vae=None)
    latents = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        pooled_ref, tokens_ref = vit(latents)
        assert (model.encode_latents(latents) - tokens_ref).abs().max() <= 1e-5
        assert (model.embed_latents(latents) - pooled_ref).abs().max() <= 1e-5
    tokens = model.encode_latents(torch.randn(1, 16, 24, 24))  # 12x12 grid from an 8x8 table
    assert tokens.shape == (1, 144, 64) and torch.isfinite(tokens).all()


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"pool_type": "tok"}, "pool_type"),
        ({"ls_init_value": 0.1}, "ls_init_value"),
        ({"frobnicate": 1}, "unsupported vision_cfg field"),
        ({"width": 96}, "width=96"),
    ],
)
def test_released_refuses_unsupported_fields(tmp_path, extra, match):
    vit = upstream_vit(width=64, layers=1, heads=1, grid=4, embed_dim=32)
    with pytest.raises(ValueError, match=match):
        load_pretrained(str(write_released(tmp_path, vit, **extra)), vae=None)


def test_missing_model_is_a_clear_error(tmp_path):
    from openvision3.models.vae import MissingWeightsError

    with pytest.raises(FileNotFoundError, match="is an empty folder, not an OpenVision 3"):
        load_pretrained(str(tmp_path))
    with pytest.raises(MissingWeightsError, match="huggingface-cli download"):
        load_pretrained("UCSC-VLAA/openvision3-vit-base-patch2-32")
