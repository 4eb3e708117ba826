"""What ``ov3 serve`` checks before anything slow: the address it will listen on, and how long
training the demo model would take on this machine.

Both run before torch, Gradio or the model are imported, so a busy port or an unknown host is
one line naming the flag within a second, not a traceback after the model has loaded.
"""

from __future__ import annotations

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

    A timed probe of the engine's training step (``Trainer.train_step``: forward, objective,
    backward, clip, optimiser step, EMA; the fastest of ``PROBE_STEPS`` after a warm-up step)
    on the task's synthetic batch of ``PROBE_BATCH`` images at the largest stage resolution
    gives the seconds per image; each stage costs its steps x batch size x that, scaled by its
    share of the pixels. LPIPS (a backbone download) and the evaluation are left out. A few
    seconds on an idle CPU; it measures the machine as it is, so a busy machine gives a longer
    (and truer) estimate.
    """
    import copy
    import dataclasses

    import torch

    from openvision3.inference.api import default_device
    from openvision3.train.trainer import synthetic_engine

    top = max(cfg.train.stages, key=lambda s: s.resolution)
    probe = copy.deepcopy(cfg)
    probe.objective = dataclasses.replace(cfg.objective, lpips_weight=0.0)
    stage = dataclasses.replace(
        top, batch_size=PROBE_BATCH, steps=1 + PROBE_STEPS, warmup_steps=0, lpips_weight=0.0
    )
    probe.train.stages, probe.train.init_from = [stage], ""
    probe.data = dataclasses.replace(cfg.data, latents="")
    device = torch.device(default_device())
    trainer, batch = synthetic_engine(probe, device)
    trainer.train_step(batch)  # warm-up: allocations, kernel choice
    times = []
    for _ in range(PROBE_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    per_image = min(times) / PROBE_BATCH
    seconds = sum(
        per_image * (s.resolution / top.resolution) ** 2 * s.batch_size * s.steps
        for s in cfg.train.stages
    )
    return seconds, sum(s.steps for s in cfg.train.stages)
