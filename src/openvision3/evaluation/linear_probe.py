"""Linear probe: multinomial logistic regression on frozen pooled image features.

Features are ``model.embed_image(images, normalize=False)`` (the pooled, projected
embedding) unless another feature function is given (the demo probes the mean-pooled unified
tokens), gathered from every rank in rank order, standardised with the train mean and
standard deviation. The classifier is fit full-batch with L-BFGS (strong Wolfe line search) in
float64 on every rank (the same data gives the same weights); the L2 strength is picked on a
held-out part of train, then the classifier is refit on all of train and scored on val.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.evaluation.reduce import all_gather_rows, evaluating, model_device


@dataclass
class LinearProbeConfig:
    """l2_grid: L2 strengths tried (penalty `l2 / 2 * ||W||^2` added to the mean
    cross-entropy); holdout: fraction of train held out to pick one; max_iter: L-BFGS
    iterations; seed: the held-out split."""

    # L2 strengths tried (l2 / 2 * ||W||^2 added to the loss)
    l2_grid: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
    holdout: float = 0.2  # fraction of train held out to pick one
    max_iter: int = 100  # L-BFGS iterations
    seed: int = 0  # seeds the held-out split

    def __post_init__(self):
        self.l2_grid = tuple(float(v) for v in self.l2_grid)
        if not self.l2_grid or min(self.l2_grid) < 0:
            raise ValueError(f"l2_grid must be non-empty and >= 0, got {self.l2_grid}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


Features = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def pooled_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> the unnormalised pooled, projected embedding (B, E)."""
    return model.embed_image(images, normalize=False)


@torch.no_grad()
def extract_features(
    model: nn.Module, batches: Iterable[dict], features: Features = pooled_embedding
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every rank's images, gathered in rank order.

    Args:
        model: what ``features`` reads; by default it has ``embed_image(images (B, 3, H, W),
            normalize=False) -> (B, E)``.
        batches: dicts with ``images`` and ``label`` (B,) long.
        features: ``fn(model, images (B, 3, H, W)) -> (B, E)``.

    Returns:
        features (N, E) float64 and labels (N,) long, on CPU, identical on every rank.
    """
    device = model_device(model)
    feats, labels = [], []
    with evaluating(model):
        for batch in batches:
            feats.append(features(model, batch["images"].to(device)).double())
            labels.append(batch["label"].to(device))
    x = torch.cat(feats) if feats else torch.zeros((0, 0), dtype=torch.float64, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    return all_gather_rows(x).cpu(), all_gather_rows(y).cpu()


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS.

    Args:
        x: (N, E) standardised features; y: (N,) labels in [0, num_classes).

    Returns:
        weight (num_classes, E) and bias (num_classes,), float64.
    """
    x = x.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Fraction of rows (N, K) whose label is among the k highest logits."""
    hit = (logits.topk(k, dim=-1).indices == y[:, None]).any(dim=-1)
    return hit.double().mean().item()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    cfg: LinearProbeConfig | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict:
    """Pick L2 on a held-out part of train, refit on all of train, score val.

    Args:
        train_x: (Nt, E), train_y: (Nt,), val_x: (Nv, E), val_y: (Nv,).

    Returns:
        ``{"top1", ["top5",] "l2", "holdout_top1": {l2: acc}, "train_count", "count"}``.
    """
    cfg = cfg or LinearProbeConfig()
    n = train_x.shape[0]
    if n < 2 or val_x.shape[0] < 1:
        raise ValueError(f"need >= 2 train and >= 1 val images, got {n} and {val_x.shape[0]}")
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_hold = max(1, round(cfg.holdout * n))
    hold, fit = perm[:n_hold], perm[n_hold:]
    scores = {}
    for l2 in cfg.l2_grid:
        w, b = fit_logistic(train_x[fit], train_y[fit], num_classes, l2, cfg.max_iter)
        scores[l2] = topk_accuracy(train_x[hold] @ w.T + b, train_y[hold], 1)
    best = max(cfg.l2_grid, key=lambda l2: (scores[l2], l2))  # ties -> the stronger penalty
    w, b = fit_logistic(train_x, train_y, num_classes, best, cfg.max_iter)
    logits = val_x @ w.T + b
    result = {f"top{k}": topk_accuracy(logits, val_y, k) for k in topk if k <= num_classes}
    return {
        **result,
        "l2": best,
        "holdout_top1": {str(k): v for k, v in scores.items()},
        "train_count": n,
        "count": val_x.shape[0],
    }


class LinearProbeEvaluator:
    """Top-k of a logistic-regression probe on frozen features of a labelled train/val pair.

    ``features(model, images (B, 3, H, W)) -> (B, E)`` picks what is probed (default: the
    unnormalised pooled embedding)."""

    def __init__(
        self,
        num_classes: int,
        cfg: LinearProbeConfig | None = None,
        features: Features = pooled_embedding,
    ):
        if num_classes < 2:
            raise ValueError(f"a linear probe needs >= 2 classes, got {num_classes}")
        self.num_classes, self.cfg = num_classes, cfg or LinearProbeConfig()
        self.features = features

    def run(self, model: nn.Module, train: Iterable[dict], val: Iterable[dict]) -> dict:
        """Call on every rank with that rank's train and val batches; same result everywhere."""
        train_x, train_y = extract_features(model, train, self.features)
        val_x, val_y = extract_features(model, val, self.features)
        return linear_probe(train_x, train_y, val_x, val_y, self.num_classes, self.cfg)
