"""What each tab of ``ov3 serve`` computes, on PIL images; no Gradio here.

Shapes: one image at a time, tokens (1, N, D); decoded batches (B, 3, R, R) in [-1, 1] become
PIL images of R x R pixels. ``Handlers`` holds the inference ``Pipeline``, the gallery and the
optional generator and VLM (``parts.py``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from openvision3.data.transforms import to_pil
from openvision3.inference.api import Pipeline
from openvision3.web.gallery import Gallery
from openvision3.web.options import (
    MAX_INTERPOLATION_STEPS,
    MAX_LABELS,
    NEIGHBOURS,
    NOISE_LEVELS,
)
from openvision3.web.parts import Part


@contextlib.contextmanager
def decoder_noise(decoder: torch.nn.Module, sigmas: torch.Tensor, generator: torch.Generator):
    """Decode with fixed noise levels: sample b of the batch gets ``sigmas[b] * eps`` added to
    its layer-normed tokens, as in training (where sigma ~ U[0, tau]).

    The noise enters at the decoder's input projection, whose input is the layer-normed tokens
    (grouped p x p when the decoder patch p > 1: a permutation, so i.i.d. noise is the same).
    """

    def add(module, args):
        (x,) = args  # (B, N', p*p*D)
        eps = torch.randn(x.shape, generator=generator, device="cpu").to(x)
        return (x + sigmas.to(x).view(-1, 1, 1) * eps,)

    handle = decoder.in_proj.register_forward_pre_hook(add)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Reconstruction:
    """Tab 1's outputs: the input as the model sees it (R x R), its clean reconstruction,
    PSNR (dB) and SSIM between the two, and (sigma, image) at each decoder noise level."""

    input: Image.Image
    reconstruction: Image.Image
    psnr: float
    ssim: float
    noisy: list[tuple[float, Image.Image]] = field(default_factory=list)


@dataclass
class Understanding:
    """Tab 2's outputs: the caption, label -> probability (sums to 1), and the nearest
    gallery images as (image, caption, cosine similarity), nearest first. ``cut_at``: the
    caption's length in tokens when it stopped at the length limit without the end token, else None."""

    caption: str
    probs: dict[str, float]
    neighbours: list[tuple[Image.Image, str, float]]
    cut_at: int | None = None


class Handlers:
    """The computations behind the tabs; every method takes and returns plain Python/PIL."""

    def __init__(
        self,
        pipeline: Pipeline,
        gallery: Gallery,
        templates: Sequence[str] = ("a photo of a {}.",),
        generator: Part | None = None,
        vlm: Part | None = None,
    ):
        self.pipe = pipeline
        self.gallery = gallery
        self.templates = list(templates)
        self.generator = generator or Part.absent("generator")
        self.vlm = vlm or Part.absent("vlm")
        self._gallery_embeddings: torch.Tensor | None = None  # (G, E), unit norm
        # One model call at a time: the noise hook of ``reconstruct`` must not reach another
        # request's decode (Gradio's queue already serialises requests; ``warm_up`` does not).
        self.lock = threading.RLock()

    def warm_up(self) -> None:
        """Load what the first request would otherwise wait for: the BPE tokenizer (it
        imports open_clip) and the gallery's embeddings."""
        from openvision3.tokenizer import Tokenizer

        with self.lock:
            Tokenizer()("warm up")
            self.gallery_embeddings()

    # ------------------------------------------------------------------ tab 1
    @torch.no_grad()
    def reconstruct(
        self, image: Image.Image, sigmas: Sequence[float] = NOISE_LEVELS, seed: int = 0
    ) -> Reconstruction:
        """Image -> ``Reconstruction``; the noisy decodes use a seeded generator."""
        from openvision3.errors import require

        require("torchmetrics", "web", "SSIM in the Reconstruct tab")
        from openvision3.evaluation.reconstruction import psnr_uint8, ssim

        pipe = self.pipe
        levels = [0.0, *(float(s) for s in sigmas if s > 0)]
        gen = torch.Generator().manual_seed(seed)
        with self.lock:
            x = pipe.preprocess(image)  # (1, 3, R, R)
            tokens = pipe.encode(x)  # (1, N, D)
            batch = tokens.expand(len(levels), -1, -1)  # (S, N, D)
            with decoder_noise(pipe.model.decoder, torch.tensor(levels), gen):
                decoded = pipe.decode(batch, pipe.token_grid())  # (S, 3, R, R)
        x, decoded = x.float().cpu(), decoded.cpu()
        pil = to_pil(decoded)
        return Reconstruction(
            input=to_pil(x)[0],
            reconstruction=pil[0],
            psnr=float(psnr_uint8(x, decoded[:1])[0]),
            ssim=float(ssim(x, decoded[:1])[0]),
            noisy=[(s, im) for s, im in zip(levels, pil) if s in sigmas],
        )

    # ------------------------------------------------------------------ tab 2
    @torch.no_grad()
    def understand(self, image: Image.Image, labels: Sequence[str], beam_size: int = 1):
        """Image, K labels -> ``Understanding`` (caption, K probabilities, neighbours)."""
        if not labels:
            raise ValueError("type at least one label, e.g. 'red circle, blue square'")
        if len(labels) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
        from openvision3.tokenizer import EOT_ID, Tokenizer

        pipe = self.pipe
        with self.lock:
            x = pipe.preprocess(image)
            with pipe.autocast():
                ids = pipe.model.caption_ids(x, beam_size=beam_size)[0]  # (T,): SOT ... EOT PAD
            probs = pipe.zero_shot(x, pipe.class_weights(labels, self.templates))[0]  # (K,)
            query = pipe.embed_image(x)[0].cpu()  # (E,)
            sims = self.gallery_embeddings() @ query  # (G,)
        top = sims.topk(min(NEIGHBOURS, len(sims)))
        neighbours = [
            (self.gallery.images[i], self.gallery.captions[i], float(v))
            for v, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        # A caption ends at its end token; one without it stopped at the decoder's length limit.
        cut_at = None if bool((ids == EOT_ID).any()) else len(ids)
        caption = Tokenizer().decode(ids)
        return Understanding(caption, dict(zip(labels, probs.tolist())), neighbours, cut_at)

    def gallery_embeddings(self) -> torch.Tensor:
        """(G, E) unit-norm embeddings of the gallery, computed once."""
        with self.lock:
            if self._gallery_embeddings is None:
                self._gallery_embeddings = self.pipe.embed_image(self.gallery.images).cpu()
            return self._gallery_embeddings

    # ------------------------------------------------------------------ tab 3
    @torch.no_grad()
    def interpolate(self, a: Image.Image, b: Image.Image, steps: int = 7) -> list[Image.Image]:
        """Two images -> ``steps`` decoded images at tokens (1 - t) a + t b, t = 0 .. 1."""
        if not 2 <= steps <= MAX_INTERPOLATION_STEPS:
            raise ValueError(f"steps must be in [2, {MAX_INTERPOLATION_STEPS}], got {steps}")
        pipe = self.pipe
        with self.lock:
            tokens = pipe.encode(pipe.preprocess([a, b]))  # (2, N, D)
            t = torch.linspace(0, 1, steps, device=tokens.device).view(-1, 1, 1)  # (S, 1, 1)
            path = (1 - t) * tokens[:1] + t * tokens[1:]  # (S, N, D)
            decoded = pipe.decode(path, pipe.token_grid())  # (S, 3, R, R)
        return to_pil(decoded)

    # ------------------------------------------------------------------ tab 4
    def generate(
        self,
        label: str,
        num: int = 4,
        cfg_scale: float = 4.0,
        steps: int = 25,
        sampler: str = "euler",
        seed: int = 0,
    ) -> list[Image.Image]:
        """Class name -> ``num`` samples from the generator (its ``sample`` API)."""
        gen = self.generator.require()
        if label not in gen.class_names:
            raise ValueError(f"unknown class {label!r}; pick one of the list")
        index = gen.class_names.index(label)  # the API takes class indices
        with self.lock:
            images = gen.sample(
                [index] * num, cfg_scale=cfg_scale, steps=steps, sampler=sampler, seed=seed
            )  # (B, 3, H, W) in [-1, 1]
        return to_pil(images)

    # ------------------------------------------------------------------ tab 5
    def ask(self, image: Image.Image, question: str, max_new_tokens: int = 32) -> str:
        """Image and a question -> the VLM's answer."""
        question = question.strip()
        if not question:
            raise ValueError("type a question about the image")
        vlm = self.vlm.require()
        with self.lock:
            return vlm.generate([image], [question], max_new_tokens=max_new_tokens)[0]
