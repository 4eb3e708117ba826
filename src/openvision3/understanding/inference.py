"""Answer questions about images with a saved OpenVision 3 LLaVA: ``load_vlm(path).generate``.

    vlm = load_vlm("runs/vlm", device="cpu")   # or openvision3.load("runs/vlm")
    vlm.generate(["cat.jpg"], ["what is in the image?"])  # -> ["a cat ..."]

Images are taken as everywhere in this package (``inference/inputs.py``): paths, PIL images,
bytes, uint8 arrays / tensors, float tensors (3, H, W) in [-1, 1], or a batch of them.

The processor saved in the folder defines the inputs, exactly as transformers'
``AutoProcessor`` / ``pipeline("image-text-to-text")`` read them: its chat template (the one the
model was trained with) up to the assistant's cue, tokenised in one call with ``<image>``
expanded to the tower's tokens, and its image processor (padded to a square of the mean colour,
LLaVA-1.5's ``pad``, resized to the tower's input, scaled to [-1, 1]). Decoding is greedy.
"""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration

from openvision3.inference.inputs import as_list, to_pil_images
from openvision3.understanding.assemble import TEMPLATE_KEY, load_processor
from openvision3.understanding.templates import prompt_inputs, template_name


class VLM:
    """A LLaVA model with its processor (which carries the conversation template)."""

    def __init__(self, model: LlavaForConditionalGeneration, processor):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # The template's name where it is one of ours (None for a foreign chat template).
        self.template = template_name(processor.chat_template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.multi_modal_projector.linear_1.weight.dtype

    def pixel_values(self, images) -> torch.Tensor:
        """Images (``inputs.py``: paths, PIL, bytes, arrays, tensors in [-1, 1]; one or a
        batch) -> (B, 3, R, R) in [-1, 1], as the processor prepares them."""
        pil = to_pil_images(images)
        return self.processor.image_processor(pil, return_tensors="pt")["pixel_values"]

    def inputs(self, images, questions: list[str]) -> dict[str, torch.Tensor]:
        """The processor's ``input_ids``, ``attention_mask`` (left-padded) and
        ``pixel_values`` of (image, question) pairs, on the model's device."""
        batch = prompt_inputs(self.processor, questions, to_pil_images(images))
        batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def generate(
        self, images, questions: list[str], max_new_tokens: int = 32, **generate_kwargs
    ) -> list[str]:
        """One greedy answer per (image, question) pair; ``images``: a batch as ``inputs.py``
        takes it (a list, or a (B, 3, H, W) tensor in [-1, 1] / uint8)."""
        images = as_list(images)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if not len(questions):
            return []
        batch = self.inputs(images, questions)
        kwargs = dict(do_sample=False, num_beams=1) | generate_kwargs
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def load_vlm(
    path: str, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> VLM:
    """A saved VLM folder (``ov3 vlm build``, a training export, the demo's) -> ``VLM``."""
    from openvision3.artefacts import VLM as VLM_KIND
    from openvision3.artefacts import require_kind

    require_kind(path, VLM_KIND)  # one line, before anything is built, for another kind
    if isinstance(dtype, str):  # "bfloat16"
        dtype = getattr(torch, dtype)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
    processor = load_processor(path, getattr(model.config, TEMPLATE_KEY, "vicuna_v1"))
    return VLM(model.to(device), processor)
