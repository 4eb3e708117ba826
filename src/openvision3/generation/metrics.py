"""gFID, Inception Score, precision and recall of generated images (``ov3 eval generation``).

Features: torch-fidelity's TF-ported Inception-v3 (pool3 2048-d and the unbiased logits),
read from a local weights file as ``evaluation/fid.py`` does: nothing is downloaded.
torch-fidelity is kept for the features and for IS (``isc_features_to_metric``, 10 splits). FID
is the rFID code's: ``FeatureStats`` (mean and unbiased covariance, as ``np.cov``) and
``frechet_distance`` (Heusel et al. 2017, Eq. 6, the trace of the square root from a symmetric
eigenproblem), so gFID and rFID are one formula, and neither calls ``scipy.linalg.sqrtm``
(torch-fidelity 0.3.0's ``fid_statistics_to_metric`` passes it ``disp=False``, deprecated in
SciPy 1.16 and removed in 1.18). Precision and recall are ADM's (``evaluations/evaluator.py``,
Kynkaanniemi et al. 2019): each set's k-th nearest-neighbour radius (k = 3, the point itself
not counted) in the pool3 space; precision = the share of samples inside some reference ball,
recall = the share of references inside some sample ball. torch-fidelity 0.3.0 has no
precision / recall.

References: a folder of images (PNG / JPEG), an ``.npz`` of images (``arr_0`` (N, H, W, 3)
uint8, as ``ov3 sample`` and ADM write), or ADM's ``VIRTUAL_imagenet256_labeled.npz``, whose
``mu`` / ``sigma`` give FID and whose ``arr_0`` images give the reference features.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from openvision3.evaluation.fid import (
    FeatureStats,
    frechet_distance,
    inception_weights_path,
    load_inception,
)

# ``ov3 eval generation``'s flag for the weights file, named in its error messages.
WEIGHTS_FLAG = "--inception-weights"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class InceptionPoolAndLogits(nn.Module):
    """uint8 (B, 3, H, W) -> (pool3 (B, 2048), unbiased logits (B, 1008)), float64."""

    def __init__(self, weights: str = ""):
        super().__init__()
        path = inception_weights_path(weights, WEIGHTS_FLAG, "gFID", skip="")
        self.net = load_inception(path, ["2048", "logits_unbiased"], WEIGHTS_FLAG)

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net(images)
        return pool.double(), logits.double()


def load_images(path: str) -> np.ndarray:
    """A folder of images or an .npz (``arr_0``) -> uint8 (N, H, W, 3)."""
    from PIL import Image

    if path.endswith(".npz"):
        with np.load(path) as f:
            return f["arr_0"]
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))
    if not names:
        raise FileNotFoundError(f"no images in {path!r}")
    return np.stack([np.asarray(Image.open(os.path.join(path, n)).convert("RGB")) for n in names])


def extract(net, images: np.ndarray, batch_size: int = 100, device="cpu"):
    """uint8 (N, H, W, 3) -> (pool3 (N, 2048), logits (N, 1008)) float64 on the CPU."""
    pools, logits = [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).to(device)
        p, lg = net(x)
        pools.append(p.cpu())
        logits.append(lg.cpu())
    return torch.cat(pools), torch.cat(logits)


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """(N, F) -> (N,): distance of each point to its k-th nearest other point of the set."""
    out = []
    for i in range(0, len(features), chunk):
        d = torch.cdist(features[i : i + chunk], features)  # (b, N)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the point itself is the 1st (distance 0)
    return torch.cat(out)


def coverage(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 1024):
    """Share of ``queries`` within ``radii[j]`` of some ``points[j]``."""
    inside = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], points)  # (b, M)
        inside.append((d <= radii[None]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """ADM's improved precision and recall with k nearest neighbours, float64 features."""
    real, fake = real.double(), fake.double()
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance of two Gaussians (mean (F,), covariance (F, F)): rFID's formula."""
    return frechet_distance(
        np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
        np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64),
    )  # fmt: skip


def statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) features -> mean (F,) and unbiased covariance (F, F), float64."""
    stats = FeatureStats(features.shape[1])
    stats.add(features)
    return stats.mean_cov()


def evaluate_generation(
    samples: str, reference: str, weights: str = "", k: int = 3, batch_size: int = 100,
    device: str = "cpu", max_reference: int = 0,
) -> dict:  # fmt: skip
    """FID, IS (mean, std), precision and recall of ``samples`` against ``reference``."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    net = InceptionPoolAndLogits(weights).to(device)
    fake_pool, fake_logits = extract(net, load_images(samples), batch_size, device)
    ref_mu = ref_sigma = None
    if reference.endswith(".npz"):
        with np.load(reference) as f:
            if "mu" in f and "sigma" in f:
                ref_mu, ref_sigma = f["mu"], f["sigma"]
    ref_images = load_images(reference)
    if max_reference:
        ref_images = ref_images[:max_reference]
    real_pool, _ = extract(net, ref_images, batch_size, device)
    if ref_mu is None:
        ref_mu, ref_sigma = statistics(real_pool)
    mu, sigma = statistics(fake_pool)
    isc = isc_features_to_metric(fake_logits, splits=min(10, len(fake_logits)))
    precision, recall = precision_recall(real_pool, fake_pool, k)
    return {
        "fid": fid_from_stats(mu, sigma, ref_mu, ref_sigma),
        "inception_score": float(isc["inception_score_mean"]),
        "inception_score_std": float(isc["inception_score_std"]),
        "precision": precision,
        "recall": recall,
        "num_samples": len(fake_pool),
        "num_reference": len(real_pool),
        "k": k,
    }
