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
from openvision3.understanding.templates import IMAGE, prompt_text

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
        """log p(continuation | image, context) summed over the continuation's tokens, and
        whether greedy decoding would produce exactly those tokens.

        The continuation is what lmms-eval means (``lmms_eval/api/task.py``,
        ``construct_requests``): a ``multiple_choice`` task passes a string that already carries
        the target delimiter (``" yes"``); a ``loglikelihood`` task passes its ``doc_to_target``,
        whose target has none, so lmms-eval's default delimiter " " goes before it. The prompt
        (the chat template up to the assistant's cue) and the prompt + continuation are each
        tokenised by the processor in one call; the continuation's tokens are those past the
        prompt's (lmms-eval's ``context_enc`` / ``continuation_enc`` split)."""
        out = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            cont = " " + str(target(doc)) if callable(target) else str(target)
            score, greedy = self.continuation_logprob(doc_to_visual(doc), context, cont)
            out.append((score, greedy))
        return out

    def continuation_logprob(self, visuals, context: str, continuation: str) -> tuple[float, bool]:
        """(sum of the continuation tokens' log-probabilities, all of them greedy)."""
        vlm = self.vlm
        image = _first_image(visuals)
        if image is None:
            raise ValueError("the openvision3 model answers questions about one image")
        prompt = prompt_text(vlm.processor, context)
        full = vlm.processor(
            text=[prompt + continuation], images=[image.convert("RGB")], return_tensors="pt"
        )
        n_prompt = len(vlm.processor(text=[prompt], images=[image.convert("RGB")])["input_ids"][0])
        ids = full["input_ids"].to(vlm.device)  # (1, L)
        pixels = full["pixel_values"].to(vlm.device, vlm.dtype)
        logits = vlm.model(input_ids=ids, pixel_values=pixels).logits[0, n_prompt - 1 : -1]
        logp = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
        target = ids[0, n_prompt:]
        score = logp.gather(-1, target[:, None]).sum().item()
        return score, bool((logp.argmax(-1) == target).all())
