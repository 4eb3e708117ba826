"""Understanding on the unified tokens: OpenVision 3 as a transformers vision tower in LLaVA.

Importing this package registers ``OpenVision3VisionConfig`` / ``OpenVision3VisionModel`` with
transformers' ``AutoConfig`` / ``AutoModel`` (``model_type = "openvision3_vision"``), so
``LlavaForConditionalGeneration.from_pretrained`` reads our checkpoints without
``trust_remote_code``. transformers is the ``understanding`` extra; ``import openvision3`` does
not import it.
"""

from openvision3.errors import require

require("transformers", "understanding", "openvision3.understanding")

from openvision3.understanding.inference import VLM, load_vlm  # noqa: E402
from openvision3.understanding.tower import (  # noqa: E402
    OpenVision3VisionConfig,
    OpenVision3VisionModel,
)

__all__ = ["VLM", "OpenVision3VisionConfig", "OpenVision3VisionModel", "load_vlm"]
