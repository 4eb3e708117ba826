"""Answer questions about images with a saved OpenVision 3 LLaVA: ``load_vlm(path).generate``.

    vlm = load_vlm("runs/vlm", device="cpu")
    vlm.generate([Image.open("cat.jpg")], ["what is in the image?"])  # -> ["a cat ..."]

Images are padded to a square of the processor's mean colour (LLaVA-1.5's ``pad``), resized by
the processor to the tower's input size and scaled to [-1, 1]; the prompt is the model's
conversation template up to the assistant's cue; decoding is greedy.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from openvision3.understanding.assemble import TEMPLATE_KEY, pad_to_square
from openvision3.understanding.templates import get_template, pad_batch, prompt_ids


class VLM:
    """A LLaVA model with its processor and conversation template."""

    def __init__(self, model: LlavaForConditionalGeneration, processor, template: str):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = get_template(template)
        self.image_size = model.config.vision_config.image_size
        self.num_image_tokens = model.config.vision_config.num_image_tokens

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixel_values(self, images) -> torch.Tensor:
        """PIL images, or a (B, 3, H, W) tensor in [0, 1] -> (B, 3, R, R) in [-1, 1]."""
        if torch.is_tensor(images):
            x = images.float()
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"tensor images must be square, got {tuple(x.shape)}")
            if x.shape[-1] != self.image_size:
                x = torch.nn.functional.interpolate(
                    x, size=self.image_size, mode="bicubic", antialias=True
                ).clamp(0, 1)
            return x * 2 - 1
        squares = [pad_to_square(im) for im in images]
        return self.processor.image_processor(images=squares, return_tensors="pt")["pixel_values"]

    def prompts(self, questions: list[str]) -> dict[str, torch.Tensor]:
        rows = [
            (ids, ids)
            for ids in (
                prompt_ids(
                    self.tokenizer,
                    self.template,
                    q,
                    self.model.config.image_token_id,
                    self.num_image_tokens,
                )
                for q in questions
            )
        ]
        batch = pad_batch(rows, self.tokenizer.pad_token_id, left=True)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def generate(
        self, images, questions: list[str], max_new_tokens: int = 32, **generate_kwargs
    ) -> list[str]:
        """One greedy answer per (image, question) pair."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if not len(questions):
            return []
        dtype = self.model.model.multi_modal_projector.linear_1.weight.dtype
        pixels = self.pixel_values(images).to(self.device, dtype)
        batch = {k: v.to(self.device) for k, v in self.prompts(questions).items()}
        kwargs = dict(do_sample=False, num_beams=1) | generate_kwargs
        out = self.model.generate(
            **batch,
            pixel_values=pixels,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def load_vlm(
    path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> VLM:
    """A saved VLM folder (``ov3 vlm build``, a training export, the demo's) -> ``VLM``."""
    from openvision3.artefacts import VLM as VLM_KIND
    from openvision3.artefacts import require_kind

    require_kind(path, VLM_KIND)  # one line, before anything is built, for another kind
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    template = getattr(model.config, TEMPLATE_KEY, "vicuna_v1")
    return VLM(model.to(device), processor, template)


def open_image(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")
