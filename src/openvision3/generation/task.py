"""Training a DiT-DH on cached unified tokens: the ``generation`` task on the shared engine.

The recipe is RAE's (``src/train.py``, ``configs/stage2/training/ImageNet256/DiTDH-XL_DINOv2-B.yaml``):
flow matching on per-position normalised tokens (``flow.py``), logit-normal times shifted by
sqrt(C H W / 4096), class dropout 0.1, AdamW (lr 2e-4 at batch 1024, betas (0.9, 0.95), no weight
decay), grad-norm clip 1, EMA 0.9995 from the first step without warm-up, and the LR constant for
the first 5% of the run, then linear to a tenth. The engine supplies DDP / FSDP2, bf16, compile,
checkpoints and exact resume.

Every random draw of a sample (its time, its noise, whether its label is dropped, its flip) is
seeded by the run's seed and the sample's position in the global stream, so a run gives the
same updates on any number of ranks and after any resume.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from openvision3.artefacts import (
    CARD_NAME,
    GENERATOR,
    KIND_KEY,
    generator_card,
    portable_name,
    relative_paths,
    users_file,
    write_card,
)
from openvision3.data.latents import FeatureCache, read_cache_meta
from openvision3.data.token_stats import (
    TokenStats,
    load_token_stats,
    normalize,
)
from openvision3.dataclass_io import to_dict
from openvision3.errors import ConfigError
from openvision3.generation import flow
from openvision3.generation.models import DiTDH, DiTDHConfig
from openvision3.train.accumulate import no_grad_sync, split_batch
from openvision3.train.config import StageConfig
from openvision3.train.task import RunConfig, Task, register_task

STATS_NAME = FeatureCache.STATS_NAME  # the cache's statistics; the export's copy too


@dataclass
class TokenDataConfig:
    """Where the tokens come from: a feature cache written with `tokens=` (`data/latents.py`).

    `stats`: a `latent_stats.safetensors` (D, h, w); "" = `<cache>/latent_stats.safetensors`,
    computed from the cache's `split` the first time. `label_field`: the JSON field holding
    each sample's class (unlabelled samples get class 0: one class, an unconditional model). `hflip`: probability of the flipped image's tokens (needs a cache
    written with flips). `in_memory`: load the whole cache once (small caches, demos).
    """

    cache: str = ""  # a feature cache with tokens (`ov3 cache-latents PRESET --tokens EXPORT`)
    split: str = "train"  # the cache's split to train on
    stats: str = ""  # normalisation statistics file; "" = <cache>/latent_stats.safetensors
    label_field: str = "label"  # JSON field holding each sample's class (none: class 0)
    hflip: float = 0.0  # probability of the flipped image's tokens (a cache with flips)
    in_memory: bool = False  # load the whole cache once (small caches)
    num_workers: int = 0  # data loader worker processes

    def __post_init__(self):
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"data.hflip must be in [0, 1], got {self.hflip}")

    def stats_path(self) -> str:
        return self.stats or FeatureCache.stats_path(self.cache)


@dataclass
class FlowConfig:
    """Flow-matching settings: class dropout (the null class trains CFG's unconditional model),
    and the time shift's base (s = sqrt(C H W / shift_base)); `shift` > 0 overrides s."""

    class_dropout: float = 0.1  # probability a label becomes the null class (trains CFG)
    shift_base: int = flow.SHIFT_BASE  # time shift s = sqrt(C H W / shift_base)
    shift: float = 0.0  # > 0: this time shift instead

    def __post_init__(self):
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"flow.class_dropout must be in [0, 1), got {self.class_dropout}")

    def factor(self, shape: tuple[int, ...]) -> float:
        return self.shift if self.shift > 0 else flow.shift_factor(shape, self.shift_base)


@register_task
@dataclass
class GenerationConfig(RunConfig):
    """A class-conditional DiT-DH on cached tokens. `decoder`: the OpenVision 3 export whose
    decoder turns samples into pixels ("" = the one that wrote the cache); `class_names`:
    names of the labels (`load_generator(...).class_names`; "" entries = the index)."""

    TASK: ClassVar[str] = "generation"

    model: DiTDHConfig = field(default_factory=DiTDHConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    decoder: str = ""  # OpenVision 3 export that decodes samples to pixels ("" = the cache's)
    # a name per label, for samples and the web demo ("" = its index)
    class_names: list[str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if not self.data.cache:
            raise ConfigError("--data.cache: the token cache to train on is not set")
        if self.class_names and len(self.class_names) != self.model.num_classes:
            raise ConfigError(
                f"--class-names has {len(self.class_names)} names for "
                f"--model.num-classes {self.model.num_classes}"
            )

    def read_token_shape(self, given: Collection[str] = ()) -> None:
        """Take the model's token shape, ``--model.in-channels`` D and ``--model.input-size``
        h, from the cache's metadata (``ov3 cache-latents ... --tokens``), except for the flags
        in ``given`` (those set on the command line), which must agree with it."""
        try:
            tokens = read_cache_meta(self.data.cache, self.data.split)["tokens"]
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"--data.cache: {err}") from err
        if not tokens:
            raise ConfigError(
                f"--data.cache {self.data.cache!r} holds VAE latents but no tokens: write it "
                "with `ov3 cache-latents PRESET --tokens EXPORT`"
            )
        shape = {"in_channels": tokens["shape"][1], "input_size": tokens["grid"][0]}
        for name, value in shape.items():
            flag, have = "--model." + name.replace("_", "-"), getattr(self.model, name)
            if flag in given and have != value:
                raise ConfigError(
                    f"{flag} {have} does not match --data.cache {self.data.cache!r}, whose "
                    f"tokens have {flag[8:]} {value}: drop {flag} to take the cache's"
                )
        self.model = replace(self.model, **shape)  # re-checked by __post_init__

    def after_command_line(self, given: Collection[str]) -> None:
        self.read_token_shape(given)

    def build_task(self) -> GenerationTask:
        return GenerationTask(self)


def token_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., N, D) row-major tokens -> (..., D, h, w)."""
    return tokens.transpose(-1, -2).unflatten(-1, tuple(grid))


def grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, N, D), the encoder's layout (the inverse of ``token_grid``)."""
    return x.flatten(2).transpose(1, 2)


def cache_stats(data: TokenDataConfig, cache: FeatureCache | None = None) -> dict:
    """The normalisation statistics: read ``data.stats_path()``, or compute them over the cache
    split and write them there (exact per-position mean and variance, float64)."""
    path = data.stats_path()
    if os.path.exists(path):
        return load_token_stats(path)
    cache = cache or FeatureCache(data.cache, data.split)
    meta = cache.meta.get("tokens")
    if not meta:
        raise ConfigError(f"--data.cache {data.cache!r} stores no tokens: cache them first")
    stats = TokenStats()
    batch = []
    for i in range(len(cache)):
        batch.append(cache[i]["tokens"])
        if len(batch) == 256 or i == len(cache) - 1:
            stats.update(torch.stack(batch))
            batch = []
    stats.save(path, tuple(meta["grid"]), {"cache": data.cache, "split": data.split})
    return load_token_stats(path)


def seed_of(seed: int, key: int) -> int:
    """The one per-sample seed formula: a seed per (run or call ``seed``, sample ``key``), so a
    sample's draws never depend on the batch or the ranks it falls in. ``Generator``'s noise
    uses the sample's number as ``key``; training hashes stream positions first
    (``sample_seed``)."""
    return (seed * 1_000_003 + key) % (2**63 - 1)


def sample_seed(seed: int, index: int) -> int:
    """One seed per (run seed, global stream position): ``seed_of`` on the position times a
    large odd constant (Knuth's multiplicative hash), which spreads neighbouring positions."""
    return seed_of(seed, index * 2_654_435_761)


class TokenLoader:
    """This rank's endless batches of normalised token grids from a cache: {"x": (B, D, h, w),
    "y": (B,) labels, "index": (B,) global stream positions}.

    Map-style: global stream position g reads sample ``perm_e[g % M]`` of the M cached samples,
    with ``perm_e`` a permutation seeded by (seed, epoch e = g // M); rank r of w takes the
    positions r, r + w, r + 2w, ..., so the ranks' batches of one step make up one process's
    batch. The state is the rank's sample count (``data_position`` moves it between world
    sizes).
    """

    def __init__(self, cfg: GenerationConfig, stats: dict, batch_size: int, rank: int, world: int):
        self.data, self.seed = cfg.data, cfg.train.seed
        self.cache = FeatureCache(cfg.data.cache, cfg.data.split)
        self.grid = tuple(self.cache.meta["tokens"]["grid"])
        self.stats = stats
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.samples, self.skipped = 0, 0
        self._perm: tuple[int, torch.Tensor] | None = None
        self.memory = None
        if cfg.data.in_memory:
            rows = [self._read(i) for i in range(len(self.cache))]
            self.memory = [torch.stack([r[k] for r in rows]) for k in range(3)]

    def _read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Sample i -> (normalised grid (D, h, w), its flipped twin or None, label)."""
        rec = self.cache[i]
        label = int(rec.get(self.data.label_field) or 0)  # unlabelled data: class 0
        x = normalize(token_grid(rec["tokens"], self.grid)[None], self.stats)[0]
        flip = rec.get("tokens_flip")
        if flip is not None:
            flip = normalize(token_grid(flip, self.grid)[None], self.stats)[0]
        elif self.data.hflip > 0:
            raise ConfigError("--data.hflip > 0 needs a cache written with flips")
        return x, flip if flip is not None else x, torch.tensor(label)

    def _index(self, g: int) -> int:
        m = len(self.cache)
        epoch = g // m
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, -1 - epoch))
            self._perm = (epoch, torch.randperm(m, generator=gen))
        return int(self._perm[1][g % m])

    def __iter__(self):
        while True:
            local = self.samples + torch.arange(self.batch_size)
            positions = (self.rank + self.world * local).tolist()
            xs, ys = [], []
            for g in positions:
                i = self._index(g)
                x, x_flip, y = (
                    [t[i] for t in self.memory] if self.memory is not None else self._read(i)
                )
                if self.data.hflip > 0:
                    gen = torch.Generator().manual_seed(sample_seed(self.seed + 1, g))
                    x = x_flip if torch.rand(1, generator=gen).item() < self.data.hflip else x
                xs.append(x)
                ys.append(y)
            self.samples += self.batch_size
            yield {"x": torch.stack(xs), "y": torch.stack(ys), "index": torch.tensor(positions)}

    def state_dict(self) -> dict:
        return {"samples": self.samples, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.skipped = int(state["samples"]), int(state.get("skipped", 0))


def sample_draws(index: torch.Tensor, seed: int, shape: tuple[int, ...], s: float, device):
    """Per-sample (time (B,), noise (B, *shape), uniform (B,) for label dropping), each from a
    generator seeded by (seed, the sample's stream position): independent of rank and batch."""
    gen = torch.Generator(device=device)
    ts, noises, us = [], [], []
    for g in index.tolist():
        gen.manual_seed(sample_seed(seed, g))
        u = torch.rand(2, generator=gen, device=device, dtype=torch.float64)
        ts.append(flow.logit_normal_times(u[:1], s))
        us.append(u[1:].float())
        noises.append(torch.randn(shape, generator=gen, device=device))
    return torch.cat(ts), torch.stack(noises), torch.cat(us)


class GenerationTask(Task):
    cfg: GenerationConfig

    def __init__(self, cfg: GenerationConfig):
        super().__init__(cfg)
        self._stats = None

    @property
    def stats(self) -> dict:
        if self._stats is None:
            self._stats = cache_stats(self.cfg.data)
        return self._stats

    def build_model(self, frozen_from: nn.Module | None = None) -> DiTDH:
        return DiTDH(self.cfg.model)

    def build_loader(self, stage, batch_size: int, rank: int, world: int) -> TokenLoader:
        loader = TokenLoader(self.cfg, self.stats, batch_size, rank, world)
        m = self.cfg.model
        want = [m.in_channels, m.input_size, m.input_size]
        got = [loader.cache.meta["tokens"]["shape"][1], *loader.grid]
        if got != want:
            raise ConfigError(
                f"--data.cache holds tokens (D, h, w) = {got}; the model takes {want} "
                "(--model.in-channels, --model.input-size; `ov3 train` reads them from the "
                "cache when they are not given)"
            )
        return loader

    def synthetic_batch(self, stage, batch_size=None, *, device="cpu", seed=0) -> dict:
        """``TokenLoader``'s batch: "x" (B, D, h, w) float32 normalised tokens (standard
        normal, as ``normalize`` makes them), "y" (B,) int64 labels, "index" (B,) int64 stream
        positions (which seed each sample's time, noise and label dropping)."""
        b, m = batch_size or stage.batch_size, self.cfg.model
        gen = torch.Generator().manual_seed(seed)
        batch = {
            "x": torch.randn(b, m.in_channels, m.input_size, m.input_size, generator=gen),
            "y": torch.randint(0, m.num_classes, (b,), generator=gen),
            "index": torch.arange(b),
        }
        return {k: v.to(device) for k, v in batch.items()}

    def describe_stage(self, stage) -> str:
        return f"batch {stage.batch_size}"

    def forward_backward(self, train_model, model, batch, accum_steps, autocast):
        """Flow-matching MSE of the batch in ``accum_steps`` micro-batches (each 1 / k of the
        mean), gradient sync on the last only."""
        x, cfg = batch["x"], self.cfg
        s = cfg.flow.factor(tuple(x.shape[1:]))
        t, noise, u = sample_draws(batch["index"], cfg.train.seed, tuple(x.shape[1:]), s, x.device)
        y = torch.where(u < cfg.flow.class_dropout, cfg.model.num_classes, batch["y"])
        full = {"x": x, "y": y, "t": t, "noise": noise}
        loss = torch.zeros((), device=x.device)
        for j, mb in enumerate(split_batch(full, accum_steps)):
            last = j == accum_steps - 1
            with contextlib.nullcontext() if last else no_grad_sync(train_model):
                with autocast():
                    xt = flow.interpolate(mb["x"], mb["noise"], mb["t"])
                    v = train_model(xt, mb["t"], mb["y"])
                micro = flow.flow_loss(v, mb["x"], mb["noise"]).mean() / accum_steps
                micro.backward()
            loss += micro.detach()
        return {"loss": loss}

    def export(self, model: nn.Module, path: str, card: dict, stage: StageConfig) -> None:
        """``model.safetensors`` + ``config.json`` (task, run config, card) + the statistics:
        everything ``load_generator`` needs besides the decoder's export; and the ``README.md``
        model card. Local paths are recorded relative to the export (the decoder's too, which
        ``load_generator`` resolves there)."""
        from safetensors.torch import save_file

        from openvision3.files import staged_folder
        from openvision3.train.checkpoint import model_state_dict

        out = Path(path)
        weights = {k: v.detach().cpu().contiguous() for k, v in model_state_dict(model).items()}
        source = self.cfg.decoder or self._cache_source()
        decoder = source
        if os.path.exists(source):  # a local export: recorded relative to this one
            decoder = os.path.relpath(os.path.abspath(source), os.path.abspath(out))
        names = {"data": portable_name(self.cfg.data.cache), "decoder": portable_name(source)}
        card = {**card, **names}
        meta = {
            KIND_KEY: GENERATOR,
            # this machine's paths (data, run directory) relative to the export
            "config": relative_paths(to_dict(self.cfg), os.path.abspath(out)),
            "decoder": decoder,
            "card": card,
        }
        m = self.cfg.model
        tokens = (m.in_channels, m.input_size, m.input_size)
        readme = generator_card(portable_name(path), card, tokens, m.num_classes)
        # Written whole beside ``path`` and moved in: an interrupted export leaves no half
        # folder; config.json (what names the folder a generator) lands last.
        with staged_folder(out, last="config.json", keep=users_file) as tmp:
            save_file(weights, str(tmp / "model.safetensors"))
            save_file({k: v.contiguous() for k, v in self.stats.items()}, str(tmp / STATS_NAME))
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            if not users_file(out / CARD_NAME):
                write_card(tmp, readme)

    def _cache_source(self) -> str:
        try:
            return FeatureCache(self.cfg.data.cache, self.cfg.data.split).meta["tokens"]["source"]
        except (FileNotFoundError, KeyError, TypeError):
            return ""
