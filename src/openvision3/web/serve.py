"""``ov3 serve [MODEL] [--generator DIR] [--vlm DIR]``: the web demo on this machine.

Without MODEL it serves the demo model (``runs/demo/final``). When that is absent it says so
in one line with an estimate of the training time (``startup.demo_training_estimate``) and
trains it with ``ov3 demo``'s code (a progress bar shows the steps); when stdin is not a
terminal it stops instead and says how to get a model. The address (``--host``, ``--port``)
is checked before anything slow. ``--check`` starts the server at ``--port``, fetches the page
once and stops: the same start-up path, for tests and scripts. Uploads go to a temporary
folder of this run, removed when the server exits.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from tyro.conf import Positional, arg

from openvision3.errors import ConfigError
from openvision3.extras import require_extra

log = logging.getLogger(__name__)

DEFAULT_MODEL = "runs/demo/final"
DEMO_PRESET = "demo"
GALLERY_RESOLUTION = 128  # the synthetic gallery's side when the export does not record one


@dataclass
class ServeConfig:
    """Serve a model in a local web app (Gradio)."""

    model: Annotated[Positional[str], arg(metavar="MODEL")] = DEFAULT_MODEL
    """our export directory or a Hugging Face repo id in the local cache; the default, the demo
    model, is trained first (ov3 demo) when absent"""
    generator: str | None = None
    """a trained generator (openvision3.generation) for the Generate tab"""
    vlm: str | None = None
    """a trained VLM (openvision3.understanding) for the Ask tab"""
    host: str = "127.0.0.1"
    """interface to listen on (0.0.0.0 exposes the app to the network)"""
    port: int | None = 7860
    """port; None = the first free one from 7860"""
    device: str = "auto"
    """auto = CUDA when available, else CPU"""
    resolution: int | None = None
    """input side in pixels; default: the one the model was last trained at"""
    gallery: str | None = None
    """a folder of example images (up to 64); default: held-out synthetic-world scenes"""
    max_file_mb: float = 20.0
    """largest upload in MB"""
    max_megapixels: float = 40.0
    """largest upload in megapixels (width x height)"""
    check: bool = False
    """start the server, fetch the page once, stop (exit status 0 when it served)"""

    def __post_init__(self):
        if self.max_file_mb <= 0 or self.max_megapixels <= 0:
            raise ConfigError("--max-file-mb and --max-megapixels must be positive")


def _hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def ensure_model(path: str, interactive: bool | None = None) -> str:
    """``path``, after training the demo model into it when it is the absent default (only
    when ``interactive``, by default when stdin is a terminal).

    Raises ``ConfigError`` for any other path that does not exist and is not a hub id, and for
    the absent default when not interactive."""
    if os.path.exists(path):
        return path
    if os.path.normpath(path) != os.path.normpath(DEFAULT_MODEL):
        if _hub_id(path):
            return path  # resolved through the hub cache by ``load_pipeline``
        raise ConfigError(f"MODEL {path!r} does not exist (an export folder or a hub id)")
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive:
        raise ConfigError(
            f"no MODEL given and the demo model ({DEFAULT_MODEL}) is not there: pass MODEL "
            "(an export folder or a hub id), or train the demo first with `ov3 demo` "
            "(run `ov3 serve` in a terminal to train it and serve it in one go)"
        )
    from openvision3.configs import get_preset
    from openvision3.web.startup import demo_training_estimate

    cfg = dataclasses.replace(get_preset(DEMO_PRESET), run_dir=os.path.dirname(DEFAULT_MODEL))
    cfg.validate()
    seconds, steps = demo_training_estimate(cfg)
    print(
        f"ov3 serve: no MODEL given and {DEFAULT_MODEL} is absent: training the demo model "
        f"first (ov3 demo, {steps} steps), about {_duration(seconds)} on this machine as busy "
        "as it is now, then serving it; Ctrl+C stops, `ov3 serve MODEL` serves another model",
        flush=True,
    )
    from openvision3.ov3.demo import run_demo

    run_demo(cfg)
    return path


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _json(folder: str | None, name: str) -> dict:
    path = os.path.join(folder, name) if folder else ""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _model_info(path: str, card: dict, config: dict, resolution, limits) -> str:
    """The lines under the page's title: the model, and what the demo model knows."""
    width = config.get("model", {}).get("encoder", {}).get("width")
    info = (
        f"`{path}` ({card.get('model') or 'OpenVision 3'})"
        + (f": {resolution} px input" if resolution else "")
        + (f", tokens of width {width}" if width else "")
        + f". Uploads up to {limits.max_file_mb:g} MB and {limits.max_megapixels:g} megapixels."
    )
    if card.get("data") == "synthetic":
        from openvision3.data.synthetic.world import COLORS, SHAPES, TEXTURES

        info += (
            "\n\n**This is the demo model** (`ov3 demo`): it knows only the synthetic world it "
            f"was trained on, {len(COLORS)} colours x {len(SHAPES)} shapes "
            f"({', '.join(SHAPES)}) on {', '.join(TEXTURES)} backgrounds. A photograph comes "
            "back as coloured blobs, with a caption about shapes. Serve a model trained on "
            "photographs with `ov3 serve MODEL`."
        )
    return info


def build(cfg: ServeConfig, workdir: str | None = None):
    """``ServeConfig`` -> (Gradio app, handlers, upload limits, folders never served).

    Without ``--generator`` / ``--vlm`` the handlers are ``LoadingHandlers``: the page is built
    from the export's JSON files and the model loads once ``serve`` has started the server.
    With them, everything loads first (the Generate tab lists the generator's classes), and a
    part that cannot load is said in the terminal as well as in its tab. The synthetic
    gallery is written under ``workdir`` (a new temporary folder when None).
    """
    from openvision3.web.app import AppConfig, build_app
    from openvision3.web.gallery import folder_gallery, synthetic_gallery
    from openvision3.web.loading import LoadingHandlers
    from openvision3.web.parts import Part, load_part
    from openvision3.web.uploads import UploadLimits

    path = cfg.model
    local = path if os.path.isdir(path) else None  # a hub id is resolved when loading
    card, config = _json(local, "model_card.json"), _json(local, "config.json")
    resolution = cfg.resolution or config.get("resolution")
    if cfg.gallery:
        gallery = folder_gallery(cfg.gallery)
    else:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="ov3-serve-")
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        root = os.path.join(workdir, "gallery")
        gallery = synthetic_gallery(root, resolution or GALLERY_RESOLUTION)
    templates, labels = ["a photo of a {}."], "cat, dog, car, tree"
    if card.get("data") == "synthetic":
        from openvision3.data.synthetic.world import ZERO_SHOT_TEMPLATES

        templates, labels = ZERO_SHOT_TEMPLATES, "red circle, blue square, green star, yellow heart"
    device = None if cfg.device == "auto" else cfg.device

    def load(with_parts: bool = False):
        from openvision3.inference.api import load_pipeline
        from openvision3.web.handlers import Handlers

        pipe = load_pipeline(path, device=device, resolution=cfg.resolution)
        dev = str(pipe.device)
        gen = load_part("generator", cfg.generator, dev) if with_parts else None
        vlm = load_part("vlm", cfg.vlm, dev) if with_parts else None
        for part, given in ((gen, cfg.generator), (vlm, cfg.vlm)):
            if given and part.model is None:  # the tab says it too
                print(f"ov3 serve: warning: {part.why}", file=sys.stderr, flush=True)
        return Handlers(pipe, gallery, templates, generator=gen, vlm=vlm)

    if cfg.generator or cfg.vlm:
        handlers = load(with_parts=True)
    else:
        handlers = LoadingHandlers(gallery, Part.absent("generator"), Part.absent("vlm"), load)
    limits = UploadLimits(cfg.max_file_mb, cfg.max_megapixels)
    info = _model_info(path, card, config, resolution, limits)
    app = build_app(handlers, AppConfig(model_info=info, limits=limits, default_labels=labels))
    blocked = [os.path.abspath(p) for p in (local, cfg.generator, cfg.vlm) if p]
    return app, handlers, limits, blocked


def _fetch(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:  # a local server, no proxy
        resp.read()
        return resp.status


def _stop_on_sigterm() -> None:
    """SIGTERM ends the server as Ctrl+C does, so that the run's folder is removed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def serve(cfg: ServeConfig) -> int:
    t0 = time.perf_counter()
    require_extra("web", "ov3 serve")
    from openvision3.web.startup import address_error, check_address

    check_address(cfg.host, cfg.port)  # before anything slow: one line naming the flag
    cfg = dataclasses.replace(cfg, model=ensure_model(cfg.model))
    _stop_on_sigterm()
    # Uploads (Gradio's cache) and the synthetic gallery live in this run's folder.
    with tempfile.TemporaryDirectory(prefix="ov3-serve-") as workdir:
        os.environ["GRADIO_TEMP_DIR"] = os.path.join(workdir, "uploads")
        from openvision3.web.app import launch
        from openvision3.web.loading import LoadingHandlers, ModelNotReady

        app, handlers, limits, blocked = build(cfg, workdir)
        try:
            _, url, _ = launch(
                app, handlers, limits, cfg.host, cfg.port, blocking=False, blocked=blocked
            )
        except OSError as err:  # the port was taken after ``check_address``
            if err.errno is None:  # Gradio's "Cannot find empty port in range"
                err = OSError(errno.EADDRINUSE, str(err))
            raise ConfigError(address_error(cfg.host, cfg.port, err)) from err
        try:
            return _run(cfg, app, handlers, url, t0, LoadingHandlers, ModelNotReady)
        finally:
            app.close()


def _run(cfg, app, handlers, url, t0, LoadingHandlers, ModelNotReady) -> int:
    loading = isinstance(handlers, LoadingHandlers)
    if loading:
        handlers.start()
    t1 = time.perf_counter()
    if not cfg.check:
        print(f"ov3 serve: {url} up in {t1 - t0:.1f} s (Ctrl+C stops it)", flush=True)
        if not loading:
            threading.Thread(target=handlers.warm_up, name="warm-up", daemon=True).start()
        app.block_thread()
        return 0
    try:
        status = _fetch(url)
        t2 = time.perf_counter()
        if loading:
            handlers.ready()
        t3 = time.perf_counter()
    except ModelNotReady as err:
        print(f"ov3 serve: error: {err}", file=sys.stderr)
        return 1
    print(
        f"ov3 serve --check: {url} answered {status} {t2 - t0:.1f} s after the command's "
        f"start; the model was ready after {t3 - t0:.1f} s"
    )
    return 0 if status == 200 else 1


def main(argv: list[str]) -> int:
    import tyro

    try:
        cfg = tyro.cli(ServeConfig, args=argv, prog="ov3 serve")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    return serve(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
