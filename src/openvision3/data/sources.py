"""What a data source answers, for the loaders and for the evaluations.

``data_source(cfg)`` (``cfg`` a ``DataConfig``) returns the ``DataSource`` named by
``cfg.source``. Loaders ask it for a split's samples; evaluation asks it for its own class
names, prompt templates, caption checks and identity, instead of branching on its name.
``register_source`` adds a source; the demo's synthetic world is one
(``openvision3.data.synthetic.source``), imported the first time its name is asked for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import ClassVar

# name -> "module:class" of the sources outside this package, imported when first named
_LAZY = {"synthetic": "openvision3.data.synthetic.source:SyntheticDataSource"}
_REGISTRY: dict[str, type[DataSource]] = {}


class DataSource:
    """A source of image-text samples, built from a ``DataConfig``. The defaults describe files
    on disk (``path``) without a meaning of their own: evaluation then falls back to the label
    folders' names and OpenAI's prompts."""

    name: ClassVar[str] = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def has_images(self) -> bool:
        """Whether images can be read (a ``path`` is set)."""
        return bool(self.cfg.path)

    def has_texts(self) -> bool:
        """Whether every sample comes with a text (retrieval, captioning)."""
        return True

    def map_source(self, split: str, resolution: int):
        """A map-style source of ``split`` (``len()`` and ``load(index) -> raw sample``), or
        None for a stream (webdataset)."""
        return None

    def class_names(self) -> tuple[list[str], str] | None:
        """The source's own readable class names in label order and where they come from, or
        None: evaluation derives them from the labels (ImageNet WNIDs, folder names)."""
        return None

    @classmethod
    def zero_shot_templates(cls) -> list[str] | None:
        """The source's own zero-shot prompt templates (``{}`` for the class name), or None:
        OpenAI's 80 ImageNet templates."""
        return None

    def caption_checks(self) -> dict[str, Callable[[str, dict], bool]] | None:
        """Checks of a generated caption against a row (``label``, ...), reported by the
        captioning task as ``<name>_accuracy``; None when the source has none."""
        return None

    def labelled_split_missing(self, split: str) -> str | None:
        """Why ``split`` cannot be read with labels (the linear probe), or None when it can."""
        return None

    def identity(self) -> dict:
        """What identifies the data in ``results.json`` (and in the rFID reference cache)."""
        d = self.cfg
        name = os.path.basename(os.path.normpath(d.path))
        return {"name": name, "path": os.path.abspath(d.path), "captions_file": d.captions_file}


class FolderDataSource(DataSource):
    """An image folder (ImageNet layout: sub-folder names are labels), captions optional."""

    name = "folder"

    def has_texts(self) -> bool:
        return bool(self.cfg.captions_file)

    def map_source(self, split: str, resolution: int):
        from openvision3.data.folder import ImageFolderSource

        return ImageFolderSource(self.cfg.path, self.cfg.captions_file, split)

    def labelled_split_missing(self, split: str) -> str | None:
        if not os.path.isdir(os.path.join(self.cfg.path, split)):
            return f"no {split}/ folder under {self.cfg.path}"
        return None


class WebDatasetDataSource(DataSource):
    """webdataset shards (a stream; no class labels a probe can read)."""

    name = "webdataset"

    def labelled_split_missing(self, split: str) -> str | None:
        return "linear probe reads labelled folders or the synthetic world"


def register_source(cls: type[DataSource]) -> type[DataSource]:
    """Make ``cls`` the source of ``DataConfig(source=cls.name)``; usable as a decorator."""
    _REGISTRY[cls.name] = cls
    return cls


register_source(FolderDataSource)
register_source(WebDatasetDataSource)


def source_names() -> tuple[str, ...]:
    return tuple(sorted({*_REGISTRY, *_LAZY}))


def source_class(name: str) -> type[DataSource]:
    """The registered class of source ``name`` (KeyError for an unknown name)."""
    if name not in _REGISTRY and name in _LAZY:
        module, attr = _LAZY[name].split(":")
        register_source(getattr(importlib.import_module(module), attr))
    return _REGISTRY[name]


def data_source(cfg) -> DataSource:
    """The ``DataSource`` of ``cfg`` (a ``DataConfig``)."""
    return source_class(cfg.source)(cfg)
