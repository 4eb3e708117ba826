import pytest
import torch

from openvision3.models.decoder import Decoder, DecoderConfig
from openvision3.models.encoder import Encoder, EncoderConfig
from openvision3.models.presets import model_config


def tiny_encoder(**kw):
    cfg = EncoderConfig(width=32, depth=2, heads=2, embed_dim=16, **kw)
    return Encoder(cfg).eval()


def test_encoder_any_grid_one_set_of_weights():
    enc = tiny_encoder()
    for hw in [(8, 8), (16, 16), (8, 12)]:
        z = torch.randn(2, 16, *hw)
        tokens = enc(z)
        assert tokens.shape == (2, hw[0] * hw[1] // 4, 32)
        assert enc.pool(tokens).shape == (2, 16)


def test_encoder_tokens_are_raw_block_output_and_pool_is_mean_ln_head():
    enc = tiny_encoder()
    z = torch.randn(2, 16, 8, 8)
    x = enc.forward_features(z)
    tokens = enc(z)
    assert torch.equal(tokens, x[:, 1:])  # no final LayerNorm on the unified tokens
    pooled = torch.nn.functional.layer_norm(
        tokens.mean(1), (32,), enc.norm.weight, enc.norm.bias, 1e-6
    )
    assert torch.allclose(enc.pool(tokens), pooled @ enc.head.weight.T, atol=1e-6)
    assert enc.head.bias is None


def test_encoder_position_dependence():
    # Swapping two latent patches must change tokens beyond a permutation (positions matter).
    enc = tiny_encoder()
    z = torch.randn(1, 16, 4, 4)
    z2 = z.clone()
    z2[..., :2, :2], z2[..., 2:, 2:] = z[..., 2:, 2:], z[..., :2, :2]
    t1, t2 = enc(z), enc(z2)
    assert not torch.allclose(t1[:, 0], t2[:, 3], atol=1e-4)


def test_learned_positions_resample():
    enc = tiny_encoder(pos_embed="learned", pos_grid=(4, 4))
    assert enc.pos_embed.shape == (17, 32)
    assert enc(torch.randn(1, 16, 8, 8)).shape == (1, 16, 32)
    assert enc(torch.randn(1, 16, 12, 8)).shape == (1, 24, 32)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="pos_embed"):
        EncoderConfig(pos_embed="rope")
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(width=30, heads=4)


def test_decoder_noise_per_sample_training_only():
    dec = Decoder(DecoderConfig(width=32, depth=1, heads=2, noise_tau=0.8), 32, 16, 2)
    tokens = torch.randn(4, 16, 32)
    dec.eval()
    a, b = dec(tokens, (4, 4)), dec(tokens, (4, 4))
    assert a.shape == (4, 16, 8, 8)
    assert torch.equal(a, b)  # no noise in eval
    # The noise added in training: sigma differs per sample and stays within [0, tau].
    x = torch.nn.functional.layer_norm(tokens, (32,), eps=1e-6)
    torch.manual_seed(0)
    noisy = dec.add_noise(x)
    sigma = (noisy - x).flatten(1).std(dim=1)
    assert sigma.max() < 0.8 * 1.2 and sigma.std() > 0.01
    dec.train()
    torch.manual_seed(1)
    c = dec(tokens, (4, 4))
    assert not torch.allclose(a, c)
    assert torch.equal(dec(tokens, (4, 4), noise=False), a)


def test_decoder_patch_grouping():
    dec = Decoder(DecoderConfig(width=32, depth=1, heads=2, patch_size=2), 24, 16, 2).eval()
    out = dec(torch.randn(2, 16, 24), (4, 4))
    assert out.shape == (2, 16, 8, 8)


def test_b2_encoder_parameter_count_matches_released():
    cfg = model_config("ov3-B/2").encoder
    cfg.pos_embed, cfg.pos_grid = "learned", (16, 16)
    with torch.device("meta"):
        enc = Encoder(cfg)
    n = sum(p.numel() for p in enc.parameters())
    # released ViT-B/2 with E=512: 85.7M (150 tensors)
    assert abs(n - 85.7e6) < 0.05e6, n
    assert len(enc.state_dict()) == 150
