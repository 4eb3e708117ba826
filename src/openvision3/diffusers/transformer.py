"""``DiTDHTransformer2DModel``: our DiT-DH (``generation/models.py``) behind diffusers'
transformer interface (``ModelMixin`` + ``ConfigMixin``, ``forward(hidden_states, timestep,
class_labels)`` -> ``Transformer2DModelOutput.sample``), as diffusers' ``DiTTransformer2DModel``.

The class *is* a ``DiTDH``: the same modules under the same parameter names, so a generator
export's ``model.safetensors`` loads into it unchanged, and ``load_generator`` can sample with
it. ``timestep`` is the flow time t in [0, 1] (1 = noise, RAE's convention), the scale of the
scheduler's sigmas; the pipeline passes ``scheduler.timesteps / num_train_timesteps`` as
diffusers' FLUX and SD3 pipelines do.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from openvision3.generation.models import DiTDH, DiTDHConfig


class DiTDHTransformer2DModel(DiTDH, ModelMixin, ConfigMixin):
    """DiT-DH (RAE's ``DiTwDDTHead``; ``head_depth=0``: ``LightningDiT``) as a diffusers model.
    Config: the fields of ``DiTDHConfig`` plus ``class_names`` (one per label, or empty)."""

    __module__ = "openvision3.diffusers"  # the path diffusers records in model_index.json
    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 768,
        input_size: int = 16,
        patch_size: int = 1,
        width: int = 1152,
        depth: int = 28,
        heads: int = 16,
        head_width: int = 2048,
        head_depth: int = 2,
        head_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        time_frequencies: int = 256,
        class_init_std: float = 0.02,
        legacy_silu_condition: bool = False,
        class_names: list[str] | None = None,
    ):
        cfg = DiTDHConfig(
            in_channels=in_channels, input_size=input_size, patch_size=patch_size, width=width,
            depth=depth, heads=heads, head_width=head_width, head_depth=head_depth,
            head_heads=head_heads, mlp_ratio=mlp_ratio, num_classes=num_classes,
            time_frequencies=time_frequencies, class_init_std=class_init_std,
            legacy_silu_condition=legacy_silu_condition,
        )  # fmt: skip
        super().__init__(cfg)

    @classmethod
    def from_dit(cls, model: DiTDH, class_names: list[str] | None = None):
        """The same network with ``model``'s weights (a copy)."""
        out = cls(**dataclasses.asdict(model.cfg), class_names=list(class_names or []))
        out.load_state_dict(model.state_dict())
        return out.to(next(model.parameters()).device)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Noisy normalised tokens (B, C, H, W), flow times (B,) or a scalar in [0, 1], labels
        (B,) (the null class ``num_classes`` for the unconditional velocity) -> the velocity
        (B, C, H, W) in ``.sample``."""
        b = hidden_states.shape[0]
        t = torch.as_tensor(timestep, device=hidden_states.device, dtype=torch.float32)
        t = t.expand(b) if t.ndim == 0 else t
        v = DiTDH.forward(self, hidden_states, t, class_labels)
        return Transformer2DModelOutput(sample=v) if return_dict else (v,)
