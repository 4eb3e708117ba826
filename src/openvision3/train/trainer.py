"""The training engine: one loop for a single process and for ``torchrun`` (DDP / FSDP2), for
any model that a ``Task`` (``train/task.py``) supplies.

The step reads top to bottom: the task's forward and backward, clip, step, schedule, the
task's after-step hook (OpenVision 3 clamps its temperature), EMA. Intervals (log, checkpoint,
evaluate) are plain ``if``s in the loop. Stages (steps, batch, peak LR, warmup, frozen modules)
run one after another, and the data position carries over from one stage to the next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

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
from openvision3.errors import ConfigError, TrainingDivergedError
from openvision3.train.accumulate import StepTerms
from openvision3.train.checkpoint import clean_key, read_meta, resume, save_checkpoint
from openvision3.train.config import StageConfig
from openvision3.train.ema import EMA
from openvision3.train.export import last_trained_stage
from openvision3.train.metrics import MetricsLogger, ProgressBar, wandb_settings
from openvision3.train.optim import build_multi_stage_scheduler, build_optimizer
from openvision3.train.task import Loader, RunConfig, frozen_names

log = logging.getLogger(__name__)


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


class Trainer:
    """``Trainer(cfg).fit()`` trains through every stage and returns the final metrics.

    ``Trainer(cfg, synthetic=True)`` builds the same model, parallelism, optimiser, schedules
    and EMA but reads, writes and checks no data or run folder (no resume, no logs): the
    benchmarks (``ov3 bench``) drive its ``begin_stage`` and ``train_step`` with the task's
    ``synthetic_batch``.
    """

    def __init__(self, cfg: RunConfig, proc: ProcessInfo | None = None, *, synthetic: bool = False):
        cfg.resolve_inputs()  # e.g. a released encoder's architecture, before the model is built
        if synthetic:  # the engine's own checks; the task's are about its data
            RunConfig.validate(cfg)
        else:
            cfg.validate()
        self.cfg = cfg
        self.task = cfg.build_task()
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
        self.model = self.task.build_model().to(self.device)
        if tc.init_from:
            self._init_from(tc.init_from)
        # Parameters frozen in every stage leave the optimiser (no state, no weight decay);
        # the others are frozen stage by stage (``_freeze``).
        self.trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        self.frozen = [set(frozen_names(self.model, s.freeze)) for s in tc.stages]
        self._check_freezing()
        self._freeze(set.intersection(*self.frozen))
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
        self.task.prepare(self.model, self.device)
        self.optimizer = build_optimizer(self.model, tc.optim, lr=1.0)
        schedule = [(s.steps, s.lr, s.warmup_steps) for s in tc.stages]
        o = tc.optim
        self.scheduler = build_multi_stage_scheduler(
            self.optimizer, schedule, o.min_lr_ratio, o.decay, o.hold_ratio
        )
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup) if tc.ema_decay > 0 else None
        self.step, self.samples, self.data_state = 0, 0, None
        self.stopped, self.train_seconds = False, 0.0
        torch.manual_seed(tc.seed + 1000 * self.proc.rank)  # per-rank noise / token dropping
        if synthetic:
            self.logger = MetricsLogger(self.run_dir, enabled=False)
            return
        self._maybe_resume()
        self.logger = MetricsLogger(
            self.run_dir,
            tc.tensorboard,
            enabled=self.proc.is_main,
            wandb=wandb_settings(tc, self.cfg.name, to_dict(self.cfg)),
        )
        if self.proc.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(cfg.to_json())

    # ------------------------------------------------------------------ set-up
    def _init_from(self, path: str) -> None:
        """Weights (not optimiser state) from what the task reads (an export or a training
        checkpoint of either format; OpenVision 3 also a released encoder), into the model
        before it is sharded."""
        try:
            missing, unexpected = self.task.init_from(self.model, path)
        except FileNotFoundError as e:
            raise ConfigError(f"--train.init-from: {e}") from None
        log.info(
            "init_from %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected)
        )

    def _check_freezing(self) -> None:
        if len({frozenset(f) for f in self.frozen}) > 1 and self.proc.world_size > 1:
            raise ConfigError(
                "--train.stages.N.freeze differs between stages: DDP and FSDP2 fix the trained "
                "parameters when they wrap the model, so run such stages in one process or as "
                "separate runs (--train.init-from)"
            )

    def _freeze(self, names: set[str]) -> None:
        """Train every trainable parameter (the model's own choice: a frozen VAE stays frozen)
        but ``names``."""
        for name, p in self.model.named_parameters():  # wrapped names after parallelize
            name = clean_key(name)
            p.requires_grad_(name in self.trainable and name not in names)

    def _maybe_resume(self) -> None:
        """The newest usable checkpoint (``train.resume``): model, optimiser, schedule, EMA,
        every rank's RNG states (``train/checkpoint``), then the step and data position."""
        found = resume(
            self.run_dir,
            self.cfg.train.resume,
            self.model,
            self.optimizer,
            self.scheduler,
            self.ema,
        )
        if found is None:
            return
        path, state = found
        self.step, self.samples = state["step"], state["samples_seen"]
        self.data_state = data_position(state, self.proc.rank, self.proc.world_size)
        if read_meta(path)["world_size"] != self.proc.world_size:
            # another world size: fresh per-rank streams, derived from the step
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
        tc = self.cfg.train
        index, stage, start = self.stage_at(self.step)
        end = start + stage.steps
        per_rank = stage.batch_size // self.proc.world_size
        loader = self.task.build_loader(stage, per_rank, self.proc.rank, self.proc.world_size)
        if self.data_state is not None:
            loader.load_state_dict(self.data_state)
        self.begin_stage(index, loader)
        if self.proc.is_main:
            log.info(
                "stage %d: %s, steps %d-%d, global batch %d, peak lr %.3g%s",
                index,
                self.task.describe_stage(stage),
                start,
                end,
                stage.batch_size,
                stage.lr,
                f", frozen: {', '.join(stage.freeze)}" if stage.freeze else "",
            )
        # Terms stay on the device; the host syncs once per log / checkpoint / eval step.
        window, t0, n0 = StepTerms(), time.perf_counter(), 0
        for batch in loader:
            batch = {
                k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()
            }
            terms = self.train_step(batch)
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
                    raise TrainingDivergedError(bad)
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
                self.log_eval(self.evaluate(stage))
            if last:
                break
        self.data_state = loader.state_dict()
        if loader.skipped and self.proc.is_main:
            log.warning("stage %d: skipped %d unreadable samples", index, loader.skipped)

    def begin_stage(self, index: int, loader: Loader | None = None) -> StageConfig:
        """Freeze what stage ``index`` freezes and let the task set the stage up (its loss
        weights, checks on ``loader``'s data; None: synthetic batches, ``ov3 bench``)."""
        stage = self.cfg.train.stages[index]
        self._freeze(self.frozen[index])
        self.task.begin_stage(stage, self.model, loader)
        self.train_model.train()
        return stage

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch`` (on the device): the task's forward and backward
        (``accum_steps`` micro-batches), clip, optimiser step, schedule, the task's after-step
        hook, EMA. Returns the task's detached terms (+ ``grad_norm`` when clipping). The loop
        and the benchmarks (``ov3 bench``) both run this."""
        tc = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.task.forward_backward(
            self.train_model, self.model, batch, tc.accum_steps, self.autocast
        )
        if tc.optim.grad_clip:
            params = self.model.parameters()
            terms["grad_norm"] = clip_grad_norm_(params, tc.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.task.after_step(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        return terms

    def _log(self, scalars: dict, rate: float, stage: StageConfig, index: int, bar) -> None:
        scalars = all_reduce_mean(scalars, self.device)
        scalars.update(
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_s=rate * 1.0,
            stage=index,
            **self.task.stage_scalars(stage),
        )
        self.logger.log(self.step, scalars, samples=self.samples)
        bar.update(self.step, loss=scalars.get("loss"), images_per_s=rate)

    def save(self, stage_index: int) -> Path:
        state = {
            "samples_seen": self.samples,
            "stage": stage_index,
            "data": self.data_state,  # rank 0's (the single format's readers expect one)
            "data_ranks": gather_object(self.data_state),  # every rank's, for data_position
            "task": self.cfg.TASK,
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
            model = unsharded_copy(self.model, lambda: self.task.build_model(self.model))
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

    def evaluate(self, stage: StageConfig | None = None, out_dir: str | None = None) -> dict:
        """The task's evaluation of the EMA (else live) weights, on every rank (in the task's
        own precision: ``ov3 eval``'s, so the numbers match it)."""
        with self.eval_weights() as model:
            return self.task.evaluate(model, stage, out_dir)

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
                card = {
                    "experiment": self.cfg.name,
                    "steps": self.step,
                    "samples_seen": self.samples,
                }
                stage = last_trained_stage(self.cfg.train.stages, self.step)
                self.task.export(model, str(final), card, stage)
        barrier()
        results = self.evaluate(out_dir=str(self.run_dir / "eval"))
        self.log_eval(results)
        if self.proc.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        return results


def synthetic_engine(cfg: RunConfig, device: torch.device | str) -> tuple[Trainer, dict]:
    """The engine of ``cfg`` in this one process on ``device``, for synthetic batches (the
    benchmarks): the ``Trainer`` at the start of its first stage, and its task's
    ``synthetic_batch`` of that stage (drawn from ``train.seed``)."""
    device = torch.device(device)
    proc = ProcessInfo(rank=0, world_size=1, local_rank=0, device=device)
    trainer = Trainer(cfg, proc, synthetic=True)
    stage = trainer.begin_stage(0)
    return trainer, trainer.task.synthetic_batch(stage, device=device, seed=cfg.train.seed)
