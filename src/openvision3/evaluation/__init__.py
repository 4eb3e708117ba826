"""Evaluators shared by the trainer (at intervals, and the ``ov3 demo`` report) and ``ov3 eval``.

Each ``run(model, batches)`` takes this rank's share of an evaluation set (disjoint, no
padding), reduces sums and counts (or gathers embeddings, for retrieval) across ranks, and
returns the same dict of plain numbers on every rank. Pass the unwrapped model (no DDP wrapper).
"""

from openvision3.evaluation.captioning import CaptionEvaluator
from openvision3.evaluation.fid import FeatureStats, ReconstructionFID, frechet_distance
from openvision3.evaluation.linear_probe import LinearProbeEvaluator, linear_probe
from openvision3.evaluation.reconstruction import (
    ReconstructionEvaluator,
    psnr_uint8,
    ssim,
    to_uint8,
)
from openvision3.evaluation.reduce import MetricAccumulator
from openvision3.evaluation.retrieval import (
    MultiCaptionRetrievalEvaluator,
    RetrievalEvaluator,
    retrieval_recall,
)
from openvision3.evaluation.zero_shot import ZeroShotEvaluator, build_classifier, imagenet_metadata

__all__ = [
    "CaptionEvaluator",
    "FeatureStats",
    "LinearProbeEvaluator",
    "MetricAccumulator",
    "MultiCaptionRetrievalEvaluator",
    "ReconstructionEvaluator",
    "ReconstructionFID",
    "RetrievalEvaluator",
    "ZeroShotEvaluator",
    "build_classifier",
    "frechet_distance",
    "imagenet_metadata",
    "linear_probe",
    "psnr_uint8",
    "retrieval_recall",
    "ssim",
    "to_uint8",
]
