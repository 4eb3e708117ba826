"""Speed options for the frozen VAE, applied from outside the model.

The transformer blocks are compiled by ``distributed/parallelize.py``; the VAE is a diffusers
``AutoencoderKL`` made of convolutions, so it gets its own two options:

- ``channels_last``: NHWC convolutions, the layout cuDNN's fastest bf16 kernels want, with
  cuDNN autotuning on (``cudnn.benchmark``: each stage has one input shape, so the search pays
  once). CUDA only: on CPU it only adds layout conversions.
- ``compile``: ``torch.compile`` of the VAE's encoder and decoder modules in place (parameter
  names unchanged, and the frozen VAE never enters our checkpoints anyway).

What each option buys, timed by ``scripts/anchor_bench.py``: ``docs/performance.md``.
"""

from __future__ import annotations

import torch

from openvision3.models.vae import FrozenVAE


def channels_last_vae(vae: FrozenVAE) -> None:
    """Store the VAE's 4-D weights in channels_last (NHWC); convolutions then run NHWC."""
    vae.vae.to(memory_format=torch.channels_last)


def compile_vae(vae: FrozenVAE) -> None:
    """``torch.compile`` the VAE encoder (run under no_grad) and decoder (forward + backward to
    its input) in place. ``dynamic=False``: one static graph per resolution, as the blocks."""
    vae.vae.encoder.compile(dynamic=False)
    vae.vae.decoder.compile(dynamic=False)


def speed_up_vae(
    vae: FrozenVAE | None, device: torch.device, compile: bool, channels_last: bool
) -> list[str]:
    """Apply the options that suit ``device``; returns the names of those applied.

    ``channels_last`` is applied on CUDA only, and turns on ``torch.backends.cudnn.benchmark``
    for the process; ``compile`` wherever asked (on CPU, inductor's C++ compile takes minutes:
    ask for it there only to test the path).
    """
    if vae is None:
        return []
    applied = []
    if channels_last and torch.device(device).type == "cuda":
        channels_last_vae(vae)
        torch.backends.cudnn.benchmark = True
        applied.append("channels_last")
    if compile:
        compile_vae(vae)
        applied.append("compile")
    return applied
