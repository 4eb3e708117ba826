"""The friendly front door: ``openvision3.load(path)`` -> the facade of what ``path`` holds.

    import openvision3
    model = openvision3.load("path-or-hub-id", device="cuda")   # a tokenizer: Pipeline
    tokens = model.encode("cat.jpg")              # (1, N, D) unified tokens
    images = model.decode(tokens)                 # (1, 3, H, W) in [-1, 1]
    probs = model.zero_shot("cat.jpg", ["cat", "dog"])   # (1, 2)
    openvision3.to_pil(images)[0].save("cat-reconstructed.png")

``load`` reads the kind a folder records (``artefacts.folder_kind``) and hands it to that kind's
loader (``artefacts.LOADERS``): our tokenizer export, a released encoder or a hub id ->
``Pipeline`` (``load_pipeline``); a generator export -> ``Generator`` (``load_generator``); a
LLaVA folder -> ``VLM`` (``load_vlm``); the diffusers folders of a tokenizer and a generator
(``ov3 export --format diffusers``) -> ``Pipeline`` and ``Generator``. Every facade that takes images takes them as ``inputs.py`` does, and
every image one returns is a float tensor in [-1, 1] (``openvision3.to_pil`` for PIL images).

A ``Pipeline`` holds the model, its device, the preprocessing (the training transform) and the
fast path: bf16 autocast on GPU, channels_last for the VAE, optional ``torch.compile`` of the
VAE encoder and of the ViT. Every method takes one image or a batch of PIL images, paths, bytes,
uint8 arrays / tensors or float tensors in [-1, 1], of any size (see ``inputs.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from openvision3.artefacts import DIFFUSERS_AUTOENCODER, DIFFUSERS_PIPELINE, GENERATOR, TOKENIZER
from openvision3.artefacts import VLM as VLM_KIND
from openvision3.data.transforms import RESIZE_POLICIES, ImageTransformConfig, to_pil
from openvision3.inference.inputs import to_batch
from openvision3.models.openvision3 import OpenVision3


@dataclass
class PipelineConfig:
    """Preprocessing and speed settings of a ``Pipeline``.

    resolution: square input side in pixels; None = the encoder's position grid x pixel patch
        (256 for the released B/2 checkpoints; ``load`` passes the resolution an export was
        last trained at instead). Must be a multiple of the pixel patch.
    resize: "center_crop" | "resize" | "pad" (as in training, ``data/transforms.py``).
    autocast: bf16 autocast; None = on for CUDA, off elsewhere.
    channels_last: VAE convolutions in channels_last (CUDA only).
    compile: ``torch.compile`` the VAE encoder and the ViT encoder (in place).
    """

    resolution: int | None = None
    resize: str = "center_crop"
    autocast: bool | None = None
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be positive, got {self.resolution}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Pipeline:
    """An ``OpenVision3`` model plus preprocessing and the fast inference path.

    Shapes: tokens (B, N, D) with N = (R/16)^2 for the FLUX VAE and patch 2; images out
    (B, 3, R, R) in [-1, 1]; embeddings (B, E).
    """

    def __init__(self, model: OpenVision3, cfg: PipelineConfig | None = None):
        self.model = model.eval()
        self.cfg = cfg or PipelineConfig()
        patch = model.cfg.pixel_patch
        res = self.cfg.resolution or model.cfg.encoder.pos_grid[0] * patch
        if res % patch:
            raise ValueError(f"resolution {res} must be a multiple of the pixel patch {patch}")
        self.transform_cfg = ImageTransformConfig(resolution=res, resize=self.cfg.resize)
        self.device = next(model.parameters()).device
        self.dtype = next(model.encoder.parameters()).dtype
        cuda = self.device.type == "cuda"
        self.use_autocast = cuda if self.cfg.autocast is None else self.cfg.autocast
        if model.vae is not None and self.cfg.channels_last and cuda:
            model.vae.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            if model.vae is not None:
                model.vae.vae.encoder.compile()
            model.encoder.compile()

    @property
    def resolution(self) -> int:
        return self.transform_cfg.resolution

    def __repr__(self) -> str:
        return (
            f"Pipeline({self.model.cfg.name or 'OpenVision3'}, device={self.device}, "
            f"resolution={self.resolution}, autocast={self.use_autocast})"
        )

    # ------------------------------------------------------------------ plumbing
    def autocast(self):
        """bf16 autocast on the model's device when enabled, else a no-op context."""
        if not self.use_autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def preprocess(self, images) -> torch.Tensor:
        """Images (see ``inputs.py``) -> (B, 3, R, R) in [-1, 1] on the model's device."""
        x = to_batch(images, self.transform_cfg).to(self.device, self.dtype, non_blocking=True)
        if self.device.type == "cuda" and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _images(self, images) -> torch.Tensor:
        # Preprocessed batches on the device (e.g. from the commands' loaders) skip the transform.
        if (
            isinstance(images, torch.Tensor)
            and images.ndim == 4
            and images.is_floating_point()
            and tuple(images.shape[1:]) == (3, self.resolution, self.resolution)
        ):
            x = images.to(self.device, self.dtype)
            if self.device.type == "cuda" and self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x
        return self.preprocess(images)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images -> unified tokens (B, N, D), float32."""
        with self.autocast():
            return self.model.encode(self._images(images)).float()

    @torch.no_grad()
    def encode_with_pooled(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (tokens (B, N, D), pooled un-normalised embeddings (B, E)), one forward."""
        with self.autocast():
            tokens = self.model.encode(self._images(images))
            pooled = self.model.encoder.pool(tokens)
        return tokens.float(), pooled.float()

    @torch.no_grad()
    def encode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (B, C, h, w) -> tokens (B, N, D), float32."""
        with self.autocast():
            return self.model.encode_latents(latents.to(self.device, self.dtype)).float()

    def token_grid(self) -> tuple[int, int]:
        """(h, w) of the token grid at this pipeline's resolution."""
        side = self.resolution // self.model.cfg.pixel_patch
        return side, side

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) row-major tokens -> (B, D, h, w), the layout of diffusion trainers."""
        h, w = self.model.token_grid(tokens, None)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    @torch.no_grad()
    def embed_image(self, images, normalize: bool = True) -> torch.Tensor:
        """Images -> (B, E) embeddings, L2-normalised by default (contrastive space)."""
        with self.autocast():
            return self.model.embed_image(self._images(images), normalize=normalize).float()

    @torch.no_grad()
    def embed_text(self, texts: str | Sequence[str], normalize: bool = True) -> torch.Tensor:
        """One text or a list -> (B, E) embeddings, L2-normalised by default."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = self.tokenizer()(texts).to(self.device)
        with self.autocast():
            return self.model.embed_text(ids, normalize=normalize).float()

    def tokenizer(self):
        """The CLIP BPE tokenizer at the text tower's context length."""
        from openvision3.tokenizer import Tokenizer

        text = self.model.cfg.text
        return Tokenizer(text.context_length if text is not None else 80)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Tokens (B, N, D) -> images (B, 3, H, W) in [-1, 1] (clamped), float32."""
        with self.autocast():
            images = self.model.decode(tokens.to(self.device, self.dtype), grid)
        return images.float().clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, images) -> torch.Tensor:
        """Images -> reconstructions (B, 3, R, R) in [-1, 1] (clamped), float32."""
        with self.autocast():
            out = self.model.reconstruct(self._images(images))
        return out.float().clamp(-1, 1)

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        """(B, 3, H, W) in [-1, 1] -> B RGB PIL images (``data.transforms.to_pil``)."""
        return to_pil(images)

    # ------------------------------------------------------------------ understanding
    @torch.no_grad()
    def caption(self, images, max_len: int | None = None, beam_size: int = 1) -> list[str]:
        """Images -> B captions (greedy, or beam search when ``beam_size`` > 1)."""
        with self.autocast():
            return self.model.caption(self._images(images), max_len=max_len, beam_size=beam_size)

    @torch.no_grad()
    def class_weights(
        self, labels: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
    ) -> torch.Tensor:
        """K label names -> (K, E) unit-norm zero-shot weights (mean over prompt templates)."""
        from openvision3.evaluation.zero_shot import build_classifier

        with self.autocast():
            return build_classifier(self.model, self.tokenizer(), list(labels), list(templates))

    @torch.no_grad()
    def zero_shot(
        self,
        images,
        labels: Sequence[str] | torch.Tensor,
        templates: Sequence[str] = ("a photo of a {}.",),
    ) -> torch.Tensor:
        """Images and K label names (or precomputed (K, E) weights) -> probabilities (B, K).

        CLIP recipe: softmax over ``logit_scale * cosine(image, class weight)``.
        """
        weights = (
            labels if isinstance(labels, torch.Tensor) else self.class_weights(labels, templates)
        )
        image = self.embed_image(images, normalize=True)  # (B, E)
        scale = self.model.logit_scale.exp().float() if self.model.text is not None else 100.0
        return (scale * image @ weights.to(image).t()).softmax(dim=-1)

    # ------------------------------------------------------------------ speed
    def autotune_batch_size(self, start: int = 8, limit: int = 1024) -> int:
        """Largest power of two <= ``limit`` whose encode fits in GPU memory (CUDA only;
        returns ``start`` elsewhere). Leaves a quarter of the found size as headroom."""
        if self.device.type != "cuda":
            return start
        best, size = 0, start
        while size <= limit:
            try:
                self.encode(torch.zeros(size, 3, self.resolution, self.resolution))
                torch.cuda.synchronize(self.device)
                best, size = size, size * 2
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
        if best == 0:
            raise RuntimeError(f"a batch of {start} images does not fit in GPU memory")
        return max(1, best * 3 // 4) if best < limit else best


def load_pipeline(
    name_or_path: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    vae="auto",
    resolution: int | None = None,
    resize: str = "center_crop",
    autocast: bool | None = None,
    compile: bool = False,
) -> Pipeline:
    """Load a tokenizer for inference: our export, a Hugging Face repo id (offline-safe through
    the hub cache) or a released OpenVision 3 encoder -> ``Pipeline``.

    ``device``: None = CUDA when available; ``dtype``: weights dtype (None = float32; the fast
    path is bf16 autocast, which keeps fp32 weights); ``vae``: see ``load_pretrained``;
    ``resolution``: None = the one the export was last trained at (its ``config.json``), else
    (released encoders, exports written before it was recorded) the encoder's position grid.
    """
    from openvision3.pretrained import load_pretrained, resolve, trained_resolution

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    local = resolve(name_or_path)
    model = load_pretrained(local, vae=vae, device=device or default_device(), dtype=dtype)
    if resolution is None:
        resolution = trained_resolution(local)
    cfg = PipelineConfig(resolution=resolution, resize=resize, autocast=autocast, compile=compile)
    return Pipeline(model, cfg)


# The options each kind's loader (``artefacts.LOADERS``) takes besides the path and the
# device, for a one-line refusal of any other.
_PIPELINE_OPTIONS = ("dtype", "vae", "resolution", "resize", "autocast", "compile")
OPTIONS = {
    TOKENIZER: _PIPELINE_OPTIONS,
    "released": _PIPELINE_OPTIONS,
    GENERATOR: ("decoder", "guide"),
    VLM_KIND: ("dtype",),
    DIFFUSERS_AUTOENCODER: ("resolution", "resize", "autocast", "compile"),
    DIFFUSERS_PIPELINE: (),
}


def load(name_or_path: str, device: str | torch.device | None = None, **kw):
    """Load what ``name_or_path`` holds, by the kind its folder records:
      - our tokenizer export, a released encoder, or a Hugging Face repo id -> ``Pipeline``
        (options: ``dtype``, ``vae``, ``resolution``, ``resize``, ``autocast``, ``compile``;
        see ``load_pipeline``);
      - a generator export (``GenerationTask.export``, ``run/final``) -> ``Generator``
        (options: ``decoder``, ``guide``; see ``generation.load_generator``);
      - a LLaVA folder (``ov3 vlm build``, the LLaVA task's export) -> ``VLM`` (option
        ``dtype``; see ``understanding.load_vlm``);
      - a diffusers folder of ours (``ov3 export --format diffusers``): a pipeline ->
        ``Generator``, an autoencoder -> ``Pipeline`` (options: ``resolution``, ``resize``,
        ``autocast``, ``compile``).
    ``device``: None = CUDA when available. A local folder of no model kind, or an option its
    loader does not take, is refused in one line (``ConfigError`` / ``MissingWeightsError``).
    """
    import os

    from openvision3.artefacts import folder_kind, loader, refuse
    from openvision3.errors import ConfigError

    if not os.path.isdir(name_or_path):
        kind = None  # a hub id, or a missing path: resolve() says which
        name, what = TOKENIZER, "a tokenizer"
    else:
        kind = folder_kind(name_or_path)
        if kind.name not in OPTIONS:  # one line: what the folder is, and what takes it
            refuse(name_or_path, kind, "a model export (tokenizer, generator or VLM)")
        name, what = kind.name, kind.what
    unknown = sorted(set(kw) - set(OPTIONS[name]))
    if unknown:
        takes = ", ".join(OPTIONS[name]) or "no options"
        raise ConfigError(
            f"{name_or_path!r} is {what}; its loader takes {takes}, not {', '.join(unknown)}"
        )
    return loader(name)(name_or_path, device=device or default_device(), **kw)
