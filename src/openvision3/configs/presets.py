"""The experiment preset registry: preset name -> the family module whose ``PRESETS`` holds it.

Each family keeps its presets beside its config and task (``ov3/presets.py``,
``generation/presets.py``, ``understanding/presets.py``). A family's module is imported only
when one of its presets is asked for, as the engine's task registry imports a task only when a
checkpoint names it (``train/task.py``), so ``openvision3.configs`` imports no family and
``ov3 train demo`` does not import transformers. ``tests/test_preset_registry.py`` keeps this
table equal to the families' ``PRESETS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from openvision3.errors import ConfigError
from openvision3.train.task import RunConfig

_SMOKE = ("", "_smoke")
_FAMILIES: dict[str, tuple[str, ...]] = {
    "openvision3.ov3.presets": (
        "pretrain_b2",
        "finetune_b2",
        "ov3_b2",
        "finetune_b2_224",
        "ov3_b2_224",
        "pretrain_l2",
        "finetune_l2",
        "ov3_l2",
        "decoder_b2",
        "demo",
        "demo_gpu",
    ),
    "openvision3.generation.presets": ("dit_dh_xl_ov3_b2", "demo_generation"),
    "openvision3.understanding.presets": (
        "llava15_ov3_b2_stage1",
        "llava15_ov3_b2_stage2",
        "llava15_ov3_b2_stage2_lora",
    ),
}
# Every family registers each preset with its ``_smoke`` variant.
MODULES: dict[str, str] = {
    base + smoke: module
    for module, bases in _FAMILIES.items()
    for base in bases
    for smoke in _SMOKE
}


def preset_names() -> list[str]:
    return sorted(MODULES)


def preset_factory(name: str) -> Callable[[], RunConfig]:
    """The function that builds preset ``name`` (its docstring is the preset's description)."""
    if name not in MODULES:
        raise ConfigError(f"unknown experiment preset {name!r}; choose from {preset_names()}")
    return importlib.import_module(MODULES[name]).PRESETS[name]


def get_preset(name: str, model_preset: str = "") -> RunConfig:
    """A fresh preset; ``model_preset`` (``ov3-mu``, ``ov3-B/2``, ...) swaps its whole model,
    for the families whose presets module has ``apply_model_preset`` (OpenVision 3's)."""
    cfg = preset_factory(name)()
    if model_preset:
        module = importlib.import_module(MODULES[name])
        apply = getattr(module, "apply_model_preset", None)
        if apply is None:
            # A generator or a LLaVA trains on a finished OpenVision 3 export (its token cache,
            # its tower), so an untrained model preset has nothing to apply to.
            raise ConfigError(
                f"--model-preset swaps the model of an OpenVision 3 preset; {name!r} is a "
                f"{cfg.TASK} preset on a trained OpenVision 3 export: {module.MODEL_FLAGS}"
            )
        cfg = apply(cfg, model_preset)
    return cfg
