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


# Layer taps (timm's forward_intermediates, CLIP's hidden_states) against a manual loop.


def deep_encoder():
    torch.manual_seed(0)
    return Encoder(EncoderConfig(width=32, depth=4, heads=2, embed_dim=16)).eval()


def manual_states(enc, z):
    """Embedding output then every block's output, each (B, 1 + N, D), written out by hand."""
    x = enc.patch_embed(z)
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([enc.cls_token.expand(x.shape[0], 1, -1), x], dim=1)
    states = [x + enc.position_table(grid, x.device, x.dtype)]
    for block in enc.blocks:
        states.append(block(states[-1]))
    return states


@pytest.mark.parametrize(
    "indices, blocks",
    [
        (None, [0, 1, 2, 3]),
        (2, [2, 3]),  # int: the last n
        ([0, 2], [0, 2]),
        ([-1], [3]),
        ([-2], [2]),  # LLaVA's penultimate layer
        ([3, 0], [0, 3]),  # block order, as timm
        ([-3, 1], [1]),  # the same block once
    ],
)
def test_forward_intermediates_select_blocks(indices, blocks):
    enc = deep_encoder()
    z = torch.randn(2, 16, 8, 12)
    ref = manual_states(enc, z)
    final, taps = enc.forward_intermediates(z, indices=indices)
    assert torch.equal(final, enc.forward_features(z))  # (B, 1 + N, D), no norm
    assert len(taps) == len(blocks)
    for tap, i in zip(taps, blocks):
        assert tap.shape == (2, 24, 32)
        assert torch.equal(tap, ref[i + 1][:, 1:])
    only = enc.forward_intermediates(z, indices=indices, intermediates_only=True)
    assert isinstance(only, list) and all(torch.equal(a, b) for a, b in zip(only, taps))


def test_forward_intermediates_nchw_is_row_major_grid():
    enc = deep_encoder()
    z = torch.randn(2, 16, 8, 12)  # grid 4 x 6: h != w, so a swapped reshape fails
    nlc = enc.forward_intermediates(z, indices=[1], intermediates_only=True)[0]
    nchw = enc.forward_intermediates(z, indices=[1], output_fmt="NCHW", intermediates_only=True)[0]
    assert nchw.shape == (2, 32, 4, 6) and nchw.is_contiguous()
    for r in range(4):
        for c in range(6):
            assert torch.equal(nchw[:, :, r, c], nlc[:, r * 6 + c])


def test_forward_intermediates_prefix_tokens_and_norm():
    enc = deep_encoder()
    z = torch.randn(2, 16, 8, 8)
    ref = manual_states(enc, z)
    pairs = enc.forward_intermediates(
        z, indices=[0, -1], return_prefix_tokens=True, intermediates_only=True
    )
    for (patch, cls), i in zip(pairs, [0, 3]):
        assert cls.shape == (2, 1, 32)
        assert torch.equal(cls, ref[i + 1][:, :1])
        assert torch.equal(patch, ref[i + 1][:, 1:])
    (patch, cls), *_ = enc.forward_intermediates(
        z, indices=[0], output_fmt="NCHW", return_prefix_tokens=True, intermediates_only=True
    )
    assert patch.shape == (2, 32, 4, 4) and torch.equal(cls, ref[1][:, :1])
    # norm=True: self.norm on every token of each tap; the final features stay raw.
    final, taps = enc.forward_intermediates(z, indices=[2], norm=True)
    assert torch.equal(taps[0], enc.norm(ref[3])[:, 1:])
    assert not torch.allclose(taps[0], ref[3][:, 1:])
    assert torch.equal(final, ref[-1])


def test_forward_intermediates_stop_early_skips_later_blocks():
    enc = deep_encoder()
    z = torch.randn(2, 16, 8, 8)
    calls = []
    for i, block in enumerate(enc.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    full = enc.forward_intermediates(z, indices=[0, 1], intermediates_only=True)
    assert calls == [0, 1, 2, 3]
    calls.clear()
    final, early = enc.forward_intermediates(z, indices=[0, 1], stop_early=True)
    assert calls == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(early, full))
    assert torch.equal(final[:, 1:], early[-1])  # as timm: the last block run


@pytest.mark.parametrize("indices", [0, 5, [4], [-5], [], [0, 4]])
def test_forward_intermediates_out_of_range_is_a_clear_error(indices):
    enc = deep_encoder()
    with pytest.raises(ValueError, match="out of range|empty"):
        enc.forward_intermediates(torch.randn(1, 16, 4, 4), indices=indices)


def test_forward_intermediates_bad_arguments():
    enc = deep_encoder()
    z = torch.randn(1, 16, 4, 4)
    with pytest.raises(ValueError, match="output_fmt"):
        enc.forward_intermediates(z, output_fmt="NHWC")
    with pytest.raises(TypeError, match="bool"):
        enc.forward_intermediates(z, indices=True)
    with pytest.raises(TypeError, match="not an int"):
        enc.forward_intermediates(z, indices=[1.0])


def test_hidden_states_clip_convention():
    enc = deep_encoder()
    z = torch.randn(2, 16, 8, 12)
    ref = manual_states(enc, z)
    states = enc.hidden_states(z)
    assert len(states) == enc.cfg.depth + 1
    assert all(s.shape == (2, 24, 32) for s in states)
    assert torch.equal(states[0], ref[0][:, 1:])  # embedding output, before any block
    for s, r in zip(states, ref):
        assert torch.equal(s, r[:, 1:])
    assert torch.equal(states[-1], enc(z))  # the unified tokens, exactly
    tap = enc.forward_intermediates(z, indices=[-2], intermediates_only=True)[0]
    assert torch.equal(states[-2], tap)
    with_cls = enc.hidden_states(z, include_prefix=True)
    assert len(with_cls) == 5 and with_cls[0].shape == (2, 25, 32)
    for s, r in zip(with_cls, ref):
        assert torch.equal(s, r)
    assert torch.equal(with_cls[-1], enc.forward_features(z))


def test_prune_intermediate_layers():
    enc = deep_encoder()
    cfg = enc.cfg
    z = torch.randn(2, 16, 8, 8)
    before = enc.forward_intermediates(z, indices=[1], intermediates_only=True)[0]
    assert enc.prune_intermediate_layers([-3]) == [1]
    assert len(enc.blocks) == 2 and enc.cfg.depth == 2 and cfg.depth == 4
    assert isinstance(enc.head, torch.nn.Identity)
    assert isinstance(enc.norm, torch.nn.LayerNorm)  # prune_norm=False keeps it
    after = enc.forward_intermediates(z, indices=[1], intermediates_only=True)[0]
    assert torch.equal(after, before)
    assert torch.equal(enc(z), before)
    assert enc.pool(enc(z)).shape == (2, 32)
