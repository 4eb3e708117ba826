"""What ``ov3 serve`` checks before anything slow: the address it will listen on, and how long
training the demo model would take on this machine.

Both run before torch, Gradio or the model are imported, so a busy port or an unknown host is
one line naming the flag within a second, not a traceback after the model has loaded.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time

from openvision3.errors import ConfigError

PROBE_BATCH = 8  # images per timed step of the demo-speed probe
PROBE_STEPS = 3  # timed steps after the warm-up; the fastest counts (the first ones still warm up)


def check_address(host: str, port: int | None) -> None:
    """Raise ``ConfigError`` naming ``--host`` or ``--port`` when the server could not listen
    at ``host:port`` (``port`` None: Gradio picks a free one, only the host is checked)."""
    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(
            f"--host {host!r} is not a name or address this machine can resolve "
            f"({err.strerror}); 127.0.0.1 serves this machine, 0.0.0.0 the network"
        ) from err
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn does: a port whose last server has just exited (TIME_WAIT) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise ConfigError(address_error(host, port, err)) from err


def address_error(host: str, port: int | None, err: OSError) -> str:
    """The one line for a failed bind (also used when Gradio's own bind fails)."""
    if err.errno == errno.EADDRINUSE:
        return (
            f"--port {port} is in use on {host} (another server runs there); pass another "
            "--port, or --port None for the first free one from 7860"
        )
    if err.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host!r} is not an address of this machine; 127.0.0.1 serves this "
            "machine, 0.0.0.0 the network"
        )
    if err.errno == errno.EACCES:
        return f"--port {port} needs administrator rights on this system; pass a port >= 1024"
    return f"--host {host!r} --port {port}: cannot listen there ({err.strerror or err})"


def demo_training_estimate(cfg) -> tuple[float, int]:
    """(seconds, steps): about how long the demo experiment ``cfg`` trains on this machine.

    A timed probe of its training step (forward, objective, backward; the fastest of
    ``PROBE_STEPS`` after a warm-up step) on ``PROBE_BATCH`` random images at the last stage's
    resolution gives the seconds per image; each stage costs its steps x batch size x that, scaled by its share of the pixels.
    The optimizer step and the evaluation are left out. A few seconds on an idle CPU; it
    measures the machine as it is, so a busy machine gives a longer (and truer) estimate.
    """
    import dataclasses

    import torch

    from openvision3.inference.api import default_device
    from openvision3.losses.objective import Objective
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.ov3.bench import TrainStep, random_batch
    from openvision3.ov3.task import prune_model_config

    device = torch.device(default_device())
    autocast = contextlib.nullcontext
    if device.type == "cuda":  # the trainer's "auto" precision on a GPU

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)

    objective_cfg = dataclasses.replace(cfg.objective, lpips_weight=0.0)
    model_cfg = prune_model_config(cfg.model, objective_cfg)
    torch.manual_seed(0)
    model = OpenVision3(model_cfg).to(device).train()
    objective = Objective(objective_cfg).to(device)
    top = max(stage.resolution for stage in cfg.train.stages)
    batch = random_batch(model_cfg, cfg, PROBE_BATCH, top, device)
    step = TrainStep(model, objective, batch, autocast, None)
    step.forward_backward()  # warm-up: allocations, kernel choice
    times = []
    for _ in range(PROBE_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step.forward_backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    per_image = min(times) / PROBE_BATCH
    seconds = sum(
        per_image * (s.resolution / top) ** 2 * s.batch_size * s.steps for s in cfg.train.stages
    )
    return seconds, sum(s.steps for s in cfg.train.stages)
