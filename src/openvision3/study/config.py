"""A study: arms x seeds of one base experiment, and the rules that decide each claim, all fixed
in this config before any run starts (they are written to ``study.json`` and into the report).

Arms differ only in which branches reach the encoder (the others are *probes*: their heads
train on tokens detached at z_u, with the same loss weights, so every arm measures every
loss), whether the encoder trunk stays at its initialisation, and pixels vs VAE latents.
Samples, steps, batch, LR schedule, evaluation set and seeds are the base experiment's for
every arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from openvision3.models.openvision3 import BRANCHES
from openvision3.ov3.config import ExperimentConfig

DIRECTIONS = ("lower", "higher", "same")


@dataclass
class ArmConfig:
    """One arm. ``trains``: the branches whose loss reaches the encoder; the rest are probes.
    An arm that trains no branch keeps its encoder trunk at initialisation (frozen-init)."""

    name: str = "both"
    trains: tuple[str, ...] = BRANCHES
    pixels: bool = False  # the pixel ViT: no VAE, patch = pixels per token, pixel decoder
    describe: str = ""

    def __post_init__(self):
        self.trains = tuple(self.trains)
        unknown = set(self.trains) - set(BRANCHES)
        if unknown:
            raise ValueError(f"arm {self.name!r}: trains takes {BRANCHES}, got {sorted(unknown)}")

    @property
    def probes(self) -> tuple[str, ...]:
        return tuple(b for b in BRANCHES if b not in self.trains)


@dataclass
class ComparisonConfig:
    """``metric`` of ``arm`` against ``baseline`` at the final evaluation, paired by seed.

    direction "lower" / "higher": reproduced when mean difference +- 2 SE lies wholly on that
    side of 0, not reproduced when it lies wholly on the other side, else inconclusive.
    "same" (a no-effect claim): reproduced when the interval lies inside +-delta, with delta =
    ``delta`` x the baseline's mean; not reproduced when it lies wholly outside.
    """

    metric: str = "rec"
    arm: str = "both"
    baseline: str = "rec-only"
    direction: str = "lower"
    delta: float = 0.0

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.direction == "same" and not (math.isfinite(self.delta) and self.delta > 0):
            raise ValueError("a 'same' comparison needs delta > 0 (a fraction of the baseline)")

    def text(self) -> str:
        if self.direction == "same":
            return (
                f"|{self.arm} - {self.baseline}| on `{self.metric}` < "
                f"{self.delta:g} x {self.baseline}'s mean"
            )
        return f"{self.arm} {self.direction} than {self.baseline} on `{self.metric}`"


@dataclass
class ClaimConfig:
    """A claim of the paper and the comparisons that decide it (all must be reproduced)."""

    name: str = "claim"
    statement: str = ""
    comparisons: list[ComparisonConfig] = field(default_factory=list)

    def __post_init__(self):
        self.comparisons = [
            c if isinstance(c, ComparisonConfig) else ComparisonConfig(**c)
            for c in self.comparisons
        ]
        if not self.comparisons:
            raise ValueError(f"claim {self.name!r} has no comparison")


@dataclass
class ProbeEvalConfig:
    """The held-out evaluation every arm gets: the first `num_images` of the val split in
    batches of `batch_size` (the contrastive loss's negatives), every `every` steps and at
    the end."""

    num_images: int = 256  # first N val images every arm is evaluated on
    batch_size: int = 64  # images per batch (the contrastive loss's negatives)
    every: int = 50  # evaluate every N steps (and at the end)

    def __post_init__(self):
        if min(self.num_images, self.batch_size, self.every) < 1:
            raise ValueError("eval num_images, batch_size and every must be >= 1")


@dataclass
class RealismConfig:
    """How realism is measured. `kind`: "auto" (Inception rFID when its weights are present,
    else the synthetic world's feature network when the data is synthetic, else none),
    "inception", "features" or "none". The feature network is trained once on the synthetic
    world's labels (main object's colour, shape, grid cell), independent of every arm."""

    kind: str = "auto"  # auto | inception (rFID) | features (the synthetic world's network) | none
    train_images: int = 3000  # images the feature network is trained on
    epochs: int = 4  # its training epochs
    width: int = 32  # its convolution width
    feature_dim: int = 64  # its feature size
    seed: int = 1234  # its seed (independent of every arm)

    def __post_init__(self):
        if self.kind not in ("auto", "inception", "features", "none"):
            raise ValueError(f"realism.kind must be auto|inception|features|none, got {self.kind}")
        if min(self.train_images, self.epochs, self.width, self.feature_dim) < 1:
            raise ValueError("realism sizes must be >= 1")


@dataclass
class GenerationStageConfig:
    """A study's generation stage (`study/generation.py`; studies with `needs="generation"`):
    a DiT-DH-demo on each arm's tokens of `train_images` train scenes, `steps` of
    `batch_size`; `per_class` samples of each of the 72 colour x cell classes with CFG
    `cfg_scale` on `sample_steps` grid points, scored against `real_images` val images."""

    train_images: int = 4096  # train scenes whose tokens train each arm's generator
    steps: int = 300  # generator training steps
    batch_size: int = 64  # generator batch
    per_class: int = 2  # samples of each of the 72 classes
    cfg_scale: float = 3.0  # classifier-free guidance scale
    sample_steps: int = 21  # sampler grid points
    real_images: int = 256  # val images the samples are scored against

    def __post_init__(self):
        if min(self.train_images, self.steps, self.batch_size, self.per_class) < 1:
            raise ValueError("generation: train_images, steps, batch_size, per_class must be >= 1")
        if self.sample_steps < 2 or self.real_images < 2:
            raise ValueError("generation: need sample_steps >= 2 and real_images >= 2")


@dataclass
class StudyConfig:
    """A named grid of arms x seeds on one base experiment, with its rules."""

    name: str = "study"
    run_dir: str = ""  # "" = runs/study-<name>
    base: ExperimentConfig = field(default_factory=ExperimentConfig)
    arms: list[ArmConfig] = field(default_factory=list)
    seeds: tuple[int, ...] = (0, 1, 2)
    claims: list[ClaimConfig] = field(default_factory=list)
    control: ComparisonConfig = field(default_factory=ComparisonConfig)
    eval: ProbeEvalConfig = field(default_factory=ProbeEvalConfig)
    realism: RealismConfig = field(default_factory=RealismConfig)
    needs: str = ""  # an optional package the study needs ("generation"), else ""
    generation: GenerationStageConfig = field(default_factory=GenerationStageConfig)

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.run_dir:
            self.run_dir = f"runs/study-{self.name}"
        self.arms = [a if isinstance(a, ArmConfig) else ArmConfig(**a) for a in self.arms]
        self.claims = [c if isinstance(c, ClaimConfig) else ClaimConfig(**c) for c in self.claims]
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        for c in [self.control] + [c for claim in self.claims for c in claim.comparisons]:
            for arm in (c.arm, c.baseline):
                if self.arms and arm not in names:
                    raise ValueError(f"comparison names arm {arm!r}, not among {names}")

    def arm(self, name: str) -> ArmConfig:
        return next(a for a in self.arms if a.name == name)
