import os

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

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


def _rotation(f: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(f, f)))
    return q


def test_frechet_distance_of_known_gaussians():
    g = np.random.default_rng(0)
    f = 16
    mu1, mu2 = g.normal(size=f), g.normal(size=f)
    # Covariances with the same eigenvectors: (S1 S2)^(1/2) = Q diag(sqrt(a b)) Q^T, so the
    # distance is |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    q = _rotation(f, 1)
    a, b = g.uniform(0.1, 4.0, size=f), g.uniform(0.1, 4.0, size=f)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # Rank-deficient S1 (fewer samples than features): the zero eigenvalues add nothing.
    a[: f // 2] = 0.0
    s1 = (q * a) @ q.T
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # Swapped, the zero eigenvalues come back as rounding (~1e-16), whose square roots add ~1e-8.
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, abs=1e-6)
    # Non-commuting 2 x 2: Tr((S1 S2)^(1/2)) = sqrt(Tr(S1 S2) + 2 sqrt(det(S1 S2))), the sum of
    # the square roots of the two positive eigenvalues of S1 S2.
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    m = s1 @ s2
    trace_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(np.zeros(2), s1, np.array([1.0, 0.0]), s2) == pytest.approx(
        expected, rel=1e-12
    )


def test_frechet_distance_never_calls_sqrtm(monkeypatch):
    def removed(*args, **kwargs):
        raise AssertionError("scipy.linalg.sqrtm called")

    monkeypatch.setattr(linalg, "sqrtm", removed)
    s = np.eye(3)
    assert frechet_distance(np.zeros(3), s, np.ones(3), 4 * s) == pytest.approx(3.0 + 3.0)


def _corrupt_weights(kind: str, path) -> str:
    if kind == "random-bytes":  # b"j" first: the unpickler fails with a KeyError
        path.write_bytes(b"j" + np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:500])
    else:  # another network's state dict
        torch.save(nn.Linear(2, 2).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "another-network"])
def test_corrupt_inception_weights_say_what_to_fetch(kind, tmp_path):
    path = _corrupt_weights(kind, tmp_path / "inception.pth")
    with pytest.raises(MissingWeightsError, match="not a valid Inception-v3 FID weights") as err:
        InceptionFeatures(path)
    message = str(err.value)
    assert path in message and INCEPTION_URL in message
    assert "--reconstruction.inception-weights" in message and "\n" not in message


def test_missing_inception_weights_say_what_to_fetch(tmp_path, monkeypatch):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(MissingWeightsError, match="--reconstruction.inception-weights") as err:
        InceptionFeatures(missing)
    assert INCEPTION_URL in str(err.value) and missing in str(err.value)
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
    assert "--reconstruction.rfid off" in message
