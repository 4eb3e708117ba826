"""TextEncoder: shapes, END-token pooling, padding masks, config checks, gradients."""

import pytest
import torch

from openvision3.models.text import TextEncoder, TextEncoderConfig, end_positions

V, SOT, EOS, PAD = 64, 62, 63, 0


def tiny(**kw) -> TextEncoder:
    cfg = dict(vocab_size=V, context_length=16, width=32, depth=2, heads=2, embed_dim=24)
    cfg.update(kw, eos_id=EOS, pad_id=PAD)
    return TextEncoder(TextEncoderConfig(**cfg)).eval()


def row(tokens: list[int], length: int) -> list[int]:
    return tokens + [PAD] * (length - len(tokens))


def test_shapes_and_parameter_names():
    model = tiny()
    ids = torch.tensor([row([SOT, 5, 6, EOS], 10), row([SOT, 7, EOS], 10)])
    assert model(ids).shape == (2, 24)  # L = 10 < context_length = 16
    assert model.pos_embed.shape == (1, 16, 32)
    assert model.proj.bias is None
    names = {n for n, _ in model.named_parameters()}
    assert {"token_embed.weight", "pos_embed", "norm.weight", "proj.weight"} <= names
    assert "transformer.blocks.1.attn.qkv.weight" in names
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(torch.ones(1, 17, dtype=torch.long))


def test_end_positions():
    ids = torch.tensor(
        [
            [SOT, 5, EOS, PAD, EOS],  # first EOS
            [SOT, 5, 6, 7, 8],  # cut without EOS: last position
            [SOT, 5, 6, PAD, PAD],  # no EOS, padded: last non-pad
            [PAD, PAD, PAD, PAD, PAD],  # degenerate: position 0
        ]
    )
    assert end_positions(ids, EOS, PAD).tolist() == [2, 4, 2, 0]


def test_pools_at_eos():
    model = tiny()
    ids = torch.tensor([row([SOT, 5, 6, 7, EOS], 12)] * 2)
    ids[1, 5:] = torch.randint(1, V, (7,))  # anything after EOS
    out = model(ids)
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)
    before = ids[:1].clone()
    before[0, 2] = 9  # a token before EOS
    assert not torch.allclose(model(before)[0], out[0], atol=1e-4)
    # the pooled feature is the one at the EOS position
    x, end = model.forward_features(ids)
    assert end.tolist() == [4, 4]
    torch.testing.assert_close(model.proj(x[:, 4]), out)


def test_truncated_row_pools_at_last_real_token():
    model = tiny()
    ids = torch.tensor([[SOT, 5, 6, 7, 8, 9]])
    x, end = model.forward_features(ids)
    assert end.tolist() == [5]
    torch.testing.assert_close(model(ids), model.proj(x[:, 5]))


def test_padding_length_does_not_matter():
    model = tiny()
    tokens = [SOT, 11, PAD, 13, EOS]  # a real token may share the pad id ("!" in CLIP BPE)
    short = model(torch.tensor([row(tokens, 5)]))
    long = model(torch.tensor([row(tokens, 16)]))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
    # ... and that in-sentence id-0 token is attended (not masked as padding)
    other = model(torch.tensor([row([SOT, 11, 12, 13, EOS], 5)]))
    assert not torch.allclose(short, other, atol=1e-4)


def test_every_parameter_gets_a_finite_gradient():
    model = tiny().train()
    ids = torch.tensor([row([SOT, 5, 6, EOS], 16), [SOT] + list(range(1, 15)) + [EOS]])
    model(ids).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kw",
    [dict(width=30, heads=4), dict(eos_id=64), dict(pad_id=-1), dict(eos_id=0), dict(depth=0)],
)
def test_config_validation(kw):
    base = dict(vocab_size=V, width=32, heads=2, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError):
        TextEncoderConfig(**{**base, **kw})


def test_default_config_is_openvision1_b():
    cfg = TextEncoderConfig()
    assert (cfg.width, cfg.depth, cfg.heads, cfg.context_length) == (512, 12, 8, 80)
    assert (cfg.vocab_size, cfg.eos_id, cfg.pad_id) == (49408, 49407, 0)
