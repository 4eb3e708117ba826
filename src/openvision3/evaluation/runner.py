"""``ov3 eval``: the paper's evaluation protocols on a saved model, with pinned settings.

``run_eval(cfg, tasks)`` loads the model (our export or a released checkpoint), runs each task
on this rank's share of the data (launch with ``torchrun`` for several ranks), and writes
``results.json`` (every number, every setting, the model and data identity) and ``report.md``
(tables and PNG plots) into ``cfg.out_dir``. A task the model or the data cannot support is an
error when asked for by name and is skipped, with the reason recorded, under ``all``.

The trainer's evaluation (``suite.evaluate_model``) is a subset of tasks and images of this
same path: ``EvalRun`` + ``run_tasks``, so both report the same numbers under the same names
(``flat_metrics``: ``rec_psnr``, ``zero_shot_top1``, ``retrieval_i2t_r1``, ``caption_bleu4``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from openvision3.data.loader import DataConfig, build_loader
from openvision3.data.sources import data_source, source_class, source_names
from openvision3.dataclass_io import to_dict
from openvision3.evaluation.identity import data_identity, environment, model_identity
from openvision3.evaluation.linear_probe import LinearProbeConfig, LinearProbeEvaluator
from openvision3.evaluation.pairs import PairsConfig, pair_batches, read_pairs
from openvision3.evaluation.reduce import limited, model_device

log = logging.getLogger(__name__)

TASKS = ("reconstruction", "zero-shot", "retrieval", "captioning", "linear-probe")
SWITCH = ("auto", "on", "off")
IMAGENET_WNID = re.compile(r"^n\d{8}$")
# Flat metric names, shared by ``results.json`` ("metrics") and the trainer's log (eval/...):
# "<prefix>_<metric>", e.g. rec_psnr, zero_shot_top1, retrieval_t2i_r5, caption_bleu4.
METRIC_PREFIX = {
    "reconstruction": "rec",
    "zero-shot": "zero_shot",
    "retrieval": "retrieval",
    "captioning": "caption",
    "linear-probe": "linear_probe",
}
# Reference captions are the loader's caption tokens decoded, tokenised at this length and not
# at the training run's data.caption_context (the demo's 24 tokens cut most synthetic captions
# in half, and BLEU / CIDEr against cut references are other numbers).
REFERENCE_CONTEXT = 256
RELEASED_RESOLUTION = 256  # input side for a released encoder (no recorded training resolution)


class TaskUnavailable(ValueError):
    """The model or the data cannot support a task (skipped under ``all``)."""


@dataclass
class ReconstructionTaskConfig:
    """lpips / rfid: "auto" (when the metric's weights are on disk), "on" (error if missing)
    or "off". lpips_net: "vgg" (as in the training loss) or "alex". stats_cache: folder of
    the cached rFID reference statistics ("" = ~/.cache/openvision3/fid). grid: best and
    worst images shown."""

    lpips: str = "auto"  # auto (when its weights are on disk) | on | off
    lpips_net: str = "vgg"  # vgg (as the training loss) | alex
    lpips_weights: str = ""  # local LPIPS backbone weights ("" = the torch hub cache)
    rfid: str = "auto"  # auto (when the Inception weights are on disk) | on | off
    inception_weights: str = ""  # torch-fidelity's Inception weights file
    stats_cache: str = ""  # folder of cached rFID reference statistics
    grid: int = 8  # best and worst images shown in the report

    def __post_init__(self):
        if self.lpips not in SWITCH or self.rfid not in SWITCH:
            raise ValueError(f"lpips and rfid must be one of {SWITCH}")
        if self.lpips_net not in ("vgg", "alex"):
            raise ValueError(f"lpips_net must be 'vgg' or 'alex', got {self.lpips_net!r}")
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")


@dataclass
class ZeroShotTaskConfig:
    """classnames: "" (auto: the data source's own, e.g. the synthetic world's; ImageNet's
    from open_clip for 1000 nXXXXXXXX folders; else the folder names) or a text file, one name
    per line. templates: "auto" (the data source's own, e.g. the synthetic world's; else
    OpenAI's 80), "openai", "simple" ("a photo of a {}."), a source's name ("synthetic") or a
    text file, one template with {} per line."""

    # "" = the data's own (or ImageNet's, or folder names), or a file, one a line
    classnames: str = ""
    templates: str = "auto"  # auto | openai | simple | a source's name | a file, one with {} a line
    topk: tuple[int, ...] = (1, 5)  # top-k accuracies reported


@dataclass
class RetrievalTaskConfig:
    ks: tuple[int, ...] = (1, 5, 10)  # recall@k for each k


@dataclass
class CaptioningTaskConfig:
    """beam_size: 1 = greedy; max_len: 0 = the caption decoder's default."""

    beam_size: int = 1  # beams of the search (1 = greedy)
    max_len: int = 0  # longest caption in tokens (0 = the decoder's context)
    samples: int = 16  # captions shown in the report

    def __post_init__(self):
        if self.beam_size < 1 or self.max_len < 0 or self.samples < 0:
            raise ValueError("need beam_size >= 1, max_len >= 0, samples >= 0")


@dataclass
class LinearProbeTaskConfig:
    """train_split: the labelled split the probe is fit on; train_images: how many of its
    images (0 = all; the synthetic world's train split has 100k, ImageNet's 1.28M)."""

    train_split: str = "train"  # the labelled split the probe is fit on
    train_images: int = 10_000  # images of that split (0 = all)
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)


@dataclass
class EvalRunConfig:
    """model: our export folder, a released checkpoint folder or a hub id (required by
    `run_eval`). vae: "auto" (the export's), a VAE folder / hub id, or "none". data: labelled
    images (zero-shot, linear probe; and the rest when pairs.annotations is empty); pass the
    training run's `--data.*` values to evaluate on its held-out split. Images are resized by
    `data.resize` ("center_crop": short side to `resolution`, centre crop). resolution: 0 =
    the one the export was last trained at (its config.json; 256 for a released encoder).
    num_images: the first N images of `split` (0 = all). out_dir: "" = write no files.
    overwrite: replace files in `out_dir` that another evaluation (other options, another
    model) or the user wrote; without it such a folder is refused before anything runs."""

    model: str = ""  # our export folder, a released checkpoint folder or a hub id (required)
    vae: str = "auto"  # auto (the export's), a VAE folder / hub id, or none
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "eval"  # folder for results.json and report.md ("" = write no files)
    overwrite: bool = False  # replace files in out_dir written by another evaluation or the user
    data: DataConfig = field(default_factory=DataConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    split: str = "val"  # the split of --data to evaluate on
    resolution: int = 0  # image side in pixels; 0 = the one the export was last trained at
    batch_size: int = 32  # images per forward
    num_images: int = 0  # evaluate the first N images of the split (0 = all)
    reconstruction: ReconstructionTaskConfig = field(default_factory=ReconstructionTaskConfig)
    zero_shot: ZeroShotTaskConfig = field(default_factory=ZeroShotTaskConfig)
    retrieval: RetrievalTaskConfig = field(default_factory=RetrievalTaskConfig)
    captioning: CaptioningTaskConfig = field(default_factory=CaptioningTaskConfig)
    linear_probe: LinearProbeTaskConfig = field(default_factory=LinearProbeTaskConfig)

    def __post_init__(self):
        if self.resolution < 0 or 0 < self.resolution < 16:
            raise ValueError(f"need resolution 0 (the export's) or >= 16, got {self.resolution}")
        if self.batch_size < 1 or self.num_images < 0:
            raise ValueError("need batch_size >= 1, num_images >= 0")


def evaluation_data(data: DataConfig, model) -> DataConfig:
    """``data`` as every evaluation reads it, whatever the training run tokenised at: texts
    (retrieval) at the model's text context length, reference captions at
    ``REFERENCE_CONTEXT``."""
    text = getattr(model.cfg, "text", None)
    context = text.context_length if text is not None else data.text_context
    return replace(data, text_context=context, caption_context=REFERENCE_CONTEXT)


class EvalRun:
    """What every task needs: the config (its resolution resolved), the model, this rank and
    the output folder (None: write no files). ``ov3 eval`` and the trainer both build one."""

    def __init__(self, cfg: EvalRunConfig, model, rank: int, world: int):
        if not cfg.resolution:
            raise ValueError("EvalRun needs a resolution (run_eval resolves 0 from the export)")
        self.cfg, self.model, self.rank, self.world = cfg, model, rank, world
        self.out = cfg.out_dir or None
        self.data = evaluation_data(cfg.data, model)
        self.source = data_source(cfg.data)  # what the data answers (class names, checks, ...)
        self.pairs = read_pairs(**to_dict(cfg.pairs)) if cfg.pairs.annotations else None

    def loader_batches(self, split: str, num_images: int) -> Iterator[dict]:
        c = self.cfg
        loader = build_loader(
            self.data, split, c.resolution, c.batch_size, self.rank, self.world, train=False
        )
        return limited(loader, num_images, self.rank, self.world)

    def class_names(self) -> list[str] | None:
        c = self.cfg
        return build_loader(self.data, c.split, c.resolution, 1, train=False).class_names

    def image_batches(self) -> Iterator[dict]:
        """Pairs when given, else the labelled loader."""
        c = self.cfg
        if self.pairs is None:
            return self.loader_batches(c.split, c.num_images)
        return pair_batches(
            self.pairs, c.resolution, c.batch_size, c.data.resize, self.rank, self.world,
            c.num_images,
        )  # fmt: skip

    def has_texts(self) -> bool:
        return self.pairs is not None or self.source.has_texts()

    def need(self, *parts: str) -> None:
        for part in parts:
            if getattr(self.model, part, None) is None:
                raise TaskUnavailable(f"the model has no {part}")


def _switch(value: str, weights: str, find) -> bool:
    """Whether to compute a weight-backed metric; ``find`` raises when its weights are missing."""
    if value == "off":
        return False
    if value == "on" or weights:  # a given path must exist
        find()
        return True
    try:
        find()
        return True
    except FileNotFoundError as err:
        log.warning("skipped: %s", err)
        return False


def _cache_dir(cfg: ReconstructionTaskConfig) -> str:
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return cfg.stats_cache or os.path.join(base, "openvision3", "fid")


def run_reconstruction(run: EvalRun) -> dict:
    from openvision3.evaluation.fid import (
        InceptionFeatures,
        ReconstructionFID,
        inception_weights_path,
        reference_cache_path,
    )
    from openvision3.evaluation.reconstruction import ReconstructionEvaluator
    from openvision3.losses.reconstruction import _backbone_path

    run.need("decoder", "vae")
    c, rc = run.cfg, run.cfg.reconstruction
    lpips = _switch(
        rc.lpips, rc.lpips_weights, lambda: _backbone_path(rc.lpips_net, rc.lpips_weights)
    )
    rfid = _switch(
        rc.rfid, rc.inception_weights, lambda: inception_weights_path(rc.inception_weights)
    )
    fid, settings = None, {}
    if rfid:
        extractor = InceptionFeatures(rc.inception_weights).to(model_device(run.model))
        identity = {
            **data_identity(c, run.pairs),
            "resolution": c.resolution,
            "num_images": c.num_images,
        }
        identity["inception"] = os.path.basename(extractor.weights)
        cache = reference_cache_path(_cache_dir(rc), identity)
        fid = ReconstructionFID(extractor, cache, identity)
        settings["rfid"] = {
            "features": "torch-fidelity inception-v3-compat pool3 (2048), resized to 299",
            "weights": extractor.weights,
            "reference_cache": cache,
            "reference_from_cache": fid.cached,
        }
    rec = ReconstructionEvaluator(lpips, rc.lpips_weights, rc.grid, rc.lpips_net, fid)
    metrics = rec.run(run.model, run.image_batches())
    files = []
    if run.out:  # collective: every rank calls, rank 0 writes
        rec.write_csv(os.path.join(run.out, "reconstruction.csv"))
        rec.save_grid(os.path.join(run.out, "reconstructions.png"), n=rc.grid)
        files = ["reconstruction.csv", "reconstructions.png"]
    settings.update(
        psnr="uint8-rounded images, data range 255",
        ssim="torchmetrics, Gaussian window 11, sigma 1.5, interior average (= skimage)",
        lpips=f"lpips {rc.lpips_net}" if lpips else "off (weights not on disk or switched off)",
        rfid_computed=rfid,
    )
    return {"metrics": metrics, "settings": settings, "files": files}


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def zero_shot_metadata(run: EvalRun) -> tuple[list[str], list, str]:
    """Class names, templates and a description of where they came from."""
    from openvision3.evaluation.zero_shot import imagenet_metadata

    zc = run.cfg.zero_shot
    folders = run.class_names()
    if not folders:
        raise TaskUnavailable("the data has no class labels (use an ImageNet-layout folder)")
    imagenet = len(folders) == 1000 and all(IMAGENET_WNID.match(f) for f in folders)
    own = run.source.class_names()
    if zc.classnames:
        names, origin = _read_lines(zc.classnames), zc.classnames
    elif own is not None:
        names, origin = own
    elif imagenet:
        names, origin = imagenet_metadata()[0], "open_clip IMAGENET_CLASSNAMES"
    else:
        names, origin = [f.replace("_", " ") for f in folders], "folder names"
    if len(names) != len(folders):
        raise ValueError(f"{len(names)} class names for {len(folders)} classes")
    choice = zc.templates
    if choice == "auto":
        own = run.source.zero_shot_templates() is not None
        choice = run.source.name if own else "openai"
    if choice == "openai":
        templates = imagenet_metadata()[1]
    elif choice == "simple":
        templates = ["a photo of a {}."]
    elif choice in source_names() and source_class(choice).zero_shot_templates() is not None:
        templates = source_class(choice).zero_shot_templates()
    else:
        templates = _read_lines(choice)
    return names, templates, f"classes: {origin}; templates: {choice}"


def run_zero_shot(run: EvalRun) -> dict:
    from openvision3.evaluation.zero_shot import ZeroShotEvaluator
    from openvision3.tokenizer import Tokenizer

    run.need("text")
    names, templates, origin = zero_shot_metadata(run)
    topk = tuple(k for k in run.cfg.zero_shot.topk if k <= len(names))
    zs = ZeroShotEvaluator(names, templates, topk, Tokenizer(run.model.cfg.text.context_length))
    metrics = zs.run(run.model, run.loader_batches(run.cfg.split, run.cfg.num_images))
    metrics["chance"] = 1.0 / len(names)
    texts = [t if isinstance(t, str) else t("{}") for t in templates]
    return {
        "metrics": metrics,
        "settings": {
            "classes": len(names),
            "metadata": origin,
            "templates": texts,
            "topk": list(topk),
        },
        "per_class": dict(zip(names, zs.per_class)),
    }


def run_retrieval(run: EvalRun) -> dict:
    from openvision3.evaluation.retrieval import MultiCaptionRetrievalEvaluator, RetrievalEvaluator
    from openvision3.tokenizer import Tokenizer

    run.need("text")
    if not run.has_texts():
        raise TaskUnavailable("no captions: pass --pairs.annotations or --data.captions-file")
    ks = run.cfg.retrieval.ks
    if run.pairs is not None:
        tok = Tokenizer(run.model.cfg.text.context_length)
        metrics = MultiCaptionRetrievalEvaluator(tok, ks).run(run.model, run.image_batches())
        texts = "every reference caption of each image"
    else:
        metrics = RetrievalEvaluator(ks).run(run.model, run.image_batches())
        texts = "one text per image (the loader's alt text)"
    return {"metrics": metrics, "settings": {"ks": list(ks), "texts": texts}}


def run_captioning(run: EvalRun) -> dict:
    from openvision3.evaluation.captioning import CaptionEvaluator
    from openvision3.tokenizer import Tokenizer

    run.need("captioner", "vae")
    if not run.has_texts():
        raise TaskUnavailable("no reference captions: pass --pairs.annotations")
    cc = run.cfg.captioning
    if run.pairs is not None:
        refs, attributes = "captions", None
    else:
        tok = Tokenizer()
        refs = lambda batch: tok.decode_batch(batch["caption"])  # noqa: E731
        attributes = run.source.caption_checks()
    cap = CaptionEvaluator(cc.max_len or None, cc.beam_size, cc.samples, attributes)
    metrics = cap.run(run.model, run.image_batches(), refs)
    settings = {
        "decoding": "greedy" if cc.beam_size == 1 else f"beam search, {cc.beam_size} beams",
        "max_len": cc.max_len or run.model.cfg.caption.context_length,  # tokens, SOT/EOT included
        "references": "every caption of the image (pairs)"
        if run.pairs is not None
        else f"the loader's caption, decoded from {REFERENCE_CONTEXT} tokens",
        "normalisation": "lowercase, punctuation replaced by spaces (generated and references)",
        "tokenisation": "the normalised text split on whitespace (not the java PTB tokenizer)",
        "bleu4": "pycocoevalcap Bleu(4), corpus level (closest reference length, shorter on ties)",
        "cider": "pycocoevalcap Cider (CIDEr-D), corpus level",
    }
    return {"metrics": metrics, "settings": settings, "samples": cap.samples}


def run_linear_probe(run: EvalRun) -> dict:
    run.need("vae")
    c, lp = run.cfg, run.cfg.linear_probe
    names = run.class_names()
    if not names:
        raise TaskUnavailable("the data has no class labels (use an ImageNet-layout folder)")
    missing = run.source.labelled_split_missing(lp.train_split)
    if missing:
        raise TaskUnavailable(missing)
    probe = LinearProbeEvaluator(len(names), lp.probe)
    metrics = probe.run(
        run.model,
        run.loader_batches(lp.train_split, lp.train_images),
        run.loader_batches(c.split, c.num_images),
    )
    settings = {
        "features": "model.embed_image(normalize=False), standardised with train statistics",
        "classifier": "multinomial logistic regression, torch L-BFGS, float64",
        "train_split": lp.train_split,
        **to_dict(lp.probe),
    }
    return {"metrics": metrics, "settings": settings}


RUNNERS = {
    "reconstruction": run_reconstruction,
    "zero-shot": run_zero_shot,
    "retrieval": run_retrieval,
    "captioning": run_captioning,
    "linear-probe": run_linear_probe,
}


def flat_metrics(tasks: dict) -> dict:
    """``{task: {"metrics": {name: value}}}`` -> ``{"<prefix>_<name>": value}`` (``METRIC_PREFIX``):
    the names the trainer logs and ``results.json`` holds under "metrics"."""
    return {
        f"{METRIC_PREFIX[task]}_{name}": value
        for task, out in tasks.items()
        for name, value in out["metrics"].items()
    }


def _full_precision(device: torch.device):
    # The protocol is float32: the trainer evaluates inside its bf16 autocast, ``ov3 eval`` not.
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def run_tasks(run: EvalRun, tasks: Sequence[str], explicit: bool) -> dict:
    """Run ``tasks`` (names from ``TASKS``) on this rank's share, autocast off. A task the model
    or the data cannot support raises ``TaskUnavailable`` when ``explicit``, else is skipped.

    Returns ``{"metrics": flat_metrics, "tasks": {task: {"metrics", "settings", ...}},
    "skipped": {task: reason}}``, the same on every rank.
    """
    done, skipped = {}, {}
    with _full_precision(model_device(run.model)):
        for task in tasks:
            t0 = time.perf_counter()
            try:
                out = RUNNERS[task](run)
            except TaskUnavailable as err:
                if explicit:
                    raise
                skipped[task] = str(err)
                log.info("skipped %s: %s", task, err)
                continue
            out["seconds"] = round(time.perf_counter() - t0, 3)
            done[task] = out
            log.info("%s: %s", task, out["metrics"])
    return {"metrics": flat_metrics(done), "tasks": done, "skipped": skipped}


def protocol_settings(run: EvalRun) -> dict:
    """The settings every task shares (each task's own are in its "settings")."""
    c = run.cfg
    return {
        "split": c.split,
        "resolution": c.resolution,
        "resize": c.data.resize,
        "num_images": c.num_images,
        "batch_size": c.batch_size,
        "world_size": run.world,
        "source": c.data.source,
        "text_context": run.data.text_context,
        "reference_context": run.data.caption_context,
        "precision": f"{next(run.model.parameters()).dtype}, autocast off",
    }


def results_header(run: EvalRun, model_path: str | None) -> dict:
    """The model, data, config, environment and shared settings of ``results.json``."""
    return {
        "model": model_identity(model_path, run.model),
        "data": data_identity(run.cfg, run.pairs),
        "config": to_dict(run.cfg),
        "environment": environment(run.world, model_device(run.model)),
        "settings": protocol_settings(run),
    }


# Every file ``ov3 eval`` may write into its out_dir (report.py's plots included).
EVAL_FILES = (
    "results.json", "report.md", "reconstruction.csv", "reconstructions.png", "psnr_hist.png",
    "zero_shot_per_class.png", "retrieval.png", "linear_probe_l2.png",
)  # fmt: skip


def eval_output(cfg: EvalRunConfig, tasks: Sequence[str]):
    """The out_dir's record (``openvision3.outputs.OutputDir``, rank 0's), checked before
    anything runs: the tasks, the model (its files' sizes and times) and every setting but
    the device and the batch size; ``EVAL_FILES`` are claimed. A refusal ends the job
    (torchrun stops the other ranks)."""
    from openvision3.outputs import OutputDir, model_identity

    options = {k: v for k, v in to_dict(cfg).items() if k not in ("out_dir", "overwrite")}
    options.pop("device"), options.pop("batch_size")
    options.update(model=model_identity(cfg.model), tasks=list(tasks))
    out = OutputDir(cfg.out_dir, "eval", options, EVAL_FILES, cfg.overwrite,
                    flag="--out-dir", summary=False)  # fmt: skip
    out.claim(EVAL_FILES)
    return out


def run_eval(cfg: EvalRunConfig, tasks: Sequence[str]) -> dict:
    """Run ``tasks`` (names from ``TASKS``; "all" = every one the model and data allow) and
    write ``results.json`` and ``report.md`` into ``cfg.out_dir`` (rank 0; none when "").
    Returns the results: ``metrics`` (flat names), ``tasks``, ``skipped`` and the header."""
    from openvision3.distributed.process import init_process, is_distributed, shutdown
    from openvision3.evaluation.report import write_report
    from openvision3.pretrained import load_pretrained, trained_resolution

    if not cfg.model:
        raise ValueError("--model PATH is required (an export folder or a hub id)")
    explicit = list(tasks) != ["all"]
    tasks = list(tasks) if explicit else list(TASKS)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS} or 'all'")
    started = is_distributed()
    proc = init_process(cfg.device)
    try:
        out = eval_output(cfg, tasks) if cfg.out_dir and proc.rank == 0 else None
        vae = None if cfg.vae == "none" else cfg.vae
        model = load_pretrained(cfg.model, vae=vae, device=proc.device)
        if not cfg.resolution:
            trained = trained_resolution(cfg.model)
            cfg = replace(cfg, resolution=trained or RELEASED_RESOLUTION)
        run = EvalRun(cfg, model, proc.rank, proc.world_size)
        results = {**results_header(run, cfg.model), **run_tasks(run, tasks, explicit)}
        if proc.rank == 0 and out is not None:
            write_report(results, cfg.out_dir)
            written = [f for f in EVAL_FILES if (out.path / f).exists()]
            out.record_done(list(results["tasks"]), written)
        return results
    finally:
        if not started:
            shutdown()
