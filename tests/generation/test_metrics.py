"""gFID tools: features and IS equal torch-fidelity's on two small folders (random-init
Inception, a local file) and FID is rFID's Frechet distance, with no ``scipy.linalg.sqrtm``
call; precision / recall equal a brute-force k-NN count; an ADM-style npz loads; ``ov3 eval
generation`` names its own ``--inception-weights`` flag and reads a bad weights file as one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3.cli import main
from openvision3.evaluation.fid import INCEPTION_FILE, INCEPTION_URL, frechet_distance
from openvision3.generation import metrics
from openvision3.generation.metrics import evaluate_generation, load_images, precision_recall
from tests.evaluation._fid_fakes import PooledFeatures, save_random_inception
from tests.evaluation.test_eval_fid import _corrupt_weights


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
    from torch_fidelity.metric_fid import fid_input_id_to_statistics
    from torch_fidelity.utils import create_feature_extractor

    weights = save_random_inception(str(tmp_path / "inception.pth"))
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    ours = evaluate_generation(a, b, weights, batch_size=5)
    kwargs = dict(input1=a, input2=b, cuda=False, verbose=False, save_cpu_ram=True)
    theirs = torch_fidelity.calculate_metrics(
        isc=True, isc_splits=10, feature_extractor_weights_path=weights, **kwargs
    )
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    # FID: torch-fidelity's own pool3 statistics, through rFID's Frechet distance (torch-fidelity's
    # fid_statistics_to_metric calls scipy's sqrtm with disp=, gone in SciPy 1.18).
    net = create_feature_extractor(
        "inception-v3-compat", ["2048"], cuda=False, feature_extractor_weights_path=weights
    )
    s1, s2 = (fid_input_id_to_statistics(i, net, "2048", **kwargs) for i in (1, 2))
    expected = frechet_distance(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"])
    assert ours["fid"] == pytest.approx(expected, rel=1e-5)
    # An ADM-style reference npz (arr_0 images + its own mu / sigma) gives the same FID
    # when mu / sigma are those of its images.
    from openvision3.generation.metrics import InceptionPoolAndLogits, extract, statistics

    ref = load_images(b)
    mu, sigma = statistics(extract(InceptionPoolAndLogits(weights), ref)[0])
    np.savez(tmp_path / "VIRTUAL_fake.npz", arr_0=ref, mu=mu, sigma=sigma)
    adm = evaluate_generation(a, str(tmp_path / "VIRTUAL_fake.npz"), weights, batch_size=5)
    assert adm["fid"] == pytest.approx(ours["fid"], rel=1e-6)
    assert (adm["precision"], adm["recall"]) == (ours["precision"], ours["recall"])


class QuadrantInception(torch.nn.Module):
    """Stands in for ``InceptionPoolAndLogits``: quadrant channel means (B, 12) as "pool3" and
    a fixed projection of them as 10-class logits; per image, cheap."""

    def __init__(self, weights: str = ""):
        super().__init__()
        self.pool = PooledFeatures()
        self.head = torch.randn(12, 10, generator=torch.Generator().manual_seed(0)).double()

    def forward(self, images):
        pool = self.pool(images)
        return pool, 10 * pool @ self.head


def _npz(path, seed, n=64, shift=0):
    g = np.random.default_rng(seed)
    images = np.clip(g.integers(0, 200, size=(n, 8, 8, 3)) + shift, 0, 255).astype(np.uint8)
    np.savez(path, arr_0=images)
    return str(path)


def test_gfid_is_the_frechet_distance_without_sqrtm(tmp_path, monkeypatch):
    """SciPy 1.18's sqrtm takes (A, blocksize) only; gFID must not call it with disp= (or at all)."""
    import scipy.linalg

    calls = []

    def sqrtm_1_18(a, blocksize=64):  # the signature without disp
        calls.append(a.shape)
        raise AssertionError("gFID called scipy.linalg.sqrtm")

    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm_1_18)
    monkeypatch.setattr(metrics, "InceptionPoolAndLogits", QuadrantInception)
    fake, real = _npz(tmp_path / "fake.npz", 0, shift=30), _npz(tmp_path / "real.npz", 1)
    out = evaluate_generation(fake, real, batch_size=16)
    assert calls == []
    feats = [
        QuadrantInception()(torch.from_numpy(load_images(p)).permute(0, 3, 1, 2))[0]
        for p in (fake, real)
    ]
    (m1, s1), (m2, s2) = ((f.mean(0).numpy(), np.cov(f.numpy(), rowvar=False)) for f in feats)
    assert out["fid"] == pytest.approx(frechet_distance(m1, s1, m2, s2), rel=1e-9)
    assert out["fid"] > 1e-3 and out["num_samples"] == out["num_reference"] == 64


def _eval_generation(tmp_path, *extra):
    npz = _npz(tmp_path / "s.npz", 0, n=4)
    return main(["eval", "generation", npz, "--reference", npz, "--out", str(tmp_path), *extra])


def test_missing_weights_name_this_commands_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.delenv("OV3_DEBUG", raising=False)
    assert _eval_generation(tmp_path) == 1
    err = capsys.readouterr().err.strip()
    cached = str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE)
    assert len(err.splitlines()) == 1 and err.startswith("ov3 eval: error: gFID needs")
    assert "--inception-weights PATH" in err and INCEPTION_URL in err and cached in err
    assert "--reconstruction" not in err and "rFID" not in err
    assert _eval_generation(tmp_path, "--inception-weights", str(tmp_path / "nope.pth")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights" in err and "does not exist" in err
    assert "--reconstruction" not in err


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "another-network"])
def test_corrupt_weights_are_one_line(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OV3_DEBUG", raising=False)
    weights = _corrupt_weights(kind, tmp_path / "inception.pth")
    assert _eval_generation(tmp_path, "--inception-weights", weights) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"ov3 eval: error: {weights} is not a valid Inception-v3 FID weights")
    assert INCEPTION_URL in err and "--inception-weights PATH" in err
    assert "--reconstruction" not in err


def test_npz_and_folder_load_the_same_images(tmp_path):
    folder = _folder(tmp_path / "imgs", 2, n=3)
    images = load_images(folder)
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.arange(3))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(load_images(str(tmp_path / "s.npz")), images)
