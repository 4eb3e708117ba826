"""The training engine's configuration: stages (steps, batch, peak LR, warmup, frozen modules)
and the run-wide settings (optimiser, precision, parallelism, checkpoints, intervals).

What a family adds to a stage (OpenVision 3's resolution and LPIPS weight) lives in a subclass
beside its run config, with the list of such stages in a ``TrainConfig`` subclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from openvision3.train.optim import OptimConfig


@dataclass
class StageConfig:
    """One stage of (progressive) training: its steps, global batch, absolute peak LR, warmup
    and frozen modules. A family's stage config subclasses it (`OV3StageConfig`).

    `lr` is the peak itself: a family's rule that derives it (OpenVision 3's base LR x batch /
    256) belongs to its presets. `freeze`: module names (`encoder`, `text`, ...) whose
    parameters this stage does not train: no gradient, and no optimiser state or weight decay
    when frozen in every stage.
    """

    steps: int = 1000  # optimizer steps of this stage
    batch_size: int = 256  # global, over all ranks
    lr: float = 1e-4  # peak learning rate of this stage (absolute)
    warmup_steps: int = 0  # linear LR warmup at the stage's start (steps)
    # modules this stage does not train: encoder, decoder, text, caption, ...
    freeze: tuple[str, ...] = ()

    def __post_init__(self):
        self.freeze = tuple(self.freeze)
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError("stage steps and batch_size must be positive")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise ValueError("stage lr must be > 0 and warmup_steps >= 0")


@dataclass
class TrainConfig:
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0  # seeds initialisation and the per-step draws (noise, token dropping)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile per transformer block
    # Data parallelism over torchrun ranks: auto (DDP when > 1 rank) | ddp | fsdp (FSDP2);
    # one process trains the plain model. See docs/scaling.md.
    parallel: str = "auto"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # auto (dcp when FSDP-sharded, else single) | single (rank 0 writes safetensors) | dcp
    # (torch.distributed.checkpoint: every rank writes its shards; resumable on any world size)
    ckpt_format: str = "auto"
    ema_decay: float = 0.0  # 0 = no EMA
    ema_warmup: bool = True  # decay min(d, (1 + n) / (10 + n)); RAE's DiT runs without
    log_every: int = 10  # log metrics (metrics.jsonl) every N steps
    ckpt_every: int = 1000  # write a checkpoint every N steps (and at the end)
    keep_last: int = 2  # keep this many newest checkpoints, delete older ones
    eval_every: int = 0  # 0 = evaluate only at the end
    tensorboard: bool = False  # also log to TensorBoard (the tensorboard package)
    # Weights & Biases (the wandb extra): "" = $WANDB_PROJECT / $WANDB_NAME / $WANDB_MODE, else
    # project "openvision3", the run's name, online. "offline" needs no network.
    wandb: bool = False
    wandb_project: str = ""  # W&B project ("" = $WANDB_PROJECT, else openvision3)
    wandb_name: str = ""  # W&B run name ("" = $WANDB_NAME, else the run's name)
    wandb_mode: str = ""  # online | offline | disabled
    init_from: str = ""  # start from the weights of an export or checkpoint (not its optimizer)
    resume: str = "auto"  # auto (latest checkpoint in run_dir, if any) | none | <checkpoint dir>
    # checkpoint and stop after this global step (time-limited jobs); 0 = run to the end
    stop_at: int = 0
    # Micro-batches per optimizer step; the stage batch stays the global batch and the
    # contrastive loss keeps its negatives over all of it (ov3/accumulate.py).
    accum_steps: int = 1

    def __post_init__(self):
        if not self.stages:
            raise ValueError("train.stages must hold at least one stage")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("train.ema_decay must be in [0, 1)")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"train.parallel must be auto, ddp or fsdp, got {self.parallel!r}")
        if self.ckpt_format not in ("auto", "single", "dcp"):
            raise ValueError(
                f"train.ckpt_format must be auto, single or dcp, got {self.ckpt_format!r}"
            )
        if self.stop_at < 0:
            raise ValueError("train.stop_at must be >= 0")
        if self.log_every <= 0 or self.ckpt_every <= 0 or self.eval_every < 0:
            raise ValueError("train.log_every and ckpt_every must be > 0, eval_every >= 0")
        if self.wandb_mode not in ("", "online", "offline", "disabled"):
            raise ValueError(
                f"train.wandb_mode must be online, offline or disabled, got {self.wandb_mode!r}"
            )
        if self.accum_steps < 1:
            raise ValueError(f"train.accum_steps must be >= 1, got {self.accum_steps}")
        for s in self.stages:
            if s.batch_size % self.accum_steps:
                raise ValueError(
                    f"stage batch {s.batch_size} is not divisible by train.accum_steps "
                    f"{self.accum_steps}"
                )

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)
