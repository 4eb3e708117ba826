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
from openvision3.data.latents import check_cache_vae
from openvision3.data.loader import build_loader
from openvision3.dataclass_io import to_dict
from openvision3.distributed.parallelize import (
    clip_grad_norm_,
    parallelize,
    resolve_parallel,
    unsharded_copy,
)
from openvision3.distributed.process import (
    ProcessInfo,
    all_reduce_mean,
    barrier,
    gather_object,
    init_process,
)
from openvision3.errors import ConfigError
from openvision3.losses.contrastive import MAX_LOGIT_SCALE
from openvision3.losses.objective import Objective
from openvision3.models.openvision3 import ModelConfig, OpenVision3
from openvision3.train.accumulate import StepTerms, forward_backward
from openvision3.train.checkpoint import (
    find_latest,
    load_checkpoint,
    save_checkpoint,
)
from openvision3.train.checkpoint_dcp import load_weights
from openvision3.train.ema import EMA
from openvision3.train.export import last_trained_resolution
from openvision3.train.metrics import MetricsLogger, ProgressBar
from openvision3.train.optim import build_multi_stage_scheduler, build_optimizer, peak_lr
from openvision3.train.speed import speed_up_vae

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


def data_position(state: dict, rank: int, world_size: int) -> dict | None:
    """This rank's data loader position from a checkpoint's ``state``, on any world size.

    Same world size: the rank's own saved position. Another world size: map-style sources
    (synthetic, image folders) continue from the same global position in the epoch (each rank
    had consumed ``samples`` of its equal share; global = samples x saved ranks). Streaming
    (webdataset) positions are per rank and worker stream and do not carry over: the stream
    starts afresh, with a warning.
    """
    ranks = state.get("data_ranks")
    if ranks is None:  # checkpoints from before per-rank positions: rank 0's only
        ranks = [state.get("data")]
    if len(ranks) == world_size:
        return ranks[rank]
    data = ranks[0]
    if data is None:
        return None
    if "workers" in data:
        log.warning(
            "the webdataset position of %d ranks cannot move to %d ranks: the data stream "
            "starts afresh",
            len(ranks),
            world_size,
        )
        return None
    consumed = int(data["samples"]) * len(ranks)
    if consumed % world_size:
        raise ValueError(
            f"data position: {consumed} samples of the epoch consumed over {len(ranks)} ranks "
            f"cannot be split evenly over {world_size} ranks"
        )
    return {**data, "samples": consumed // world_size}


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
        cfg.validate()
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
        # AC -> compile -> DDP / FSDP2 (distributed/parallelize.py), before the optimizer and
        # the EMA: FSDP2 replaces the parameters by their shards.
        self.parallel = resolve_parallel(tc.parallel, self.proc.world_size)
        self.train_model = parallelize(
            self.model,
            self.proc.world_size,
            self.device,
            tc.compile,
            parallel=tc.parallel,
            activation_checkpointing=tc.activation_checkpointing,
            param_dtype=torch.bfloat16 if self._bf16() else torch.float32,
        )
        speed_up_vae(self.model.vae, self.device, tc.compile_vae, tc.channels_last_vae)
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
        self.logger = MetricsLogger(self.run_dir, tc.tensorboard, enabled=self.proc.is_main)
        if self.proc.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(cfg.to_json())

    # ------------------------------------------------------------------ set-up
    def _init_from(self, path: str) -> None:
        """Weights (not optimiser state) from an export or a training checkpoint directory of
        either format (``single``/``dcp``), into the model before it is sharded."""
        if not Path(path).is_dir():
            raise ConfigError(f"--train.init-from: {path} does not exist")
        try:
            missing, unexpected = load_weights(path, self.model, strict=False)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"train.init_from: {e}") from None
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
        self.data_state = data_position(state, self.proc.rank, self.proc.world_size)
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

    def _bf16(self) -> bool:
        p = self.cfg.train.precision
        return p == "bf16" or (p == "auto" and self.device.type == "cuda")

    def autocast(self):
        if self._bf16():
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
            pixel_fraction=objective.cfg.pixel_loss_fraction,
        )
        if cfg.data.latents:
            check_cache_vae(loader.latent_meta, self.model.vae)
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
        # Terms stay on the device; the host syncs once per log / checkpoint / eval step.
        window, t0, n0 = StepTerms(), time.perf_counter(), 0
        for batch in loader:
            batch = {
                k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()
            }
            self.optimizer.zero_grad(set_to_none=True)
            terms = forward_backward(
                self.train_model,
                self.model,
                objective,
                batch,
                tc.accum_steps,
                branches,
                self.autocast,
            )
            if tc.optim.grad_clip:
                params = self.model.parameters()
                terms["grad_norm"] = clip_grad_norm_(params, tc.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.model.text is not None:
                with torch.no_grad():
                    self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
            if self.ema is not None:
                self.ema.update(self.model)
            window.add(self.step, terms)
            self.step += 1
            self.samples += stage.batch_size
            n0 += stage.batch_size
            self.stopped = self.step == tc.stop_at
            last = self.step == end or self.stopped
            evaluate = tc.eval_every and self.step % tc.eval_every == 0 and not last
            if self.step % tc.log_every == 0 or self.step % tc.ckpt_every == 0 or evaluate or last:
                bad = window.non_finite()  # the step's loss, checked before any save or log
                if bad is not None:
                    raise NonFiniteLossError(bad)
            if self.step % tc.log_every == 0 or last:
                scalars = window.mean()
                rate = n0 / (time.perf_counter() - t0)
                self._log(scalars, rate, stage, index, bar)
                t0, n0 = time.perf_counter(), 0
            if self.step % tc.ckpt_every == 0 or last:
                self.data_state = loader.state_dict()
                self.save(index)
            if self.stopped and self.proc.is_main:
                log.info(
                    "stopped at step %d (train.stop_at); resume with the same command", self.step
                )
            if evaluate:
                self.log_eval(self.evaluate(stage.resolution))
            if last:
                break
        self.data_state = loader.state_dict()
        if loader.skipped and self.proc.is_main:
            log.warning("stage %d: skipped %d unreadable samples", index, loader.skipped)

    def _log(self, scalars: dict, rate: float, stage: StageConfig, index: int, bar) -> None:
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
            "data": self.data_state,  # rank 0's (the single format's readers expect one)
            "data_ranks": gather_object(self.data_state),  # every rank's, for data_position
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
            format=self.cfg.train.ckpt_format,
        )

    # ------------------------------------------------------------------ evaluation / export
    @contextlib.contextmanager
    def eval_weights(self):
        """The EMA weights when EMA is on, else the live ones; eval mode inside. Under FSDP2:
        an unsharded copy on every rank (collective; evaluation and export call the model's
        methods, which bypass the root ``forward`` that unshards)."""
        if self.parallel == "fsdp":
            model = unsharded_copy(self.model)
            if self.ema is not None:
                self.ema.copy_to(model)  # gathers the sharded shadows
            yield model.eval()
            return
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
        if not self.cfg.data.has_images:  # trained from a latent cache alone
            log.warning("no evaluation: set --data.path to evaluate on the held-out split")
            return {"metrics": {}, "skipped": "no --data.path (trained from --data.latents)"}
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
        with self.eval_weights() as model:  # every rank: gathers the shards under FSDP2
            if self.proc.is_main:
                model.save_pretrained(
                    str(final),
                    resolution=last_trained_resolution(self.cfg.train.stages, self.step),
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
