import math

import torch

from openvision3.losses import caption_loss

V = 7


def test_equals_hand_computed_value():
    # One sample, three positions, the last is padding (id 0).
    logits = torch.tensor([[[2.0, 0, 0, 0, 0, 0, 0], [0, 1.0, 3.0, 0, 0, 0, 0], [9.0] * V]])
    targets = torch.tensor([[3, 2, 0]])
    lse0 = math.log(math.exp(2.0) + 6)
    lse1 = math.log(math.exp(1.0) + math.exp(3.0) + 5)
    expected = 0.5 * ((lse0 - 0.0) + (lse1 - 3.0))
    assert math.isclose(caption_loss(logits, targets).item(), expected, rel_tol=1e-6)


def test_padding_positions_are_ignored():
    logits = torch.randn(3, 5, V)
    targets = torch.randint(1, V, (3, 5))
    targets[0, 3:] = 0
    targets[2, 1:] = 0
    base = caption_loss(logits, targets)
    changed = logits.clone()
    changed[targets == 0] = 100 * torch.randn_like(changed[targets == 0])
    torch.testing.assert_close(caption_loss(changed, targets), base)
    # ... while a change at a real token does move it.
    changed[1, 0] += 5 * torch.randn(V)
    assert not torch.isclose(caption_loss(changed, targets), base)


def test_token_mean_not_sample_mean():
    logits = torch.randn(2, 4, V)
    targets = torch.randint(1, V, (2, 4))
    targets[0, 1:] = 0  # sample 0 has 1 token, sample 1 has 4
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), reduction="none"
    )[targets.reshape(-1) != 0]
    torch.testing.assert_close(caption_loss(logits, targets), per_token.mean())


def test_custom_pad_id():
    logits = torch.randn(2, 4, V)
    targets = torch.tensor([[1, 2, 6, 6], [3, 6, 6, 6]])
    changed = logits.clone()
    changed[targets == 6] += 10.0 * torch.randn_like(changed[targets == 6])
    torch.testing.assert_close(caption_loss(changed, targets, 6), caption_loss(logits, targets, 6))
