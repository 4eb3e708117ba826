"""gFID tools: FID and IS equal torch-fidelity's on two small folders (random-init Inception,
a local file), precision / recall equal a brute-force k-NN count, an ADM-style npz loads."""

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3.generation.metrics import evaluate_generation, load_images, precision_recall
from tests.evaluation._fid_fakes import save_random_inception


def brute_force_pr(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    def share(q, p, r):
        d = np.linalg.norm(q[:, None] - p[None], axis=-1)
        return np.mean([(d[i] <= r).any() for i in range(len(q))])

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_equal_brute_force(k):
    g = np.random.default_rng(0)
    real, fake = g.normal(size=(40, 6)), g.normal(0.5, 1.2, size=(30, 6))
    p, r = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k)
    bp, br = brute_force_pr(real, fake, k)
    assert (p, r) == pytest.approx((bp, br)) and 0 < p < 1 and 0 < r < 1
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(real), k) == (1.0, 1.0)


def _folder(path, seed, n=12):
    path.mkdir()
    g = np.random.default_rng(seed)
    for i in range(n):
        base = g.integers(0, 255, size=(1, 1, 3))
        img = np.clip(base + g.integers(-40, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path / f"{i:03d}.png")
    return str(path)


@pytest.mark.slow
def test_fid_and_is_equal_torch_fidelity(tmp_path):
    import torch_fidelity

    weights = save_random_inception(str(tmp_path / "inception.pth"))
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    ours = evaluate_generation(a, b, weights, batch_size=5)
    theirs = torch_fidelity.calculate_metrics(
        input1=a, input2=b, fid=True, isc=True, feature_extractor_weights_path=weights,
        cuda=False, verbose=False, save_cpu_ram=True, isc_splits=10,
    )  # fmt: skip
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    # An ADM-style reference npz (arr_0 images + its own mu / sigma) gives the same FID
    # when mu / sigma are those of its images.
    from openvision3.generation.metrics import InceptionPoolAndLogits, extract, statistics

    ref = load_images(b)
    mu, sigma = statistics(extract(InceptionPoolAndLogits(weights), ref)[0])
    np.savez(tmp_path / "VIRTUAL_fake.npz", arr_0=ref, mu=mu, sigma=sigma)
    adm = evaluate_generation(a, str(tmp_path / "VIRTUAL_fake.npz"), weights, batch_size=5)
    assert adm["fid"] == pytest.approx(ours["fid"], rel=1e-6)
    assert (adm["precision"], adm["recall"]) == (ours["precision"], ours["recall"])


def test_npz_and_folder_load_the_same_images(tmp_path):
    folder = _folder(tmp_path / "imgs", 2, n=3)
    images = load_images(folder)
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.arange(3))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(load_images(str(tmp_path / "s.npz")), images)
