"""The training engine: one loop for a single process and for ``torchrun`` (DDP).

The step reads top to bottom: forward, objective, backward, clip, step, schedule, clamp the
temperature, EMA. Intervals (log, checkpoint, evaluate) are plain ``if``s in the loop.
Stages (resolution, steps, batch, LR, LPIPS weight) run one after another; the encoder's
sin-cos positions follow the grid of each stage's resolution (the paper's 128 -> 256 px
schedule), and the data position carries over from one stage to the next.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch

from openvision3.config import ExperimentConfig, StageConfig
from openvision3.data.loader import build_loader
from openvision3.dataclass_io import to_dict
from openvision3.distributed.parallelize import parallelize
from openvision3.distributed.process import ProcessInfo, all_reduce_mean, barrier, init_process
from openvision3.losses.contrastive import MAX_LOGIT_SCALE
from openvision3.losses.objective import Objective
from openvision3.models.openvision3 import ModelConfig, OpenVision3
from openvision3.train.checkpoint import (
    find_latest,
    load_checkpoint,
    save_checkpoint,
)
from openvision3.train.ema import EMA
from openvision3.train.metrics import MetricsLogger, ProgressBar
from openvision3.train.optim import build_multi_stage_scheduler, build_optimizer, peak_lr

log = logging.getLogger(__name__)


def _rng_bytes() -> dict:
    out = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return out


def gather_rank_rng() -> list[dict]:
    """Every rank's torch RNG state (JSON-able), so each rank resumes its own noise stream."""
    import torch.distributed as dist

    mine = _rng_bytes()
    if not dist.is_initialized():
        return [mine]
    streams = [None] * dist.get_world_size()
    dist.all_gather_object(streams, mine)
    return streams


def set_rank_rng(stream: dict) -> None:
    decode = lambda s: torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)  # noqa: E731
    torch.set_rng_state(decode(stream["cpu"]))
    if "cuda" in stream and torch.cuda.is_available():
        torch.cuda.set_rng_state(decode(stream["cuda"]))


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the terms."""


def prune_model_config(model: ModelConfig, objective) -> ModelConfig:
    """Drop the heads whose loss weight is zero (ablations), so every parameter gets a gradient."""
    return dataclasses.replace(
        model,
        decoder=model.decoder if objective.needs_reconstruction else None,
        text=model.text if objective.needs_contrastive else None,
        caption=model.caption if objective.needs_caption else None,
    )


class Trainer:
    """``Trainer(cfg).fit()`` trains through every stage and returns the final metrics."""

    def __init__(self, cfg: ExperimentConfig, proc: ProcessInfo | None = None):
        self.cfg = cfg
        tc = cfg.train
        self.proc = proc or init_process(tc.device)
        self.device = self.proc.device
        self.run_dir = Path(cfg.run_dir)
        for s in tc.stages:
            if s.batch_size % self.proc.world_size:
                raise ValueError(
                    f"stage batch {s.batch_size} is not divisible by {self.proc.world_size} ranks"
                )
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = OpenVision3(prune_model_config(cfg.model, cfg.objective)).to(self.device)
        if tc.init_from:
            self._init_from(tc.init_from)
        self.optimizer = build_optimizer(self.model, tc.optim, lr=1.0)
        schedule = [(s.steps, peak_lr(s.base_lr, s.batch_size), s.warmup_steps) for s in tc.stages]
        self.scheduler = build_multi_stage_scheduler(
            self.optimizer, schedule, tc.optim.min_lr_ratio
        )
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.step, self.samples, self.data_state = 0, 0, None
        self.stopped, self.train_seconds = False, 0.0
        torch.manual_seed(tc.seed + 1000 * self.proc.rank)  # per-rank noise / token dropping
        self._maybe_resume()
        self.train_model = parallelize(self.model, self.proc.world_size, self.device, tc.compile)
        self.logger = MetricsLogger(self.run_dir, tc.tensorboard, enabled=self.proc.is_main)
        if self.proc.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(cfg.to_json())

    # ------------------------------------------------------------------ set-up
    def _init_from(self, path: str) -> None:
        """Weights (not optimiser state) from an export or a training checkpoint directory;
        both hold ``model.safetensors`` with the unwrapped model's parameter names."""
        from safetensors.torch import load_file

        weights = Path(path) / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"train.init_from: {weights} does not exist")
        missing, unexpected = self.model.load_state_dict(load_file(str(weights)), strict=False)
        log.info(
            "init_from %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected)
        )

    def _maybe_resume(self) -> None:
        how = self.cfg.train.resume
        if how == "none":
            return
        path = find_latest(self.run_dir) if how == "auto" else Path(how)
        if path is None:
            return
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.ema)
        self.step, self.samples = state["step"], state["samples_seen"]
        self.data_state = state["data"]
        streams = state.get("rank_rng") or []
        if len(streams) == self.proc.world_size:
            set_rank_rng(streams[self.proc.rank])
        else:  # a different world size: fresh per-rank streams, derived from the step
            torch.manual_seed(self.cfg.train.seed + 1000 * self.proc.rank + self.step)
        if self.proc.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def stage_at(self, step: int) -> tuple[int, StageConfig, int]:
        """(stage index, stage, first global step of the stage) for a global step."""
        start = 0
        for i, s in enumerate(self.cfg.train.stages):
            if step < start + s.steps:
                return i, s, start
            start += s.steps
        return len(self.cfg.train.stages), self.cfg.train.stages[-1], start

    def autocast(self):
        p = self.cfg.train.precision
        if p == "bf16" or (p == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        tc = self.cfg.train
        total = tc.total_steps
        bar = ProgressBar(total, initial=self.step, enabled=self.proc.is_main)
        start = time.perf_counter()
        try:
            while self.step < total and not self.stopped:
                self._run_stage(bar)
        finally:
            bar.close()
            self.train_seconds = time.perf_counter() - start
        if self.stopped:
            self.logger.close()
            return {"stopped_at": self.step}
        results = self.finish()
        self.logger.close()
        return results

    def _run_stage(self, bar: ProgressBar) -> None:
        tc, cfg = self.cfg.train, self.cfg
        index, stage, start = self.stage_at(self.step)
        end = start + stage.steps
        per_rank = stage.batch_size // self.proc.world_size
        loader = build_loader(
            cfg.data,
            "train",
            stage.resolution,
            per_rank,
            rank=self.proc.rank,
            world_size=self.proc.world_size,
            train=True,
        )
        if self.data_state is not None:
            loader.load_state_dict(self.data_state)
        objective = Objective(dataclasses.replace(cfg.objective, lpips_weight=stage.lpips_weight))
        objective.to(self.device)
        branches = dict(
            reconstruction=objective.cfg.needs_reconstruction,
            contrastive=objective.cfg.needs_contrastive,
            caption=objective.cfg.needs_caption,
        )
        if self.proc.is_main:
            log.info(
                "stage %d: %d px, steps %d-%d, global batch %d, peak lr %.3g, lpips %.2f",
                index,
                stage.resolution,
                start,
                end,
                stage.batch_size,
                peak_lr(stage.base_lr, stage.batch_size),
                stage.lpips_weight,
            )
        self.train_model.train()
        window, t0, n0 = {}, time.perf_counter(), 0
        for batch in loader:
            batch = {
                k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()
            }
            with self.autocast():
                out = self.train_model(batch, **branches)
                loss, terms = objective(out)
            if not torch.isfinite(loss):
                detail = {k: float(v) for k, v in terms.items()}
                raise NonFiniteLossError(f"non-finite loss at step {self.step}: {detail}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.optim.grad_clip)
                if tc.optim.grad_clip
                else None
            )
            self.optimizer.step()
            self.scheduler.step()
            if self.model.text is not None:
                with torch.no_grad():
                    self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            self.samples += stage.batch_size
            n0 += stage.batch_size
            for k, v in terms.items():
                window[k] = window.get(k, 0.0) + float(v)
            window["_count"] = window.get("_count", 0) + 1
            if grad_norm is not None:
                window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
            self.stopped = self.step == tc.stop_at
            last = self.step == end or self.stopped
            if self.step % tc.log_every == 0 or last:
                rate = n0 / (time.perf_counter() - t0)
                self._log(window, rate, stage, index, bar)
                window, t0, n0 = {}, time.perf_counter(), 0
            if self.step % tc.ckpt_every == 0 or last:
                self.data_state = loader.state_dict()
                self.save(index)
            if self.stopped and self.proc.is_main:
                log.info(
                    "stopped at step %d (train.stop_at); resume with the same command", self.step
                )
            if tc.eval_every and self.step % tc.eval_every == 0 and not last:
                self.log_eval(self.evaluate(stage.resolution))
            if last:
                break
        self.data_state = loader.state_dict()
        if loader.skipped and self.proc.is_main:
            log.warning("stage %d: skipped %d unreadable samples", index, loader.skipped)

    def _log(self, window: dict, rate: float, stage: StageConfig, index: int, bar) -> None:
        count = window.pop("_count")
        scalars = {k: v / count for k, v in window.items()}
        scalars = all_reduce_mean(scalars, self.device)
        scalars.update(
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_s=rate * 1.0,
            stage=index,
            resolution=stage.resolution,
        )
        self.logger.log(self.step, scalars, samples=self.samples)
        bar.update(self.step, loss=scalars.get("loss"), images_per_s=rate)

    def save(self, stage_index: int) -> Path:
        state = {
            "samples_seen": self.samples,
            "stage": stage_index,
            "data": self.data_state,
            "rank_rng": gather_rank_rng(),
            "config": to_dict(self.cfg),
        }
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.ema,
            state=state,
            keep_last=self.cfg.train.keep_last,
        )

    # ------------------------------------------------------------------ evaluation / export
    @contextlib.contextmanager
    def eval_weights(self):
        """The EMA weights when EMA is on, else the live ones; eval mode inside."""
        ctx = self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()
        with ctx:
            self.model.eval()
            try:
                yield self.model
            finally:
                self.model.train()

    def evaluate(self, resolution: int | None = None, out_dir: str | None = None) -> dict:
        from openvision3.evaluation.suite import evaluate_model

        ec = self.cfg.eval
        res = ec.resolution or resolution or self.cfg.train.stages[-1].resolution
        with self.eval_weights() as model, self.autocast():
            return evaluate_model(model, self.cfg.data, ec, res, out_dir=out_dir)

    def log_eval(self, results: dict) -> None:
        scalars = {
            f"eval/{k}": v
            for k, v in results.get("metrics", {}).items()
            if isinstance(v, (int, float)) and v is not None
        }
        self.logger.log(self.step, scalars, samples=self.samples)

    def finish(self) -> dict:
        """Export ``run_dir/final`` (EMA weights when on), evaluate, write ``results.json``."""
        final = self.run_dir / "final"
        if self.proc.is_main:
            with self.eval_weights() as model:
                model.save_pretrained(
                    str(final),
                    card={
                        "experiment": self.cfg.name,
                        "steps": self.step,
                        "samples_seen": self.samples,
                        "data": self.cfg.data.source,
                    },
                )
        barrier()
        results = self.evaluate(out_dir=str(self.run_dir / "eval"))
        self.log_eval(results)
        if self.proc.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        return results
