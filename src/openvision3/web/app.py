"""The Gradio page of ``ov3 serve``: five tabs over ``Handlers``.

Uploads reach the handlers as files (``_upload`` keeps Gradio from decoding them), so
``uploads.read_upload`` applies the limits and turns bad files into one message in the page
(``gr.Error``); conversions (CMYK, 16-bit, alpha, animation) are shown as a warning. Requests
go through Gradio's queue, bounded, one at a time (a CPU serves one model call well).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

# Before Gradio is imported: no usage statistics leave this machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from openvision3.errors import MissingExtraError  # noqa: E402
from openvision3.web.loading import ModelNotReady  # noqa: E402
from openvision3.web.options import MAX_INTERPOLATION_STEPS, NOISE_LEVELS, parse_labels  # noqa: E402
from openvision3.web.parts import MissingPartError  # noqa: E402
from openvision3.web.uploads import BadUpload, UploadLimits, read_upload  # noqa: E402

if TYPE_CHECKING:
    from openvision3.web.handlers import Handlers

log = logging.getLogger(__name__)

QUEUE_SIZE = 16
IMAGE_HEIGHT = 256
# Small model inputs (64-256 px) are shown at the size of their box, pixels kept sharp.
# Messages (Gradio's toasts) sit in the page's flow above the title instead of floating over
# the page, where they covered the buttons under them.
CSS = """
.ov3-pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.toast-wrap { position: static !important; order: -1; width: auto !important; }
.toast-wrap { align-items: stretch !important; max-width: none !important; }
"""
# ... and a new message is scrolled into view (an example is clicked far below it).
JS = """
() => new MutationObserver(records => records.forEach(r => r.addedNodes.forEach(n => {
    const toast = n.nodeType === 1 && (n.closest('.toast-body') || n.querySelector('.toast-body'));
    if (toast) toast.scrollIntoView({ block: 'nearest' });
}))).observe(document.body, { childList: true, subtree: true })
"""
EXAMPLES = 8
TOAST_SECONDS = 8  # errors and conversion notes close by themselves
# System fonts only: the default theme would fetch its web fonts from a font CDN.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Consolas", "monospace"],
)


def _file(payload) -> tuple[str, str] | None:
    """An image input's value, as the events receive it (``preprocess=False``: the upload is
    never decoded by Gradio), -> (path in the upload cache, original name).

    The value is Gradio's ``FileData`` as a dict; a plain path is taken too (an example's file,
    or a client that sends one), named by its base name.
    """
    if payload is None:
        return None
    if isinstance(payload, (str, os.PathLike)):
        return str(payload), os.path.basename(payload)
    get = payload.get if isinstance(payload, dict) else lambda k: getattr(payload, k, None)
    path = get("path")
    if not path:
        raise BadUpload("this upload carries no file; upload the image again")
    return path, get("orig_name") or os.path.basename(path)


@dataclass
class AppConfig:
    """What the page shows about the model, and the upload limits."""

    title: str = "OpenVision 3"
    model_info: str = ""
    limits: UploadLimits = UploadLimits()
    default_labels: str = "cat, dog, car"


def _upload(label: str, elem_id: str) -> gr.Image:
    """An image input. Its events run with ``preprocess=False`` (``_request``), so the function
    gets the uploaded file undecoded and ``uploads.read_upload`` applies the limits first.

    Not an override of the instance's ``preprocess``: when an event updates the component's
    properties (as ``gr.Examples`` does on every click), Gradio rebuilds it for that browser
    connection from its constructor arguments, and an instance attribute is lost with the old object.
    """
    return gr.Image(
        label=label,
        type="filepath",
        height=IMAGE_HEIGHT,
        elem_id=elem_id,
        elem_classes="ov3-pixels",
    )


def _image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(
        label=label,
        format="png",
        interactive=False,
        height=IMAGE_HEIGHT,
        elem_id=elem_id,
        elem_classes="ov3-pixels",
    )


def _gallery(label: str, elem_id: str, columns: int) -> gr.Gallery:
    return gr.Gallery(label=label, columns=columns, height="auto", format="png", elem_id=elem_id)


def _user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), duration=TOAST_SECONDS, print_exception=False)


def _calls(fn):
    """Run a handler; the errors a user can fix become one message in the page, and anything
    else is logged with its traceback and shown as one line."""

    def run(*args):
        try:
            return fn(*args)
        except (BadUpload, ValueError, MissingPartError, ModelNotReady, MissingExtraError) as err:
            raise _user_error(err) from err
        except gr.Error:
            raise
        except Exception as err:
            if type(err).__name__ == "MissingComponentError":  # a model without that part
                raise _user_error(err) from err
            log.exception("request failed")
            message = f"internal error: {type(err).__name__}: {err}"
            raise gr.Error(message, duration=TOAST_SECONDS) from err

    return run


def _request(start, fn, inputs, outputs, api_name: str | None = None) -> None:
    """One model request: the outputs are cleared, then ``fn`` fills them, so that a failed
    request leaves no result of an earlier input beside its error.

    ``start``: the triggers (``[button.click, image.upload]``) or an event to follow (an
    example's load). ``fn`` gets the raw input values (``preprocess=False``, see ``_upload``).
    """
    outputs = outputs if isinstance(outputs, list) else [outputs]
    blank = [None] * len(outputs)

    def clear():
        return blank if len(blank) > 1 else None

    hidden = dict(queue=False, show_progress="hidden", api_visibility="private")
    if isinstance(start, list):
        event = gr.on(start, clear, None, outputs, **hidden)
    else:
        event = start.then(clear, None, outputs, **hidden)
    event.then(
        _calls(fn),
        inputs,
        outputs,
        api_name=api_name,
        api_visibility="public" if api_name else "private",
        concurrency_id="model",
        preprocess=False,
    )


def _examples(elem_id: str, examples: list, inputs, fn, fn_inputs, outputs) -> None:
    """Example thumbnails that fill ``inputs`` and run ``fn`` at once."""
    if not examples:
        return
    shown = gr.Examples(examples, inputs, examples_per_page=EXAMPLES, elem_id=elem_id)
    _request(shown.load_input_event, fn, fn_inputs, outputs)


def build_app(handlers: Handlers, cfg: AppConfig) -> gr.Blocks:
    """The five-tab page; launch it with ``launch(app, ...)``."""

    def load(upload, what: str = "an image"):
        upload = _file(upload)
        if upload is None:
            raise BadUpload(f"upload {what} or pick one from the examples")
        loaded = read_upload(upload[0], upload[1], cfg.limits)
        if loaded.note:
            gr.Warning(f"{upload[1]}: {loaded.note}", duration=TOAST_SECONDS)
        return loaded.image

    def reconstruct(upload):
        rec = handlers.reconstruct(load(upload))
        metrics = f"**PSNR** {rec.psnr:.2f} dB &nbsp; **SSIM** {rec.ssim:.4f}"
        noisy = [(im, f"sigma = {s:g}") for s, im in rec.noisy]
        return rec.input, rec.reconstruction, metrics, noisy

    def understand(upload, labels_text, beam_size):
        labels = parse_labels(labels_text or "")
        out = handlers.understand(load(upload), labels, beam_size=int(beam_size))
        near = [(im, f"{sim:.3f}: {cap}") for im, cap, sim in out.neighbours]
        caption = out.caption
        if out.cut_at is not None:
            caption += f" ... [cut at the length limit: no end token in {out.cut_at} tokens]"
        return caption, out.probs, near

    def interpolate(a, b, steps):
        images = handlers.interpolate(load(a, "image A"), load(b, "image B"), int(steps))
        n = len(images)
        return [(im, f"t = {i / (n - 1):.2f}") for i, im in enumerate(images)]

    def generate(label, num, cfg_scale, steps, sampler, seed):
        images = handlers.generate(
            label, int(num), float(cfg_scale), int(steps), sampler, int(seed)
        )
        return [(im, label) for im in images]

    def ask(upload, question, max_new_tokens):
        answer = handlers.ask(load(upload), question or "", int(max_new_tokens))
        return answer if answer.strip() else "(the model's answer is empty)"

    examples = [str(p) for p in handlers.gallery.paths[:EXAMPLES]]
    with gr.Blocks(title=cfg.title, analytics_enabled=False) as app:
        gr.Markdown(f"# {cfg.title}\n{cfg.model_info}", elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Reconstruct", id="reconstruct"):
                with gr.Row():
                    image = _upload("Image", "rec-image")
                    with gr.Column():
                        run = gr.Button("Reconstruct", variant="primary", elem_id="rec-run")
                        metrics = gr.Markdown(elem_id="rec-metrics")
                with gr.Row():
                    seen = _image("Input (as the model sees it)", "rec-input")
                    recon = _image("Reconstruction", "rec-output")
                levels = ", ".join(f"{s:g}" for s in NOISE_LEVELS)
                label = f"Decoder noise: LN(tokens) + sigma * eps, sigma = {levels}"
                noisy = _gallery(label, "rec-noisy", len(NOISE_LEVELS))
                outputs = [seen, recon, metrics, noisy]
                _examples("rec-examples", examples, image, reconstruct, image, outputs)
                _request([run.click, image.upload], reconstruct, image, outputs, "reconstruct")

            with gr.Tab("Caption and classify", id="understand"):
                with gr.Row():
                    image = _upload("Image", "cap-image")
                    with gr.Column():
                        labels = gr.Textbox(
                            cfg.default_labels,
                            label="Labels (comma-separated)",
                            elem_id="cap-labels",
                        )
                        beam = gr.Slider(1, 5, value=1, step=1, label="Beam size (1 = greedy)")
                        run = gr.Button(
                            "Caption and classify", variant="primary", elem_id="cap-run"
                        )
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="cap-caption")
                with gr.Row():
                    probs = gr.Label(label="Zero-shot probabilities", elem_id="cap-probs")
                    near = _gallery("Nearest gallery images (cosine: caption)", "cap-near", 4)
                inputs, outputs = [image, labels, beam], [caption, probs, near]
                _examples("cap-examples", examples, image, understand, inputs, outputs)
                _request([run.click, image.upload], understand, inputs, outputs, "understand")

            with gr.Tab("Interpolate", id="interpolate"):
                with gr.Row():
                    a = _upload("Image A", "int-a")
                    b = _upload("Image B", "int-b")
                steps = gr.Slider(2, MAX_INTERPOLATION_STEPS, value=7, step=1, label="Steps")
                run = gr.Button("Interpolate", variant="primary", elem_id="int-run")
                label = "Decoded along the straight line between the two images' tokens"
                path = _gallery(label, "int-path", 7)
                pairs = [examples[i : i + 2] for i in range(0, len(examples) - 1, 2)]
                _examples("int-examples", pairs, [a, b], interpolate, [a, b, steps], path)
                _request([run.click], interpolate, [a, b, steps], path, "interpolate")

            with gr.Tab("Generate", id="generate"):
                gen = handlers.generator
                if gen.model is None:
                    gr.Markdown(gen.why, elem_id="gen-missing")
                else:
                    names = list(gen.model.class_names)
                    with gr.Row():
                        label = gr.Dropdown(
                            names, value=names[0], label="Class", elem_id="gen-class"
                        )
                        num = gr.Slider(1, 8, value=4, step=1, label="Samples")
                        scale = gr.Slider(1.0, 10.0, value=4.0, step=0.5, label="Guidance scale")
                        nsteps = gr.Slider(1, 100, value=25, step=1, label="Steps")
                        sampler = gr.Radio(["euler", "heun"], value="euler", label="Sampler")
                        seed = gr.Number(0, precision=0, label="Seed")
                    run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                    samples = _gallery("Samples", "gen-samples", 4)
                    inputs = [label, num, scale, nsteps, sampler, seed]
                    _request([run.click], generate, inputs, samples, "generate")

            with gr.Tab("Ask", id="ask"):
                vlm = handlers.vlm
                if vlm.model is None:
                    gr.Markdown(vlm.why, elem_id="ask-missing")
                else:
                    with gr.Row():
                        image = _upload("Image", "ask-image")
                        with gr.Column():
                            question = gr.Textbox(
                                "What is in the image?", label="Question", elem_id="ask-question"
                            )
                            tokens = gr.Slider(1, 128, value=32, step=1, label="Max new tokens")
                            run = gr.Button("Ask", variant="primary", elem_id="ask-run")
                            answer = gr.Textbox(
                                label="Answer", interactive=False, elem_id="ask-answer"
                            )
                    inputs = [image, question, tokens]
                    _examples("ask-examples", examples, image, ask, inputs, answer)
                    _request([run.click], ask, inputs, answer, "ask")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def launch(
    app: gr.Blocks,
    handlers: Handlers,
    limits: UploadLimits,
    host: str = "127.0.0.1",
    port: int | None = None,
    blocking: bool = True,
    blocked: list[str] | None = None,
):
    """Start the server -> (FastAPI app, local URL, share URL). Only Gradio's upload cache and
    the gallery folder are readable through it; ``blocked`` folders (the model's) never are."""
    return app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not blocking,
        allowed_paths=[str(handlers.gallery.root)],
        blocked_paths=blocked or [],
        max_file_size=limits.max_bytes,
        show_error=True,
        quiet=True,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        theme=THEME,
        css=CSS,
        js=JS,
    )
