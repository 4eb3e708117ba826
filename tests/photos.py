"""Real photographs (scikit-image's ``skimage.data``, offline) in every documented data layout.

``write_photo_data(root)`` writes, from a dozen real photos with short hand-written captions:

  images/                     the photos as files (jpg, png, one grayscale, one in a sub-folder)
  captions.jsonl              folder source: {"file", "caption"} per image of images/
  shards/{000000..000002}.tar webdataset: {key}.jpg + {key}.txt (alt text) + {key}.json (caption)
  imagenet/{train,val}/nXXXXXXXX/*.JPEG   ImageNet layout, two real WNIDs
  coco/val2017/*.jpg + coco/annotations/captions_val2017.json         COCO's captions file
  coco/{train2014,val2014}/*.jpg + coco/dataset_coco.json              Karpathy split file

Crops and flips of the photos fill the ImageNet classes (a class needs several images).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# skimage.data name -> (file name in images/, caption)
PHOTOS = {
    "astronaut": ("astronaut.png", "an astronaut in a white suit in front of an american flag"),
    "coffee": ("coffee.jpg", "a cup of coffee on a saucer with a spoon"),
    "chelsea": ("chelsea.jpg", "a ginger tabby cat looking to the side"),
    "rocket": ("rocket.jpg", "a rocket on a launch pad under a blue sky"),
    "camera": ("camera.png", "a black and white photo of a man with a camera on a tripod"),
    "coins": ("coins.png", "old coins laid out in rows on a dark background"),
    "hubble_deep_field": ("hubble.jpg", "galaxies scattered across a dark deep space image"),
    "immunohistochemistry": ("tissue.jpg", "a stained tissue sample seen under a microscope"),
    "retina": ("retina.jpg", "the back of a human eye with red blood vessels"),
    "logo": ("more/logo.png", "a green and blue snake logo on a white background"),
}
# Two real ImageNet classes: photo -> WNID.
WNIDS = {"chelsea": "n02123045", "coffee": "n03063599"}  # tabby cat, coffee mug


def load_photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return Image.fromarray(np.ascontiguousarray(arr))


def _variants(img: Image.Image, n: int) -> list[Image.Image]:
    """``n`` distinct views of one photo: corner / centre crops of 80 %, some flipped."""
    w, h = img.size
    cw, ch = int(w * 0.8), int(h * 0.8)
    boxes = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)]
    out = []
    for i in range(n):
        x, y = boxes[i % len(boxes)]
        view = img.crop((x, y, x + cw, y + ch))
        out.append(view.transpose(Image.FLIP_LEFT_RIGHT) if i >= len(boxes) else view)
    return out


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)


def _shards(root: Path, photos: dict[str, Image.Image], n_shards: int = 3) -> None:
    """Each photo and two crops of it (30 samples) over ``n_shards`` tar files."""
    root.mkdir(parents=True, exist_ok=True)
    samples = [
        (f"{name}_{i}", view, PHOTOS[name][1])
        for name, img in photos.items()
        for i, view in enumerate([img, *_variants(img, 2)])
    ]
    for s in range(n_shards):
        with tarfile.open(root / f"{s:06d}.tar", "w") as tar:
            for key, img, caption in samples[s::n_shards]:
                members = {
                    "jpg": _jpeg(img),
                    "txt": caption.split(" with ")[0].encode(),  # short alt text
                    "json": json.dumps({"caption": caption}).encode(),
                }
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def write_photo_data(root: str | Path) -> Path:
    """Write every layout under ``root`` (see the module docstring); returns ``root``."""
    root = Path(root)
    photos = {name: load_photo(name) for name in PHOTOS}
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "captions.jsonl", "w") as f:
        for name, (file, caption) in PHOTOS.items():
            img = photos[name]
            _save(img, root / "images" / file)  # RGB, grayscale (camera, coins) and RGBA (logo)
            f.write(json.dumps({"file": file, "caption": caption}) + "\n")
    _shards(root / "shards", photos)
    for split, n in (("train", 6), ("val", 4)):
        for name, wnid in WNIDS.items():
            views = _variants(photos[name], 10)
            views = views[:6] if split == "train" else views[6:]
            for i, view in enumerate(views[:n]):
                _save(view, root / "imagenet" / split / wnid / f"{wnid}_{split}_{i}.JPEG")
    coco = root / "coco"
    images, annotations, karpathy = [], [], []
    for i, (name, (_, caption)) in enumerate(PHOTOS.items()):
        file = f"{i:012d}.jpg"
        _save(photos[name].convert("RGB"), coco / "val2017" / file)
        images.append({"id": i, "file_name": file})
        annotations += [
            {"id": 2 * i, "image_id": i, "caption": caption},
            {"id": 2 * i + 1, "image_id": i, "caption": f"a photo of {caption.split(' ', 1)[1]}"},
        ]
        folder = "val2014" if i % 3 else "train2014"
        shutil.copy(coco / "val2017" / file, _mkparent(coco / folder / f"COCO_{folder}_{file}"))
        karpathy.append(
            {
                "filepath": folder,
                "filename": f"COCO_{folder}_{file}",
                "split": "test" if i < 8 else "val",
                "sentences": [{"raw": a["caption"]} for a in annotations[-2:]],
            }
        )
    _mkparent(coco / "annotations" / "x")
    (coco / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )
    (coco / "dataset_coco.json").write_text(json.dumps({"images": karpathy}))
    return root


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
