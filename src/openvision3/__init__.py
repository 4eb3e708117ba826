"""OpenVision 3 in PyTorch: one visual encoder for understanding and generation."""

__version__ = "0.1.0"

# The public API, imported lazily so that `import openvision3` stays cheap (no torch /
# diffusers / PIL until first use).

_LAZY = {
    "load": "openvision3.inference.api",
    "load_pipeline": "openvision3.inference.api",
    "Pipeline": "openvision3.inference.api",
    "PipelineConfig": "openvision3.inference.api",
    "Generator": "openvision3.generation.pipeline",
    "load_generator": "openvision3.generation.pipeline",
    "VLM": "openvision3.understanding.inference",
    "load_vlm": "openvision3.understanding.inference",
    "to_pil": "openvision3.data.transforms",
    "OpenVision3": "openvision3.models.openvision3",
    "ModelConfig": "openvision3.models.openvision3",
    "load_pretrained": "openvision3.pretrained",
    "save_pretrained": "openvision3.pretrained",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'openvision3' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
