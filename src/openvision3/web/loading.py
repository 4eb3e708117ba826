"""The model loads behind the page: ``ov3 serve`` answers first, then imports torch and loads.

Importing torch, torchvision and diffusers and reading the weights is most of a cold start on
a CPU; the page needs none of it to show. ``LoadingHandlers`` stands in for ``Handlers`` while
a thread loads them: the gallery and the optional parts are known at once, and a request that
arrives early waits for the model (or gets the reason it failed to load, as one line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from openvision3.web.gallery import Gallery
from openvision3.web.parts import Part

log = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """The model failed to load; the message says why."""


class LoadingHandlers:
    """``Handlers`` built by ``load()`` in a thread; every other attribute waits for them."""

    def __init__(self, gallery: Gallery, generator: Part, vlm: Part, load: Callable):
        self.gallery, self.generator, self.vlm = gallery, generator, vlm
        self._load = load
        self._done = threading.Event()
        self._handlers = None
        self._error: Exception | None = None
        self.seconds: float | None = None  # how long loading took

    def start(self) -> LoadingHandlers:
        threading.Thread(target=self._run, name="load-model", daemon=True).start()
        return self

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self._handlers = self._load()
        except Exception as err:  # shown to every request instead of a dead page
            log.error("the model failed to load: %s: %s", type(err).__name__, err)
            self._error = err
        finally:
            self.seconds = time.perf_counter() - t0
            self._done.set()
        if self._handlers is not None:
            self._handlers.warm_up()

    def ready(self):
        """The loaded ``Handlers`` (waits for them); ``ModelNotReady`` if loading failed."""
        self._done.wait()
        if self._error is not None:
            err = self._error
            raise ModelNotReady(f"the model failed to load: {type(err).__name__}: {err}")
        return self._handlers

    def warm_up(self) -> None:
        self.ready()

    def __getattr__(self, name: str):
        return getattr(self.ready(), name)
