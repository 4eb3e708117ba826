"""The trainer's evaluation (at intervals, at the end, and in the demo report): a subset of the
tasks and images of ``ov3 eval``, run through the same ``EvalRun`` and ``run_tasks``.

``ov3 eval all --model <run>/final --data.<the run's data flags> --split val --num-images N
--batch-size B --reconstruction.lpips off --reconstruction.rfid off`` reproduces its numbers
(the export records the resolution), under the same names (``runner.flat_metrics``).
"""

from __future__ import annotations

from torch import nn

from openvision3.data.loader import DataConfig
from openvision3.distributed.process import get_rank, get_world_size
from openvision3.evaluation.reduce import limited
from openvision3.evaluation.runner import (
    CaptioningTaskConfig,
    EvalRun,
    EvalRunConfig,
    ReconstructionTaskConfig,
    results_header,
    run_tasks,
)

__all__ = ["evaluate_model", "limited", "training_eval_config"]

# ``ov3 eval`` task -> the EvalConfig switch that runs it in training (in ``TASKS`` order;
# the linear probe runs in ``ov3 eval`` only).
SWITCHES = {
    "reconstruction": "reconstruction",
    "zero-shot": "zero_shot",
    "retrieval": "retrieval",
    "captioning": "captioning",
}


def training_eval_config(
    data: DataConfig, cfg, resolution: int, out_dir: str | None = None
) -> EvalRunConfig:
    """The ``ov3 eval`` settings of the trainer's evaluation. ``cfg`` is an ``EvalConfig``.

    The val split's first ``cfg.num_images`` images of ``data`` at ``resolution``; LPIPS and
    rFID off (they need weights on disk and an Inception pass: ``ov3 eval`` computes them).
    """
    return EvalRunConfig(
        out_dir=out_dir or "",
        data=data,
        split="val",
        resolution=resolution,
        batch_size=cfg.batch_size,
        num_images=cfg.num_images,
        reconstruction=ReconstructionTaskConfig(lpips="off", rfid="off"),
        captioning=CaptioningTaskConfig(samples=cfg.caption_samples),
    )


def evaluate_model(
    model: nn.Module,
    data: DataConfig,
    cfg,
    resolution: int,
    out_dir: str | None = None,
) -> dict:
    """Evaluate ``model`` (unwrapped) on ``data``'s val split at ``resolution``; call on every
    rank. ``cfg`` is an ``EvalConfig``: its switches pick the tasks (those the model or data
    cannot support are skipped, with the reason under "skipped").

    Returns ``run_eval``'s results (``metrics`` flat: ``rec_psnr``, ``zero_shot_top1``, ...;
    ``tasks``, ``skipped``, ``settings``, ``model``, ``data``, ``config``, ``environment``)
    plus ``captions`` (the kept caption samples). With ``out_dir``, writes what ``ov3 eval``
    writes there: ``results.json``, ``report.md``, the reconstruction CSV and PNGs.
    """
    from openvision3.evaluation.report import write_report

    rank, world = get_rank(), get_world_size()
    run = EvalRun(training_eval_config(data, cfg, resolution, out_dir), model, rank, world)
    tasks = [task for task, switch in SWITCHES.items() if getattr(cfg, switch)]
    results = {**results_header(run, None), **run_tasks(run, tasks, explicit=False)}
    results["captions"] = results["tasks"].get("captioning", {}).get("samples", [])
    if out_dir and rank == 0:
        write_report(results, out_dir)
    return results
