import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from openvision3.evaluation import MetricAccumulator, ReconstructionEvaluator, psnr_uint8, ssim
from openvision3.evaluation.reconstruction import to_uint8
from tests.evaluation._eval_fakes import NoisyReconstructor, textured_images


def _hwc(u8: torch.Tensor) -> np.ndarray:
    return u8.permute(1, 2, 0).numpy()


def test_to_uint8_rounds_instead_of_truncating():
    x = torch.tensor([-1.0, -0.999, 0.3, 0.999, 1.0, 1.5, -2.0])
    # (x + 1) * 127.5 = 0, 0.1275, 165.75, 254.87, 255, clamp, clamp
    assert to_uint8(x).tolist() == [0, 0, 166, 255, 255, 255, 0]


def test_psnr_matches_skimage_on_uint8_images():
    x = textured_images(3, seed=1)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    ours = psnr_uint8(x, y)
    assert ours.shape == (3,)
    xu, yu = to_uint8(x), to_uint8(y)
    ref = [peak_signal_noise_ratio(_hwc(xu[i]), _hwc(yu[i]), data_range=255) for i in range(3)]
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-9)


def test_psnr_rounding_differs_from_truncation():
    levels = torch.randint(0, 255, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    y = levels / 127.5 - 1  # exactly on the uint8 grid
    x = (levels + 0.6) / 127.5 - 1  # 0.6 of a level above: rounds up, truncates down
    # Rounded: every pixel is one level off -> MSE 1 -> 20 log10(255).
    expected = 20 * math.log10(255)
    torch.testing.assert_close(psnr_uint8(x, y), torch.full((2,), expected, dtype=torch.float64))
    # Truncation would call the pair identical.
    truncated = ((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    assert torch.equal(truncated, levels.to(torch.uint8))


def test_ssim_matches_skimage():
    x = textured_images(3, seed=3)
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))).clamp(-1, 1)
    ours = ssim(x, y)
    xu, yu = to_uint8(x), to_uint8(y)
    ref = [
        structural_similarity(
            _hwc(xu[i]),
            _hwc(yu[i]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        for i in range(3)
    ]
    assert 0.1 < min(ref) < max(ref) < 0.95  # a non-trivial case
    # Same window (11 taps, sigma 1.5, normalised), same population statistics, same crop of
    # the 5-pixel border; ours filters in float32, skimage in float64: agreement to float32
    # rounding of the local statistics.
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_accumulator_masks_and_means():
    acc = MetricAccumulator("a", "b")
    acc.add("a", torch.tensor([1.0, 2.0, float("nan")]), mask=torch.tensor([1, 1, 0]))
    acc.add("a", torch.tensor([6.0]))
    acc.all_reduce()  # no process group: unchanged
    assert acc.compute()["a"] == 3.0 and acc.count("a") == 3
    assert math.isnan(acc.compute()["b"]) and acc.count("b") == 0
    with pytest.raises(RuntimeError):
        acc.all_reduce()
    with pytest.raises(KeyError):
        MetricAccumulator("a").add("c", torch.ones(1))


def _batches(images, size):
    for i in range(0, len(images), size):
        yield {"images": images[i : i + size], "key": [f"img{j}" for j in range(i, i + size)]}


def test_evaluator_means_rows_csv_and_grid(tmp_path):
    model, images = NoisyReconstructor().train(), textured_images(5)
    ev = ReconstructionEvaluator(keep=2)
    out = ev.run(model, _batches(images, 2))
    assert model.training  # mode restored
    recon = model.reconstruct(images)
    assert out["count"] == 5
    assert out["psnr"] == pytest.approx(psnr_uint8(images, recon).mean().item(), rel=1e-12)
    assert out["ssim"] == pytest.approx(ssim(images, recon).mean().item(), rel=1e-12)
    assert "lpips" not in out

    ev.write_csv(tmp_path / "rows.csv")
    with open(tmp_path / "rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == [f"img{i}" for i in range(5)]
    assert float(rows[3]["psnr"]) == pytest.approx(psnr_uint8(images[3:4], recon[3:4]).item())

    ev.save_grid(tmp_path / "grid.png", n=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    # 2 columns of 32 px + padding 2; 4 rows (best originals / recons, worst originals / recons).
    assert grid.shape == (4 * 34 + 2, 2 * 34 + 2, 3)
    order = psnr_uint8(images, recon).argsort(descending=True).tolist()
    assert [t[1] for t in ev.best] == [f"img{i}" for i in order[:2]]
    assert [t[1] for t in ev.worst] == [f"img{i}" for i in order[::-1][:2]]
    best_original = grid[2:34, 2:34].transpose(2, 0, 1)
    assert np.array_equal(best_original, to_uint8(images[order[0]]).numpy())


def test_max_images_stops_early():
    model, images = NoisyReconstructor(), textured_images(5)
    out = ReconstructionEvaluator().run(model, _batches(images, 2), max_images=3)
    recon = model.reconstruct(images[:3])
    assert out["count"] == 3
    assert out["psnr"] == pytest.approx(psnr_uint8(images[:3], recon).mean().item(), rel=1e-12)


def test_lpips_is_optional_and_lazy(monkeypatch):
    import openvision3.losses.reconstruction as rec_loss

    built = []

    class MeanAbs(torch.nn.Module):  # stands in for the VGG LPIPS (no weights offline)
        def forward(self, a, b):
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)

    def fake_build(net, weights):
        built.append((net, weights))
        return MeanAbs()

    monkeypatch.setattr(rec_loss, "build_lpips", fake_build)
    model, images = NoisyReconstructor(), textured_images(3)
    assert "lpips" not in ReconstructionEvaluator().run(model, _batches(images, 2))
    assert built == []
    out = ReconstructionEvaluator(lpips=True, lpips_weights="vgg.pth").run(
        model, _batches(images, 2)
    )
    assert built == [("vgg", "vgg.pth")]  # built once, reused for the second batch
    # Measured on the uint8-rounded images mapped back to [-1, 1].
    q = lambda t: to_uint8(t).float() / 127.5 - 1  # noqa: E731
    expected = (q(model.reconstruct(images)) - q(images)).abs().mean().item()
    assert out["lpips"] == pytest.approx(expected, rel=1e-6)
