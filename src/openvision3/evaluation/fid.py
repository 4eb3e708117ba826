"""rFID: Frechet Inception Distance between reconstructions and their originals.

Features are torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-ported Inception-v3 of
Heusel et al. 2017 that pytorch-fid and torch-fidelity share; pool3, 2048-d), read from a LOCAL
file: nothing is downloaded. Statistics are kept as float64 SUMS (sum x, sum x x^T, count), so
they all-reduce exactly across ranks and uneven shards give the statistics of the whole set;
the covariance is the unbiased one (``np.cov``), as in pytorch-fid and torch-fidelity.
``frechet_distance`` takes the trace of the matrix square root from a symmetric eigenproblem.

The originals' statistics (the reference) depend only on the data, so they are cached in a
``.npz`` keyed by the data identity, resolution, resize policy and image count, and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from openvision3.distributed.process import is_main
from openvision3.evaluation.reduce import all_reduce_sum
from openvision3.files import atomic_write
from openvision3.models.vae import MissingWeightsError

# torch-fidelity's conversion of the TF 2015-12-05 Inception graph (the FID reference network).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = os.path.basename(INCEPTION_URL)
FEATURE_DIM = 2048

Extractor = Callable[[torch.Tensor], torch.Tensor]


def default_inception_path() -> str:
    """Where the Inception weights are looked for without a path: the torch hub cache."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)


# How ``ov3 eval`` (rFID) takes the weights; ``ov3 eval generation`` passes its own flag.
RFID_FLAG = "--reconstruction.inception-weights"
RFID_SKIP = "--reconstruction.rfid off skips rFID"


def inception_weights_path(
    weights: str = "", flag: str = RFID_FLAG, feature: str = "rFID", skip: str = RFID_SKIP
) -> str:
    """The local Inception weights file, or a ``MissingWeightsError`` saying what to fetch.

    Args:
        weights: the path given on the command line ("" = the torch hub cache).
        flag: the command's flag for that path, named in the messages.
        feature: the metric that needs the weights (rFID, gFID), named in the messages.
        skip: how to run the command without the metric ("" = say nothing).
    """
    if weights:
        if not os.path.isfile(weights):
            raise MissingWeightsError(
                f"{flag} {weights} does not exist. It must be torch-fidelity's Inception-v3 FID "
                f"weights, downloaded from {INCEPTION_URL}"
            )
        return weights
    cached = default_inception_path()
    if not os.path.isfile(cached):
        raise MissingWeightsError(
            f"{feature} needs the Inception-v3 FID weights, and nothing is downloaded here. Fetch "
            f"{INCEPTION_URL} and either put it at {cached} (the torch hub cache; TORCH_HOME "
            f"moves it) or pass its path with {flag} PATH" + (f"; {skip}." if skip else ".")
        )
    return cached


def load_inception(path: str, outputs: list[str], flag: str = RFID_FLAG) -> nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` ("inception-v3-compat") with the weights
    at ``path``, in eval mode and frozen; ``outputs`` name its features ("2048", "logits_unbiased").

    A file that is not a state dict of this network (truncated, random bytes, another model's)
    raises a one-line ``MissingWeightsError`` naming the file to download and ``flag``.
    """
    from openvision3.errors import require

    inception = require("torch_fidelity.feature_extractor_inceptionv3", "eval", "FID")
    try:  # torch-fidelity calls torch.load (weights_only) and a strict load_state_dict
        net = inception.FeatureExtractorInceptionV3(
            "inception-v3-compat", outputs, feature_extractor_weights_path=path
        )
    except Exception as err:
        # Unpickling arbitrary bytes fails in many ways (random bytes: UnpicklingError, or
        # KeyError / IndexError from the unpickler's memo and stack; a truncated zip:
        # RuntimeError; an empty file: EOFError); a strict load of another network's state
        # dict: RuntimeError; a pickled tensor: TypeError. Building the network itself is
        # fixed code, so any failure here is the file's.
        raise MissingWeightsError(
            f"{path} is not a valid Inception-v3 FID weights file (loading it raised "
            f"{type(err).__name__}; OV3_DEBUG=1 shows why). Download {INCEPTION_URL} and put it "
            f"at {default_inception_path()} or pass its path with {flag} PATH"
        ) from err
    return net.eval().requires_grad_(False)  # torch-fidelity 0.3 leaves BatchNorm in train mode


class InceptionFeatures(nn.Module):
    """uint8 images (B, 3, H, W) -> Inception-v3 pool3 features (B, 2048) float64.

    Images are resized to 299 inside torch-fidelity's extractor (TF1-compatible bilinear).
    ``calls`` counts forward calls (the cache test reads it).
    """

    def __init__(self, weights: str = ""):
        super().__init__()
        path = inception_weights_path(weights)  # fail before importing torch-fidelity
        self.net = load_inception(path, [str(FEATURE_DIM)])
        self.weights = path
        self.calls = 0

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # a fixed feature extractor: always in eval mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        (features,) = self.net(images)
        return features.double()


class FeatureStats:
    """Running float64 sums of features: ``sum x`` (F,), ``sum x x^T`` (F, F) and the count."""

    def __init__(self, dim: int = FEATURE_DIM):
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def add(self, features: torch.Tensor) -> None:
        """Accumulate (B, F) features."""
        x = features.detach().to("cpu", torch.float64)
        self.sum += x.sum(dim=0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def all_reduce(self) -> None:
        """Sum the statistics of every rank (call once, on every rank)."""
        packed = torch.cat([self.sum, self.outer.reshape(-1), torch.tensor([float(self.count)])])
        packed = all_reduce_sum(packed)
        f = self.sum.shape[0]
        self.sum, self.outer = packed[:f], packed[f : f + f * f].reshape(f, f)
        self.count = int(packed[-1].item())

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean (F,) and unbiased covariance (F, F), as ``np.cov(x, rowvar=False)``."""
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 images, got {self.count}")
        n = self.count
        mu = self.sum / n
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.numpy(), cov.numpy()

    def save(self, path: str, identity: dict) -> None:
        """Atomically write the sums and ``identity`` (JSON) to ``path`` (.npz)."""
        if not path.endswith(".npz"):
            raise ValueError(f"FID statistics are written as .npz, got {path!r}")
        arrays = dict(
            sum=self.sum.numpy(),
            outer=self.outer.numpy(),
            count=np.int64(self.count),
            identity=np.array(json.dumps(identity, sort_keys=True)),
        )
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))  # tmp keeps the .npz suffix

    @classmethod
    def load(cls, path: str) -> FeatureStats:
        with np.load(path) as f:
            stats = cls(f["sum"].shape[0])
            stats.sum, stats.outer = torch.from_numpy(f["sum"]), torch.from_numpy(f["outer"])
            stats.count = int(f["count"])
        return stats


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) (Heusel et al. 2017, Eq. 6).

    Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2 (as in
    torchmetrics' FID), taken here from the similar SYMMETRIC matrix S1^(1/2) S2 S1^(1/2)
    restricted to the range of S1, with ``scipy.linalg.eigh``: exact, real, and much faster
    and more accurate than ``scipy.linalg.sqrtm(S1 @ S2)`` for the singular covariances of
    sets smaller than the feature dimension (a test pins the two against each other).
    """
    from openvision3.errors import require

    linalg = require("scipy.linalg", "eval", "the Frechet distance")
    diff = mu1 - mu2
    w, v = linalg.eigh((sigma1 + sigma1.T) / 2)  # S1 = V diag(w) V^T
    keep = w > max(w.max(), 0.0) * 1e-12  # the range of S1 (w < 0 only from rounding)
    root = v[:, keep] * np.sqrt(w[keep])  # (F, k): S1 = root root^T
    inner = root.T @ ((sigma2 + sigma2.T) / 2) @ root  # (k, k), same nonzero spectrum as S1 S2
    trace_sqrt = np.sqrt(np.clip(linalg.eigvalsh(inner), 0.0, None)).sum()
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(value)


def reference_cache_path(cache_dir: str, identity: dict) -> str:
    """``cache_dir/fid-ref-<name>-<hash of identity>.npz``; the identity is any JSON dict."""
    text = json.dumps(identity, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() else "-" for c in str(identity.get("name", "data")))[:40]
    return os.path.join(cache_dir, f"fid-ref-{name}-{digest}.npz")


class ReconstructionFID:
    """rFID of reconstructions against their originals, with cached reference statistics.

    Call :meth:`update` with every (original, reconstruction) batch of this rank, then
    :meth:`compute` on every rank. With ``cache_path`` set and present, the originals'
    statistics are read from it and the originals are not passed through the extractor;
    otherwise they are computed and rank 0 writes them there.

    Args:
        extractor: uint8 (B, 3, H, W) -> (B, F) features, e.g. ``InceptionFeatures``.
        cache_path: the reference ``.npz`` (see ``reference_cache_path``); "" = no cache.
        identity: stored with the reference, for humans reading the cache.
    """

    def __init__(self, extractor: Extractor, cache_path: str = "", identity: dict | None = None):
        self.extractor, self.cache_path, self.identity = extractor, cache_path, identity or {}
        self.cached = bool(cache_path) and os.path.isfile(cache_path)
        self.reference = FeatureStats.load(cache_path) if self.cached else None
        self._real: FeatureStats | None = None
        self._fake: FeatureStats | None = None

    def update(self, original: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """Accumulate uint8 originals (B, 3, H, W) and their uint8 reconstructions."""
        fake = self.extractor(reconstruction)  # (B, F)
        if self._fake is None:
            self._fake = FeatureStats(fake.shape[1])
        self._fake.add(fake)
        if not self.cached:
            real = self.extractor(original)
            if self._real is None:
                self._real = FeatureStats(real.shape[1])
            self._real.add(real)

    def compute(self) -> float:
        """Reduce over ranks, write the reference when it was computed, return the rFID."""
        dim = self.reference.sum.shape[0] if self.cached else self._dim()
        fake = self._fake or FeatureStats(dim)  # a rank without images still joins
        fake.all_reduce()
        if not self.cached:
            real = self._real or FeatureStats(dim)
            real.all_reduce()
            self.reference = real
            if self.cache_path and is_main():
                real.save(self.cache_path, {**self.identity, "count": real.count})
        if self.reference.count != fake.count:
            raise ValueError(
                f"the reference statistics hold {self.reference.count} images but "
                f"{fake.count} were reconstructed; the cache {self.cache_path!r} is stale "
                "(delete it) or the image count changed"
            )
        self._real = self._fake = None
        return frechet_distance(*self.reference.mean_cov(), *fake.mean_cov())

    def _dim(self) -> int:
        # Every rank must pack the same shape; a rank that saw no image asks the others.
        local = self._fake.sum.shape[0] if self._fake is not None else 0
        total, ranks = all_reduce_sum(torch.tensor([local, int(local > 0)])).tolist()
        return total // ranks if ranks else FEATURE_DIM
