import pytest
import torch

from openvision3.models.patching import patchify, unpatchify
from openvision3.models.posemb import resample_table, sincos_2d


def test_patchify_layout_pinned_by_hand():
    # x[b, c, i*p + r, j*p + s] -> tokens[b, i*(W/p) + j, (r*p + s)*C + c]
    b, c, h, w, p = 1, 2, 4, 6, 2
    x = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)
    t = patchify(x, p)
    assert t.shape == (1, 6, 8)
    # token (i=1, j=2) -> index 1*3 + 2 = 5; its value at (r=1, s=0, c=1): x[0, 1, 3, 4]
    assert t[0, 5, (1 * p + 0) * c + 1] == x[0, 1, 3, 4]
    # first token, in order (r, s, c): (0,0,0) (0,0,1) (0,1,0) (0,1,1) (1,0,0) ...
    expected = torch.tensor(
        [
            x[0, 0, 0, 0],
            x[0, 1, 0, 0],
            x[0, 0, 0, 1],
            x[0, 1, 0, 1],
            x[0, 0, 1, 0],
            x[0, 1, 1, 0],
            x[0, 0, 1, 1],
            x[0, 1, 1, 1],
        ]
    )
    assert torch.equal(t[0, 0], expected)


@pytest.mark.parametrize("p,hw", [(1, (3, 5)), (2, (4, 8)), (4, (8, 4))])
def test_patchify_round_trip(p, hw):
    x = torch.randn(2, 3, *hw)
    t = patchify(x, p)
    assert torch.equal(unpatchify(t, p, (hw[0] // p, hw[1] // p), 3), x)


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.zeros(1, 1, 5, 4), 2)
    with pytest.raises(ValueError, match="do not match"):
        unpatchify(torch.zeros(1, 4, 8), 2, (3, 3), 2)


def test_sincos_new_grid_and_values():
    t = sincos_2d(8, 2, 3)
    assert t.shape == (6, 8)
    # row-major: index 4 is (h=1, w=1); first half encodes h, second half w
    assert torch.allclose(t[4, :4], t[3, :4]) and not torch.allclose(t[4, 4:], t[3, 4:])
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    # w=1 column, frequency 1: sin(1), frequency 1/100: sin(0.01)
    assert torch.allclose(t[1, 4:6], torch.tensor([1.0, 0.01]).sin(), atol=1e-6)
    # a bigger grid contains the smaller one's rows for the shared positions
    big = sincos_2d(8, 4, 4)
    assert torch.allclose(big[5], sincos_2d(8, 2, 2)[3])


def test_resample_table_identity_and_shape():
    t = torch.randn(16, 8)
    assert resample_table(t, (4, 4), (4, 4)) is t
    r = resample_table(t, (4, 4), (8, 6))
    assert r.shape == (48, 8)
    const = torch.ones(16, 8)
    assert torch.allclose(resample_table(const, (4, 4), (7, 7)), torch.ones(49, 8), atol=1e-5)
