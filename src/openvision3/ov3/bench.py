"""``ov3 bench train``: images/s, FLOPs, MFU and peak memory of one training step, eager vs fast.

For an experiment preset (``ov3 presets``; a model preset such as ``ov3-B/2`` takes the paper's
recipe ``ov3_b2``) at one resolution, the benchmark builds the run as the trainer does, through
the engine itself (``Trainer(..., synthetic=True)``: the task's model with the heads of
zero-weight losses pruned, its parallelism and speed options, optimiser, schedule and EMA; the
recipe's stage at this resolution, with its LPIPS weight and frozen modules), feeds the task's
``synthetic_batch`` of that stage and times the engine's own step, ``Trainer.train_step``:
forward, objective, backward, gradient clipping, optimizer step, schedule, temperature clamp,
EMA. Two modes, on the same initial weights and batch, in order:

  eager  bf16 autocast on CUDA (fp32 on CPU), no compile, default memory format, foreach AdamW:
         our own baseline;
  fast   the trainer's speed options: ``torch.compile`` per transformer block
         (``distributed/parallelize.py``), compiled VAE encoder and decoder and a channels_last
         VAE (``ov3/speed.py``), fused AdamW on CUDA.

Per component (VAE encode, encoder, decoder, VAE decode, LPIPS, text tower, caption decoder)
the calls of one step are captured and replayed alone (forward, plus backward where the step
has one) to time and count them; ``optimizer`` times ``optimizer.step()``; ``unattributed`` is
the rest of the step (losses, pooling, clipping, schedule, EMA, launch gaps). FLOPs come from
``FlopCounterMode`` on the eager model (``perf.py``); MFU divides FLOP/s by the matmul ceiling
(bf16 on CUDA, fp32 on CPU) measured in the same process. Weights are random (speed does not
depend on them): a hub VAE (FLUX.1, gated) is built from its architecture, and LPIPS gets a
random backbone unless the real one is on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import re
import resource
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from openvision3 import perf
from openvision3.losses.objective import ObjectiveConfig
from openvision3.losses.reconstruction import BACKBONE_URLS
from openvision3.models.vae import PACKAGED_VAES, VAEConfig
from openvision3.ov3.config import ExperimentConfig, OV3StageConfig
from openvision3.ov3.task import stage_objective
from openvision3.train.trainer import Trainer, synthetic_engine

MODES = ("eager", "fast")
BRANCHES = ("reconstruction", "contrastive", "caption")
COMPONENTS = ("vae_encode", "encoder", "decoder", "vae_decode", "lpips", "text", "caption")
# The speed this project aims at on a GPU (docs/performance.md): the fast mode 1.8x eager for
# the 256 px step with all losses, and 35% MFU in the fast mode.
TARGETS = {"speedup_fast_vs_eager": 1.8, "mfu_fast": 0.35}


@dataclass
class TrainBenchConfig:
    """Speed of one training step, eager vs fast. JSON on stdout (and in --out)."""

    preset: str = "ov3_b2"
    """experiment preset (`ov3 presets`) or model preset (ov3-B/2: the paper's recipe)"""
    resolution: int = 0
    """pixels; 0 = the preset's last stage"""
    batch_size: int = 0
    """per device; 0 = 32 x (256 / resolution)^2 on CUDA (32 at 256 px, 128 at 128 px), 4 on CPU"""
    steps: int = 10  # timed training steps per mode
    warmup: int = 3
    """untimed steps first (the first compiles in the fast mode)"""
    # timed steps of each part (VAE, encoder, decoder, LPIPS, text, caption)
    component_steps: int = 5
    # eager and / or fast (see --compile)
    modes: tuple[str, ...] = MODES
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"
    """auto (the preset's: bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32"""
    compile: bool | None = None
    """fast mode: compile blocks and VAE; None = on CUDA only (inductor on CPU compiles slowly)"""
    lpips_weight: float | None = None
    """None = the recipe's stage at this resolution (0.5 at 256 px for ov3_b2, else 0)"""
    oom_retries: int = 2
    """on CUDA out-of-memory, halve the batch and start again, at most this many times"""
    seed: int = 0  # seeds the weights and the random batch
    out: str = ""
    """write the JSON here too (rewritten after each mode, so a timeout keeps what finished)"""

    def __post_init__(self):
        self.modes = tuple(self.modes)
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--modes needs distinct modes among {MODES}, got {self.modes}")
        if any(m not in MODES for m in self.modes):
            raise ValueError(f"--modes must be among {MODES}, got {self.modes}")
        if self.steps < 1 or self.warmup < 0 or self.component_steps < 1:
            raise ValueError("need --steps >= 1, --warmup >= 0 and --component-steps >= 1")
        if self.resolution < 0 or self.batch_size < 0 or self.oom_retries < 0:
            raise ValueError("--resolution, --batch-size and --oom-retries must be >= 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")


# ---------------------------------------------------------------------- the paper's recipe
def paper_recipe() -> list[dict]:
    """The paper's two stages as the presets run them (1 epoch = 1,281,167 samples)."""
    from openvision3.ov3.presets import EPOCH, finetune_stage, pretrain_stage

    rows = []
    for name, s in (("pretrain", pretrain_stage()), ("finetune", finetune_stage())):
        samples = s.steps * s.batch_size
        rows.append(
            {
                "stage": name,
                "resolution": s.resolution,
                "lpips": (s.lpips_weight or 0) > 0,
                "samples": samples,
                "epochs": round(samples / EPOCH, 2),
            }
        )
    return rows


def recipe_gpu_hours(images_per_s: float, resolution: int, lpips: bool) -> dict[str, float | None]:
    """GPU-hours of each recipe stage run at ``images_per_s`` per GPU (perfect scaling), for
    the stages this measurement stands for (same resolution and LPIPS on/off), else None."""
    return {
        r["stage"]: (
            round(r["samples"] / images_per_s / 3600, 1)
            if r["resolution"] == resolution and r["lpips"] == lpips and images_per_s > 0
            else None
        )
        for r in paper_recipe()
    }


# ---------------------------------------------------------------------- set-up
def experiment_config(preset: str) -> ExperimentConfig:
    from openvision3.models.presets import PRESETS as MODEL_PRESETS
    from openvision3.ov3.presets import PRESETS, apply_model_preset

    if preset in PRESETS:
        return PRESETS[preset]()
    if preset in MODEL_PRESETS:  # as `ov3 train ov3_b2 --model-preset` (text contexts fit)
        exp = apply_model_preset(PRESETS["ov3_b2"](), preset)
        exp.name = preset
        return exp
    raise ValueError(
        f"unknown preset {preset!r}: an experiment preset {sorted(PRESETS)} "
        f"or a model preset {sorted(MODEL_PRESETS)}"
    )


def offline_vae(vae: VAEConfig) -> tuple[VAEConfig, str]:
    """Packaged or local VAEs as they are; a hub id -> random weights of its architecture."""
    if not vae.pretrained:
        return vae, "random weights (from the config's architecture)"
    if vae.pretrained in PACKAGED_VAES or os.path.exists(vae.pretrained):
        return vae, vae.pretrained
    built = dataclasses.replace(vae, pretrained="")
    return built, f"random weights, architecture of {vae.pretrained}"


def random_lpips_backbone(net: str, directory: str) -> str:
    """Write a random LPIPS backbone in torchvision's layout (``features.N.*``) -> its path."""
    from safetensors.torch import save_file

    if net == "vgg":  # VGG16's trunk alone: its 120M-parameter classifier is slow to initialise
        from torchvision.models.vgg import cfgs, make_layers

        state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    else:
        from openvision3.errors import require

        networks = require("lpips.pretrained_networks", "train", "ov3 bench train")

        cls = {"alex": networks.alexnet, "squeeze": networks.squeezenet}[net]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
            backbone = cls(requires_grad=False, pretrained=False)
        state = {
            re.sub(r"^slice\d+\.", "features.", k): v for k, v in backbone.state_dict().items()
        }
    path = os.path.join(directory, f"random_{net}_backbone.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def lpips_source(obj: ObjectiveConfig, directory: str) -> tuple[ObjectiveConfig, str]:
    if obj.lpips_weight == 0:
        return obj, "off"
    if obj.lpips_weights:
        return obj, obj.lpips_weights
    cached = os.path.join(
        torch.hub.get_dir(), "checkpoints", os.path.basename(BACKBONE_URLS[obj.lpips_net])
    )
    if os.path.isfile(cached):
        return obj, cached
    path = random_lpips_backbone(obj.lpips_net, directory)
    return dataclasses.replace(obj, lpips_weights=path), f"random {obj.lpips_net} backbone"


def bench_run(
    exp: ExperimentConfig, cfg: TrainBenchConfig, mode: str, stage: OV3StageConfig, run_dir: str
) -> ExperimentConfig:
    """The run the engine builds for ``mode``: ``exp`` with one stage (``stage``: its
    resolution, per-device batch, LR, LPIPS weight and frozen modules, no warm-up, steps
    enough for any benchmark), random initial weights, and the mode's speed options."""
    exp = copy.deepcopy(exp)
    fast = mode == "fast"
    compile_ = cfg.compile if cfg.compile is not None else _device(cfg).type == "cuda"
    tc = exp.train
    tc.stages = [dataclasses.replace(stage, steps=1_000_000, warmup_steps=0)]
    tc.device, tc.seed, tc.init_from = cfg.device, cfg.seed, ""
    if cfg.precision != "auto":
        tc.precision = cfg.precision
    tc.compile = tc.compile_vae = fast and compile_
    tc.channels_last_vae = fast
    tc.optim = dataclasses.replace(tc.optim, fused=None if fast else False)
    exp.data = dataclasses.replace(exp.data, latents="")  # images through the VAE, as in training
    exp.run_dir = run_dir
    return exp


def forward(trainer: Trainer, batch: dict) -> Callable[[], torch.Tensor]:
    """The step's forward and objective alone (what ``capture_components`` records)."""
    task = trainer.task

    def run() -> torch.Tensor:
        with trainer.autocast():
            loss, _ = task.objective(trainer.train_model(batch, **task.branches))
        return loss

    return run


# ---------------------------------------------------------------------- components
def _is_lpips(module: nn.Module) -> str | None:
    lpips = type(module).__name__ == "LPIPS" and type(module).__module__.startswith("lpips")
    return "lpips" if lpips else None


def capture_components(trainer: Trainer, batch: dict) -> dict[str, list[tuple]]:
    """Component name -> the calls of one step's forward (see ``perf.capture_calls``), in
    ``COMPONENTS`` order. Run with gradients: which inputs need one is part of a call."""
    model = trainer.model
    parts = {"encoder": model.encoder, "decoder": model.decoder}
    parts.update(text=model.text, caption=model.captioner)
    if model.vae is not None:
        parts.update(vae_encode=model.vae.vae.encoder, vae_decode=model.vae.vae.decoder)
    parts = {name: m for name, m in parts.items() if m is not None}
    calls = perf.capture_calls(forward(trainer, batch), parts, match=_is_lpips)
    return {name: calls[name] for name in COMPONENTS if name in calls}


# ---------------------------------------------------------------------- measuring
def _device(cfg: TrainBenchConfig) -> torch.device:
    from openvision3.inference.api import default_device

    return torch.device(default_device() if cfg.device == "auto" else cfg.device)


def _resolve(cfg: TrainBenchConfig, exp: ExperimentConfig):
    device = _device(cfg)
    precision = cfg.precision if cfg.precision != "auto" else exp.train.precision
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    resolution = cfg.resolution or exp.train.stages[-1].resolution
    batch = cfg.batch_size or (
        min(512, max(1, round(32 * (256 / resolution) ** 2))) if device.type == "cuda" else 4
    )
    return device, (torch.bfloat16 if bf16 else torch.float32), resolution, batch


def _stage(exp: ExperimentConfig, resolution: int) -> OV3StageConfig | None:
    return next((s for s in exp.train.stages if s.resolution == resolution), None)


def _memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peak_memory_gib": None,
        "peak_memory_note": "CPU: no allocator peak; peak_rss_gib is the process's peak RSS",
        "peak_rss_gib": round(rss_kib / 2**20, 2),
    }


def _rate(flops: int | None, seconds: float, ceiling: float) -> dict:
    if not flops:
        return {"tflop_per_s": None, "mfu": None}
    # significant digits, not decimals: a tiny model on a big GPU has an MFU of 1e-5
    return {
        "tflop_per_s": float(f"{flops / seconds / 1e12:.4g}"),
        "mfu": float(f"{flops / seconds / ceiling:.4g}"),
    }


def _options(trainer: Trainer, dtype: torch.dtype) -> dict:
    """The speed options the engine applied (``speed_up_vae``'s rules for the VAE)."""
    tc, vae = trainer.cfg.train, trainer.model.vae is not None
    return {
        "autocast": "bf16" if dtype == torch.bfloat16 else "off",
        "compile_blocks": tc.compile,
        "compile_vae": vae and tc.compile_vae,
        "channels_last_vae": vae and tc.channels_last_vae and trainer.device.type == "cuda",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "fused_adamw": bool(trainer.optimizer.param_groups[0].get("fused")),
    }


def _run_mode(trainer, batch, calls, setup, cfg, device, ceiling) -> dict:
    """Time the engine's step (``Trainer.train_step``) on ``batch``, then each component."""
    options = _options(trainer, setup["dtype"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss, times, warm = perf.benchmark(
        lambda: trainer.train_step(batch)["loss"], cfg.steps, cfg.warmup, device
    )
    seconds, b = perf.median(times), setup["batch"]
    row = {
        "options": options,
        "step_ms": round(seconds * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "first_step_s": round(warm[0], 2) if warm else None,
        "images_per_s": round(b / seconds, 2),
        **_rate(setup["step_flops"], seconds, ceiling),
        **_memory(device),
        "loss_finite": bool(torch.isfinite(loss)),
    }
    if calls is None:  # another mode's model: its own calls, captured after its warm-up
        calls = capture_components(trainer, batch)
    components, warmup = [], min(cfg.warmup, 2)
    _, t, _ = perf.benchmark(trainer.optimizer.step, cfg.component_steps, warmup, device)
    timed = {"optimizer": (perf.median(t), None, "step")}
    for name, c in calls.items():
        run = perf.replay(c, trainer.autocast, trainer.model)
        _, t, _ = perf.benchmark(run, cfg.component_steps, warmup, device)
        timed[name] = (perf.median(t), *setup["component_flops"][name])
    for name, (sec, flops, kind) in timed.items():
        components.append(
            {
                "name": name,
                "pass": kind,
                "calls": len(calls.get(name, [None])),
                "flops": flops,
                "gflop_per_image": round(flops / b / 1e9, 4) if flops else None,
                "ms": round(sec * 1e3, 3),
                "images_per_s": round(b / sec, 2),
                **_rate(flops, sec, ceiling),
                "share_of_step": round(sec / seconds, 4),
            }
        )
    row["components"] = components
    row["unattributed_ms"] = round((seconds - sum(v[0] for v in timed.values())) * 1e3, 3)
    row["gpu_hours"] = recipe_gpu_hours(b / seconds, setup["resolution"], setup["lpips"])
    return row


def _measure(cfg: TrainBenchConfig, exp, batch: int, on_update: Callable[[dict], None]) -> dict:
    device, dtype, resolution, _ = _resolve(cfg, exp)
    stage = _stage(exp, resolution)
    lpips = cfg.lpips_weight
    if lpips is None:
        lpips = stage_objective(exp.objective, stage).lpips_weight if stage else None
        lpips = exp.objective.lpips_weight if lpips is None else lpips
    ceiling = perf.matmul_ceiling(device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        objective_cfg = dataclasses.replace(exp.objective, lpips_weight=lpips)
        objective_cfg, lpips_from = lpips_source(objective_cfg, tmp)
        vae_cfg, vae_from = offline_vae(exp.model.vae)
        exp = dataclasses.replace(
            exp, model=dataclasses.replace(exp.model, vae=vae_cfg), objective=objective_cfg
        )
        if resolution % exp.model.pixel_patch:
            raise ValueError(
                f"--resolution {resolution} is not a multiple of {exp.model.pixel_patch} px"
            )
        stage = dataclasses.replace(
            stage or exp.train.stages[-1], resolution=resolution, batch_size=batch,
            lpips_weight=lpips,
        )  # fmt: skip
        # The eager engine counts the FLOPs (compiled code hides its ops) and, in the eager
        # mode, is the one timed; the fast mode builds its own.
        torch.backends.cudnn.benchmark = False  # the plain baseline, also after an OOM retry
        trainer, data = synthetic_engine(bench_run(exp, cfg, "eager", stage, tmp), device)
        calls = capture_components(trainer, data)  # its forward also builds LPIPS (lazy)
        _, step_flops = perf.count_flops(lambda: trainer.train_step(data))
        component_flops = {}
        for name, c in calls.items():
            ran_backward, flops = perf.count_flops(perf.replay(c, trainer.autocast, trainer.model))
            component_flops[name] = (flops, "forward+backward" if ran_backward else "forward")
        setup = dict(
            dtype=dtype, batch=batch, resolution=resolution, lpips=lpips > 0,
            step_flops=step_flops, component_flops=component_flops,
        )  # fmt: skip
        model_cfg = trainer.model.cfg
        result = {
            "bench": "train",
            "complete": False,
            "device": perf.device_name(device),
            "torch": torch.__version__,
            "preset": cfg.preset,
            "model": model_cfg.name or exp.name,
            "resolution": resolution,
            "batch_size": batch,
            "tokens": (resolution // model_cfg.pixel_patch) ** 2,
            "precision": "bf16 autocast" if dtype == torch.bfloat16 else "fp32",
            "lpips_weight": lpips,
            "lpips_backbone": lpips_from,
            "vae": vae_from,
            "branches": {k: trainer.task.branches[k] for k in BRANCHES},
            "pixel_loss_fraction": objective_cfg.pixel_loss_fraction,
            "matmul_ceiling_tflops": round(ceiling / 1e12, 4),
            "ceiling_dtype": str(dtype).removeprefix("torch."),
            "step_flops": step_flops,
            "step_gflop_per_image": round(step_flops / batch / 1e9, 4),
            "recipe": paper_recipe(),
            "modes": {},
        }
        for mode in cfg.modes:
            if mode != "eager" or trainer is None:
                trainer = data = calls = None  # free the other engine first
                gc.collect()
                trainer, data = synthetic_engine(bench_run(exp, cfg, mode, stage, tmp), device)
            if mode == "eager":
                torch.backends.cudnn.benchmark = False
            result["modes"][mode] = _run_mode(trainer, data, calls, setup, cfg, device, ceiling)
            trainer = data = calls = None
            on_update(result)
    result["targets"] = targets(result)
    result["complete"] = True
    return result


def targets(result: dict) -> dict:
    """Each of ``TARGETS``, measured and met or not: fast >= 1.8x eager (256 px, all
    losses) and MFU >= 35% (fast)."""
    modes = result["modes"]
    out = {}
    if "eager" in modes and "fast" in modes:
        speedup = modes["eager"]["step_ms"] / modes["fast"]["step_ms"]
        applies = result["resolution"] == 256 and result["lpips_weight"] > 0
        out["speedup_fast_vs_eager"] = {
            "target": TARGETS["speedup_fast_vs_eager"],
            "measured": round(speedup, 3),
            "applies": applies,
            "met": speedup >= TARGETS["speedup_fast_vs_eager"] if applies else None,
        }
    if "fast" in modes and modes["fast"]["mfu"] is not None:
        mfu = modes["fast"]["mfu"]
        out["mfu_fast"] = {"target": TARGETS["mfu_fast"], "measured": mfu, "applies": True}
        out["mfu_fast"]["met"] = mfu >= TARGETS["mfu_fast"]
    return out


def bench_train(cfg: TrainBenchConfig, on_update: Callable[[dict], None] = lambda r: None) -> dict:
    """Measure (see the module docstring) -> the JSON-able result. On CUDA out-of-memory the
    batch is halved and everything starts again (``oom_retries`` times)."""
    exp = experiment_config(cfg.preset)
    device, _, _, batch = _resolve(cfg, exp)
    retries = []
    for attempt in range(cfg.oom_retries + 1):
        try:
            result = _measure(cfg, exp, batch, on_update)
            result["oom_retries"] = retries
            return result
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda" or attempt == cfg.oom_retries or batch == 1:
                raise
        # outside the except block: its traceback no longer holds the model's frames
        retries.append(batch)
        print(f"out of memory at batch {batch}; retrying at {batch // 2}", file=sys.stderr)
        batch //= 2
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    """``ov3 bench train [--overrides]`` -> exit code."""
    import tyro

    try:
        cfg = tyro.cli(TrainBenchConfig, args=argv, prog="ov3 bench train")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2

    def write(result: dict) -> None:
        if cfg.out:
            Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")

    try:
        result = bench_train(cfg, write)
    except ValueError as err:
        print(f"ov3 bench train: {err}", file=sys.stderr)
        return 1
    write(result)
    print(json.dumps(result, indent=2))
    return 0
