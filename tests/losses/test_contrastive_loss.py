import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from openvision3.losses import ContrastiveLoss
from tests.dist_utils import free_port

B, E, WORLD = 6, 16, 2


def _features(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img, txt, txt2 = (F.normalize(torch.randn(n, E, generator=g), dim=-1) for _ in range(3))
    return img, txt, txt2


@pytest.mark.parametrize("scale", [1 / 0.07, 250.0])
def test_matches_open_clip(scale):
    img, txt, _ = _features(B)
    logit_scale = torch.tensor([scale])
    ours = ContrastiveLoss()(img, txt, logit_scale)
    # open_clip clamps the parameter in its training loop, we clamp inside the loss.
    ref = ClipLoss()(img, txt, torch.tensor(min(scale, 100.0)))
    torch.testing.assert_close(ours, ref)
    assert ours.shape == ()


def test_clamp_stops_temperature_gradient():
    img, txt, _ = _features(B)
    logit_scale = torch.tensor([250.0], requires_grad=True)
    ContrastiveLoss()(img, txt, logit_scale).backward()
    assert logit_scale.grad.abs().item() == 0.0
    logit_scale = torch.tensor([10.0], requires_grad=True)
    ContrastiveLoss()(img, txt, logit_scale).backward()
    assert logit_scale.grad.abs().item() > 0.0


def test_perfect_alignment_is_near_zero():
    img, _, _ = _features(B)
    loss = ContrastiveLoss()(img, img.clone(), torch.tensor([100.0]))
    random = ContrastiveLoss()(*_features(B)[:2], torch.tensor([100.0]))
    assert loss.item() < 1e-3 < random.item()


def test_two_views_average():
    img, txt, txt2 = _features(B)
    scale = torch.tensor([1 / 0.07])
    loss_fn = ContrastiveLoss()
    both = loss_fn(img, txt, scale, text_features_2=txt2)
    expected = 0.5 * (loss_fn(img, txt, scale) + loss_fn(img, txt2, scale))
    torch.testing.assert_close(both, expected)
    assert not math.isclose(both.item(), loss_fn(img, txt, scale).item(), rel_tol=1e-3)


def _loss_and_grads(img, txt, txt2, local_loss: bool = True) -> dict[str, torch.Tensor]:
    img, txt, txt2 = (f.clone().requires_grad_(True) for f in (img, txt, txt2))
    scale = torch.tensor([1 / 0.07], requires_grad=True)
    loss = ContrastiveLoss(local_loss=local_loss)(img, txt, scale, text_features_2=txt2)
    loss.backward()
    grads = {"img": img.grad, "txt": txt.grad, "txt2": txt2.grad, "scale": scale.grad}
    return {"loss": loss.detach(), **grads}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        local = [f[rank * B : (rank + 1) * B] for f in _features(WORLD * B)]
        result = {"local": _loss_and_grads(*local), "global": _loss_and_grads(*local, False)}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_ranks_match_one_rank(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    one = _loss_and_grads(*_features(WORLD * B))

    # Local loss: rank r averages cross entropy over its own B rows (of both directions)
    # against all columns, so the mean over ranks is the global mean over 2B rows.
    ranks = [r["local"] for r in results]
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, one["loss"])
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])
    # The gather's backward sums every rank's gradient into the owner's slice, so rank r
    # holds d(sum_s loss_s)/d f_r = WORLD * d(loss)/d f_r; DDP's averaging divides by WORLD.
    for key in ("img", "txt", "txt2"):
        got = torch.cat([r[key] for r in ranks]) / WORLD
        torch.testing.assert_close(got, one[key])
    # The temperature is not gathered: each rank sees only its own term's gradient.
    torch.testing.assert_close(sum(r["scale"] for r in ranks) / WORLD, one["scale"])

    # Global loss (local_loss=False): every rank computes the whole matrix.
    for r in (r["global"] for r in results):
        torch.testing.assert_close(r["loss"], one["loss"])
        torch.testing.assert_close(r["scale"], one["scale"])
    for key in ("img", "txt", "txt2"):
        got = torch.cat([r["global"][key] for r in results]) / WORLD
        torch.testing.assert_close(got, one[key])
