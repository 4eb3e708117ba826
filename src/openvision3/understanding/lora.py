"""LoRA on the language model of a LLaVA, through peft (LLaVA's ``scripts/v1_5/finetune_lora.sh``:
r 128, alpha 256, dropout 0.05 on every Linear of the LM, LR 2e-4, projector LR 2e-5).

Adapters go into the language model's Linear layers in place (``peft.inject_adapter_in_model``),
so parameter names stay the model's own plus ``lora_A`` / ``lora_B`` / ``base_layer``: the
engine's freezing, FSDP2 wrapping and checkpoints see an ordinary module. The LM's own weights
freeze; the projector still trains. An export merges the adapters into the LM's weights
(``merged``), so the saved VLM is a plain ``LlavaForConditionalGeneration`` checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from openvision3.errors import require


@dataclass
class LoraSettings:
    """`r` 0 = no LoRA (the default: LLaVA-1.5's reported numbers train the whole LM);
    `alpha`, `dropout`: peft's `lora_alpha` and `lora_dropout`."""

    r: int = 0  # LoRA rank on the LM; 0 = train the whole LM
    alpha: float = 256.0  # peft's lora_alpha
    dropout: float = 0.05  # peft's lora_dropout

    def __post_init__(self):
        if self.r < 0 or not self.alpha > 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"lora: need r >= 0, alpha > 0, dropout in [0, 1); got {self.r}, "
                f"{self.alpha}, {self.dropout}"
            )


def linear_names(module: nn.Module) -> list[str]:
    """The distinct leaf names of ``module``'s Linear layers (``q_proj``, ..., ``down_proj``),
    as LLaVA's ``find_all_linear_names`` gives them for the language model."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)})  # fmt: skip


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Adapters on every Linear of ``model.model.language_model`` (a LLaVA); the LM's own
    weights (embeddings, norms, Linears) freeze, the rest of ``model`` keeps its flags."""
    require("peft", "understanding", "LoRA (--lora.r)")
    from peft import LoraConfig, inject_adapter_in_model

    lm = model.model.language_model
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=linear_names(lm),
        bias="none",
    )
    inject_adapter_in_model(config, lm)
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def merged(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA adapter merged into its base Linear and the peft
    wrappers replaced by those Linears (``model`` itself is unchanged); ``model`` without
    adapters is returned as it is."""
    if not any("lora_" in name for name, _ in model.named_parameters()):
        return model
    from peft.tuners.lora import LoraLayer

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent), leaf, module.get_base_layer())
    return out
