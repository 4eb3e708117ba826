"""The seam between the training engine and what it trains.

The engine (``train/trainer.py``) owns the loop, stages, gradient accumulation's bookkeeping,
the optimiser and schedules, EMA, checkpoints (single file and DCP), metrics, evaluation and
checkpoint intervals, exact resume and export. A ``Task`` supplies everything that depends on
the model: the model itself, its batches, its loss terms (forward and backward), what runs
after each optimiser step, its evaluation and its export. This is open_clip's ``TrainingTask``
(``src/open_clip/task/``) and torchtitan's per-model trainer hooks
(``torchtitan/models/flux/trainer.py``) in one small interface.

A run's config is a ``RunConfig`` subclass: it names its task (``TASK``), holds ``name``,
``run_dir`` and ``train`` (the engine's ``TrainConfig``) plus whatever its task needs, and
builds the task with ``build_task()``. Checkpoints record the task name, so ``ov3 export`` and
``train.init_from`` rebuild the right model; ``register_task`` adds a task from outside the
package (a test, a plug-in) without touching the engine.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from openvision3.dataclass_io import from_dict, to_dict
from openvision3.errors import ConfigError
from openvision3.train.config import StageConfig, TrainConfig


class Loader(Protocol):
    """A resumable training loader: iterate for batch dicts; its position is counted in samples."""

    skipped: int

    def __iter__(self) -> Iterator[dict]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class RunConfig:
    """The part of every experiment config the engine reads. Subclasses add their task's
    fields and set `TASK`; `build_task` returns the task for this config."""

    TASK: ClassVar[str] = ""

    name: str = "experiment"  # the run's name: its folder is runs/<name> unless --run-dir is set
    run_dir: str = ""  # "" = runs/<name>
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if not self.run_dir:
            self.run_dir = f"runs/{self.name}"

    def resolve_inputs(self) -> None:
        """Settle what the run's inputs decide (an OpenVision 3 run takes the architecture of a
        released encoder it starts from); called once, where a run is set up (``Trainer``),
        before ``validate``. Nothing by default."""
        return None

    def after_command_line(self, given: Collection[str]) -> None:
        """Settle what the command line left open, knowing the dotted flags it set (``given``,
        spelt ``--a.b-c``): a generator takes its token shape from its cache unless
        ``--model.*`` gives it. Called once after parsing, by ``configs.parse``; nothing by
        default."""
        return None

    def validate(self) -> None:
        """Checks on the final values, after the command line (``ConfigError`` names the flag).
        Changes nothing."""
        for i, s in enumerate(self.train.stages):
            if s.warmup_steps > s.steps:
                raise ConfigError(
                    f"--train.stages.{i}.warmup-steps {s.warmup_steps} exceeds "
                    f"--train.stages.{i}.steps {s.steps}"
                )

    def build_task(self) -> Task:
        raise NotImplementedError(f"{type(self).__name__} does not name its task")

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2)

    @classmethod
    def from_json(cls, text: str):
        return from_dict(cls, json.loads(text))


class Task(ABC):
    """What one trainable system gives the engine. ``cfg`` is its ``RunConfig``."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    # ------------------------------------------------------------------ model
    @abstractmethod
    def build_model(self, frozen_from: nn.Module | None = None) -> nn.Module:
        """The model with its initial weights, drawn from the global RNG (the engine seeds it).

        ``frozen_from``: a model built by this task whose frozen, never-checkpointed parts
        (a frozen VAE, say) the new one shares instead of building them again; the engine
        passes it when it needs an unsharded replica of an FSDP2 model.
        """

    def init_from(self, model: nn.Module, path: str) -> tuple[list[str], list[str]]:
        """Load weights (not optimiser state) from ``path`` (an export or a checkpoint of this
        task); returns (missing, unexpected) keys. Tasks that read other layouts override it."""
        from openvision3.train.checkpoint import load_weights

        return load_weights(path, model, strict=False)

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        """After the engine's parallelism: speed options on frozen parts (none by default)."""
        return None

    # ------------------------------------------------------------------ data and step
    @abstractmethod
    def build_loader(self, stage: StageConfig, batch_size: int, rank: int, world: int) -> Loader:
        """This rank's infinite training loader for ``stage``, ``batch_size`` samples a batch."""

    @abstractmethod
    def synthetic_batch(
        self,
        stage: StageConfig,
        batch_size: int | None = None,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> dict:
        """A batch of the keys, shapes and dtypes ``build_loader(stage, ...)`` yields, with
        random content drawn from ``seed``, on ``device``: ``batch_size`` samples (None: the
        stage's batch). What the benchmarks (``ov3 bench``) time the engine's step on."""

    def begin_stage(self, stage: StageConfig, model: nn.Module, loader: Loader | None) -> None:
        """Set up what a stage needs (its loss weights, checks on its data; ``loader`` None:
        synthetic batches); nothing by default."""
        return None

    def describe_stage(self, stage: StageConfig) -> str:
        """A few words for the stage's log line."""
        return f"batch {stage.batch_size}"

    def stage_scalars(self, stage: StageConfig) -> dict[str, float]:
        """What the task's stage adds to each logged ``metrics.jsonl`` row; none by default."""
        return {}

    @abstractmethod
    def forward_backward(
        self,
        train_model: nn.Module,
        model: nn.Module,
        batch: dict,
        accum_steps: int,
        autocast: Callable[[], Any],
    ) -> dict[str, torch.Tensor]:
        """Forward and backward of one optimiser step's batch (split into ``accum_steps``
        micro-batches, gradient sync on the last only). ``train_model`` is the wrapped model
        (DDP / FSDP2 / compiled), ``model`` the plain one. Returns detached () terms on the
        device, ``loss`` among them (non-finite losses are reported by the engine)."""

    def after_step(self, model: nn.Module) -> None:
        """After the optimiser step (clamps, projections); nothing by default."""
        return None

    # ------------------------------------------------------------------ evaluation and export
    def evaluate(self, model: nn.Module, stage: StageConfig | None, out_dir: str | None) -> dict:
        """``{"metrics": {...}, ...}`` of ``model`` (eval mode, EMA weights when kept) after
        ``stage`` (None: at the end of the run). Called on every rank; none by default."""
        return {"metrics": {}}

    @abstractmethod
    def export(self, model: nn.Module, path: str, card: dict, stage: StageConfig) -> None:
        """Write ``model`` as a pretrained folder (rank 0 only); ``card`` is the engine's
        provenance (experiment, steps, samples seen); ``stage`` the one that ran the last step."""


# ---------------------------------------------------------------------- registry
# Task name -> "module:ConfigClass", imported only when a checkpoint of that task is read.
# The package's own tasks, imported only when a checkpoint names them (the engine imports no task).
_CONFIGS: dict[str, str | type[RunConfig]] = {
    "openvision3": "openvision3.ov3.config:ExperimentConfig",
    "generation": "openvision3.generation.task:GenerationConfig",
    "llava": "openvision3.understanding.task:LlavaRunConfig",
    "ov3_study": "openvision3.study.task:StudyRunConfig",
}


def register_task(config_cls: type[RunConfig]) -> type[RunConfig]:
    """Make ``config_cls.TASK`` known to checkpoint readers (``ov3 export``); a decorator."""
    if not config_cls.TASK:
        raise ValueError(f"{config_cls.__name__}.TASK is empty")
    _CONFIGS[config_cls.TASK] = config_cls
    return config_cls


def config_class(task: str) -> type[RunConfig]:
    """The config class of a task name recorded in a checkpoint."""
    if task not in _CONFIGS:
        raise ConfigError(f"unknown task {task!r} in checkpoint; known: {sorted(_CONFIGS)}")
    entry = _CONFIGS[task]
    if isinstance(entry, str):
        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


# Fields that older checkpoints' configs hold and that no longer exist (each stage owns its
# LR and warmup; the data order follows train.seed): dropped when such a checkpoint is read.
REMOVED_FIELDS = (
    ("train", "optim", "base_lr"),
    ("train", "optim", "warmup_steps"),
    ("data", "seed"),
)


def _upgrade_train(config: dict, cls: type[RunConfig]) -> None:
    """Older configs held, for every task, the stage's ``base_lr`` (peak = base_lr x batch /
    256) and OpenVision 3's stage ``resolution`` and ``lpips_weight`` and ``train.compile_vae``
    / ``channels_last_vae``: the peak is written out, and what the task's own train and stage
    types do not have is dropped."""
    train_cls = typing.get_type_hints(cls)["train"]
    (stage_cls,) = typing.get_args(typing.get_type_hints(train_cls)["stages"])
    train = config.get("train", {})
    for key in ("compile_vae", "channels_last_vae"):
        if key not in {f.name for f in dataclasses.fields(train_cls)}:
            train.pop(key, None)
    names = {f.name for f in dataclasses.fields(stage_cls)}
    for stage in train.get("stages", []):
        if "base_lr" in stage:
            stage["lr"] = stage.pop("base_lr") * stage.get("batch_size", 256) / 256
        for key in ("resolution", "lpips_weight"):
            if key not in names:
                stage.pop(key, None)


def config_from_checkpoint(state: dict) -> RunConfig:
    """The run config stored in a checkpoint's ``state`` (older ones: an OpenVision 3 run)."""
    config = json.loads(json.dumps(state["config"]))  # a copy to edit
    for *parents, name in REMOVED_FIELDS:
        node = config
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(name, None)
    cls = config_class(state.get("task", "openvision3"))
    _upgrade_train(config, cls)
    return from_dict(cls, config)


def frozen_names(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Parameter names under the module names ``patterns`` (a name, or a prefix ending in
    ``.``: ``encoder`` freezes ``encoder.*``); a pattern that matches nothing is an error."""
    names = [n for n, _ in model.named_parameters()]
    out = []
    for pat in patterns:
        hits = [n for n in names if n == pat or n.startswith(pat.rstrip(".") + ".")]
        if not hits:
            raise ConfigError(f"freeze: no parameter under {pat!r} in {type(model).__name__}")
        out += hits
    return sorted(set(out))
