"""CaptionDecoder: prefix-LM masking, teacher forcing, keep-ratio, greedy and beam decoding."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from openvision3.models.caption import CaptionDecoder, CaptionDecoderConfig, prefix_lm_mask
from openvision3.models.layers import KVCache

V, SOT, EOS, PAD = 64, 62, 63, 0
DI, N = 16, 9  # 9 image tokens: a 3x3 grid


def tiny(**kw) -> CaptionDecoder:
    cfg = dict(vocab_size=V, context_length=16, width=32, depth=2, heads=2, image_width=DI)
    cfg.update(kw, sot_id=SOT, eos_id=EOS, pad_id=PAD)
    return CaptionDecoder(CaptionDecoderConfig(**cfg)).eval()


def captions(b: int, length: int = 10) -> torch.Tensor:
    ids = torch.randint(1, 60, (b, length))
    ids[:, 0] = SOT
    ids[0, 6], ids[0, 7:] = EOS, PAD  # one padded row
    ids[1:, -1] = EOS
    return ids


def seq_logprob(model: CaptionDecoder, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) after SOT up to the first EOS (inclusive), by teacher forcing."""
    out = model(images, ids)
    logp = F.log_softmax(out["logits"], -1).gather(-1, out["targets"][..., None])[..., 0]
    is_eos = out["targets"] == EOS
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return logp.masked_fill(after_eos, 0.0).sum(1)


def test_shapes_and_targets():
    model = tiny()
    images, ids = torch.randn(3, N, DI), captions(3)
    out = model(images, ids)
    assert out["logits"].shape == (3, 9, V)
    assert torch.equal(out["targets"], ids[:, 1:])
    assert (out["targets"][0, 6:] == PAD).all()  # padding kept for the loss to ignore
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(images, torch.full((3, 18), 5))


def test_prefix_lm_mask():
    m = prefix_lm_mask(2, 3)[0, 0].int().tolist()
    assert m == [
        [1, 1, 0, 0, 0],  # image queries: all image keys, no text
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # text queries: all image keys, text keys up to themselves
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ]


@pytest.mark.parametrize("t", [1, 4, 8])
def test_causality(t):
    model = tiny()
    images, ids = torch.randn(2, N, DI), captions(2)
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 7) % 60 + 1
    a, b = model(images, ids)["logits"], model(images, changed)["logits"]
    # logits[:, p] reads ids[:, :p+1]: positions before t are blind to the change
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=0, rtol=0)
    diff = (a[:, t:] - b[:, t:]).abs().amax(-1)  # (B, L-1-t)
    assert (diff > 1e-5).all()


def test_image_prefix_is_seen_everywhere():
    model = tiny()
    images, ids = torch.randn(2, N, DI), captions(2)
    a = model(images, ids)["logits"]
    b = model(images + torch.randn_like(images), ids)["logits"]
    assert ((a - b).abs().amax(-1) > 1e-5).all()


def test_keep_ratio_only_in_training():
    model = tiny(keep_ratio=0.5)
    n = 16
    # channel 0 holds the token index so we can read back which tokens were kept
    images = torch.randn(4, n, DI)
    images[..., 0] = torch.arange(n, dtype=torch.float)
    assert torch.equal(model.keep_tokens(images), images)  # eval: all tokens
    model.train()
    kept = model.keep_tokens(images)
    assert kept.shape == (4, 8, DI)  # round(16 * 0.5) for every sample
    idx = kept[..., 0].long()
    assert (idx.diff(dim=1) > 0).all()  # a subset, in raster order
    torch.testing.assert_close(kept, images.gather(1, idx[..., None].expand(-1, -1, DI)))
    assert len({tuple(r) for r in idx.tolist()}) > 1  # random per sample
    ids = captions(4)
    assert not torch.allclose(model(images, ids)["logits"], model(images, ids)["logits"])
    model.eval()
    torch.testing.assert_close(model(images, ids)["logits"], model(images, ids)["logits"])


def greedy_by_hand(model, images, max_len):
    """Argmax decoding through the teacher-forcing forward (a dummy last token is dropped)."""
    ids = torch.full((images.shape[0], 1), SOT)
    done = torch.zeros(images.shape[0], dtype=torch.bool)
    for _ in range(max_len - 1):
        logits = model(images, torch.cat([ids, ids[:, :1]], 1))["logits"][:, -1]
        nxt = torch.where(done, PAD, logits.argmax(-1))
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == EOS
        if done.all():
            break
    return ids


def eos_prone(seed: int) -> tuple[CaptionDecoder, torch.Tensor]:
    """A random tiny decoder whose EOS logit grows along the sequence, so decodes stop at
    different lengths and the EOS/PAD bookkeeping is exercised."""
    torch.manual_seed(seed)
    model = tiny()
    with torch.no_grad():
        model.pos_embed.add_(torch.linspace(0, 10, 16)[None, :, None] * model.lm_head.weight[EOS])
    return model, torch.randn(4, N, DI)


def test_greedy_matches_argmax_by_hand():
    lengths = set()
    for seed in range(3):
        model, images = eos_prone(seed)
        out = model.generate(images, max_len=12)
        torch.testing.assert_close(out, greedy_by_hand(model, images, 12), atol=0, rtol=0)
        assert (out[:, 0] == SOT).all()
        for r in out.tolist():
            if EOS in r:
                lengths.add(r.index(EOS))
                assert all(t == PAD for t in r[r.index(EOS) + 1 :])
    assert len(lengths) > 1, "no EOS variety: the test would not exercise stopping"


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_one_is_greedy(length_penalty):
    for seed in range(3):
        model, images = eos_prone(seed)
        greedy = model.generate(images, max_len=12)
        with torch.no_grad():  # the beam-search path itself, not generate's greedy dispatch
            prefix, cache = model.embed_image(images), KVCache(model.cfg.depth)
            beam = model._beam_search(prefix, 12, 1, length_penalty, cache)
        torch.testing.assert_close(beam, greedy, atol=0, rtol=0)


def test_beam_beats_greedy_in_log_prob():
    strictly_better = 0
    for seed in range(3):
        model, images = eos_prone(seed)
        greedy = model.generate(images, max_len=12)
        beam = model.generate(images, max_len=12, beam_size=4, length_penalty=0.0)
        assert (beam[:, 0] == SOT).all() and beam.shape[1] <= 12
        lp_greedy = seq_logprob(model, images, greedy)
        lp_beam = seq_logprob(model, images, beam)
        assert (lp_beam >= lp_greedy - 1e-4).all()
        strictly_better += int((lp_beam > lp_greedy + 1e-4).sum())
    assert strictly_better > 0  # the search does something greedy does not


def table_model(rules: dict[int, dict[int, float]]) -> CaptionDecoder:
    """A decoder whose next-token distribution depends only on the last token: ``rules[last]``
    gives some probabilities, the rest is spread evenly (rows without a rule: EOS 0.5)."""
    table = torch.empty(V, V)
    for last in range(V):
        probs = rules.get(last, {EOS: 0.5})
        table[last] = (1 - sum(probs.values())) / (V - len(probs))
        for tok, p in probs.items():
            table[last, tok] = p
    model = tiny()
    model.next_logits = lambda prefix, ids, cache=None: table[ids[:, -1]].log()
    return model


def test_beam_finds_what_greedy_misses():
    # greedy: SOT A EOS, p = 0.5 * 0.3; beam: SOT B EOS, p = 0.4 * 0.9
    a, b = 5, 6
    model = table_model({SOT: {a: 0.5, b: 0.4}, a: {EOS: 0.3}, b: {EOS: 0.9}})
    images = torch.randn(1, N, DI)
    assert model.generate(images, max_len=8).tolist() == [[SOT, a, EOS]]
    for lp in (0.0, 1.0):
        beam = model.generate(images, max_len=8, beam_size=3, length_penalty=lp)
        assert beam.tolist() == [[SOT, b, EOS]]


def test_beam_does_not_stop_on_early_unlikely_eos():
    # EOS is the runner-up at every step of a confident path, so k poor hypotheses finish
    # before the good one; the search must keep going until the good one finishes.
    path = [SOT, 5, 9, 12, EOS]
    rules = {t: {n: 0.9, EOS: 0.05} for t, n in zip(path[:-2], path[1:-1])}
    rules[12] = {EOS: 0.9}
    model = table_model(rules)
    images = torch.randn(2, N, DI)
    for lp in (0.0, 1.0):
        beam = model.generate(images, max_len=10, beam_size=3, length_penalty=lp)
        assert beam.tolist() == [path, path]


def test_beam_truncated_at_max_len():
    model = table_model({t: {t + 1: 0.9} for t in range(1, 20)} | {SOT: {1: 0.9}})
    out = model.generate(torch.randn(2, N, DI), max_len=5, beam_size=2)
    assert out.tolist() == [[SOT, 1, 2, 3, 4]] * 2  # no EOS: returned as is


def test_generate_validates_arguments():
    model = tiny()
    images = torch.randn(1, N, DI)
    assert model.generate(images).shape[1] <= 16  # max_len defaults to context_length
    with pytest.raises(ValueError):
        model.generate(images, max_len=17)
    with pytest.raises(ValueError):
        model.generate(images, beam_size=0)


def test_overfit_two_captions():
    torch.manual_seed(0)
    model = tiny(keep_ratio=1.0).train()
    images = torch.randn(2, N, DI)
    ids = torch.tensor(
        [
            [SOT, 5, 9, 12, 7, EOS, PAD, PAD, PAD, PAD],
            [SOT, 20, 3, 3, 40, 41, 11, 17, 2, EOS],
        ]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        out = model(images, ids)
        loss = F.cross_entropy(
            out["logits"].flatten(0, 1), out["targets"].flatten(), ignore_index=PAD
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert torch.equal(model.generate(images), ids)
    for length_penalty in (0.0, 1.0):
        assert torch.equal(model.generate(images, beam_size=3, length_penalty=length_penalty), ids)


def test_every_parameter_gets_a_finite_gradient():
    model = tiny(keep_ratio=0.5).train()
    ids = torch.randint(1, 60, (2, 16))
    ids[:, 0] = SOT
    out = model(torch.randn(2, N, DI), ids)
    out["logits"].logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kw",
    [
        dict(width=30, heads=4),
        dict(keep_ratio=0.0),
        dict(keep_ratio=1.5),
        dict(sot_id=64),
        dict(eos_id=0),
        dict(context_length=1),
        dict(image_pos="learned"),
        dict(width=34, heads=2),  # sin-cos needs width % 4 == 0
    ],
)
def test_config_validation(kw):
    base = dict(vocab_size=V, width=32, heads=2, sot_id=SOT, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError):
        CaptionDecoderConfig(**{**base, **kw})


def test_default_config():
    cfg = CaptionDecoderConfig()
    assert (cfg.width, cfg.depth, cfg.context_length, cfg.image_width) == (512, 12, 128, 768)
    assert (cfg.sot_id, cfg.eos_id, cfg.pad_id) == (49406, 49407, 0)


def test_pack_targets_gives_the_same_loss_and_gradients():
    from openvision3.losses.caption import caption_loss

    torch.manual_seed(0)
    cfg = CaptionDecoderConfig(
        vocab_size=64,
        context_length=12,
        width=32,
        depth=2,
        heads=2,
        image_width=16,
        sot_id=1,
        eos_id=2,
        pad_id=0,
    )
    dense = CaptionDecoder(cfg)
    packed = CaptionDecoder(dataclasses.replace(cfg, pack_targets=True))
    packed.load_state_dict(dense.state_dict())
    image = torch.randn(3, 4, 16)  # a 2x2 grid
    ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0, 0], [1, 3, 4, 5, 6, 7, 2]])
    out_d, out_p = dense(image, ids), packed(image, ids)
    assert out_p["logits"].shape == (1, 4 + 2 + 6, 64)
    loss_d = caption_loss(out_d["logits"], out_d["targets"])
    loss_p = caption_loss(out_p["logits"], out_p["targets"])
    assert torch.allclose(loss_d, loss_p, atol=1e-6)
    loss_d.backward()
    loss_p.backward()
    for (name, a), b in zip(dense.named_parameters(), packed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@pytest.mark.parametrize("beam_size", [1, 3])
def test_kv_cache_decodes_like_full_recompute(beam_size):
    for seed in range(3):
        model, images = eos_prone(seed)
        cached = model.generate(images, max_len=12, beam_size=beam_size)
        full = model.generate(images, max_len=12, beam_size=beam_size, use_cache=False)
        torch.testing.assert_close(cached, full, atol=0, rtol=0)


def test_cached_logits_equal_full_logits():
    model, images = eos_prone(0)
    ids = captions(4)[:, :8]
    prefix = model.embed_image(images)
    cache = KVCache(model.cfg.depth)
    steps = [model.next_logits(prefix, ids[:, :1], cache)]
    for t in range(2, ids.shape[1] + 1):
        steps.append(model.next_logits(None, ids[:, :t], cache))
    full = [model.next_logits(prefix, ids[:, :t]) for t in range(1, ids.shape[1] + 1)]
    torch.testing.assert_close(torch.stack(steps), torch.stack(full), atol=1e-5, rtol=1e-5)
    assert len(cache) == N + ids.shape[1]


def test_image_positions_make_the_prefix_order_matter():
    images, ids = torch.randn(2, N, DI), captions(2)
    perm = torch.randperm(N)
    torch.manual_seed(0)
    blind = tiny(image_pos="none")
    a, b = blind(images, ids)["logits"], blind(images[:, perm], ids)["logits"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # a set of tokens, no order
    torch.manual_seed(0)
    seeing = tiny()  # default: 2-D sin-cos of the grid on the prefix
    a, b = seeing(images, ids)["logits"], seeing(images[:, perm], ids)["logits"]
    assert (a - b).abs().amax() > 1e-3


def test_image_positions_follow_the_grid():
    model = tiny()
    images, ids = torch.randn(2, 6, DI), captions(2)
    with pytest.raises(ValueError, match="not a square grid"):
        model(images, ids)
    with pytest.raises(ValueError, match="does not hold"):
        model(images, ids, grid=(2, 2))
    a, b = model(images, ids, grid=(2, 3))["logits"], model(images, ids, grid=(3, 2))["logits"]
    assert (a - b).abs().amax() > 1e-3  # the same tokens read as another layout
    out = model.generate(images, max_len=6, grid=(2, 3))
    assert out.shape[0] == 2 and (out[:, 0] == SOT).all()
