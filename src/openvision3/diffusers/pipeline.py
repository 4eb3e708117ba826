"""``OpenVision3DiTPipeline``: class-conditional DiT-DH sampling on OpenVision 3's unified
tokens, as ``load_generator(...).sample`` (``generation/pipeline.py``), in diffusers' format.

    import openvision3.diffusers  # registers the classes that model_index.json names
    from openvision3.diffusers import OpenVision3DiTPipeline
    pipe = OpenVision3DiTPipeline.from_pretrained("ov3-dit-diffusers")
    images = pipe([0, 1, 2], guidance_scale=3.0, num_inference_steps=49).images  # PIL

Components: ``transformer`` (``DiTDHTransformer2DModel``), ``vae`` (``OpenVision3Autoencoder``
with the generator's token statistics), ``scheduler`` (diffusers'
``FlowMatchEulerDiscreteScheduler``, or ``OpenVision3FlowScheduler`` for Heun) and the
optional ``guide_transformer`` (AutoGuidance's weaker model).

``num_inference_steps`` counts integration steps: RAE's grid of P points is P - 1 steps
(our ``steps=50`` is ``num_inference_steps=49``), from t = 1 (noise) to shift(0.001).
diffusers' Euler scheduler gets the grid as custom sigmas (it applies the same shift,
``s t / (1 + (s - 1) t)``) and appends sigma 0 after it; that last step is not RAE's and is not
taken. The transformer reads ``timestep`` as the flow time t in [0, 1]
(``timesteps / num_train_timesteps``, as diffusers' FLUX pipeline passes it).

Guidance, as ``generation/sampler.py``: with ``guidance_scale`` w != 1, v = v_u + w (v_c - v_u)
at the times t with ``guidance_interval[0] <= t <= guidance_interval[1]`` (per sample), the
conditional velocity elsewhere; v_u is the null class (CFG) or, when the pipeline has a
``guide_transformer``, that model's conditional velocity (AutoGuidance).
"""

from __future__ import annotations

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from openvision3.generation.flow import T_END
from openvision3.generation.sampler import guided_times


class OpenVision3DiTPipeline(DiffusionPipeline):
    """DiT-DH on OpenVision 3 tokens -> images; see the module doc."""

    __module__ = "openvision3.diffusers"
    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["guide_transformer"]

    def __init__(self, transformer, vae, scheduler, guide_transformer=None):
        super().__init__()
        self.register_modules(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            guide_transformer=guide_transformer,
        )
        patch = vae.model.cfg.pixel_patch if vae is not None else 16
        self.image_processor = VaeImageProcessor(vae_scale_factor=patch, do_normalize=True)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names (``transformer.config.class_names``) -> label ids."""
        names = list(self.transformer.config.class_names or [])
        labels = [label] if isinstance(label, str) else list(label)
        missing = [x for x in labels if x not in names]
        if missing:
            raise ValueError(f"unknown class names {missing}; known: {names}")
        return [names.index(x) for x in labels]

    def _velocity(self, x, t, labels, scale, interval):
        """Guided velocity at flow times ``t`` (B,) for noisy tokens ``x`` (B, C, h, w)."""
        model, guide = self.transformer, self.guide_transformer
        if scale == 1.0:
            return model(x, t, labels).sample
        if guide is None:  # CFG: one forward over [cond; null], as sampler.guided_velocity
            null = torch.full_like(labels, model.config.num_classes)
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).sample
            v_cond, v_other = both.chunk(2)
        else:
            v_cond, v_other = model(x, t, labels).sample, guide(x, t, labels).sample
        guided = v_other + scale * (v_cond - v_other)
        mask = guided_times(t, tuple(interval)).view(-1, 1, 1, 1)
        return torch.where(mask, guided, v_cond)

    def _timesteps(self, num_inference_steps: int, device) -> torch.Tensor:
        s = self.scheduler
        if isinstance(s, FlowMatchEulerDiscreteScheduler):
            if s.config.use_dynamic_shifting or s.config.shift_terminal:
                raise ValueError(
                    "the Euler scheduler needs a fixed shift (RAE's), no dynamic shift"
                )
            u = 1 - torch.linspace(0, 1 - T_END, num_inference_steps + 1, dtype=torch.float64)
            s.set_timesteps(sigmas=u.tolist(), device=device)
            return s.timesteps[:-1]  # the step to the appended sigma 0 is not RAE's
        s.set_timesteps(num_inference_steps, device=device)
        return s.timesteps

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 49,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Labels (B,) -> B images. ``latents``: the starting noise (B, C, h, w) (e.g.
        ``openvision3.generation.pipeline.sample_noise`` for ``load_generator``'s per-sample
        seeds), else drawn with ``generator``. ``output_type``: "pil", "np" (B, H, W, 3) or
        "pt" (B, 3, H, W), in [0, 1] as ``VaeImageProcessor.postprocess``; "latent": the
        normalised tokens."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not guidance_interval[0] < guidance_interval[1]:
            raise ValueError(f"guidance_interval needs t_min < t_max, got {guidance_interval}")
        device, cfg = self._execution_device, self.transformer.config
        labels = torch.as_tensor(class_labels, device=device, dtype=torch.long).reshape(-1)
        shape = (len(labels), cfg.in_channels, cfg.input_size, cfg.input_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)}, expected {shape}")
        x = latents.to(device, torch.float32)
        scale = self.scheduler.config.num_train_timesteps
        for t in self.progress_bar(self._timesteps(num_inference_steps, device)):
            tt = (t.double() / scale).float().expand(len(labels))  # flow time in [0, 1]
            v = self._velocity(x, tt, labels, guidance_scale, guidance_interval)
            x = self.scheduler.step(v, t, x).prev_sample
        if output_type == "latent":
            images = x
        else:
            images = self.vae.decode(x.float()).sample
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
