"""A synthetic image-caption world: coloured shapes on a 3x3 grid, with alt text and long captions.

Offline, deterministic from ``(seed, split, index)`` and fast (PIL drawing on a small
supersampled canvas, no per-pixel Python). A scene is described in normalised coordinates,
so the same scene renders at any resolution. The label is the colour+shape of the largest
object (64 classes), which makes zero-shot classification on the val split meaningful.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 175, 60),
    "blue": (30, 75, 225),
    "yellow": (250, 215, 20),
    "purple": (145, 40, 180),
    "orange": (250, 130, 15),
    "white": (252, 252, 252),
    "black": (12, 12, 12),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "ring",
    "heart",
)
CLASS_NAMES: list[str] = [f"{c} {s}" for c in COLORS for s in SHAPES]
ZERO_SHOT_TEMPLATES: list[str] = [
    "a {}.",
    "an image with a {}.",
    "a picture of a large {}.",
    "a large {} on a background.",
]
# Muted mid-tone backgrounds: far from the saturated object colours and from white/black.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "beige": (185, 170, 140),
    "slate": (100, 112, 128),
    "sage": (135, 150, 120),
    "taupe": (150, 128, 112),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered", "noisy")
CELL_NAMES: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
SPLITS: dict[str, int] = {"train": 0, "val": 1}
# Object radii in normalised units (image side = 1, grid cell = 1/3). A large object of any
# shape covers more pixels than a small object of any shape (pinned by a test).
LARGE_RADIUS = (0.13, 0.155)
SMALL_RADIUS = (0.05, 0.07)
# P(1, 2, 3, 4 objects). Fewer objects more often: among single-object scenes of a batch the
# colours repeat, so telling the texts apart needs the shape (a colour-only "bag of colours"
# solves the contrastive task when most scenes hold 3-4 objects), and captions stay short.
OBJECT_COUNT_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
NOISE_GRID = 12  # value noise on a fixed 12x12 grid, so it looks the same at any resolution


@dataclass(frozen=True)
class SyntheticConfig:
    """Seed and split sizes of the synthetic world."""

    seed: int = 0  # the world: objects, colours, captions
    train_size: int = 100_000  # train images
    val_size: int = 1_000  # held-out images

    def __post_init__(self):
        if self.train_size < 1 or self.val_size < 1:
            raise ValueError(
                f"train_size and val_size must be >= 1, got {self.train_size}, {self.val_size}"
            )


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str  # "large" | "small"
    cell: int  # 0..8, row-major on the 3x3 grid
    cx: float  # centre, normalised [0, 1]
    cy: float
    radius: float  # normalised
    angle: float  # rotation in degrees (shapes only; the grid layout is not rotated)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # largest first
    background: str  # key of BACKGROUNDS
    texture: str  # one of TEXTURES
    texture_period: float  # normalised
    texture_angle: int  # stripes: 0, 45, 90 or 135 degrees
    noise_seed: int
    opener: int  # which caption phrasing


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``b`` lies relative to ``a`` on the grid, e.g. "above and to the left of it"."""
    dr, dc = b.cell // 3 - a.cell // 3, b.cell % 3 - a.cell % 3
    vert = "above" if dr < 0 else "below" if dr > 0 else ""
    horiz = "to the left of" if dc < 0 else "to the right of" if dc > 0 else ""
    if vert and horiz:
        return f"{vert} and {horiz} it"
    return f"{vert or horiz} it"


def alt_text(scene: Scene) -> str:
    """Short alt text: the main object, then the others with their size."""
    first, *rest = scene.objects
    return ", ".join([first.name] + [f"{o.size} {o.name}" for o in rest])


def long_caption(scene: Scene) -> str:
    """Long caption with sizes, colours, grid positions and spatial relations."""
    first, *rest = scene.objects
    openers = ("A", "This image shows a", "There is a")
    parts = [f"{openers[scene.opener]} {first.size} {first.name} in the {CELL_NAMES[first.cell]}"]
    for o in rest:
        parts.append(f"a {o.size} {o.name} {_relation(first, o)}")
    if len(parts) > 2:
        parts[-1] = "and " + parts[-1]
    return f"{', '.join(parts)}, on a {scene.texture} {scene.background} background."


def _polygon(shape: str, n_heart: int = 48) -> np.ndarray:
    """Unit-radius outline (V, 2) of a polygonal shape, y pointing down."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.78
    if shape in ("triangle", "hexagon"):
        k = 3 if shape == "triangle" else 6
        t = -math.pi / 2 + np.arange(k) * 2 * math.pi / k
        scale = 1.08 if shape == "triangle" else 1.0  # a triangle fills little of its circle
        return scale * np.stack([np.cos(t), np.sin(t)], 1) + ([0, 0.15] if k == 3 else [0, 0])
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a, w = 0.9, 0.32
        return np.array(
            [
                [-w, -a],
                [w, -a],
                [w, -w],
                [a, -w],
                [a, w],
                [w, w],
                [w, a],
                [-w, a],
                [-w, w],
                [-a, w],
                [-a, -w],
                [-w, -w],
            ]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, n_heart, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -(y + 2.5)], 1) / 16.0
    raise ValueError(f"not a polygon shape: {shape}")


_POLYGONS = {s: _polygon(s) for s in SHAPES if s not in ("circle", "ring")}


class SyntheticWorld:
    """Deterministic scenes, texts and renders; ``SyntheticWorld(seed).sample("train", 0, 64)``."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def _rng(self, split: str, index: int) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        # Separate seed streams per split: train and val never share a scene.
        return np.random.default_rng([self.seed, SPLITS[split], int(index)])

    def scene(self, split: str, index: int) -> Scene:
        """The scene description of sample ``index`` of ``split`` (normalised geometry)."""
        rng = self._rng(split, index)
        n = 1 + int(rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS))
        cells = rng.choice(9, size=n, replace=False)
        objects = []
        for i, cell in enumerate(cells):
            size = "large" if i == 0 else "small"
            lo, hi = LARGE_RADIUS if size == "large" else SMALL_RADIUS
            radius = float(rng.uniform(lo, hi))
            slack = 1 / 6 - radius  # stay inside the cell
            jx, jy = rng.uniform(-0.5, 0.5, size=2) * slack
            objects.append(
                SceneObject(
                    shape=SHAPES[int(rng.integers(len(SHAPES)))],
                    color=list(COLORS)[int(rng.integers(len(COLORS)))],
                    size=size,
                    cell=int(cell),
                    cx=float((cell % 3 + 0.5) / 3 + jx),
                    cy=float((cell // 3 + 0.5) / 3 + jy),
                    radius=radius,
                    angle=float(rng.uniform(-15, 15)),
                )
            )
        # Largest first; ties (equal radius) broken by grid cell, so the order is total.
        objects.sort(key=lambda o: (-o.radius, o.cell))
        return Scene(
            objects=tuple(objects),
            background=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
            texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
            texture_period=float(rng.uniform(1 / 14, 1 / 7)),
            texture_angle=int(rng.choice([0, 45, 90, 135])),
            noise_seed=int(rng.integers(2**31)),
            opener=int(rng.integers(3)),
        )

    @staticmethod
    def label(scene: Scene) -> int:
        """Class index (into CLASS_NAMES) of the largest object."""
        return CLASS_NAMES.index(scene.objects[0].name)

    def render(self, scene: Scene, resolution: int) -> np.ndarray:
        """Scene -> uint8 image (H, W, 3) with H = W = resolution (anti-aliased)."""
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {resolution}")
        ss = min(4, max(2, 256 // resolution))  # supersampling for anti-aliased edges
        size = resolution * ss
        canvas = _background(scene, size)
        draw = ImageDraw.Draw(canvas)
        for o in scene.objects:
            _draw_object(draw, o, size)
        return np.asarray(canvas.reduce(ss))

    def sample(self, split: str, index: int, resolution: int) -> dict:
        """One sample: image uint8 (H, W, 3), alt_text, caption, label, key."""
        scene = self.scene(split, index)
        return {
            "image": self.render(scene, resolution),
            "alt_text": alt_text(scene),
            "caption": long_caption(scene),
            "label": self.label(scene),
            "key": f"{split}-{index:08d}",
        }


def _palette(base: tuple[int, int, int]) -> bytes:
    ramp = np.linspace(-22.0, 22.0, 256)[:, None]
    return np.clip(np.rint(np.array(base)[None, :] + ramp), 0, 255).astype(np.uint8).tobytes()


_PALETTES = {name: _palette(rgb) for name, rgb in BACKGROUNDS.items()}


def _stripes(size: int, period: float, angle: int) -> np.ndarray:
    """uint8 (size, size) stripes of ``period`` (normalised) at 0, 45, 90 or 135 degrees."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    if angle in (0, 90):
        v = np.where(coords / period % 1.0 < 0.5, 255, 0).astype(np.uint8)
        out = np.broadcast_to(v[None, :] if angle == 0 else v[:, None], (size, size))
        return np.ascontiguousarray(out)
    # Diagonal: the level depends on i + j only; a strided view of one 1D pattern avoids
    # computing (size, size) floats. 135 degrees is the mirror image of 45.
    k = np.arange(2 * size - 1, dtype=np.float32)
    v = np.where((k + 1) / size * math.sqrt(0.5) / period % 1.0 < 0.5, 255, 0).astype(np.uint8)
    out = np.lib.stride_tricks.as_strided(v, shape=(size, size), strides=(1, 1))
    return np.ascontiguousarray(out if angle == 45 else out[:, ::-1])


def _background(scene: Scene, size: int) -> Image.Image:
    """Background RGB (size, size): plain, stripes, checker or value noise in muted tones."""
    p = scene.texture_period
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = coords[:, None], coords[None, :]
    if scene.texture == "plain":
        level = Image.new("L", (size, size), 128)
    elif scene.texture == "striped":
        level = Image.fromarray(_stripes(size, p, scene.texture_angle))
    elif scene.texture == "checkered":
        odd = (np.floor(x / p).astype(np.int32) + np.floor(y / p).astype(np.int32)) % 2
        level = Image.fromarray((odd * 255).astype(np.uint8))
    else:
        grid = np.random.default_rng(scene.noise_seed).integers(0, 256, (NOISE_GRID, NOISE_GRID))
        level = Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.NEAREST)
    # level 0..255 -> base colour -/+ 22 per channel, through a palette (fast, in C).
    level.putpalette(_PALETTES[scene.background])
    return level.convert("RGB")


def _draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, size: int) -> None:
    color = COLORS[o.color]
    cx, cy, r = o.cx * size, o.cy * size, o.radius * size
    if o.shape in ("circle", "ring"):
        box = [cx - r, cy - r, cx + r, cy + r]
        if o.shape == "circle":
            draw.ellipse(box, fill=color)
        else:
            draw.ellipse(box, outline=color, width=max(1, round(0.42 * r)))
        return
    t = math.radians(o.angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    pts = _POLYGONS[o.shape] @ rot.T * r + [cx, cy]
    draw.polygon([tuple(p) for p in pts.tolist()], fill=color)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_shards(
    world_or_dataset,
    split: str,
    out_dir: str | os.PathLike,
    resolution: int,
    samples_per_shard: int,
    count: int,
) -> list[str]:
    """Write ``count`` samples of ``split`` as webdataset tars ``{out_dir}/{split}-000000.tar``...

    ``world_or_dataset`` is anything with ``sample(split, index, resolution) -> dict``
    (a ``SyntheticWorld``). Each sample becomes ``{key}.png``, ``{key}.txt`` (alt text) and
    ``{key}.json`` ({"alt_text", "caption", "label"}). Returns the shard paths in order.
    """
    import webdataset as wds

    if samples_per_shard < 1 or count < 0:
        raise ValueError(
            f"need samples_per_shard >= 1 and count >= 0, got {samples_per_shard}, {count}"
        )
    os.makedirs(out_dir, exist_ok=True)
    pattern = os.path.join(os.fspath(out_dir), f"{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0) as sink:
        for i in range(count):
            s = world_or_dataset.sample(split, i, resolution)
            meta = {"alt_text": s["alt_text"], "caption": s["caption"], "label": s["label"]}
            sink.write(
                {
                    "__key__": s["key"],
                    "png": encode_png(s["image"]),
                    "txt": s["alt_text"],
                    "json": meta,
                }
            )
    n_shards = math.ceil(count / samples_per_shard)
    return [pattern % i for i in range(n_shards)]
