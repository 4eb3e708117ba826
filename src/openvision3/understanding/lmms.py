"""lmms-eval model ``openvision3``: an OpenVision 3 LLaVA checkpoint in lmms-eval 0.7.3.

    lmms-eval --model openvision3 --model_args pretrained=runs/vlm --tasks mme,pope

lmms-eval finds it through the ``lmms_eval.models`` entry point of this package (``manifests``
below; lmms-eval's ``models/registry_v2.py`` reads that group), so the built-in ``llava_hf``
model, which does not import ``openvision3.understanding`` and so cannot read the tower, is not
needed. Requests follow lmms-eval's simple-model protocol (``lmms_eval/api/instance.py``):
``generate_until`` (context, generation kwargs, doc_to_visual, doc_id, task, split),
``loglikelihood`` (context, doc_to_target, doc_to_visual, doc_id, task, split) and
``generate_until_multi_round`` (``generate_until``'s arguments with ``doc_to_text`` before
doc_id, which returns each later round's visuals and context).
"""

from __future__ import annotations

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from openvision3.understanding.inference import load_vlm
from openvision3.understanding.templates import IMAGE

MODEL_ID = "openvision3"


def manifests() -> list[ModelManifest]:
    """The ``lmms_eval.models`` entry point's payload."""
    return [
        ModelManifest(
            model_id=MODEL_ID, simple_class_path="openvision3.understanding.lmms.OV3Llava"
        )
    ]


def _first_image(visuals):
    """One image per request (LLaVA-1.5 has one image slot); None for text-only docs."""
    if visuals is None:
        return None
    if isinstance(visuals, (list, tuple)):
        return visuals[0] if visuals else None
    return visuals


class OV3Llava(lmms):
    """A saved OpenVision 3 LLaVA (``pretrained``: a folder of ``ov3 vlm build`` or a training
    export); greedy decoding unless the task asks for sampling; one process."""

    is_simple = True

    def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 1, **kwargs):
        super().__init__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.vlm = load_vlm(pretrained, device=device)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1

    def _answer(self, visuals, context: str, gen_kwargs: dict) -> str:
        image = _first_image(visuals)
        if image is None:
            raise ValueError("the openvision3 model answers questions about one image")
        question = context.replace(IMAGE, "").strip()
        kwargs = {}
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
            kwargs = {"do_sample": True, "temperature": float(gen_kwargs.get("temperature") or 1.0)}
            if gen_kwargs.get("top_p") is not None:
                kwargs["top_p"] = float(gen_kwargs["top_p"])
        max_new = int(gen_kwargs.get("max_new_tokens") or 32)
        text = self.vlm.generate([image.convert("RGB")], [question], max_new, **kwargs)[0]
        until = gen_kwargs.get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        return text

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            out.append(self._answer(visuals, context, dict(gen_kwargs or {})))
        return out

    def generate_until_multi_round(self, requests) -> list:
        out = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            visuals, rounds, info, index = doc_to_visual(doc), [], None, 0
            while True:
                if index:
                    visuals, context, terminal, rounds_back, info = doc_to_text(
                        doc, previous_output=rounds, round_idx=index, previous_round_info=info
                    )
                    if terminal:
                        rounds = list(rounds_back)
                        break
                rounds.append(self._answer(visuals, context, dict(gen_kwargs or {})))
                index += 1
            out.append(tuple(rounds))
        return out

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """log p(target | image, context) summed over the target's tokens, and whether greedy
        decoding would produce exactly those tokens."""
        vlm, out = self.vlm, []
        tok = vlm.tokenizer
        for req in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            target = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            image = _first_image(doc_to_visual(doc))
            prompt = vlm.prompts([context.replace(IMAGE, "").strip()])["input_ids"][0].tolist()
            cont = tok(" " + str(target), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + cont], device=vlm.device)
            pixels = vlm.pixel_values([image.convert("RGB")]).to(vlm.device)
            logits = vlm.model(input_ids=ids, pixel_values=pixels).logits[0, len(prompt) - 1 : -1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            target_ids = torch.tensor(cont, device=vlm.device)
            score = logp.gather(-1, target_ids[:, None]).sum().item()
            out.append((score, bool((logp.argmax(-1) == target_ids).all())))
        return out
