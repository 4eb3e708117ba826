"""OpenVision 3 in diffusers' format: the tokenizer as an autoencoder, DiT-DH as a pipeline.

    import openvision3.diffusers  # the classes that model_index.json names
    from openvision3.diffusers import OpenVision3DiTPipeline
    pipe = OpenVision3DiTPipeline.from_pretrained(FOLDER)

``OpenVision3Autoencoder`` (``autoencoder.py``), ``DiTDHTransformer2DModel``
(``transformer.py``), ``OpenVision3FlowScheduler`` (``scheduler.py``),
``OpenVision3DiTPipeline`` (``pipeline.py``); ``export.py`` writes them from our exports
(``ov3 export --format diffusers``) and loads such folders back into our facades. Every class
reports its module as ``openvision3.diffusers``, the path diffusers records in
``model_index.json``: it is public and stays.

This package is named after the library it adapts to; inside it, ``import diffusers`` is the
library (absolute imports), never this package.
"""

# diffusers' loader resolves a component's base class (its load method) by name in the module
# that model_index.json records, so that module re-exports them
# (``pipeline_loading_utils.get_class_obj_and_candidates``); it finds the module in sys.modules
# only, hence the one import a user needs.
from diffusers import ModelMixin, SchedulerMixin

from openvision3.diffusers.autoencoder import OpenVision3Autoencoder
from openvision3.diffusers.export import (
    is_diffusers_folder,
    load_diffusers_folder,
    load_diffusers_generator,
    to_diffusers,
)
from openvision3.diffusers.pipeline import OpenVision3DiTPipeline
from openvision3.diffusers.scheduler import OpenVision3FlowScheduler
from openvision3.diffusers.transformer import DiTDHTransformer2DModel

__all__ = [
    "ModelMixin",
    "SchedulerMixin",
    "DiTDHTransformer2DModel",
    "OpenVision3Autoencoder",
    "OpenVision3DiTPipeline",
    "OpenVision3FlowScheduler",
    "is_diffusers_folder",
    "load_diffusers_folder",
    "load_diffusers_generator",
    "to_diffusers",
]
