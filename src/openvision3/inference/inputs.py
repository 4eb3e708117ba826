"""Flexible image inputs -> model-ready batches, and the file sources of the ``ov3`` commands.

Every input goes through the training transform (``data/transforms.py``), so a PIL image, its
path, its bytes, a uint8 array / tensor and the matching float tensor give the same pixels:
  - PIL images, paths and bytes are decoded by ``data.images.decode_image`` (CMYK, 16-bit,
    alpha, EXIF orientation) and transformed;
  - uint8 arrays / tensors, (H, W, 3) or (3, H, W), become PIL images losslessly;
  - float tensors (3, H, W) are in [-1, 1] (the model's convention); at the target size they
    pass through untouched, otherwise they are rounded to uint8 and transformed like the rest.
``to_pil_images`` gives the same inputs as RGB PIL images, untransformed, for a VLM's own
image processor. Sources for the commands: one image file, a folder (recursive), or webdataset tar shards. Every
input a source lists either reaches the model or comes back in ``Batch.bad`` with its reason
(an undecodable file, a dangling symlink, a fifo, a shard that breaks off), so a command can
account for each one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from openvision3.data.folder import IMAGE_EXTENSIONS
from openvision3.data.images import UnreadableImageError, decode_image
from openvision3.data.transforms import ImageTransformConfig, build_transform, to_uint8

ImageInput = Image.Image | str | os.PathLike | bytes | np.ndarray | torch.Tensor


def _is_batch(images) -> bool:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return images.ndim == 4
    return isinstance(images, (list, tuple))


def as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One input or a batch (list, or a 4-D array / tensor) -> list of single inputs."""
    if _is_batch(images):
        return list(images)
    return [images]


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _check_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"image tensors must be (3, H, W), got {tuple(t.shape)}")
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise ValueError(f"image tensors must be uint8 or float in [-1, 1], got {t.dtype}")
    return t


def to_pil_image(image: ImageInput) -> Image.Image:
    """One input -> an RGB PIL image, untransformed, for code with its own preprocessing (a
    transformers image processor): PIL images as they are, paths and bytes decoded, uint8
    arrays / tensors losslessly, float tensors (3, H, W) in [-1, 1] rounded to uint8.

    Raises ``UnreadableImageError`` for files or bytes that do not decode, ``ValueError`` for
    arrays of the wrong shape or dtype.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        return decode_image(image)
    if isinstance(image, torch.Tensor):
        t = _check_tensor(image.detach().cpu())
        if t.dtype != torch.uint8:
            t = to_uint8(t.float().expand(3, -1, -1))
        return _array_to_pil(t.numpy())
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (H, W, 3), got {image.dtype}")
        return _array_to_pil(image)
    raise TypeError(f"unsupported image input of type {type(image).__name__}")


def to_pil_images(images: ImageInput | Sequence[ImageInput]) -> list[Image.Image]:
    """One input or a batch (see ``as_list``) -> RGB PIL images (``to_pil_image``)."""
    return [to_pil_image(x) for x in as_list(images)]


def to_pixels(image: ImageInput, cfg: ImageTransformConfig, transform: Callable) -> torch.Tensor:
    """One input -> float32 (3, R, R) in [-1, 1] (see the module docstring for the rules).

    Raises ``UnreadableImageError`` for files or bytes that do not decode, ``ValueError`` for
    arrays of the wrong shape or dtype.
    """
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        t = _check_tensor(image.detach().cpu()).float().expand(3, -1, -1)
        if tuple(t.shape[1:]) == (cfg.resolution, cfg.resolution):
            return t.contiguous()  # already at the target size: untouched
    return transform(to_pil_image(image))


def to_batch(images, cfg: ImageTransformConfig) -> torch.Tensor:
    """One input or a batch of inputs -> float32 (B, 3, R, R) in [-1, 1]."""
    transform = build_transform(cfg, train=False)
    return torch.stack([to_pixels(x, cfg, transform) for x in as_list(images)])


# ---------------------------------------------------------------------- command sources
@dataclass
class Item:
    """One input of a source: ``key`` names it in outputs (unique within the source); ``data``
    is a path or bytes; ``error``, when set, says why it cannot be read (it is not opened)."""

    key: str
    data: str | bytes | None
    error: str = ""


@dataclass
class Batch:
    """Decoded images of one batch plus the items that failed, as (key, error message)."""

    keys: list[str]
    pixels: torch.Tensor  # (B, 3, R, R) in [-1, 1]; B may be 0
    bad: list[tuple[str, str]] = field(default_factory=list)


def _is_shards(path: str) -> bool:
    return path.endswith(".tar") or ("{" in path and ".tar" in path)


def _folder_items(root: Path) -> list[Item]:
    """Every entry under ``root`` with an image extension that is not a folder, sorted by key
    (its relative posix path); dangling symlinks and non-regular files carry their reason."""
    items = []
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir():
            key = p.relative_to(root).as_posix()
            items.append(Item(key, str(p), _unreadable_reason(key, p)))
    return sorted(items, key=lambda item: item.key)


def _unreadable_reason(key: str, path: Path) -> str:
    """Why ``path`` cannot be read as an image file ("" when it is a regular file). Fifos and
    devices are never opened: reading one could block forever."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if path.is_symlink():
            return f"{key!r} is a dangling symlink to {os.readlink(path)!r} ({err.strerror})"
        return f"cannot open {key!r}: {type(err).__name__}: {err.strerror}"
    return "" if stat.S_ISREG(mode) else f"{key!r} is not a regular file"


class _UniqueKeys:
    """``key``, or ``key#2``, ``key#3``, ... for later samples repeating an earlier key (shards
    are read in a fixed order, so a rerun gives every sample the same key)."""

    def __init__(self):
        self.used: set[str] = set()
        self.repeats: dict[str, int] = {}

    def __call__(self, key: str) -> str:
        unique = key
        while unique in self.used:
            self.repeats[key] = self.repeats.get(key, 1) + 1
            unique = f"{key}#{self.repeats[key]}"
        self.used.add(unique)
        return unique


def _tar_items(shards: list[str]) -> Iterator[Item]:
    unique = _UniqueKeys()
    for shard in shards:
        yield from _shard_items(shard, unique)


def _shard_items(shard: str, unique: _UniqueKeys) -> Iterator[Item]:
    """The samples of one shard in order; if it cannot be read to its end, one more item, keyed
    by the shard's path, carries the error (the samples after it are not read)."""
    from webdataset.tariterators import tarfile_samples

    from openvision3.data.webdataset import raw_to_sample

    errors: list[Exception] = []

    def stop(exn: Exception) -> bool:
        errors.append(exn)
        return False  # webdataset: stop reading this shard

    count = 0
    for raw in tarfile_samples([{"url": shard}], handler=stop):
        sample = raw_to_sample(raw)
        count += 1
        yield Item(unique(str(sample["key"])), sample["image"])
    if errors:
        err = errors[0]
        message = err.args[0] if err.args else ""
        yield Item(
            unique(shard),
            None,
            f"unreadable webdataset shard {shard!r} after {count} samples: "
            f"{type(err).__name__}: {message}",
        )


def list_items(path: str | os.PathLike) -> tuple[Iterator[Item], int | None]:
    """An image file, a folder (recursive; a folder of ``*.tar`` only is read as shards) or
    webdataset shards (``a.tar``, ``data-{000..009}.tar``) -> (items, count or None).

    Folder keys are relative posix paths, extension included (``sub/photo.jpg``); every entry
    with an image extension is listed, readable or not. Shard keys are the samples' ``__key__``;
    a sample repeating an earlier sample's key is keyed ``<key>#2``, ``<key>#3``, ...
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        root = Path(path)
        items = _folder_items(root)
        if not items:
            shards = sorted(str(p) for p in root.glob("*.tar"))
            if shards:
                return _tar_items(shards), None
            raise ValueError(f"no images (or *.tar shards) under {path!r}")
        return iter(items), len(items)
    if _is_shards(path):
        from webdataset.shardlists import expand_urls

        shards = list(expand_urls(path))
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"missing shard(s): {missing[:3]}")
        return _tar_items(shards), None
    if os.path.isfile(path):
        return iter([Item(os.path.basename(path), path)]), 1
    raise FileNotFoundError(f"{path!r} is neither an image file, a folder nor a .tar shard")


def batches(
    items: Iterator[Item],
    cfg: ImageTransformConfig,
    batch_size: int,
    num_workers: int = 0,
) -> Iterator[Batch]:
    """Decode and transform items in batches; undecodable ones land in ``Batch.bad``.

    ``num_workers`` threads decode in parallel (PIL releases the GIL while decoding).
    """
    transform = build_transform(cfg, train=False)

    def load(item: Item):
        if item.error:
            return item.key, None, item.error
        if item.data is None:
            return item.key, None, f"sample {item.key!r} holds no image"
        try:
            img = decode_image(item.data, name=item.key)
            return item.key, transform(img), ""
        except UnreadableImageError as err:
            return item.key, None, str(err)

    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        chunk: list[Item] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield _collate(pool.map(load, chunk) if pool else map(load, chunk))
                chunk = []
        if chunk:
            yield _collate(pool.map(load, chunk) if pool else map(load, chunk))
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _collate(results) -> Batch:
    keys, pixels, bad = [], [], []
    for key, x, error in results:
        if x is None:
            bad.append((key, error))
        else:
            keys.append(key)
            pixels.append(x)
    return Batch(keys, torch.stack(pixels) if pixels else torch.empty(0, 3, 0, 0), bad)
