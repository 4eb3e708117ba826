"""``OpenVision3FlowScheduler``: RAE's sampling grid as a diffusers scheduler, for Heun (and
Euler).

RAE (``src/stage2/transport/integrators.py``) and ``generation/sampler.py`` integrate the flow
ODE on ``shift(1 - linspace(0, 0.999, P))``: P points, P - 1 steps, ending at shift(0.001), not
at 0 (``generation/flow.py``). Here ``num_inference_steps`` = P - 1 steps (our ``steps=50`` is
``num_inference_steps=49``).

diffusers' ``FlowMatchHeunDiscreteScheduler`` takes no custom sigmas and ends on a first-order
step; this scheduler runs the explicit trapezoid on every step, as ``sampler.integrate``:
``solver="heun"`` lists each step's two times in ``timesteps`` (2 (P - 1) transformer calls),
``step`` returns the Euler predictor after the first and the corrected sample after the
second. ``solver="euler"`` is the same grid with one call a step (equal to diffusers'
``FlowMatchEulerDiscreteScheduler`` with custom sigmas, see ``pipeline.py``). Times and step
sizes are float64, as in ``sampler.integrate``. ``timesteps`` are t x ``num_train_timesteps``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from openvision3.generation.flow import T_END, sample_grid


class OpenVision3FlowScheduler(SchedulerMixin, ConfigMixin):
    """Euler or Heun on RAE's shifted flow grid. Config: ``shift`` s = sqrt(C H W / 4096)
    (``flow.shift_factor``), ``solver`` euler | heun, ``num_train_timesteps`` (the timestep
    scale)."""

    __module__ = "openvision3.diffusers"  # the path diffusers records in model_index.json
    _compatibles = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, solver: str = "heun"):
        if solver not in ("euler", "heun"):
            raise ValueError(f"solver must be euler or heun, got {solver!r}")
        if shift < 1:
            raise ValueError(f"shift must be >= 1 (RAE's time shift), got {shift}")
        self.sigmas = self.timesteps = None
        self.num_inference_steps = None
        self._index = 0
        self._stash = None  # (x, v0) of a Heun step between its two calls

    @property
    def order(self) -> int:
        return 2 if self.config.solver == "heun" else 1

    @property
    def t_end(self) -> float:
        return T_END

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """``num_inference_steps`` integration steps on ``num_inference_steps + 1`` grid points
        from t = 1 to shift(0.001)."""
        self.num_inference_steps = num_inference_steps
        self.sigmas = sample_grid(num_inference_steps + 1, self.config.shift)  # (P,) float64
        times = self.sigmas[:-1]
        if self.config.solver == "heun":  # (t_i, t_{i+1}) for each step
            times = torch.stack([self.sigmas[:-1], self.sigmas[1:]], dim=1).flatten()
        self.timesteps = (times * self.config.num_train_timesteps).to(device)
        self._index, self._stash = 0, None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """One call: the velocity ``model_output`` at the current time -> the next sample
        (Heun: the predictor after a step's first call, the corrected sample after its
        second)."""
        if self.sigmas is None:
            raise ValueError("call set_timesteps before step")
        heun = self.config.solver == "heun"
        i = self._index // 2 if heun else self._index
        dt = float(self.sigmas[i + 1] - self.sigmas[i])
        if not heun:
            out = sample + dt * model_output
        elif self._stash is None:  # predictor: x + dt v0
            self._stash = (sample, model_output)
            out = sample + dt * model_output
        else:  # corrector: x + dt (v0 + v1) / 2, from the step's starting x
            x, v0 = self._stash
            out = x + dt * 0.5 * (v0 + model_output)
            self._stash = None
        self._index += 1
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
