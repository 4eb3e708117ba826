"""What a folder is, and the model card that says so: one place for every family's exports.

Three kinds of export leave this package, each recording its kind where a loader reads it first:
  - ``openvision3``: the tokenizer (``save_pretrained`` / ``ov3 export`` / ``run/final``);
    ``config.json`` has ``"format": "openvision3"`` and ``"task": "openvision3"``;
  - ``generation``: a DiT-DH generator (``GenerationTask.export``); ``config.json`` ``"task"``;
  - ``llava``: a VLM (``ov3 vlm build`` / the LLaVA task's export); transformers' ``config.json``
    with ``model_type: llava`` over an ``openvision3_vision`` tower, and ``model_card.json``
    ``"task": "llava"``.
``folder_kind`` tells these apart from the folders a user may pass by mistake (a training
checkpoint or run, the authors' released encoder, another transformers model, a folder of
images, an empty one) by reading small JSON files and a directory listing only, so a loader
can refuse a wrong folder in one line before it builds anything (``require_kind``).

``write_card`` writes the Hugging Face Hub's model card (``README.md`` with YAML front matter,
https://huggingface.co/docs/hub/model-cards) of an export. Files that travel with a folder name
their sources by hub id or folder name (``portable_name``), never by the builder's absolute
paths. This module imports nothing heavy, so every family imports it freely.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NoReturn

from openvision3.errors import ConfigError, MissingWeightsError

KIND_KEY = "task"  # the key of our config.json / model_card.json that names the kind
TOKENIZER, GENERATOR, VLM = "openvision3", "generation", "llava"
# The diffusers folders of a tokenizer and a generator (``ov3 export --format diffusers``),
# recognised by the class diffusers records in them (``_class_name``).
DIFFUSERS_AUTOENCODER, DIFFUSERS_PIPELINE = "diffusers-autoencoder", "diffusers-pipeline"
AUTOENCODER_CLASS, PIPELINE_CLASS = "OpenVision3Autoencoder", "OpenVision3DiTPipeline"
CARD_NAME = "README.md"
# The first line of every card we write: a README.md without it is the user's, never replaced.
CARD_MARK = "<!-- model card written by openvision3 -->"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TOWER_TYPE = "openvision3_vision"  # OpenVision3VisionConfig.model_type


class WrongFolderError(ConfigError):
    """A folder of another kind than the loader reads; the message names what it is and which
    command or function takes it."""


@dataclass(frozen=True)
class Kind:
    """A folder's kind: ``name`` (one of the export kinds above, or ``released``, ``checkpoint``,
    ``run``, ``transformers``, ``images``, ``empty``, ``other``), a phrase saying what it is,
    and the commands that take it (``{path}`` stands for the folder)."""

    name: str
    what: str
    takes: str = ""

    def describe(self, path: str, not_: str = "") -> str:
        """One line: what the folder at ``path`` is (``not_``: and what it is not), and which
        commands take it."""
        takes = self.takes.format(path=path)
        return (
            f"{path!r} is {self.what}"
            + (f", not {not_}" if not_ else "")
            + (f"; {takes}" if takes else "")
        )


_TOKENIZER_TAKES = (
    "`openvision3.load({path!r})`, `ov3 encode {path} IMAGES`, `ov3 serve {path}` and "
    "`ov3 vlm build --vision {path}` take it"
)
_KINDS = {
    TOKENIZER: Kind(TOKENIZER, "an OpenVision 3 model export (the tokenizer)", _TOKENIZER_TAKES),
    "released": Kind("released", "a released OpenVision 3 encoder", _TOKENIZER_TAKES),
    GENERATOR: Kind(
        GENERATOR,
        "an OpenVision 3 generator export (DiT-DH)",
        "`openvision3.load({path!r})`, `ov3 sample {path} --out DIR` and "
        "`ov3 serve MODEL --generator {path}` take it",
    ),
    VLM: Kind(
        VLM,
        "an OpenVision 3 LLaVA (VLM) folder",
        "`openvision3.load({path!r})`, `ov3 vlm chat {path} IMAGE QUESTION`, `ov3 vlm answer` and "
        "`ov3 serve MODEL --vlm {path}` take it",
    ),
    DIFFUSERS_AUTOENCODER: Kind(
        DIFFUSERS_AUTOENCODER,
        "an OpenVision 3 tokenizer in diffusers' format (OpenVision3Autoencoder)",
        "`openvision3.load({path!r})` and, after `import openvision3.diffusers`, "
        "`OpenVision3Autoencoder.from_pretrained({path!r})` take it",
    ),
    DIFFUSERS_PIPELINE: Kind(
        DIFFUSERS_PIPELINE,
        "an OpenVision 3 generator in diffusers' format (OpenVision3DiTPipeline)",
        "`openvision3.load({path!r})`, `ov3 sample {path} --out DIR`, `ov3 serve MODEL "
        "--generator {path}` and, after `import openvision3.diffusers`, "
        "`OpenVision3DiTPipeline.from_pretrained({path!r})` take it",
    ),
    "checkpoint": Kind(
        "checkpoint",
        "a training checkpoint",
        "`ov3 export {path} OUT` turns it into a model folder",
    ),
    "empty": Kind("empty", "an empty folder"),
    "images": Kind(
        "images",
        "a folder of images, not a model",
        "`ov3 encode MODEL {path}` encodes them",
    ),
}


def _json(path: Path) -> dict | None:
    """A JSON object file, or None (absent, unreadable, not an object)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _run_kind(path: Path) -> Kind:
    final = path / "final"
    if final.is_dir():
        inner = folder_kind(final)
        takes = f"its export is {{path}}/final ({inner.what})"
    else:
        takes = "`ov3 export {path} OUT` exports its newest checkpoint"
    return Kind("run", "a training run folder", takes)


def folder_kind(path: str | os.PathLike) -> Kind:
    """What the local folder ``path`` holds, from its JSON files and listing alone."""
    p = Path(path)
    if not p.is_dir():
        return Kind("file", "a file") if p.exists() else Kind("missing", "missing")
    config = _json(p / "config.json")
    if (_json(p / "model_index.json") or {}).get("_class_name") == PIPELINE_CLASS:
        return _KINDS[DIFFUSERS_PIPELINE]
    if config is not None and config.get("_class_name") == AUTOENCODER_CLASS:
        return _KINDS[DIFFUSERS_AUTOENCODER]
    if config is not None:
        if config.get("format") == TOKENIZER or config.get(KIND_KEY) == TOKENIZER:
            return _KINDS[TOKENIZER]
        if config.get(KIND_KEY) == GENERATOR:
            return _KINDS[GENERATOR]
    if (p / "open_clip_config.json").is_file():
        return _KINDS["released"]
    if config is not None:
        vision = config.get("vision_config")
        if config.get("model_type") == "llava" and isinstance(vision, dict):
            if vision.get("model_type") == TOWER_TYPE:
                return _KINDS[VLM]
        if "model_type" in config:
            arch = ", ".join(config.get("architectures") or []) or config["model_type"]
            return Kind(
                "transformers",
                f"a transformers model ({arch})",
                "`ov3 vlm build --llm {path}` takes a causal language model"
                if config.get("model_type") != "llava"
                else "",
            )
        if "run_dir" in config and "train" in config:
            return _run_kind(p)
        if KIND_KEY in config:
            return Kind(str(config[KIND_KEY]), f"a {config[KIND_KEY]!r} export")
    if (p / "state.json").is_file():
        return _KINDS["checkpoint"]
    if (p / "checkpoints").is_dir():
        return _run_kind(p)
    entries = list(islice(p.iterdir(), 256))  # enough to tell; an image folder may be huge
    if not entries:
        return _KINDS["empty"]
    if any(e.suffix.lower() in IMAGE_SUFFIXES for e in entries if e.is_file()):
        return _KINDS["images"]
    return Kind("other", "a folder without a model's config.json")


# Folder kind -> the function that opens it ("module:function"), imported when a folder of
# that kind is opened, as transformers' Auto classes map a model type to its module: so
# ``openvision3.load`` (and ``load_generator`` for a diffusers pipeline) open every kind
# without importing the families above them. Each takes (path, device=..., **options).
LOADERS = {
    TOKENIZER: "openvision3.inference.api:load_pipeline",
    "released": "openvision3.inference.api:load_pipeline",
    GENERATOR: "openvision3.generation.pipeline:load_generator",
    VLM: "openvision3.understanding:load_vlm",
    DIFFUSERS_AUTOENCODER: "openvision3.diffusers.export:load_diffusers_folder",
    DIFFUSERS_PIPELINE: "openvision3.diffusers.export:load_diffusers_generator",
}


def loader(kind: str):
    """The function that opens a folder of ``kind`` (``LOADERS``)."""
    import importlib

    module, name = LOADERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def require_kind(path: str, wanted: str) -> Kind:
    """``folder_kind(path)`` when it is ``wanted`` (released encoders count as ``openvision3``);
    otherwise one line saying what the folder is and which command takes it:
    ``WrongFolderError`` for a folder of another kind, ``MissingWeightsError`` for none."""
    kind = folder_kind(path)
    if kind.name == wanted or (wanted == TOKENIZER and kind.name == "released"):
        return kind
    refuse(path, kind, _KINDS[wanted].what)


def refuse(path: str, kind: Kind, expected: str) -> NoReturn:
    """Raise the one line for the folder ``path`` of ``kind`` where ``expected`` was wanted:
    ``MissingWeightsError`` for a folder with no model, ``WrongFolderError`` for another kind."""
    if kind.name == "missing":
        raise MissingWeightsError(f"{path!r} does not exist (expected {expected})")
    message = kind.describe(path, not_=expected)
    if kind.name in ("empty", "images", "other", "file"):
        raise MissingWeightsError(message)
    raise WrongFolderError(message)


# ---------------------------------------------------------------------- portable names
def portable_name(source: str) -> str:
    """A source as it may travel with a folder: a hub id or a relative path as given; an
    absolute path by its folder's name (``final`` and ``vae`` with their parent: ``demo/final``)."""
    if not source or not os.path.isabs(source):
        return source
    parts = Path(os.path.normpath(source)).parts
    if len(parts) >= 3 and parts[-1] in ("final", "vae"):
        return "/".join(parts[-2:])
    return parts[-1]


def relative_paths(value, base: str | os.PathLike):
    """``value`` (a JSON tree) with every absolute path string rewritten relative to ``base``:
    a run's config as it may travel with an export written into ``base``."""
    if isinstance(value, dict):
        return {k: relative_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, base) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, os.path.abspath(base))
    return value


# ---------------------------------------------------------------------- model cards
@dataclass
class Card:
    """A model card. ``facts``: name -> value of how it was made (hub ids and folder names);
    ``python``: lines that load it; ``commands``: ``ov3`` lines that take it; ``notes``:
    paragraphs after them."""

    title: str
    summary: str
    kind: str
    facts: dict
    python: str
    commands: list[str]
    library_name: str = "openvision3"
    pipeline_tag: str = ""
    tags: tuple[str, ...] = ()
    base_model: str = ""
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        front = {"library_name": self.library_name}
        if self.pipeline_tag:
            front["pipeline_tag"] = self.pipeline_tag
        front["tags"] = ["openvision3", *self.tags]
        if self.base_model:
            front["base_model"] = self.base_model
        yaml = []
        for key, value in front.items():  # JSON strings are YAML scalars
            if isinstance(value, list):
                yaml += [f"{key}:"] + [f"- {json.dumps(v)}" for v in value]
            else:
                yaml.append(f"{key}: {json.dumps(value)}")
        facts = [f"- {k}: `{v}`" for k, v in self.facts.items() if v not in (None, "")]
        lines = ["---", *yaml, "---", CARD_MARK, "", f"# {self.title}", "", self.summary, ""]
        lines += [f"Kind: `{self.kind}` (recorded in this folder's JSON files).", ""]
        if facts:
            lines += ["## How it was made", "", *facts, ""]
        lines += ["## Load it", "", "```python", self.python.strip(), "```", ""]
        if self.commands:
            lines += ["```bash", *self.commands, "```", ""]
        for note in self.notes:
            lines += [note, ""]
        return "\n".join(lines)


def users_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a README.md we did not write (the user's: never replaced)."""
    path = Path(path)
    if path.name != CARD_NAME or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return CARD_MARK not in f.read(4096)


def write_card(folder: str | os.PathLike, card: Card) -> bool:
    """Write ``folder/README.md`` unless a README.md not written by us is there (kept: it is
    the user's). Returns whether it was written."""
    from openvision3.files import atomic_write

    path = Path(folder) / CARD_NAME
    if users_file(path):
        return False
    text = card.render()
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return True


def _facts(card: dict, keys: dict[str, str]) -> dict:
    """{label: card[key]} for the keys the card has."""
    return {label: card.get(key) for key, label in keys.items() if card.get(key) not in (None, "")}


_RUN_FACTS = {
    "experiment": "experiment (preset)",
    "steps": "optimizer steps",
    "samples_seen": "samples seen",
    "weights": "weights",
    "exported_from": "exported from",
}


def tokenizer_card(name: str, card: dict, width: int, pixel_patch: int, parts: list[str]) -> Card:
    """The card of an OpenVision 3 export (``save_pretrained``): ``card`` is its
    ``model_card.json``, ``parts`` the heads it has besides the encoder."""
    python = f"""
import openvision3

model = openvision3.load("{name}")  # this folder, or its hub id once uploaded
tokens = model.encode("cat.jpg")     # (1, N, D) unified tokens
"""
    if "decoder" in parts:
        python += "images = model.decode(tokens)        # (1, 3, H, W) in [-1, 1]\n"
    has = f"; with its {', '.join(parts)}" if parts else ""
    facts = {"model preset": card.get("model")} | _facts(card, _RUN_FACTS)
    facts |= _facts(card, {"data": "data", "data_path": "data folder"})
    facts |= _facts(card, {"resolution": "trained at (px)"})
    facts["VAE"] = (card.get("vae") or {}).get("source")
    return Card(
        title=f"OpenVision 3 {card.get('model') or 'model'}",
        summary=(
            "An OpenVision 3 visual tokenizer (arXiv 2601.15369): a frozen VAE and a ViT on its "
            f"latents give unified tokens of width {width}, one per {pixel_patch} x "
            f"{pixel_patch} pixels{has}."
        ),
        kind=TOKENIZER,
        facts=facts,
        python=python,
        commands=[
            f"ov3 encode {name} images/ --output tokens/",
            f"ov3 serve {name}",
            f"ov3 vlm build --vision {name} --llm LLM --out vlm/",
        ],
        pipeline_tag="image-feature-extraction",
        tags=("image-tokenizer",),
    )


def generator_card(name: str, card: dict, tokens: tuple[int, int, int], classes: int) -> Card:
    """The card of a DiT-DH export (``GenerationTask.export``): ``card`` is its provenance,
    ``tokens`` the (D, h, w) it samples, ``classes`` its number of labels."""
    decoder = card.get("decoder") or "DECODER"
    return Card(
        title=f"OpenVision 3 generator {card.get('experiment') or ''}".strip(),
        summary=(
            "A class-conditional DiT-DH (RAE's diffusion transformer with a wide head) trained "
            f"by flow matching on OpenVision 3 unified tokens, (D, h, w) = {tokens}, with "
            f"{classes} classes. An OpenVision 3 export's decoder and VAE turn its samples into "
            "pixels; the decoder it was trained for is recorded in `config.json` (relative to "
            "this folder when local)."
        ),
        kind=GENERATOR,
        facts=_facts(card, _RUN_FACTS)
        | _facts(card, {"data": "token cache", "decoder": "decoder"}),
        python=f"""
import openvision3

gen = openvision3.load("{name}")  # a Generator; load_generator(..., decoder=) when it lies elsewhere
images = gen.sample([0, 1, 2], cfg_scale=3.0, steps=50, seed=0)  # (3, 3, H, W) in [-1, 1]
pngs = openvision3.to_pil(images)
""",
        commands=[
            f"ov3 sample {name} --out samples/ --num 100",
            f"ov3 serve {decoder} --generator {name}",
        ],
        pipeline_tag="unconditional-image-generation",
        tags=("dit-dh", "class-conditional"),
    )


def vlm_card(name: str, card: dict, image_size: int, image_tokens: int, llm_type: str) -> Card:
    """The card of a LLaVA folder (``ov3 vlm build``, the LLaVA task's export)."""
    python = f"""
import openvision3.understanding  # first: registers the openvision3_vision tower with transformers
from transformers import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained("{name}")
processor = AutoProcessor.from_pretrained("{name}")

import openvision3  # or OpenVision 3's wrapper, a VLM

vlm = openvision3.load("{name}")
answers = vlm.generate(["cat.jpg"], ["What is in the image?"])  # paths, PIL, arrays, tensors
"""
    keys = {"vision": "vision encoder", "llm": "language model", "model": "trained from"}
    facts = _facts(card, keys) | _facts(card, _RUN_FACTS)
    facts |= _facts(card, {"data": "data", "template": "conversation template"})
    if card.get("lora"):
        facts["LoRA"] = f"r={card['lora'].get('r')}, merged into the language model"
    llm = card.get("llm") or ""
    hub_llm = llm if llm and llm != "tiny" and not os.path.exists(llm) else ""
    return Card(
        title="OpenVision 3 LLaVA",
        summary=(
            "A LLaVA-1.5-style vision-language model: the OpenVision 3 encoder as transformers "
            f"vision tower (`{TOWER_TYPE}`, {image_tokens} image tokens at {image_size} px), "
            f"LLaVA's two-layer GELU projector and a `{llm_type}` language model."
        ),
        kind=VLM,
        facts=facts,
        python=python,
        commands=[
            f'ov3 vlm chat {name} cat.jpg "What is in the image?"',
            f"ov3 vlm answer {name} questions.jsonl --out answers.jsonl",
            f"ov3 serve MODEL --vlm {name}",
        ],
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=("llava",),
        base_model=hub_llm,
        notes=(
            "Import `openvision3.understanding` before loading: without it transformers stops "
            f"with `ValueError: Unrecognized model type for subconfig: {TOWER_TYPE}`.",
        ),
    )
