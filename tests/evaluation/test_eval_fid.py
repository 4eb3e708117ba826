import os

import numpy as np
import pytest
import torch
from scipy import linalg

from openvision3.data.transforms import to_uint8
from openvision3.evaluation.fid import (
    INCEPTION_FILE,
    INCEPTION_URL,
    FeatureStats,
    InceptionFeatures,
    ReconstructionFID,
    frechet_distance,
    reference_cache_path,
)
from openvision3.models.vae import MissingWeightsError
from tests.evaluation._eval_fakes import textured_images
from tests.evaluation._fid_fakes import PooledFeatures


def _noisy(images: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        (images.float() + std * torch.randn(images.shape, generator=g))
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )


def test_stats_from_sums_match_numpy_and_sqrtm_reference():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(40, 6, generator=g, dtype=torch.float64),
        torch.rand(30, 6, generator=g, dtype=torch.float64),
    )
    sa, sb = FeatureStats(6), FeatureStats(6)
    for chunk in a.split(7):  # uneven chunks sum to the whole
        sa.add(chunk)
    sb.add(b)
    mu, cov = sa.mean_cov()
    np.testing.assert_allclose(mu, a.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(a.numpy(), rowvar=False), rtol=1e-10, atol=1e-12)
    # Against the textbook formula with scipy's sqrtm (full-rank covariances).
    m1, s1 = mu, cov
    m2, s2 = sb.mean_cov()
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-10)


def test_rfid_is_zero_against_itself_and_grows_with_noise(random_inception, tmp_path):
    images = to_uint8(textured_images(4, size=32))
    extractor = InceptionFeatures(random_inception)
    cache = str(tmp_path / "ref.npz")

    def rfid(recon):
        fid = ReconstructionFID(extractor, cache)
        fid.update(images, recon)
        return fid.compute()

    same, small, large = rfid(images), rfid(_noisy(images, 8.0)), rfid(_noisy(images, 40.0))
    assert abs(same) < 1e-6 * large
    assert 0 < small < large


def test_reference_cache_is_written_once_and_reused(tmp_path):
    images = to_uint8(textured_images(10, size=16))
    recon = _noisy(images, 20.0)
    identity = {"name": "toy", "resolution": 16, "num_images": 10}
    cache = reference_cache_path(str(tmp_path), identity)
    assert os.path.basename(cache).startswith("fid-ref-toy-")

    def run():
        extractor = PooledFeatures()
        fid = ReconstructionFID(extractor, cache, identity)
        for i in range(0, 10, 4):
            fid.update(images[i : i + 4], recon[i : i + 4])
        return fid.compute(), extractor.calls, fid.cached

    first, calls_first, cached_first = run()
    stamp = os.stat(cache).st_mtime_ns
    second, calls_second, cached_second = run()
    assert (cached_first, cached_second) == (False, True)
    assert (calls_first, calls_second) == (6, 3)  # originals and reconstructions, then only these
    assert os.stat(cache).st_mtime_ns == stamp  # not rewritten
    assert second == pytest.approx(first, rel=1e-12) and first > 0
    assert FeatureStats.load(cache).count == 10
    # Another identity (e.g. resolution) is another file.
    assert reference_cache_path(str(tmp_path), {**identity, "resolution": 32}) != cache


def test_stale_reference_count_is_refused(tmp_path):
    images = to_uint8(textured_images(6, size=16))
    cache = str(tmp_path / "ref.npz")
    fid = ReconstructionFID(PooledFeatures(), cache)
    fid.update(images, images)
    fid.compute()
    fid = ReconstructionFID(PooledFeatures(), cache)
    fid.update(images[:4], images[:4])
    with pytest.raises(ValueError, match="stale"):
        fid.compute()


def test_missing_inception_weights_say_what_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match="inception_weights=") as err:
        InceptionFeatures(str(tmp_path / "nope.pth"))
    assert INCEPTION_URL in str(err.value)
    # TORCH_HOME moves the hub cache (torch.hub.set_dir would pin it for every later test).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        InceptionFeatures()
    message = str(err.value)
    assert (
        INCEPTION_URL in message
        and os.path.join(str(tmp_path), "hub", "checkpoints", INCEPTION_FILE) in message
    )
    assert "--reconstruction.inception-weights" in message
