import pytest
import torch

from openvision3.evaluation.linear_probe import (
    LinearProbeConfig,
    LinearProbeEvaluator,
    fit_logistic,
    linear_probe,
)
from tests.evaluation._eval_fakes import TableModel, index_images


def _separable(n: int, k: int, dim: int, seed: int):
    """Gaussian blobs around well-separated class centres: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    centres = 6.0 * torch.eye(k, dim, dtype=torch.float64)
    y = torch.arange(n) % k
    return centres[y] + 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64), y


def test_probe_separates_separable_features():
    train_x, train_y = _separable(60, 3, 8, seed=0)
    val_x, val_y = _separable(30, 3, 8, seed=1)
    out = linear_probe(train_x, train_y, val_x, val_y, 3, LinearProbeConfig(max_iter=50))
    assert out["top1"] == 1.0 and out["count"] == 30 and out["train_count"] == 60
    assert "top5" not in out  # only 3 classes
    assert out["l2"] in LinearProbeConfig().l2_grid
    assert set(out["holdout_top1"]) == {str(v) for v in LinearProbeConfig().l2_grid}


def test_probe_is_at_chance_on_shuffled_labels():
    train_x, train_y = _separable(60, 3, 8, seed=0)
    val_x, val_y = _separable(60, 3, 8, seed=1)
    shuffled = val_y[torch.randperm(60, generator=torch.Generator().manual_seed(0))]
    out = linear_probe(train_x, train_y, val_x, shuffled, 3)
    assert out["top1"] < 0.6


def test_l2_shrinks_the_weights():
    x, y = _separable(40, 2, 4, seed=0)
    w_free, _ = fit_logistic(x, y, 2, l2=0.0, max_iter=30)
    w_reg, _ = fit_logistic(x, y, 2, l2=1.0, max_iter=30)
    assert w_reg.norm() < 0.5 * w_free.norm()


def test_evaluator_uses_unnormalised_pooled_features():
    # The model's pooled features are rows of a table of separable points (train, then val).
    train_x, train_y = _separable(24, 4, 6, seed=0)
    val_x, val_y = _separable(12, 4, 6, seed=1)
    table = torch.cat([train_x, val_x]).float()
    model = TableModel(table, torch.zeros(1, 6))

    def batches(lo, hi, labels):
        for i in range(lo, hi, 5):
            j = min(i + 5, hi)
            yield {"images": index_images(range(i, j)), "label": labels[i - lo : j - lo]}

    probe = LinearProbeEvaluator(4, LinearProbeConfig(max_iter=50))
    out = probe.run(model, batches(0, 24, train_y), batches(24, 36, val_y))
    assert out["top1"] == 1.0 and out["count"] == 12 and out["train_count"] == 24
    with pytest.raises(ValueError, match="classes"):
        LinearProbeEvaluator(1)
